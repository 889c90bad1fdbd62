"""The store's template (its arrays, coordinates and root metadata) and the low-level writes
of :mod:`data.store_writer`: create, extend, commit, recover, migrate, whole-chunk writes.

The *template* is committed by one file: the root ``zarr.json`` with the consolidated
metadata that readers open.  Arrays are created or resized first (each its own
``zarr.json``), then the consolidated metadata is rewritten in one atomic file replace; a
writer killed before that leaves arrays whose shape differs from the consolidated one, which
:func:`recover` puts back.  The root attributes that make a directory an enspp store are
written last at creation, so a creation never finished is started afresh.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from enspp.data import durable
from enspp.data import store_meta as meta_mod
from enspp.data.schema import COORD_ATTRS, LEAD_TIME
from enspp.data.store import (
    CENTRES_ATTR,
    CONVENTIONS,
    KIND_ATTR,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    StoreError,
    read_root_doc,
    record_dim,
    suppress_zarr_warnings,
)
from enspp.data.store_meta import write_file_atomic

#: ``_FillValue`` attribute xarray writes for a float NaN fill in zarr 3 (base64 of the
#: float64 NaN bytes); the data arrays carry it so they read back as xarray wrote them.
NAN_FILL_ATTR = base64.standard_b64encode(np.float64(np.nan).tobytes()).decode()
#: where the writer's own temporary files go (cleared by :func:`recover`)
TMP_DIR = "enspp/tmp"
#: lead times are stored as whole seconds (CF ``forecast_period``)
LEAD_UNITS = "seconds"
RECORD_UNITS = "seconds since 1970-01-01"

#: Test hook: SIGKILL this process after this many file writes (crash-safety tests only).
FAULT_ENV = "ENSPP_FAULT_KILL_AFTER_WRITES"


class Faults:
    """Counts the writer's file writes; with :data:`FAULT_ENV` set, kills the process by
    SIGKILL at that write (every write of a store goes through :meth:`tick`)."""

    #: writes counted in this process (tests read it to loop over every write index)
    total = 0

    def __init__(self) -> None:
        raw = os.environ.get(FAULT_ENV)
        self.limit = int(raw) if raw else 0
        self.count = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.count += 1
            Faults.total += 1
            if self.limit and self.count >= self.limit:
                os.kill(os.getpid(), signal.SIGKILL)


def ticking_store(root: Path, faults: Faults, *, read_only: bool = False) -> Any:
    """A zarr ``LocalStore`` on ``root`` whose writes and deletes call ``faults.tick``."""
    from zarr.storage import LocalStore, WrapperStore

    class _Ticking(WrapperStore):  # type: ignore[misc]
        async def set(self, key: str, value: Any) -> None:
            await self._store.set(key, value)
            faults.tick()

        async def delete(self, key: str) -> None:
            await self._store.delete(key)
            faults.tick()

    return _Ticking(LocalStore(root, read_only=read_only))


def compressors() -> list[Any]:
    """Blosc/LZ4 with bit shuffle, then a CRC-32C checksum of the compressed chunk.

    LZ4 + bit shuffle: 2-3x faster than Blosc/zstd-1 and on real ENS/ERA5 fields 10-25 %
    smaller than byte shuffle (measured on ../shared/data/gridded), which keeps an ingest near
    the GRIB decode itself (tests/benchmarks/bench_ingest.py).  The checksum makes a chunk
    damaged on disk an error on read instead of wrong numbers."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()]


# -- recovery -----------------------------------------------------------------------------

#: written first into the directory of a store being created and removed once its template
#: is committed: a directory holding it without a committed template is a creation a kill
#: interrupted (emptied by the next writer); any other directory without one is not an
#: enspp store and is never touched (:func:`is_foreign`)
NEW_MARKER = ".enspp-new"


def _committed_doc(root: Path) -> dict[str, Any] | None:
    doc = read_root_doc(root)
    attrs = (doc or {}).get("attributes", {})
    if (doc is None or KIND_ATTR not in attrs or SCHEMA_ATTR not in attrs
            or "consolidated_metadata" not in doc):
        return None
    return doc


