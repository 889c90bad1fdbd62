"""The versioned Zarr store: layout, reading, and which fields it holds.

Layout (Zarr format 3, schema version 2):

* canonical dims (``data.schema``) with CF attributes (``units``, ``standard_name``, ``axis``;
  ``lead_time`` is the CF ``forecast_period``, in seconds) and ``Conventions: CF-1.10``;
* each data variable float32, compressed with Blosc/LZ4 and checksummed (zarr's ``crc32c``
  codec: a corrupt chunk fails to decode instead of returning wrong numbers);
* chunks: one record (``init_time`` for forecasts, ``time`` for analyses) per chunk, the full
  grid, all members and all levels in a chunk, one ``lead_time`` per chunk for forecasts
  (point data on a ``station`` dim pack :data:`POINT_RECORDS_PER_CHUNK` records per chunk);
* consolidated metadata in the root ``zarr.json``; root attributes ``enspp_kind``,
  ``enspp_schema_version``, ``Conventions`` and ``enspp_centres`` (the originating centres);
* the bookkeeping group ``enspp/`` (:mod:`data.store_meta`): completion per record, presence
  and source per field, and the provenance log.

:func:`open_store` shows only complete records, and in them only the fields that are present
(an absent field reads as NaN; :func:`present_fields` tells which are absent), so an
interrupted write never shows; its reads name the store, variable and chunk of a chunk that
cannot be decoded or is missing.  Writing is in :mod:`data.store_writer`; checks in
:mod:`data.store_check`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray

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
    split_level_name,
)

#: Version of the store layout (1: bookkeeping in root attributes; 2: the ``enspp/`` group).
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
KIND_ATTR = "enspp_kind"
SCHEMA_ATTR = "enspp_schema_version"
CENTRES_ATTR = "enspp_centres"
CONVENTIONS = "CF-1.10"
RECORD_DIMS: dict[str, str] = {"forecast": INIT_TIME, "analysis": TIME}
POINT_RECORDS_PER_CHUNK = 256


class StoreError(EnsppError):
    """A store is missing, damaged, or refuses what was asked of it; the message says which."""


class StoreMismatchError(StoreError):
    """A dataset does not fit a store (grid, variables, levels, lead times or members differ)."""


class StoreReadError(StoreError):
    """A chunk of a store cannot be read: corrupt (checksum, decompression) or missing; the
    message names the store, the variable, the chunk and its record."""


def record_dim(kind: str) -> str:
    if kind not in RECORD_DIMS:
        raise StoreError(f"unknown store kind {kind!r}: expected one of {sorted(RECORD_DIMS)}")
    return RECORD_DIMS[kind]


@contextlib.contextmanager
def suppress_zarr_warnings() -> Iterator[None]:
    """Silence zarr's notices that consolidated metadata is not in the v3 spec (it is used on
    purpose: one atomic root file is what commits a store's template) and that the
    provenance log's folder ``enspp/sources`` is not a zarr node (it is not meant to be), and
    that string coordinates (station names) have no Zarr V3 data type specification yet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component",
                                category=UserWarning)
        # station names are fixed-length strings, stored as zarr-python stores them
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        yield


