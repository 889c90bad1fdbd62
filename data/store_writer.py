"""Appending records to a store: idempotent, atomic from a reader's view, crash-repairable.

Protocol, all under the store's lock (:mod:`data.lock`):

1. *recover*: delete ``*.partial`` files a killed writer left, and shrink any array whose
   metadata was extended but never committed back to the shape in the consolidated
   metadata (the committed state);
2. *stage* (:meth:`StoreWriter.plan`): every dataset is checked against the store (or the
   first dataset of the batch), duplicates across inputs are refused, records already complete
   from the same source bytes are skipped; nothing is written yet;
3. *extend the template*: resize the arrays along the record dim, write the new coordinate
   values, then commit the consolidated metadata (one atomic file replace);
4. per record (block of records): write its regions, then commit it to ``enspp_complete``
   together with the provenance of its sources (one atomic file replace).

A reader opening the consolidated metadata sees either the old or the new template, and only
records listed complete, so it never sees partial data.  A re-run repairs an interrupted run
to exactly the uninterrupted result (unfinished records are rewritten in place).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from enspp.data import provenance as prov
from enspp.data.lock import store_lock
from enspp.data.provenance import SourceFile, record_key
from enspp.data.schema import Kind, detect_kind, validate
from enspp.data.store import (
    COMPLETE_ATTR,
    KIND_ATTR,
    PROVENANCE_ATTR,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    StoreError,
    check_compatible,
    is_store,
    open_store,
    read_root_attrs,
    record_chunk,
    record_dim,
    suppress_zarr_warnings,
    to_store_layout,
)

#: ``_FillValue`` attribute xarray writes for a float NaN fill in zarr 3 (base64 of the
#: float64 NaN bytes); the template's data arrays carry it so they read back as xarray wrote them.
_NAN_FILL_ATTR = base64.standard_b64encode(np.float64(np.nan).tobytes()).decode()

#: Test hook: SIGKILL this process after this many region writes (crash-safety tests only).
FAULT_ENV = "ENSPP_FAULT_KILL_AFTER_WRITES"


def _compressor() -> Any:
    from zarr.codecs import BloscCodec

    # Blosc/LZ4 with bit shuffle: 2-3x faster than Blosc/zstd-1; on real ENS/ERA5 GRIB fields
    # bit shuffle is also 10-25% smaller and ~20% faster than byte shuffle (measured on
    # ../shared/data/gridded), which keeps an ingest near the GRIB decode itself
    # (tests/benchmarks/bench_ingest.py).
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


@dataclass(frozen=True)
class Staged:
    """One validated input: its dataset (store layout) and the sources it came from."""

    name: str
    ds: xr.Dataset
    sources: tuple[SourceFile, ...]


@dataclass(frozen=True)
class AppendResult:
    """What an append did: records added, repaired (finished after an interrupted run) or
    skipped (already complete from the same bytes), and the bytes of data written."""

    store: str
    kind: str
    added: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    bytes_written: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.repaired)

    def message(self) -> str:
        rec = record_dim(self.kind)
        if not self.changed:
            return (f"{self.store}: nothing to do, {len(self.skipped)} {rec}s already in the "
                    f"store from the same bytes (unchanged)")
        return (f"{self.store}: {len(self.added)} {rec}s added, {len(self.repaired)} repaired, "
                f"{len(self.skipped)} skipped (already in the store)")


@dataclass
class _Plan:
    kind: str
    reference: xr.Dataset | None
    reference_name: str = ""
    # record key -> [(staged, variables it provides)]
    providers: dict[str, list[tuple[Staged, list[str]]]] = field(default_factory=dict)
    values: dict[str, np.datetime64] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)


class StoreWriter:
    """Write access to one store, held under its lock; use :func:`open_writer`."""

    def __init__(self, root: Path, *, kind: Kind | None) -> None:
        self.root = root
        self._recover()
        self.exists = is_store(root)
        self.attrs: dict[str, Any] = (read_root_attrs(root) or {}) if self.exists else {}
        self.kind: str | None = str(self.attrs[KIND_ATTR]) if self.exists else kind
        if self.exists and kind is not None and kind != self.kind:
            raise StoreError(f"store {root} holds {self.kind} data; refusing to write "
                             f"{kind} data into it")
        self.template = open_store(root, complete_only=False) if self.exists else None
        self._writes = 0

    # -- recovery -----------------------------------------------------------------------
    def _recover(self) -> None:
        if not self.root.exists():
            return  # a new store: nothing to recover
        for partial in self.root.rglob("*.partial"):
            partial.unlink(missing_ok=True)
        attrs = read_root_attrs(self.root)
        if attrs is None or COMPLETE_ATTR not in attrs or KIND_ATTR not in attrs:
            # creation never finished: nothing in it was ever visible, start afresh
            for child in self.root.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            return
        import zarr

        ctx = suppress_zarr_warnings()
        try:
            committed = zarr.open_group(self.root, mode="r", use_consolidated=True)
            shapes = {k: tuple(m.shape) for k, m in
                      committed.metadata.consolidated_metadata.metadata.items()}
            actual = zarr.open_group(self.root, mode="r+", use_consolidated=False)
            for name, arr in actual.arrays():
                if name in shapes and tuple(arr.shape) != shapes[name]:
                    arr.resize(shapes[name])
        finally:
            ctx.__exit__(None, None, None)

    # -- staging ------------------------------------------------------------------------
    def is_ingested(self, source: SourceFile) -> bool:
        """True if ``source`` (same bytes) is recorded and all its records are complete."""
        if not self.exists:
            return False
        records = prov.recorded_records(self.attrs[PROVENANCE_ATTR], source.sha256)
        done = set(self.attrs[COMPLETE_ATTR])
        return records is not None and set(records) <= done

    def records_of(self, source: SourceFile) -> list[str]:
        """The records ``source`` holds according to the store's provenance (or none)."""
        if not self.exists:
            return []
        return prov.recorded_records(self.attrs[PROVENANCE_ATTR], source.sha256) or []

    def prepare(self, ds: xr.Dataset, *, name: str, sources: Sequence[SourceFile],
                allow_nan: bool = False) -> Staged:
        """Validate ``ds`` (data.schema, NaN policy) and put it in store layout; raises
        naming ``name``.  Checks against the store happen in :meth:`plan`."""
        kind = self.kind or detect_kind(ds)
        if self.kind is None:
            self.kind = kind
        got = detect_kind(ds)
        if got != kind:
            where = f"store {self.root} holds" if self.exists else "the other inputs hold"
            raise StoreError(f"{name} holds {got} data but {where} {kind} data")
        validate(ds, kind=kind, source=name, allow_nan=allow_nan)  # type: ignore[arg-type]
        if not allow_nan:
            _check_nan_lazy(ds, name=name)
        return Staged(name=name, ds=to_store_layout(ds, kind=kind),  # type: ignore[arg-type]
                      sources=tuple(sources))

    def plan(self, staged: Sequence[Staged] = ()) -> _Plan:
        """A plan holding ``staged`` (see :meth:`add`); nothing is written."""
        if self.kind is None:
            raise StoreError(f"store {self.root}: nothing to write and no kind given")
        plan = _Plan(kind=self.kind, reference=self.template)
        for item in staged:
            self.add(plan, item)
        return plan

    def add(self, plan: _Plan, item: Staged) -> None:
        """Check ``item`` against the store (or the batch's first input) and the inputs already
        in ``plan``, then add it; on error ``plan`` is unchanged and the message names ``item``
        and the store or the other input."""
        rec = record_dim(plan.kind)
        if plan.reference is not None:
            ref_name = f"store {self.root}" if self.exists else plan.reference_name
            check_compatible(plan.reference, item.ds, kind=plan.kind,  # type: ignore[arg-type]
                             ref_name=ref_name, name=item.name)
        done = set(self.attrs.get(COMPLETE_ATTR, []))
        shas = {s.sha256 for s in item.sources}
        skipped, provided = set(), {}
        for value in item.ds[rec].values:
            key = record_key(value)
            if key in done:
                recorded = prov.recorded_for(self.attrs[PROVENANCE_ATTR], key)
                if not shas & recorded:
                    raise StoreError(
                        f"{item.name}: {rec} {key} is already complete in store {self.root} "
                        f"from other bytes ({_names(self.attrs, recorded)}); refusing to "
                        f"overwrite it")
                skipped.add(key)
                continue
            for other, _ in plan.providers.get(key, []):
                raise StoreError(f"duplicate {rec} {key}: in both {other.name} and {item.name}")
            provided[key] = value
        if plan.reference is None:
            plan.reference, plan.reference_name = item.ds, item.name
        for key, value in provided.items():
            plan.providers.setdefault(key, []).append((item, list(map(str, item.ds.data_vars))))
            plan.values[key] = value
        plan.skipped |= skipped

    # -- writing ------------------------------------------------------------------------
    def write(self, plan: _Plan, *, progress: Callable[[str], None] | None = None,
              reader: str = "") -> AppendResult:
        """Extend the template, write each record's regions, commit each record."""
        import zarr

        rec = record_dim(plan.kind)
        keys = sorted(plan.providers)
        if not keys:
            return AppendResult(store=str(self.root), kind=plan.kind,
                                skipped=tuple(sorted(plan.skipped)))
        assert plan.reference is not None
        ctx = suppress_zarr_warnings()
        # every chunk is written, even an all-NaN one: no scan for "empty" chunks, and a
        # repaired record never keeps a stale chunk of an interrupted run
        cfg = zarr.config.set({"array.write_empty_chunks": True})
        cfg.__enter__()
        try:
            if not self.exists:
                self._create(plan.reference, [plan.values[k] for k in keys], reader=reader)
                repaired: tuple[str, ...] = ()
            else:
                assert self.template is not None
                existing = {record_key(v) for v in self.template[rec].values}
                new = [k for k in keys if k not in existing]
                repaired = tuple(k for k in keys if k in existing)
                if new:
                    self._extend([plan.values[k] for k in new], rec)
            group = zarr.open_group(self.root, mode="r+", use_consolidated=False)
            arrays = {str(name): group[str(name)] for name in plan.reference.data_vars}
            writers = {name: _ChunkWriter.for_array(arr) for name, arr in arrays.items()}
            index = {record_key(v): i for i, v in
                     enumerate(_decode_times(group[rec][:], group[rec].attrs))}
            nbytes = 0
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                # every record's chunks are queued at once (no idle core between records);
                # records are committed in order, each once all its chunks are written
                jobs = [self._submit_record(arrays, writers, pool, plan, k, index[k], rec)
                        for k in keys]
                try:
                    for k, record_jobs in zip(keys, jobs):
                        for job in record_jobs:
                            nbytes += job.result()
                            self._fault_point()
                        self._commit(k, [st for st, _ in plan.providers[k]], rec,
                                     reader=reader)
                        if progress is not None:
                            progress(k)
                except BaseException:
                    for record_jobs in jobs:
                        for job in record_jobs:
                            job.cancel()
                    raise
        finally:
            cfg.__exit__(None, None, None)
            ctx.__exit__(None, None, None)
        return AppendResult(store=str(self.root), kind=plan.kind,
                            added=tuple(k for k in keys if k not in repaired),
                            repaired=repaired, skipped=tuple(sorted(plan.skipped)),
                            bytes_written=nbytes)

    def _create(self, reference: xr.Dataset, values: list[np.datetime64], *, reader: str) -> None:
        """Write the empty template: coordinates through xarray (its CF time encoding), the
        data arrays straight through zarr (no dask graph: 2-4x faster), then the enspp
        attributes that make it a store."""
        import zarr

        rec = record_dim(str(self.kind))
        per_chunk = record_chunk(reference)
        coords = {k: v for k, v in reference.coords.items() if rec not in v.dims}
        coords[rec] = np.array(values, dtype="datetime64[ns]")
        encoding: dict[str, dict[str, Any]] = {
            rec: {"units": "seconds since 1970-01-01", "dtype": "int64", "chunks": (4096,)}}
        xr.Dataset(coords=coords).to_zarr(self.root, mode="w", compute=True, consolidated=False,
                                           zarr_format=3, encoding=encoding)
        group = zarr.open_group(self.root, mode="r+", use_consolidated=False)
        for name, var in reference.data_vars.items():
            chunks = tuple(per_chunk if d == rec else 1 if d == "lead_time" else var.sizes[d]
                           for d in var.dims)
            shape = tuple(len(values) if d == rec else var.sizes[d] for d in var.dims)
            group.create_array(str(name), shape=shape, chunks=chunks, dtype=np.float32,
                               compressors=[_compressor()], fill_value=np.float32(np.nan),
                               dimension_names=tuple(map(str, var.dims)),
                               attributes={**var.attrs, "_FillValue": _NAN_FILL_ATTR})
        zarr.consolidate_metadata(self.root)
        # the enspp attributes last: until they are there, a re-run starts the store afresh
        self._set_attrs({KIND_ATTR: self.kind, SCHEMA_ATTR: SCHEMA_VERSION,
                         PROVENANCE_ATTR: prov.new_provenance(reader=reader), COMPLETE_ATTR: []})
        self.exists = True
        self.attrs = read_root_attrs(self.root) or {}

    def _extend(self, values: list[np.datetime64], rec: str) -> None:
        import zarr

        group = zarr.open_group(self.root, mode="r+", use_consolidated=False)
        n_old = group[rec].shape[0]
        n_new = n_old + len(values)
        for _, arr in group.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims and dims[0] == rec:
                arr.resize((n_new, *arr.shape[1:]))
        seconds = (np.array(values, dtype="datetime64[s]")
                   - np.datetime64(0, "s")).astype(np.int64)
        group[rec][n_old:n_new] = seconds
        self._fault_point()
        zarr.consolidate_metadata(self.root)  # commit the new template in one file replace

    def _submit_record(self, arrays: dict[str, Any], writers: dict[str, _ChunkWriter | None],
                       pool: ThreadPoolExecutor, plan: _Plan, key: str, index: int, rec: str
                       ) -> list[Future[int]]:
        """Queue the writes of record ``key`` (at ``index``), one job per store chunk: lazily
        decoded inputs are decoded in the pool's threads, chunk by chunk."""
        jobs = []
        for staged, names in plan.providers[key]:
            position = int(np.flatnonzero(staged.ds[rec].values == plan.values[key])[0])
            sub = staged.ds.isel({rec: slice(position, position + 1)})  # a view, no copy
            for name in names:
                array, var = arrays[name], sub[name].variable
                step = array.chunks[1] if var.ndim > 1 else 0
                starts = range(0, var.shape[1], step) if 0 < step < var.shape[1] else [None]
                jobs.extend(pool.submit(_put, array, index, var, start, step, writers[name])
                            for start in starts)
        return jobs

    def _commit(self, key: str, staged: list[Staged], rec: str, *, reader: str) -> None:
        """Mark ``key`` complete and record its sources, in one atomic root-file replace."""
        done = sorted(set(self.attrs[COMPLETE_ATTR]) | {key})
        holders = [(src, [record_key(v) for v in st.ds[rec].values])
                   for st in staged for src in st.sources]
        provenance = prov.with_sources(self.attrs[PROVENANCE_ATTR], holders, reader=reader)
        self._set_attrs({COMPLETE_ATTR: done, PROVENANCE_ATTR: provenance})

    def _set_attrs(self, update: dict[str, Any]) -> None:
        import zarr

        group = zarr.open_group(self.root, mode="r+", use_consolidated=True)
        group.attrs.update(update)  # rewrites the root zarr.json (with consolidated metadata)
        self.attrs = {**self.attrs, **update}

    def _fault_point(self) -> None:
        self._writes += 1
        limit = os.environ.get(FAULT_ENV)
        if limit and self._writes >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)


