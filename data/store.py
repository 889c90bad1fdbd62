"""The versioned Zarr store: layout, reading, and the checks an append must pass.

Layout (Zarr format 3, written through xarray):

* canonical dims (``data.schema``); each data variable float32, compressed with Blosc/zstd;
* chunks: one record (``init_time`` for forecasts, ``time`` for analyses) per chunk, the full
  grid, all members and all levels in a chunk, one ``lead_time`` per chunk for forecasts
  (point data on a ``station`` dim pack :data:`POINT_RECORDS_PER_CHUNK` records per chunk);
* consolidated metadata in the root ``zarr.json``;
* root attributes ``enspp_kind``, ``enspp_schema_version``, ``provenance``
  (``data.provenance``) and ``enspp_complete``: the records whose write finished.

Readers see only complete records (:func:`open_store`), so an interrupted append never shows
partial data; writing is in :mod:`data.store_writer`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.schema import (
    ANALYSIS_DIM_ORDER,
    FORECAST_DIM_ORDER,
    INIT_TIME,
    LEAD_TIME,
    STATION,
    TIME,
    Kind,
    SchemaError,
    normalise_units,
    validate,
)

#: Version of the canonical data model the store follows (bumped on incompatible changes).
SCHEMA_VERSION = 1
KIND_ATTR = "enspp_kind"
SCHEMA_ATTR = "enspp_schema_version"
COMPLETE_ATTR = "enspp_complete"
PROVENANCE_ATTR = "provenance"
RECORD_DIMS: dict[str, str] = {"forecast": INIT_TIME, "analysis": TIME}
POINT_RECORDS_PER_CHUNK = 256


class StoreError(EnsppError):
    """A store is missing, damaged, or refuses what was asked of it; the message says which."""


class StoreMismatchError(StoreError):
    """A dataset does not fit a store (grid, variables, levels, lead times or members differ)."""


def record_dim(kind: str) -> str:
    if kind not in RECORD_DIMS:
        raise StoreError(f"unknown store kind {kind!r}: expected one of {sorted(RECORD_DIMS)}")
    return RECORD_DIMS[kind]


def suppress_zarr_warnings() -> warnings.catch_warnings:
    """Silence zarr's notice that consolidated metadata is not in the v3 spec (it is used on
    purpose: one atomic root file is what makes the store's commits atomic)."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
    return ctx


def is_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a finished (possibly empty) enspp store."""
    attrs = read_root_attrs(path)
    return (attrs is not None and COMPLETE_ATTR in attrs
            and attrs.get(KIND_ATTR) in RECORD_DIMS)  # not a product store (kind "product")


def read_root_attrs(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The root attributes of a Zarr store, or None if there is no Zarr group at ``path``."""
    import json

    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"store {path}: cannot read zarr.json ({e})") from None
    return dict(doc.get("attributes", {}))