def is_foreign(root: Path) -> bool:
    """A directory holding files but neither a committed store nor the marker of one being
    created: someone else's files, which no writer may empty."""
    return (root.is_dir() and _committed_doc(root) is None
            and not (root / NEW_MARKER).exists() and any(root.iterdir()))


def recover(root: Path, faults: Faults) -> None:
    """Put a store a killed writer left back into its committed state: temporary files
    removed, arrays created or resized after the last template commit removed or shrunk back;
    a store whose creation never finished (its :data:`NEW_MARKER` still there) is emptied
    (nothing in it was ever visible).  A directory that is not a store is left as it is."""
    if not root.exists() or is_foreign(root):
        return
    doc = _committed_doc(root)
    if doc is None:
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return
    shutil.rmtree(root / TMP_DIR, ignore_errors=True)
    for partial in _shallow_partials(root):
        partial.unlink(missing_ok=True)
    import zarr

    committed = {k: tuple(m.get("shape", ())) for k, m in
                 doc["consolidated_metadata"]["metadata"].items() if m.get("node_type") == "array"}
    with suppress_zarr_warnings():
        actual = zarr.open_group(ticking_store(root, faults), mode="r+", use_consolidated=False)
        for name, arr in list(actual.arrays()) + _nested_arrays(actual):
            if name not in committed:
                shutil.rmtree(root / name, ignore_errors=True)
            elif tuple(arr.shape) != committed[name]:
                arr.resize(committed[name])


def _nested_arrays(group: Any) -> list[tuple[str, Any]]:
    out = []
    for name, sub in group.groups():
        for child, arr in sub.arrays():
            out.append((f"{name}/{child}", arr))
        out.extend((f"{name}/{n}", a) for n, a in _nested_arrays(sub))
    return out


def _shallow_partials(root: Path) -> list[Path]:
    """Temporary files zarr leaves beside metadata (the root's, each array's and each
    bookkeeping array's ``zarr.json``): a directory listing per array, never a walk of the
    chunks or of the provenance log."""
    dirs = [root, *(c for c in root.iterdir() if c.is_dir())]
    meta = root / meta_mod.META_GROUP
    dirs.append(meta / "complete")
    for sub in ("present", "source"):
        if (meta / sub).is_dir():
            dirs.append(meta / sub)
            dirs.extend(d for d in (meta / sub).iterdir() if d.is_dir())
    return [p for d in dirs if d.is_dir() for p in d.glob("*.partial")]


# -- creating and extending ---------------------------------------------------------------

def coord_dataset(coords: Mapping[str, Any], *, rec: str) -> xr.Dataset:
    """The coordinates of a new store with their CF attributes."""
    out = {}
    for name, value in coords.items():
        da = value if isinstance(value, xr.DataArray) else xr.DataArray(value, dims=(name,))
        attrs = dict(da.attrs)
        for key, v in COORD_ATTRS.get(str(name), {}).items():
            if key != "units" or name not in (rec, LEAD_TIME):
                attrs.setdefault(key, v)
        out[name] = da.copy(deep=False).assign_attrs(attrs)
    return xr.Dataset(coords=out)


def coord_encoding(names: Sequence[str], *, rec: str) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    if rec in names:
        enc[rec] = {"units": RECORD_UNITS, "dtype": "int64", "chunks": (4096,)}
    if LEAD_TIME in names:
        enc[LEAD_TIME] = {"units": LEAD_UNITS, "dtype": "int64", "chunks": (256,)}
    return enc


def create_data_array(group: Any, name: str, var: xr.Variable | xr.DataArray, *,
                      shape: Sequence[int], chunks: Sequence[int]) -> None:
    """A float32 data array (NaN fill, checksummed) with the variable's attributes."""
    attrs = {k: v for k, v in var.attrs.items() if k != "_FillValue"}
    group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=np.float32,
                       compressors=compressors(), fill_value=np.float32(np.nan),
                       dimension_names=tuple(map(str, var.dims)),
                       attributes={**_jsonable(attrs), "_FillValue": NAN_FILL_ATTR},
                       overwrite=True)


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[str(k)] = v
    return out