def _put(array: Any, index: int, var: xr.Variable, start: int | None, step: int,
         chunk_writer: _ChunkWriter | None) -> int:
    """Write record ``index`` of ``var`` (whole, or its chunk ``start:start + step`` along the
    second axis; a whole chunk through ``chunk_writer`` when there is one)."""
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


class _ChunkWriter:
    """Writes whole chunks of one zarr array whose codecs are the store's own (little-endian
    bytes + Blosc) and whose chunks are one record by one step of the second axis by all the
    rest: each chunk is encoded here and handed to the zarr store.

    Why: zarr's ``Array.__setitem__`` spends as long again as the encode itself on a full
    5-MB chunk (selection planning, an extra copy, hops between its event loop and worker
    threads); this is the same encode (numcodecs' Blosc configured exactly as zarr's
    ``BloscCodec`` configures it, so the stored bytes are identical, which the tests check)
    and the same ``store.set``.  The ingest is the store's only writer (it holds the lock),
    so a whole-chunk write without read-modify-write is what zarr would do too."""

    def __init__(self, array: Any, encoder: Any) -> None:
        self.array, self.encoder = array, encoder
        self.chunk_shape = (1, array.chunks[1], *array.shape[2:])

    @classmethod
    def for_array(cls, array: Any) -> _ChunkWriter | None:
        """A writer for ``array``, or None when its codecs or chunks are not the above."""
        from zarr.codecs import BloscCodec, BytesCodec

        codecs = getattr(array.metadata, "codecs", ())
        if (len(codecs) != 2 or not isinstance(codecs[0], BytesCodec)
                or not isinstance(codecs[1], BloscCodec)
                or str(getattr(codecs[0].endian, "value", codecs[0].endian)) != "little"
                or np.dtype(array.dtype) != np.dtype("<f4") or len(array.shape) < 2
                or array.chunks[0] != 1 or tuple(array.chunks[2:]) != tuple(array.shape[2:])):
            return None
        return cls(array, _blosc_like(codecs[1]))

    def fits(self, block: np.ndarray) -> bool:
        return block.shape == self.chunk_shape and block.dtype == np.dtype("<f4")

    def write(self, block: np.ndarray, index: int, chunk: int) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync
        from zarr.storage import LocalStore

        data = self.encoder.encode(block.reshape(-1).view(np.uint8))
        key = self.array.metadata.encode_chunk_key((index, chunk) + (0,) * (block.ndim - 2))
        path = f"{self.array.path}/{key}" if self.array.path else key
        store = self.array.store_path.store
        if isinstance(store, LocalStore):
            # what LocalStore.set does (a temporary file renamed over the chunk), here in the
            # calling thread instead of two thread hops away (the event loop, then the
            # loop's executor): those hops took as long as the encode and the write together
            _write_file_atomic(Path(store.root) / path, data)
            return
        buffer = default_buffer_prototype().buffer.from_bytes(data)
        sync(store.set(path, buffer))


