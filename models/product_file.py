"""A NetCDF product (``predict.fmt: netcdf``) read back for ``enspp inspect`` and ``enspp
validate``.

Predict writes a NetCDF product whole, at its end, from the complete init times of the Zarr
store it staged (:meth:`models.product.ProductWriter.finish`): every init time the file holds
is complete, and it records neither skipped init times nor inputs.  Its attributes went
through NetCDF, which keeps a list of one as a scalar and integers as numpy's:
:func:`file_attrs` gives them back as the Zarr product holds them.  A file that cannot be
opened (truncated, damaged) is one line naming it (:class:`ProductFileError`).
"""

from __future__ import annotations

from collections.abc import Iterator
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


@contextmanager
def open_product_file(path: str | Path) -> Iterator[xr.Dataset]:
    """The NetCDF file at ``path``, lazily (its coordinates read, no field);
    :class:`ProductFileError` naming the file when it cannot be opened."""
    p = Path(path)
    try:
        ds = xr.open_dataset(p, decode_timedelta=True)
    except Exception as e:  # noqa: BLE001 - netCDF4/HDF5 raise many types for a damaged file
        raise ProductFileError(f"{p}: cannot be read as a NetCDF file (truncated or damaged?): "
                               f"{_why(e)}") from None
    with ds:
        yield ds


def file_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The global attributes as predict wrote them: lists as lists, numbers as Python's."""
    out = {}
    for key, value in ds.attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if key in LIST_ATTRS and not isinstance(value, list):
            value = [value]
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


__all__ = ["ProductFileError", "file_attrs", "file_variables", "is_netcdf",
           "open_product_file", "read_file_rows", "read_step"]
