"""A NetCDF product (``predict.fmt: netcdf``) read back for ``enspp inspect`` and ``enspp
validate``.

Predict writes a NetCDF product whole, at its end, from the complete init times of the Zarr
store it staged (:meth:`models.product.ProductWriter.finish`; a predict into an existing file
stages its init times first, so the file is extended as a Zarr product is): every init time
the file holds is complete.  It records, as a Zarr product does, the init times skipped for
want of inputs and what each init time was computed from (:data:`JSON_ATTRS`, which NetCDF
cannot hold as they are: JSON text, :func:`netcdf_attrs`).  Its attributes went through
NetCDF, which keeps a list of one as a scalar and integers as numpy's: :func:`file_attrs`
gives them back as the Zarr product holds them.  A file that cannot be opened (truncated,
damaged) is one line naming it (:class:`ProductFileError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from enspp.data import schema
from enspp.data.errors import EnsppError

#: file name endings of NetCDF files
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
#: the first bytes of a NetCDF file: classic, 64-bit offset, CDF-5, NetCDF-4 (HDF5)
NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")
#: product attributes that are lists (NetCDF keeps a list of one as a scalar)
LIST_ATTRS = ("input_members", "quantiles")
#: product attributes NetCDF cannot hold as they are (a list of init times, empty or of one;
#: a nested mapping): written as JSON text, read back by :func:`file_attrs`
#: (``models.product.SKIPPED_ATTR``, ``models.product.INPUTS_ATTR``)
JSON_ATTRS = ("enspp_skipped", "enspp_inputs")
#: values one read of a deep check holds at most (a contiguous variable is read in blocks
#: of init times)
READ_VALUES = 8 * 2**20


class ProductFileError(EnsppError):
    """A NetCDF file cannot be read as a product; the message names the file."""


def is_netcdf(path: str | Path) -> bool:
    """True if ``path`` is a file named or starting as a NetCDF file (a truncated one too)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in NETCDF_SUFFIXES:
        return True
    try:
        with p.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.startswith(NETCDF_MAGIC)


def open_file(path: str | Path) -> xr.Dataset:
    """The NetCDF file at ``path``, lazily (its coordinates read, no field), its global
    attributes as predict wrote them (:func:`file_attrs`); :class:`ProductFileError` naming
    the file when it cannot be opened.  The caller closes it."""
    p = Path(path)
    try:
        ds = xr.open_dataset(p, decode_timedelta=True)
    except Exception as e:  # noqa: BLE001 - netCDF4/HDF5 raise many types for a damaged file
        raise ProductFileError(f"{p}: cannot be read as a NetCDF file (truncated or damaged?): "
                               f"{_why(e)}") from None
    ds.attrs = file_attrs(ds)
    return ds


@contextmanager
def open_product_file(path: str | Path) -> Iterator[xr.Dataset]:
    """:func:`open_file`, closed on leaving."""
    with open_file(path) as ds:
        yield ds


def netcdf_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` as a NetCDF file holds them: :data:`JSON_ATTRS` as JSON text."""
    return {k: json.dumps(v, sort_keys=True) if k in JSON_ATTRS else v
            for k, v in attrs.items()}


def file_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The global attributes as predict wrote them: lists as lists, numbers as Python's,
    :data:`JSON_ATTRS` decoded (text that does not parse is kept as it is: the checks of
    ``enspp validate`` name it)."""
    out = {}
    for key, value in ds.attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if key in LIST_ATTRS and not isinstance(value, list):
            value = [value]
        if key in JSON_ATTRS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def file_variables(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The data variables along ``init_time``, as :func:`models.product.product_variables`
    gives a Zarr product's: dims, shape, chunks (``None``: stored contiguous), CF attributes."""
    out = {}
    for name in sorted(map(str, ds.data_vars)):
        da = ds[name]
        if da.dims[:1] != (schema.INIT_TIME,):
            continue
        chunks = da.encoding.get("chunksizes")
        out[name] = {"dims": list(map(str, da.dims)), "shape": [int(n) for n in da.shape],
                     "chunks": None if chunks is None else [int(c) for c in chunks],
                     "units": da.attrs.get("units"), "long_name": da.attrs.get("long_name")}
    return out


def read_step(variables: dict[str, dict[str, Any]]) -> int:
    """Init times per read of a deep check: a chunk of init times, and no more than
    :data:`READ_VALUES` values of any variable."""
    step = None
    for v in variables.values():
        per_row = int(np.prod(v["shape"][1:], dtype=np.int64)) or 1
        n = max(1, READ_VALUES // per_row)
        if v["chunks"] is not None:
            n = min(n, max(1, v["chunks"][0]))
        step = n if step is None else min(step, n)
    return step or 1


def read_file_rows(ds: xr.Dataset, name: str, start: int, stop: int) -> np.ndarray:
    """Init times ``start:stop`` of variable ``name``, decoded (fill values as NaN)."""
    return np.asarray(ds[name].isel({schema.INIT_TIME: slice(start, stop)}).values)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


__all__ = ["JSON_ATTRS", "ProductFileError", "file_attrs", "file_variables", "is_netcdf",
           "netcdf_attrs", "open_file", "open_product_file", "read_file_rows", "read_step"]
