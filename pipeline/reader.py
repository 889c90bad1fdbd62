"""Reading samples from the stores straight into batch buffers.

The reader is planned once, in the process that builds it: where every input channel and
target lives (the variable's array, and the fixed position of its lead time, level and any
other dim), and the store position of every init time and valid time.  Reading a batch then
needs no xarray: each chunk the batch touches is decoded once (:mod:`enspp.pipeline.chunks`,
several chunks at a time in a small thread pool: LZ4/zstd decoding releases the GIL) and
every channel, member and patch that lives in it is copied out into the caller's buffers.
Member subsetting and patches happen after the decode.  A store this reader cannot decode
chunk by chunk (an in-memory dataset, another Zarr layout) is read through xarray one
``(record, lead, level)`` block at a time, the same way; batches are identical.

Each process has its own handles, thread pool and decoded-chunk cache (the reader pickles
without them, so DataLoader workers open their own).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enspp.data.errors import EnsppError
from enspp.data.schema import (
    INIT_TIME,
    LATITUDE,
    LEAD_TIME,
    LEVEL,
    LONGITUDE,
    MEMBER,
    STATION,
    TIME,
    select_variable,
    spatial_dims,
    split_level_name,
)
from enspp.pipeline.align import StoreLike, open_dataset, regrid_like, source_path
from enspp.pipeline.chunks import ChunkCache, Selection, ZarrChunks, chunk_pieces, copy_piece

Region = dict[str, slice]


class MissingTimeError(EnsppError):
    """An init time or valid time asked for is not in the store."""


@dataclass
class SampleRead:
    """One sample to read: its times, members (0-based numbers), region (``{}`` for every
    grid point or station) and the buffers to fill: ``inputs`` ``[K, C, *spatial]`` and
    ``target`` ``[T, *spatial]`` (views into a batch are fine)."""

    init_time: np.datetime64
    valid_time: np.datetime64
    members: np.ndarray
    region: Region
    inputs: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class _Field:
    """Where a channel or target lives: source ``source`` with every dim that is neither the
    record, the member nor spatial held at a fixed position."""

    source: int
    fixed: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class _Times:
    """Store positions of record times (the raw store order, incomplete records included)."""

    values: np.ndarray  # sorted datetime64[ns]
    positions: np.ndarray

    @classmethod
    def of(cls, times: np.ndarray) -> _Times:
        t = np.asarray(times, dtype="datetime64[ns]")
        order = np.argsort(t, kind="stable")
        return cls(t[order], order.astype(np.int64))

    def position(self, t: np.datetime64, what: str) -> int:
        t = np.datetime64(t, "ns")
        i = int(np.searchsorted(self.values, t))
        if i >= len(self.values) or self.values[i] != t:
            raise MissingTimeError(f"{what} {t} is not in the store")
        return int(self.positions[i])


class _Source:
    """One variable's array, read in units: a Zarr chunk (:class:`ZarrChunks`), or for an
    xarray-read array the block at one position of every non-member, non-spatial dim."""

    def __init__(self, *, sid: int, dims: tuple[str, ...], record: str,
                 chunks: ZarrChunks | None, path: str | None, name: str,
                 dataset: Any | None = None):
        self.sid, self.dims, self.record, self.name = sid, dims, record, name
        self.chunks, self.path, self.dataset = chunks, path, dataset
        self._da: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_da"] = None
        if self.path is not None:
            state["dataset"] = None  # reopened from the path where needed
        return state

    def pieces(self, selection: tuple[Selection, ...]):
        """``(key, unit shape, index into the unit, index into the result)`` per unit."""
        if self.chunks is not None:
            for coords, src, dst in chunk_pieces(self.chunks.shape, self.chunks.chunks, selection):
                yield (self.sid, coords), self.chunks.chunks, src, dst
            return
        da = self._array()
        ints = tuple((d, int(s)) for d, s in zip(self.dims, selection)
                     if isinstance(s, (int, np.integer)))
        src = tuple(s for s in selection if not isinstance(s, (int, np.integer)))
        shape = tuple(n for n, s in zip(da.shape, selection)
                      if not isinstance(s, (int, np.integer)))
        yield (self.sid, ints), shape, src, tuple(slice(None) for _ in src)

    def decode(self, key: tuple, out: np.ndarray) -> None:
        if self.chunks is not None:
            self.chunks.decode(key[1], out)
            return
        where = dict(key[1])
        block = self._array().isel(where)
        out[...] = np.asarray(block.transpose(*[d for d in self.dims if d not in where]).values)

    @property
    def dtype(self) -> np.dtype:
        return self.chunks.dtype if self.chunks is not None else np.dtype(np.float32)

    def _array(self):
        if self._da is None:
            ds = self.dataset
            if ds is None:
                import xarray as xr

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = xr.open_zarr(self.path, chunks=None)
            self._da = ds[self.name].transpose(*self.dims)
        return self._da


class StoreReader:
    """Reads input blocks ``[K, C, *spatial]`` and target blocks ``[T, *spatial]``.

    ``threads``: decoding threads per process (chunks of a batch are decoded concurrently).
    ``cache_mb``: MiB of decoded chunks kept for good per process (0: only the working set
    of the most recent chunks, so the memory of an epoch does not grow with the store).
    """

    def __init__(self, forecast: StoreLike, analysis: StoreLike, *, variables: Sequence[str],
                 leads_h: Sequence[int], targets: Sequence[str], regrid: str | None = None,
                 forecast_ds: Any | None = None, analysis_ds: Any | None = None,
                 cache_mb: float = 0, threads: int = 1):
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        fc = forecast_ds if forecast_ds is not None else open_dataset(forecast)
        an = analysis_ds if analysis_ds is not None else open_dataset(analysis)
        self.variables = tuple(variables)
        self.leads = tuple(np.timedelta64(int(h), "h").astype("timedelta64[ns]") for h in leads_h)
        self.targets = tuple(targets)
        self.regrid = regrid
        self.spatial = spatial_dims(fc)
        self.latitude = fc[LATITUDE].values if self.spatial != (STATION,) else None
        self.longitude = fc[LONGITUDE].values if self.spatial != (STATION,) else None
        self.sizes = {d: int(fc.sizes[d]) for d in self.spatial}
        self.cache_mb, self.threads = cache_mb, int(threads)
        self._sources: list[_Source] = []
        raw_fc, fc_path = _raw(fc, source_path(fc, forecast))
        raw_an, an_path = _raw(an, source_path(an, analysis))
        self._members = raw_fc[MEMBER].values.astype(np.int64)
        self._init_times = _Times.of(raw_fc[INIT_TIME].values)
        self._times = _Times.of(raw_an[TIME].values)
        leads = raw_fc[LEAD_TIME].values.astype("timedelta64[ns]")
        self._inputs: list[_Field] = []  # channel order: per lead, the variables
        for lead in self.leads:
            hits = np.flatnonzero(leads == lead)
            if not len(hits):
                raise MissingTimeError(f"lead time {lead} is not in the forecast store")
            for v in self.variables:
                self._inputs.append(self._field(raw_fc, fc_path, v, INIT_TIME,
                                                {LEAD_TIME: int(hits[0])}))
        self._targets = [self._field(raw_an, an_path, t, TIME, {}) for t in self.targets]
        # the regridding path needs the analysis dataset itself in every process
        self._an_ds = an if regrid is not None else None
        self._pid: int | None = None
        self._h: dict[str, Any] = {}

    # ---- planning (in the process that builds the reader) -------------------------------
    def _field(self, ds: Any, path: str | None, name: str, record: str,
               fixed: dict[str, int]) -> _Field:
        select_variable(ds, name)  # the user-facing error when the variable is missing
        if name in ds.data_vars:
            raw, level = name, None
        else:
            raw, level = split_level_name(name)
        da = ds[raw]
        dims = tuple(str(d) for d in da.dims)
        fixed = dict(fixed)
        if LEVEL in dims:
            levels = da[LEVEL].values
            if level is None and len(levels) != 1:
                raise EnsppError(f"variable {name!r} has {len(levels)} levels; address one as "
                                 f"{raw}<hPa> (levels: {sorted(int(x) for x in levels)})")
            fixed[LEVEL] = 0 if level is None else int(np.flatnonzero(levels == level)[0])
        for d in dims:  # an analysis ensemble (a member dim in the analysis): the control
            if d not in (record, MEMBER, LEVEL, LEAD_TIME, *self.spatial) or \
                    (d == MEMBER and record == TIME):
                fixed.setdefault(d, 0)
        sid = next((s.sid for s in self._sources if s.name == raw and s.record == record), None)
        if sid is None:
            sid = len(self._sources)
            chunks = _fast_chunks(da, path, raw)
            self._sources.append(_Source(sid=sid, dims=dims, record=record, chunks=chunks,
                                         path=path if chunks is None else None, name=raw,
                                         dataset=ds if path is None else None))
        return _Field(sid, tuple(sorted(fixed.items())))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pid"], state["_h"] = None, {}
        return state

    # ---- per-process handles ------------------------------------------------------------
    def _handles(self) -> dict[str, Any]:
        if self._pid == os.getpid():
            return self._h
        units = len({(f.source, f.fixed) for f in (*self._inputs, *self._targets)})
        self._h = {
            # decoding always runs in pool threads, where numcodecs' Blosc decodes on exactly
            # one core each (in a main thread it would start threads of its own)
            "pool": ThreadPoolExecutor(self.threads, thread_name_prefix="enspp-read"),
            # the working set holds one sample's chunks (its tiles and patches share them)
            # plus those in flight
            "cache": ChunkCache(keep_bytes=int(self.cache_mb * 2**20),
                                recent=units + self.threads),
        }
        self._pid = os.getpid()
        return self._h

    @property
    def strategies(self) -> dict[str, str]:
        """How each store variable is read: ``chunks`` (decoded straight from its files) or
        ``xarray`` (an in-memory dataset, or a layout :class:`ZarrChunks` does not decode);
        keys ``forecast:<name>`` / ``analysis:<name>``."""
        return {f"{'forecast' if s.record == INIT_TIME else 'analysis'}:{s.name}":
                "chunks" if s.chunks is not None else "xarray" for s in self._sources}

    @property
    def cache(self) -> ChunkCache:
        """This process's decoded-chunk cache."""
        return self._handles()["cache"]

    def members(self) -> np.ndarray:
        """The member numbers in the store, in store order."""
        return self._members

    # ---- reading ------------------------------------------------------------------------
    def read(self, samples: Sequence[SampleRead]) -> None:
        """Fill every sample's ``inputs`` and ``target`` buffers, decoding each chunk the
        samples touch once."""
        units: dict[tuple, list] = {}
        for s in samples:
            ip = self._init_times.position(s.init_time, "init time")
            mpos = self._member_positions(s.members)
            for c, f in enumerate(self._inputs):
                self._plan(units, f, ip, mpos, s.region, s.inputs[:, c], (MEMBER, *self.spatial))
            if self.regrid is None:
                tp = self._times.position(s.valid_time, "analysis time")
                for t, f in enumerate(self._targets):
                    self._plan(units, f, tp, None, s.region, s.target[t], self.spatial)
        self._run(units)
        if self.regrid is not None:
            for s in samples:
                s.target[...] = self._regridded(s.valid_time, s.region)

    def read_inputs(self, init_time: np.datetime64, *, members: np.ndarray,
                    region: Region) -> np.ndarray:
        """``[K, C, *spatial]`` float32 for the given member numbers (0-based) and region
        (``{"latitude": slice, "longitude": slice}``; ``{}``: every grid point/station)."""
        out = np.empty((len(members), len(self._inputs), *self._shape(region)), np.float32)
        units: dict[tuple, list] = {}
        ip = self._init_times.position(init_time, "init time")
        mpos = self._member_positions(members)
        for c, f in enumerate(self._inputs):
            self._plan(units, f, ip, mpos, region, out[:, c], (MEMBER, *self.spatial))
        self._run(units)
        return out

    def read_targets(self, valid_time: np.datetime64, *, region: Region) -> np.ndarray:
        """``[T, *spatial]`` float32: the analyses at ``valid_time`` (regridded if asked)."""
        if self.regrid is not None:
            return self._regridded(valid_time, region)
        out = np.empty((len(self._targets), *self._shape(region)), np.float32)
        units: dict[tuple, list] = {}
        tp = self._times.position(valid_time, "analysis time")
        for t, f in enumerate(self._targets):
            self._plan(units, f, tp, None, region, out[t], self.spatial)
        self._run(units)
        return out

    def _shape(self, region: Region) -> tuple[int, ...]:
        return tuple(len(range(*region.get(d, slice(None)).indices(n)))
                     for d, n in self.sizes.items())

    def _member_positions(self, members: np.ndarray) -> np.ndarray:
        members = np.asarray(members, dtype=np.int64)
        store = self._members
        pos = np.searchsorted(store, members) if _sorted(store) else \
            np.array([int(np.flatnonzero(store == m)[0]) if (store == m).any() else len(store)
                      for m in members], dtype=np.int64)
        bad = (pos >= len(store)) | (store[np.minimum(pos, len(store) - 1)] != members)
        if bad.any():
            raise EnsppError(f"members {members[bad].tolist()} are not in the forecast store "
                             f"(members {store.tolist()})")
        return pos

    def _plan(self, units: dict[tuple, list], field: _Field, record: int,
              members: np.ndarray | None, region: Region, out: np.ndarray,
              out_dims: tuple[str, ...]) -> None:
        """Add the copies that fill ``out`` (dims ``out_dims``) from ``field`` to ``units``."""
        src = self._sources[field.source]
        fixed = dict(field.fixed)
        selection: list[Selection] = []
        for d in src.dims:
            if d == src.record:
                selection.append(record)
            elif d in fixed:
                selection.append(fixed[d])
            elif d == MEMBER:
                selection.append(_run_or_array(members))
            else:
                selection.append(region.get(d, slice(None)))
        kept = [d for d in src.dims if d == MEMBER and members is not None
                or d in self.spatial and d not in fixed]
        view = out.transpose([out_dims.index(d) for d in kept])
        for key, shape, s_idx, d_idx in src.pieces(tuple(selection)):
            entry = units.get(key)
            if entry is None:
                entry = units[key] = [src, shape, []]
            entry[2].append((s_idx, view, d_idx))

    def _run(self, units: dict[tuple, list]) -> None:
        h = self._handles()
        cache: ChunkCache = h["cache"]

        def run(item: tuple[tuple, list]) -> None:
            key, (src, shape, copies) = item
            block = cache.acquire(key, tuple(shape), src.dtype,
                                  lambda out: src.decode(key, out))
            try:
                for s_idx, view, d_idx in copies:
                    copy_piece(view, d_idx, block, s_idx)
            finally:
                cache.release(key)

        for _ in h["pool"].map(run, units.items()):
            pass

    def _regridded(self, valid_time: np.datetime64, region: Region) -> np.ndarray:
        """``[T, *spatial]`` analyses at ``valid_time`` interpolated onto the forecast grid."""
        an = self._an_ds
        out = []
        lat = self.latitude[region.get(LATITUDE, slice(None))]
        lon = self.longitude[region.get(LONGITUDE, slice(None))]
        for t in self.targets:
            da = select_variable(an, t)
            extra = [d for d in da.dims if d not in (TIME, *spatial_dims(an))]
            if extra:
                da = da.isel({d: 0 for d in extra})
            field = da.sel({TIME: np.datetime64(valid_time, "ns")}).load()
            out.append(np.asarray(regrid_like(field, latitude=lat, longitude=lon,
                                              method=str(self.regrid)).values, dtype=np.float32))
        return np.stack(out)