def open_store(path: str | os.PathLike[str], *, complete_only: bool = True) -> xr.Dataset:
    """Open a store lazily (dask-backed, one chunk per record), canonical dims.

    ``complete_only``: return only the records (init times / times) whose write completed;
    ``False`` also shows records an interrupted ingest left unfinished (their values are
    undefined), marked by the boolean coordinate ``complete``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"store {p} does not exist")
    if not is_store(p):
        raise StoreError(f"{p} is not an enspp store (no zarr.json with {KIND_ATTR!r} and "
                         f"{COMPLETE_ATTR!r} attributes; was its creation interrupted?)")
    ctx = suppress_zarr_warnings()
    try:
        ds = xr.open_zarr(p, consolidated=True, chunks={})
    finally:
        ctx.__exit__(None, None, None)
    rec = record_dim(ds.attrs[KIND_ATTR])
    done = complete_mask(ds, rec)
    if complete_only:
        ds = ds.isel({rec: np.flatnonzero(done)})
    else:
        ds = ds.assign_coords(complete=(rec, done))
    if ds.sizes[rec] > 1 and not bool(np.all(np.diff(ds[rec].values) > np.timedelta64(0))):
        ds = ds.sortby(rec)
    return ds


def complete_mask(ds: xr.Dataset, rec: str) -> np.ndarray:
    """Boolean mask over ``ds[rec]``: which records are listed as complete."""
    from enspp.data.provenance import record_key

    done = set(ds.attrs.get(COMPLETE_ATTR, []))
    return np.array([record_key(v) in done for v in ds[rec].values], dtype=bool)


def to_store_layout(ds: xr.Dataset, *, kind: Kind) -> xr.Dataset:
    """Canonical store layout of ``ds``: dims in canonical order, float32 data variables,
    nanosecond times, and no derived coordinates along the record dim (``valid_time`` and
    the like are recomputed on read)."""
    rec = record_dim(kind)
    order = FORECAST_DIM_ORDER if kind == "forecast" else ANALYSIS_DIM_ORDER
    unknown = [d for d in ds.dims if d not in order]
    if unknown:
        raise SchemaError(f"dims {unknown} are not canonical for a {kind} "
                          f"(allowed: {list(order)})")
    drop = [c for c in ds.coords
            if c not in ds.dims and (ds[c].ndim == 0 or rec in ds[c].dims)]
    ds = ds.drop_vars(drop)
    for name, da in ds.data_vars.items():
        if rec not in da.dims:
            raise SchemaError(f"variable {name!r} has no {rec!r} dim (dims {da.dims})")
    ds = ds.transpose(*[d for d in order if d in ds.dims])
    ds = ds.assign({name: da if da.dtype == np.float32 else da.astype(np.float32)
                    for name, da in ds.data_vars.items()})  # float32 data stays lazy
    for dim, unit in ((INIT_TIME, "datetime64[ns]"), (TIME, "datetime64[ns]"),
                      (LEAD_TIME, "timedelta64[ns]")):
        if dim in ds.coords and ds[dim].dtype != np.dtype(unit):
            ds = ds.assign_coords({dim: ds[dim].values.astype(unit)})
    return ds


def record_chunk(ds: xr.Dataset) -> int:
    """Records per chunk: one for gridded data, a block of records for point data."""
    return POINT_RECORDS_PER_CHUNK if STATION in ds.dims else 1


def check_compatible(reference: xr.Dataset, ds: xr.Dataset, *, kind: Kind, ref_name: str,
                     name: str) -> None:
    """Raise :class:`StoreMismatchError` naming both sides if ``ds`` cannot be written beside
    ``reference``: same variables with the same dims and units, same members, levels, lead
    times and grid (or stations)."""
    rec = record_dim(kind)

    def fail(what: str, mine: str, theirs: str) -> None:
        raise StoreMismatchError(f"{name} does not match {ref_name}: {what} differ "
                                 f"({name}: {mine}; {ref_name}: {theirs})")

    if set(ds.data_vars) != set(reference.data_vars):
        fail("variables", str(sorted(map(str, ds.data_vars))),
             str(sorted(map(str, reference.data_vars))))
    for v in reference.data_vars:
        if ds[v].dims != reference[v].dims:
            fail(f"dims of {v!r}", str(ds[v].dims), str(reference[v].dims))
        mine, theirs = (normalise_units(str(x[v].attrs.get("units"))) for x in (ds, reference))
        if mine != theirs:
            fail(f"units of {v!r}", mine, theirs)
    for dim in reference.dims:
        if dim == rec:
            continue
        a, b = ds[dim].values, reference[dim].values
        same = a.shape == b.shape and (
            np.allclose(a, b, rtol=0, atol=1e-6) if a.dtype.kind == "f" else np.array_equal(a, b))
        if not same:
            fail(_DIM_WHAT.get(str(dim), f"{dim!r} coordinates"), _describe(a), _describe(b))


_DIM_WHAT = {"latitude": "grids (latitude)", "longitude": "grids (longitude)",
             "member": "members", "level": "levels (hPa)", "lead_time": "lead times",
             "station": "stations"}


def _describe(values: np.ndarray) -> str:
    if values.size == 0:
        return "none"
    if values.dtype.kind == "m":
        hours = (values / np.timedelta64(1, "h")).astype(float)
        return f"{values.size} values {_fmt(hours[0])}..{_fmt(hours[-1])} h"
    return f"{values.size} values {_fmt(values[0])}..{_fmt(values[-1])}"


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (float, np.floating)) else str(x)


@dataclass(frozen=True)
class StoreReport:
    """What ``enspp validate`` says about a store."""

    path: str
    kind: str
    complete: int
    incomplete: tuple[str, ...]
    variables: tuple[str, ...]
    sizes: Mapping[str, int]
    sources: int

    def summary(self) -> str:
        rec = record_dim(self.kind)
        dims = ", ".join(f"{k}={v}" for k, v in self.sizes.items() if k != rec)
        line = (f"{self.path}: valid {self.kind} store, {self.complete} complete {rec}s, "
                f"variables {list(self.variables)}, {dims}, {self.sources} source files")
        if self.incomplete:
            line += (f"; {len(self.incomplete)} unfinished {rec}s from an interrupted ingest "
                     f"(hidden from readers; re-run that ingest to finish them): "
                     f"{list(self.incomplete[:3])}")
        return line


def validate_store(path: str | os.PathLike[str]) -> StoreReport:
    """Check a store's attributes and its complete records against the canonical model."""
    from enspp.data.provenance import record_key

    attrs = read_root_attrs(path)
    if attrs is None:
        raise StoreError(f"{path} is not a Zarr store (no zarr.json)")
    for key in (KIND_ATTR, SCHEMA_ATTR, PROVENANCE_ATTR, COMPLETE_ATTR):
        if key not in attrs:
            raise StoreError(f"store {path}: attribute {key!r} is missing")
    if attrs[SCHEMA_ATTR] != SCHEMA_VERSION:
        raise StoreError(f"store {path}: schema version {attrs[SCHEMA_ATTR]!r}, this enspp "
                         f"reads version {SCHEMA_VERSION}")
    full = open_store(path, complete_only=False)
    kind = str(attrs[KIND_ATTR])
    rec = record_dim(kind)
    ds = full.isel({rec: np.flatnonzero(full["complete"].values)}).drop_vars("complete")
    if ds.sizes[rec]:
        validate(ds.isel({rec: slice(0, 1)}).load(), kind=kind,  # type: ignore[arg-type]
                 source=f"store {path}", allow_nan=True)
        validate(ds, kind=kind, source=f"store {path}")  # type: ignore[arg-type]
    incomplete = tuple(record_key(v) for v, c in zip(full[rec].values, full["complete"].values)
                       if not c)
    return StoreReport(path=str(path), kind=kind, complete=int(ds.sizes[rec]),
                       incomplete=incomplete, variables=tuple(map(str, ds.data_vars)),
                       sizes={str(k): int(v) for k, v in ds.sizes.items()},
                       sources=len(attrs[PROVENANCE_ATTR].get("sources", [])))