def _write_file_atomic(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory: a reader (or
    a crash) sees the old chunk or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(memoryview(data))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _blosc_like(codec: Any) -> Any:
    """numcodecs' Blosc with the settings zarr's ``BloscCodec`` gives it (typesize included)."""
    import numcodecs

    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(codec.shuffle.value)]
    return numcodecs.Blosc(cname=codec.cname.name, clevel=codec.clevel, shuffle=shuffle,
                           blocksize=codec.blocksize, typesize=codec.typesize)


def _decode_times(raw: np.ndarray, attrs: Any) -> np.ndarray:
    units = str(attrs.get("units", ""))
    if units != "seconds since 1970-01-01":
        raise StoreError(f"record coordinate has units {units!r}; expected "
                         f"'seconds since 1970-01-01'")
    return (np.datetime64(0, "s") + raw.astype("timedelta64[s]")).astype("datetime64[ns]")


def _names(attrs: dict[str, Any], shas: set[str]) -> str:
    names = [s.get("name", s["sha256"][:12]) for s in attrs[PROVENANCE_ATTR].get("sources", [])
             if s["sha256"] in shas]
    return ", ".join(names) or "unrecorded source"


def _check_nan_lazy(ds: xr.Dataset, *, name: str) -> None:
    """The NaN policy for dask-backed data (data.schema checks numpy-backed data itself)."""
    from enspp.data.schema import SchemaError, _is_dask

    for v, da_ in ds.data_vars.items():
        if _is_dask(da_) and bool(da_.isnull().any().compute()):
            raise SchemaError(f"{name}: variable {v!r} holds NaN values")