def commit_template(root: Path, zstore: Any, faults: Faults,
                    attrs: Mapping[str, Any] | None = None,
                    drop: Sequence[str] = (), consolidate: bool = True) -> None:
    """Commit the template: the consolidated metadata rewritten (one atomic file; not when
    ``consolidate`` is False: written with the template already), then the root attributes
    updated in the same file (a second atomic replace) when asked.  What it names is
    flushed to disk before it, and it after (:mod:`enspp.data.durable`)."""
    import zarr

    durable.sync_filesystem(root)
    if consolidate:
        with suppress_zarr_warnings():
            zarr.consolidate_metadata(zstore)
    if attrs or drop:
        path = root / "zarr.json"
        doc = json.loads(path.read_text())
        merged = {k: v for k, v in doc.get("attributes", {}).items() if k not in drop}
        merged.update(attrs or {})
        doc["attributes"] = merged
        write_file_atomic(path, json.dumps(doc, indent=2).encode(), tick=faults.tick,
                          tmp_dir=root / TMP_DIR)
    durable.sync_filesystem(root)


def write_out(files: Mapping[str, Any], root: Path, faults: Faults) -> None:
    """The files of a zarr ``MemoryStore`` (its ``store_dict``: a new store's template)
    written under ``root``, each atomically, the root ``zarr.json`` last."""
    items = sorted(files.items(), key=lambda kv: (kv[0] == "zarr.json", kv[0]))
    for key, value in items:
        write_file_atomic(root / key, [value.to_bytes()], tick=faults.tick,
                          tmp_dir=root / TMP_DIR)


def root_attrs(kind: str, centres: Sequence[str]) -> dict[str, Any]:
    return {KIND_ATTR: kind, SCHEMA_ATTR: SCHEMA_VERSION, "Conventions": CONVENTIONS,
            CENTRES_ATTR: " ".join(sorted(centres))}


def write_coordinate_values(group: Any, name: str, start: int, values: np.ndarray) -> None:
    """Write ``values`` of the record or lead coordinate at ``start`` in its stored encoding."""
    arr = group[name]
    if name == LEAD_TIME:
        raw = meta_mod.encode_leads(values, str(arr.attrs.get("units", LEAD_UNITS)),
                                    where=f"array {name}")
    else:
        if str(arr.attrs.get("units", "")) != RECORD_UNITS:
            raise StoreError(f"record coordinate {name} has units {arr.attrs.get('units')!r}; "
                             f"expected {RECORD_UNITS!r}")
        raw = (np.asarray(values, dtype="datetime64[s]") - np.datetime64(0, "s")).astype(np.int64)
    arr[start:start + len(raw)] = raw.astype(arr.dtype)


# -- schema version 1 -> 2 ----------------------------------------------------------------