def _run_or_array(members: np.ndarray | None) -> Selection:
    if members is None:
        return 0
    if len(members) and np.array_equal(members, np.arange(members[0], members[0] + len(members))):
        return slice(int(members[0]), int(members[0]) + len(members))
    return members


def _raw(ds: Any, path: str | None) -> tuple[Any, str | None]:
    """The store as written (every record, in store order, lazily indexed without dask) and
    its path; an in-memory dataset (or one that cannot be reopened) as it is, without a path."""
    if path is None or not Path(path).is_dir():
        return ds, None
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return xr.open_zarr(path, chunks=None), path
        except (OSError, ValueError, KeyError, TypeError):
            return ds, None


def _fast_chunks(da: Any, path: str | None, name: str) -> ZarrChunks | None:
    """The array's chunks read directly when its stored values are what xarray would show:
    float data, NaN (or no) fill value, no scale/offset; None otherwise."""
    if path is None:
        return None
    enc = da.encoding
    fill = enc.get("_FillValue", np.nan)
    if ("scale_factor" in enc or "add_offset" in enc or da.dtype.kind != "f"
            or (fill is not None and not np.isnan(fill))):
        return None
    chunks = ZarrChunks.open(Path(path) / name)
    if chunks is None or chunks.dims != tuple(str(d) for d in da.dims) \
            or chunks.shape != tuple(da.shape) or chunks.dtype != np.dtype(da.dtype):
        return None
    return chunks


def _sorted(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1]))