@contextmanager
def open_writer(store: str | os.PathLike[str], *, kind: Kind | None = None,
                lock_timeout: float | None = 300.0,
                on_wait: Callable[[str], None] | None = None) -> Iterator[StoreWriter]:
    """Lock ``store`` (the lock file lies beside it), recover it, and yield a
    :class:`StoreWriter`; the store itself is created by the first write."""
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise StoreError(f"store path {root} exists and is not a directory")
    with store_lock(root, timeout=lock_timeout, on_wait=on_wait):
        yield StoreWriter(root, kind=kind)


def append(store_path: str | os.PathLike[str], ds: xr.Dataset, *,
           sources: Sequence[str | os.PathLike[str] | SourceFile] = (),
           kind: Kind | None = None, allow_nan: bool = False,
           lock_timeout: float | None = 300.0) -> AppendResult:
    """Append the records of ``ds`` to the store (created if missing).

    ``sources``: the files ``ds`` was read from (checksummed into the provenance; an empty
    list records the checksum of ``ds`` itself).  Idempotent: records already complete from
    the same bytes are skipped and the store is not touched.  ``ds`` is validated
    (``data.schema.validate``, NaN is an error unless ``allow_nan``) and checked against the
    store before anything is written; a mismatch raises naming both sides.
    """
    srcs = tuple(s if isinstance(s, SourceFile) else prov.source_file(s) for s in sources)
    if not srcs:
        srcs = (prov.dataset_source(ds),)
    name = ", ".join(s.name for s in srcs)
    with open_writer(store_path, kind=kind, lock_timeout=lock_timeout) as writer:
        staged = writer.prepare(ds, name=name, sources=srcs, allow_nan=allow_nan)
        plan = writer.plan([staged])
        return writer.write(plan, reader=reader_version())


def reader_version() -> str:
    """The reader identity recorded in provenance (``data.readers`` version if it has one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("enspp")
    except PackageNotFoundError:  # source tree
        pkg = "source"
    try:
        from enspp.data import readers

        own = getattr(readers, "READER_VERSION", None) or getattr(readers, "__version__", None)
    except ImportError:
        own = None
    return f"enspp {pkg} data.readers {own or pkg}"