def migrate_v1(root: Path, zstore: Any, faults: Faults, meta: Any,
               centres: Sequence[str] = ()) -> None:
    """Move the bookkeeping of a schema-1 store (root attributes) into the ``enspp/`` group
    and commit it as schema 2 in one root-file replace; killed half-way, the store still
    reads as schema 1 and the next writer migrates it again."""
    import zarr

    from enspp.data.store_meta import (
        COMPLETE,
        PRESENT,
        SOURCE,
        SourceEntry,
        create_meta,
        write_source,
    )

    rec = record_dim(meta.kind)
    n = len(meta.records)
    n_leads = None if meta.leads is None else len(meta.leads)
    with suppress_zarr_warnings():
        group = zarr.open_group(zstore, mode="r+", use_consolidated=False)
        create_meta(group, kind=meta.kind, rec=rec, n_records=n, n_leads=n_leads,
                    variables=meta.variables)
        complete = meta.complete.astype(np.uint8)
        if n:
            group[COMPLETE][:] = complete
            for var in meta.variables:
                group[f"{PRESENT}/{var}"][...] = meta.present(var).astype(np.uint8)
                group[f"{SOURCE}/{var}"][...] = meta.sources_of(var).astype(np.uint64)
        for entry in meta.sources():
            write_source(root, SourceEntry(**{**entry.__dict__}), tick=faults.tick)
        for name, attrs in COORD_ATTRS.items():
            if name in group and name not in (rec, LEAD_TIME):
                arr = group[name]
                arr.update_attributes({k: v for k, v in attrs.items() if k not in arr.attrs})
            elif name in group and name == LEAD_TIME:
                arr = group[name]
                arr.update_attributes({k: v for k, v in attrs.items()
                                       if k not in arr.attrs and k != "units"})
    commit_template(root, zstore, faults, attrs=root_attrs(meta.kind, centres),
                    drop=(meta_mod.V1_COMPLETE_ATTR, meta_mod.V1_PROVENANCE_ATTR))


# -- whole-chunk writes -------------------------------------------------------------------

class ChunkWriter:
    """Writes whole chunks of one zarr array whose codecs are the store's (little-endian
    bytes, Blosc, optionally CRC-32C) and whose chunks are some records (one in a gridded
    store, a block in a point store) by one step of the second axis by all the rest: each
    chunk is encoded here and written to its file.

    Why: zarr's ``Array.__setitem__`` spends as long again as the encode itself on a full
    5-MB chunk (selection planning, an extra copy, hops between its event loop and worker
    threads); this is the same encode (numcodecs' Blosc configured exactly as zarr's
    ``BloscCodec`` configures it, and the same CRC-32C, so the stored bytes are identical,
    which the tests check) and the same atomic file replace.  The writer is the store's only
    writer (it holds the lock), so a whole-chunk write without read-modify-write is what zarr
    would do too."""

    def __init__(self, array: Any, encoder: Any, *, checksum: bool, root: Path, faults: Faults,
                 tmp_dir: Path) -> None:
        self.array, self.encoder, self.checksum = array, encoder, checksum
        self.root, self.faults, self.tmp_dir = root, faults, tmp_dir
        self.chunk_shape = (array.chunks[0], array.chunks[1], *array.shape[2:])

    @classmethod
    def for_array(cls, array: Any, *, root: Path | None = None, faults: Faults | None = None,
                  tmp_dir: Path | None = None) -> ChunkWriter | None:
        """A writer for ``array``, or None when its codecs or chunks are not the above."""
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

        codecs = list(getattr(array.metadata, "codecs", ()))
        checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
        if checksum:
            codecs = codecs[:-1]
        if (len(codecs) != 2 or not isinstance(codecs[0], BytesCodec)
                or not isinstance(codecs[1], BloscCodec)
                or str(getattr(codecs[0].endian, "value", codecs[0].endian)) != "little"
                or np.dtype(array.dtype) != np.dtype("<f4") or len(array.shape) < 2
                or tuple(array.chunks[2:]) != tuple(array.shape[2:])):
            return None
        store_root = getattr(_inner_store(array), "root", None)
        root = Path(store_root) if root is None and store_root is not None else root
        return cls(array, _blosc_like(codecs[1]), checksum=checksum,
                   root=root if root is not None else Path("."), faults=faults or Faults(),
                   tmp_dir=tmp_dir if tmp_dir is not None else (root or Path(".")) / TMP_DIR)

    def fits(self, block: np.ndarray) -> bool:
        return block.shape == self.chunk_shape and block.dtype == np.dtype("<f4")

    def encode(self, block: np.ndarray) -> list[Any]:
        """The chunk's bytes as pieces to write one after the other (the compressed data,
        then its CRC-32C: no copy of the data to append 4 bytes)."""
        data = self.encoder.encode(block.reshape(-1).view(np.uint8))
        if not self.checksum:
            return [data]
        import google_crc32c

        raw = data if isinstance(data, bytes) else bytes(data)
        return [raw, np.uint32(google_crc32c.value(raw)).tobytes()]

    def _path(self, index: int, chunk: int) -> str:
        key = self.array.metadata.encode_chunk_key((index, chunk) + (0,) * (self.array.ndim - 2))
        return f"{self.array.path}/{key}" if self.array.path else key

    def exists(self, index: int, chunk: int) -> bool:
        """Whether chunk (``index``, ``chunk``) has a file (True where the store is not a
        local directory: the caller then merges through zarr)."""
        from zarr.storage import LocalStore

        store = _inner_store(self.array)
        if not isinstance(store, LocalStore):
            return True
        return (Path(store.root) / self._path(index, chunk)).exists()

    def write(self, block: np.ndarray, index: int, chunk: int) -> None:
        """``block`` (one whole chunk) as chunk number ``index`` along the first axis and
        ``chunk`` along the second."""
        pieces = self.encode(block)
        path = self._path(index, chunk)
        store = _inner_store(self.array)
        from zarr.storage import LocalStore

        if isinstance(store, LocalStore):
            # what LocalStore.set does (a temporary file renamed over the chunk), here in the
            # calling thread instead of two thread hops away (the event loop, then the
            # loop's executor): those hops took as long as the encode and the write together
            write_file_atomic(Path(store.root) / path, pieces, tick=self.faults.tick,
                              tmp_dir=self.tmp_dir)
            return
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        data = b"".join(bytes(p) for p in pieces)
        sync(self.array.store_path.store.set(
            path, default_buffer_prototype().buffer.from_bytes(data)))