def read_root_attrs(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The root attributes of a Zarr store, or None if there is no Zarr group at ``path``."""
    doc = read_root_doc(path)
    return None if doc is None else dict(doc.get("attributes", {}))


def read_root_doc(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The root ``zarr.json`` of a store (None if there is none)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return dict(json.loads(meta.read_text()))
    except (OSError, ValueError) as e:
        raise StoreError(f"store {path}: cannot read zarr.json ({e})") from None


def is_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a finished (possibly empty) enspp store of a readable version."""
    doc = read_root_doc(path)
    if doc is None:
        return False
    attrs = doc.get("attributes", {})
    version = attrs.get(SCHEMA_ATTR)
    if attrs.get(KIND_ATTR) not in RECORD_DIMS:  # e.g. a product store (kind "product")
        return False
    if version == 1:
        return "enspp_complete" in attrs
    return version == SCHEMA_VERSION and "consolidated_metadata" in doc


def open_store(path: str | os.PathLike[str], *, complete_only: bool = True) -> xr.Dataset:
    """Open a store lazily (dask-backed, one dask chunk per zarr chunk), canonical dims,
    records and lead times sorted.

    ``complete_only``: return only the records (init times / times) whose write completed,
    with absent fields masked (NaN; :func:`present_fields` says which); ``False`` shows every
    record as stored (unfinished ones' values undefined), marked by the boolean coordinate
    ``complete``.  A chunk that cannot be decoded, or that is missing although its field was
    ingested, raises :class:`StoreReadError` when it is read.
    """
    p = _check_store(path)
    meta, ds = _open_snapshot(p, dask=True)
    rec = record_dim(meta.kind)
    done = meta.complete
    if complete_only:
        ds = _mask_absent(ds, meta, rec, done)
        order = np.flatnonzero(done)
    else:
        ds = ds.assign_coords(complete=(rec, done))
        order = np.arange(len(done))
    order = order[np.argsort(meta.records[order], kind="stable")]
    if not np.array_equal(order, np.arange(ds.sizes[rec])):
        ds = ds.isel({rec: order})
    if meta.leads is not None and ds.sizes.get(LEAD_TIME, 0) > 1:
        lead_order = np.argsort(meta.leads, kind="stable")
        if not np.array_equal(lead_order, np.arange(len(lead_order))):
            ds = ds.isel({LEAD_TIME: lead_order})
    for key in ("enspp_complete", "provenance"):  # schema version 1's bookkeeping
        ds.attrs.pop(key, None)
    return ds


def _check_store(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"store {p} does not exist")
    if not is_store(p):
        attrs = read_root_attrs(p) or {}
        version = attrs.get(SCHEMA_ATTR)
        if attrs.get(KIND_ATTR) in RECORD_DIMS and version not in READABLE_VERSIONS:
            raise StoreError(f"store {p}: schema version {version!r}; this enspp reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        raise StoreError(f"{p} is not an enspp store (no zarr.json with {KIND_ATTR!r} and "
                         f"{SCHEMA_ATTR!r} attributes and consolidated metadata; was its "
                         "creation interrupted?)")
    return p


def _mask_absent(ds: xr.Dataset, meta: Any, rec: str, done: np.ndarray) -> xr.Dataset:
    """Absent fields (and fields an interrupted write left uncommitted) of complete records
    read as NaN."""
    rows = np.flatnonzero(done)
    for name in list(ds.data_vars):
        present = meta.present(str(name))
        if present[rows].all():
            continue
        dims = (rec,) if present.ndim == 1 else (rec, LEAD_TIME)
        ds[name] = ds[name].where(xr.DataArray(present, dims=dims))
    return ds


def present_fields(store: str | os.PathLike[str] | xr.Dataset) -> xr.Dataset:
    """Which fields the complete records of a store hold: one boolean array per variable,
    ``(init_time, lead_time)`` for forecasts and ``(time,)`` for analyses, ordered as
    :func:`open_store` orders them.  False means *absent*: the inputs did not provide that
    field (it reads as NaN; it is not NaN inside a field).

    An in-memory dataset (not opened from a store) is answered from its values: a field that
    is NaN everywhere is absent.  Use :func:`field_present` to ask for ``z500``-style names.
    """
    from enspp.data.store_meta import open_meta

    if isinstance(store, xr.Dataset):
        source = store.encoding.get("enspp_store")
        if source is None:
            return _present_from_values(store)
        store = source
    p = _check_store(store)
    meta = open_meta(p)
    rec = record_dim(meta.kind)
    done = meta.complete
    order = np.flatnonzero(done)
    order = order[np.argsort(meta.records[order], kind="stable")]
    coords: dict[str, Any] = {rec: meta.records[order]}
    lead_order = None
    if meta.leads is not None:
        lead_order = np.argsort(meta.leads, kind="stable")
        coords[LEAD_TIME] = meta.leads[lead_order]
    out = {}
    for name in meta.variables:
        present = meta.present(name)[order]
        if lead_order is not None:
            out[name] = xr.DataArray(present[:, lead_order], dims=(rec, LEAD_TIME))
        else:
            out[name] = xr.DataArray(present, dims=(rec,))
    return xr.Dataset(out, coords=coords)


def field_present(presence: xr.Dataset, name: str) -> xr.DataArray:
    """The presence of field ``name`` (``t2m``, or ``z500`` for ``z`` at 500 hPa: the levels
    of a field are present together) from :func:`present_fields`."""
    if name in presence.data_vars:
        return presence[name]
    short, _level = split_level_name(name)
    if short in presence.data_vars:
        return presence[short].rename(name)
    from enspp.data.schema import VariableNotFoundError

    raise VariableNotFoundError(f"variable {name!r} is not in the store (variables: "
                                f"{sorted(map(str, presence.data_vars))})")


def _present_from_values(ds: xr.Dataset) -> xr.Dataset:
    rec = INIT_TIME if INIT_TIME in ds.dims else TIME
    keep = {rec, LEAD_TIME}
    out = {}
    for name, da in ds.data_vars.items():
        other = [d for d in da.dims if d not in keep]
        out[name] = da.notnull().any(dim=other) if other else da.notnull()
    return xr.Dataset(out).compute()


# -- checked reads ------------------------------------------------------------------------

def _checked(ds: xr.Dataset, meta: Any, root: Path, *, dask: bool = True) -> xr.Dataset:
    """``ds`` (opened without dask) with every data variable read through
    :class:`CheckedArray`, chunked as stored (or lazily indexed, without dask)."""
    from xarray.core import indexing

    out = {}
    rec = record_dim(meta.kind)
    for name, var in ds.data_vars.items():
        array = meta.group[str(name)]
        checked = CheckedArray(array, store=root, variable=str(name), meta=meta, rec=rec)
        v = xr.Variable(var.dims, indexing.LazilyIndexedArray(checked), var.attrs, var.encoding)
        if dask:
            token = f"enspp-{root}-{name}-{_root_mtime(root)}"
            v = v.chunk(dict(zip(var.dims, array.chunks)), name=token)
        out[name] = v
    ds = ds.assign(out)
    ds.encoding["enspp_store"] = str(root)
    return ds


def open_checked(path: str | os.PathLike[str]) -> xr.Dataset:
    """A store as stored, for fast reads of known records: every record and lead time in
    storage order, nothing masked, no dask (an ``isel`` reads just the chunks it touches),
    and each read checked as :func:`open_store`'s (a corrupt or missing chunk raises
    :class:`StoreReadError` naming store, variable and chunk).  Use the records and fields
    :func:`open_store` / :func:`present_fields` show."""
    p = _check_store(path)
    return _open_snapshot(p, dask=False)[1]


#: reads of a store's metadata tried before a commit racing them is let through as an error
_SNAPSHOT_TRIES = 3


def _open_snapshot(p: Path, *, dask: bool) -> tuple[Any, xr.Dataset]:
    """The store's bookkeeping and its checked dataset, from one version of its root
    ``zarr.json``: both read it, and an ingest committing (replacing it) between the two
    reads gave arrays of the old length under coordinates of the new ("conflicting sizes
    for dimension"); such a read is tried again (the root file's identity compared around
    the pair of reads)."""
    from enspp.data.store_meta import open_meta

    for attempt in range(_SNAPSHOT_TRIES):
        before = _root_stamp(p)
        last = attempt == _SNAPSHOT_TRIES - 1
        try:
            meta = open_meta(p)
            with suppress_zarr_warnings():
                ds = xr.open_zarr(p, consolidated=True, chunks=None, decode_timedelta=True)
            ds = _checked(ds, meta, p, dask=dask)
        except (ValueError, KeyError) as e:
            if last or (_root_stamp(p) == before and "conflicting sizes" not in str(e)):
                raise
            continue
        if last or _root_stamp(p) == before:
            return meta, ds
    raise AssertionError("unreachable")  # pragma: no cover


def _root_stamp(root: Path) -> tuple[int, int, int] | None:
    """The identity of the root ``zarr.json`` (a commit replaces it: a new inode)."""
    try:
        st = (root / "zarr.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _root_mtime(root: Path) -> int:
    try:
        return (root / "zarr.json").stat().st_mtime_ns
    except OSError:
        return 0


class CheckedArray(BackendArray):
    """A zarr array read for xarray whose read errors name the store, the variable and the
    chunk (its index and record); a chunk missing although its field was ingested is an
    error too (zarr would return its fill value, NaN, silently).

    Use :func:`checked_array` for reads straight through zarr (``array[key]`` -> numpy)."""

    def __init__(self, array: Any, *, store: Path, variable: str, meta: Any, rec: str) -> None:
        self.array, self.store, self.variable, self.meta, self.rec = array, store, variable, meta, rec
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(array.chunks)
        self.dims = tuple(array.metadata.dimension_names or ())

    # xarray's backend array protocol (outer indexing)
    def __getitem__(self, key: Any) -> np.ndarray:
        from xarray.core import indexing

        if isinstance(key, indexing.ExplicitIndexer):
            return indexing.explicit_indexing_adapter(key, self.shape,
                                                      indexing.IndexingSupport.OUTER, self._get)
        return self._get(key if isinstance(key, tuple) else (key,))

    def _get(self, key: tuple) -> np.ndarray:
        key = tuple(key) + (slice(None),) * (self.ndim - len(key))
        outer = any(isinstance(k, np.ndarray) for k in key)
        try:
            out = np.asarray(self.array.oindex[key] if outer else self.array[key])
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any decode failure of a stored chunk
            raise self._locate(key, e) from None
        if out.size and np.isnan(out.flat[0]):
            self._check_missing(key)
        return out

    def _chunk_ranges(self, key: tuple) -> list[range]:
        out = []
        for k, n, c in zip(key, self.shape, self.chunks):
            if isinstance(k, (int, np.integer)):
                idx = np.array([int(k) % n]) if n else np.array([], dtype=int)
            elif isinstance(k, slice):
                idx = np.arange(n)[k]
            else:
                idx = np.asarray(k).reshape(-1) % n if n else np.asarray(k)
            out.append(sorted({int(i) // c for i in idx}))
        return out  # type: ignore[return-value]

    def _chunks_of(self, key: tuple) -> Iterator[tuple[int, ...]]:
        import itertools

        yield from itertools.product(*self._chunk_ranges(key))

    def _locate(self, key: tuple, error: Exception) -> StoreReadError:
        """The first chunk of ``key`` that fails to decode, as a :class:`StoreReadError`."""
        for coords in self._chunks_of(key):
            try:
                self.array.get_block_selection(coords)
            except Exception as e:  # noqa: BLE001
                return StoreReadError(self._describe(coords, read_error_words(e)))
        return StoreReadError(f"store {self.store}: variable {self.variable!r}: read failed "
                              f"({read_error_words(error)})")

    def _check_missing(self, key: tuple) -> None:
        for coords in self._chunks_of(key):
            if self._chunk_exists(coords):
                continue
            if self._field_present(coords):
                raise StoreReadError(self._describe(coords, "the chunk file is missing although "
                                                            "its field was ingested"))

    def _chunk_exists(self, coords: tuple[int, ...]) -> bool:
        key = self.array.metadata.encode_chunk_key(coords)
        path = f"{self.array.path}/{key}" if self.array.path else key
        store = self.array.store_path.store
        root = getattr(store, "root", None)
        if root is not None:
            return (Path(root) / path).exists()
        from zarr.core.sync import sync

        return bool(sync(store.exists(path)))

    def _field_present(self, coords: tuple[int, ...]) -> bool:
        rows = self._rows(coords)
        if not len(rows):
            return False
        done = self.meta.complete[rows]
        present = self.meta.present(self.variable, rows)
        if present.ndim == 2:
            lead = coords[1] * self.chunks[1] if len(coords) > 1 and self.dims[1:2] == (LEAD_TIME,) else None
            present = present[:, lead] if lead is not None else present.any(axis=1)
        return bool((present & done).any())

    def _rows(self, coords: tuple[int, ...]) -> np.ndarray:
        start = coords[0] * self.chunks[0]
        return np.arange(start, min(start + self.chunks[0], self.shape[0]))

    def _describe(self, coords: tuple[int, ...], why: str) -> str:
        rows = self._rows(coords)
        when = ""
        if len(rows) and len(self.meta.records) > rows[-1]:
            first, last = (np.datetime_as_string(self.meta.records[r], unit="m") for r in (rows[0], rows[-1]))
            when = f"{self.rec} {first}" if len(rows) == 1 else f"{self.rec} {first}..{last}"
        if self.dims[1:2] == (LEAD_TIME,) and self.meta.leads is not None and len(coords) > 1:
            lead = coords[1] * self.chunks[1]
            if lead < len(self.meta.leads):
                when += f", lead_time +{self.meta.leads[lead] / np.timedelta64(1, 'h'):g} h"
        return (f"store {self.store}: variable {self.variable!r}, chunk "
                f"{'/'.join(map(str, coords))} ({when}): {why}")


def read_error_words(e: Exception) -> str:
    """What a failed chunk read means, in words (corrupt: checksum or compression; else the
    error's type and text), for the one-line errors that name the chunk."""
    text = " ".join(str(e).split())
    if "checksum" in text.lower():
        return f"corrupt chunk (checksum mismatch: {text[:120]})"
    if "decompress" in text.lower() or "blosc" in text.lower():
        return f"corrupt chunk (cannot be decompressed: {text[:120]})"
    return f"cannot be decoded ({type(e).__name__}: {text[:160]})"


@functools.lru_cache(maxsize=32)
def _checker(root: str, variable: str, stamp: int) -> CheckedArray | None:
    from enspp.data.store_meta import open_meta

    if not is_store(root):
        return None
    meta = open_meta(root)
    if variable not in meta.variables:
        return None
    return CheckedArray(meta.group[variable], store=Path(root), variable=variable, meta=meta,
                        rec=record_dim(meta.kind))


def describe_chunk(store: str | os.PathLike[str], variable: str, coords: tuple[int, ...],
                   why: str) -> str | None:
    """``store S: variable 'v', chunk i/j/... (init_time ..., lead_time +h): why`` for a chunk
    of an enspp store (None for any other Zarr): how a reader outside :func:`open_store`
    (one that decodes chunk files itself) names a chunk it cannot read."""
    checker = _checker(str(Path(store)), variable, _root_mtime(Path(store)))
    return None if checker is None else checker._describe(tuple(int(c) for c in coords), why)


def chunk_was_written(store: str | os.PathLike[str], variable: str,
                      coords: tuple[int, ...]) -> bool:
    """True when the chunk at ``coords`` holds a committed field of an enspp store, so its
    file missing is data lost (not a field never ingested)."""
    checker = _checker(str(Path(store)), variable, _root_mtime(Path(store)))
    return checker is not None and checker._field_present(tuple(int(c) for c in coords))


def checked_array(store: str | os.PathLike[str], variable: str) -> CheckedArray:
    """Variable ``variable`` of ``store`` for raw reads (``array[key]`` -> numpy, zarr's
    basic or outer indexing, storage order): errors of a corrupt or missing chunk become one
    :class:`StoreReadError` line naming the store, the variable and the chunk."""
    from enspp.data.store_meta import open_meta

    p = _check_store(store)
    meta = open_meta(p)
    if variable not in meta.group:
        raise StoreError(f"store {p}: no variable {variable!r}")
    return CheckedArray(meta.group[variable], store=p, variable=variable, meta=meta,
                        rec=record_dim(meta.kind))


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


def validate_store(path: str | os.PathLike[str], *, deep: bool = False) -> Any:
    """Check a store (:func:`data.store_check.validate_store`)."""
    from enspp.data.store_check import validate_store as check

    return check(path, deep=deep)


__all__ = ["CENTRES_ATTR", "CONVENTIONS", "CheckedArray", "KIND_ATTR", "POINT_RECORDS_PER_CHUNK",
           "RECORD_DIMS", "SCHEMA_ATTR", "SCHEMA_VERSION", "StoreError", "StoreMismatchError",
           "StoreReadError", "checked_array", "chunk_was_written", "describe_chunk", "field_present", "is_store", "open_checked", "open_store",
           "present_fields", "read_error_words", "read_root_attrs", "record_chunk", "record_dim",
           "to_store_layout",
           "validate_store"]