def _inner_store(array: Any) -> Any:
    store = array.store_path.store
    for _ in range(4):
        inner = getattr(store, "_store", None)
        if inner is None:
            return store
        store = inner
    return store


def _blosc_like(codec: Any) -> Any:
    """numcodecs' Blosc with the settings zarr's ``BloscCodec`` gives it (typesize included)."""
    import numcodecs

    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(codec.shuffle.value)]
    return numcodecs.Blosc(cname=codec.cname.name, clevel=codec.clevel, shuffle=shuffle,
                           blocksize=codec.blocksize, typesize=codec.typesize)


def put(array: Any, index: int | np.ndarray, var: xr.Variable, start: int | None, step: int,
        chunk_writer: ChunkWriter | None) -> int:
    """Write record(s) ``index`` of ``var`` (whole, or its chunk ``start:start + step`` along
    the second axis; a whole chunk through ``chunk_writer`` when there is one).  ``index`` is
    an int (one record) or an array of record positions (point stores: a block of records,
    written by zarr's read-modify-write of their chunk)."""
    if isinstance(index, np.ndarray):
        block = np.ascontiguousarray(var.values if start is None else
                                     var[:, start:start + step].values, dtype=np.float32)
        key = (index,) if start is None else (index, slice(start, start + step))
        array.oindex[key] = block
        return int(block.nbytes)
    if start is None:
        block = np.ascontiguousarray(var.values, dtype=np.float32)
        array[index:index + 1] = block
        return int(block.nbytes)
    block = np.ascontiguousarray(var[:, start:start + step].values, dtype=np.float32)
    if chunk_writer is not None and chunk_writer.fits(block):
        chunk_writer.write(block, index, start // step)
    else:  # a partial edge chunk, or codecs this writer does not encode: zarr's own write
        array[index:index + 1, start:start + step] = block
    return int(block.nbytes)


__all__ = ["ChunkWriter", "FAULT_ENV", "NEW_MARKER", "is_foreign", "write_out", "Faults", "LEAD_UNITS", "NAN_FILL_ATTR", "RECORD_UNITS",
           "TMP_DIR", "commit_template", "compressors", "coord_dataset", "coord_encoding",
           "create_data_array", "migrate_v1", "put", "recover", "root_attrs", "ticking_store",
           "write_coordinate_values"]
