"""Reading one sample's chunks from the stores: one init time (all members) per read, each
process with its own store handles (worker-safe), no dask graph on the hot path."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

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

Region = dict[str, slice]


def _fast_handle(ds: xr.Dataset, path: str | None, needed: Sequence[str]) -> xr.Dataset:
    """The store reopened without dask (lazily indexed zarr arrays: an ``isel`` reads just the
    chunks it touches, with no graph to build); ``ds`` itself when it cannot be reopened."""
    if path is None or not Path(path).is_dir():
        return ds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast = xr.open_zarr(path, chunks=None)
        except (OSError, ValueError, KeyError, TypeError):
            return ds
    for name in needed:
        try:
            select_variable(fast, name)
        except KeyError:
            return ds
    return fast


class _RawVar:
    """A variable read straight through zarr (no xarray, no dask on the hot path): the zarr
    array and the position of each canonical dim, with the level fixed."""

    def __init__(self, array, dims: tuple[str, ...], level_pos: int | None):
        self.array, self.dims, self.level_pos = array, dims, level_pos

    def read(self, sel: dict[str, int | slice], out_dims: tuple[str, ...]) -> np.ndarray:
        key = tuple(self.level_pos if d == LEVEL else sel.get(d, slice(None)) for d in self.dims)
        block = np.asarray(self.array[key])
        kept = [d for d in self.dims if not isinstance(self.level_pos if d == LEVEL
                                                       else sel.get(d, slice(None)), int)]
        return block.transpose([kept.index(d) for d in out_dims])


def _raw_vars(ds: xr.Dataset, path: str | None, names: Sequence[str]) -> list[_RawVar] | None:
    """Raw zarr access for ``names`` when the store is plain float data (no scale/offset, NaN
    fill); None when any variable needs xarray's decoding."""
    if path is None or not Path(path).is_dir():
        return None
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    out = []
    for name in names:
        if name in ds.data_vars:
            raw, level = name, None
        else:
            raw, level = split_level_name(name)
            if raw not in ds.data_vars:
                return None
        da = ds[raw]
        enc = da.encoding
        fill = enc.get("_FillValue", np.nan)
        if ("scale_factor" in enc or "add_offset" in enc or da.dtype.kind != "f"
                or (fill is not None and not np.isnan(fill)) or raw not in group):
            return None
        level_pos = None
        if LEVEL in da.dims:
            levels = da[LEVEL].values
            if level is None:
                if len(levels) != 1:
                    return None
                level_pos = 0
            else:
                level_pos = int(np.flatnonzero(levels == level)[0])
        out.append(_RawVar(group[raw], tuple(str(d) for d in da.dims), level_pos))
    return out


class BlockCache:
    """Whole blocks kept in memory once read, while they fit ``limit_bytes`` (per process).

    Nothing is evicted: a training epoch visits every sample once, so a least-recently-used
    policy would evict each block just before it is needed again; the first blocks that fit
    stay.  Once a block did not fit the cache is ``full``: :meth:`get` then answers None for
    blocks it does not hold, and the caller reads just the part it needs, as without a cache.
    Blocks are read-only.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = int(limit_bytes)
        self.used = 0
        self.full = False
        self.hits = self.misses = 0
        self._blocks: dict[tuple, np.ndarray] = {}

    def get(self, key: tuple, read: Callable[[], np.ndarray]) -> np.ndarray | None:
        """The block ``key``, read with ``read()`` and kept if it fits; None when it is not
        held and the cache is full."""
        block = self._blocks.get(key)
        if block is not None:
            self.hits += 1
            return block
        if self.full:
            return None
        self.misses += 1
        block = read()
        if self.used + block.nbytes > self.limit:
            self.full = True
            return block
        block.flags.writeable = False
        self._blocks[key] = block
        self.used += block.nbytes
        return block


class StoreReader:
    """Reads input blocks ``[K, C, h, w]`` and target blocks ``[T, h, w]`` for one sample.

    Holds the store paths (or, for in-memory datasets, the datasets) and opens its own
    handles lazily in each process, so DataLoader workers never share handles or dask graphs.
    """

    def __init__(self, forecast: StoreLike, analysis: StoreLike, *, variables: Sequence[str],
                 leads_h: Sequence[int], targets: Sequence[str], regrid: str | None = None,
                 forecast_ds: xr.Dataset | None = None, analysis_ds: xr.Dataset | None = None,
                 cache_mb: float = 0):
        fc = forecast_ds if forecast_ds is not None else open_dataset(forecast)
        an = analysis_ds if analysis_ds is not None else open_dataset(analysis)
        self._fc_path = source_path(fc, forecast)
        self._an_path = source_path(an, analysis)
        # each process reopens the store from its path without dask; the lazy dataset itself
        # is the fallback (in-memory data, or a layout plain Zarr cannot open)
        self._fc_ds, self._an_ds = fc, an
        self.variables = tuple(variables)
        self.leads = tuple(np.timedelta64(int(h), "h").astype("timedelta64[ns]") for h in leads_h)
        self.targets = tuple(targets)
        self.regrid = regrid
        self.spatial = spatial_dims(fc)
        self.latitude = fc[LATITUDE].values if self.spatial != (STATION,) else None
        self.longitude = fc[LONGITUDE].values if self.spatial != (STATION,) else None
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_mb = cache_mb
        self._pid: int | None = None
        self._h: dict[str, object] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pid"], state["_h"] = None, {}
        return state

    @property
    def cache(self) -> BlockCache | None:
        """This process's block cache (None when ``cache_mb`` is 0), made with its handles:
        whole forecast blocks (one init, lead and variable, every member, the whole grid)
        and whole analysis fields (not regridded ones)."""
        return self._handles()["cache"]  # type: ignore[return-value]

    def _handles(self) -> dict[str, object]:
        if self._pid == os.getpid():
            return self._h
        fc = _fast_handle(self._fc_ds, self._fc_path, self.variables)
        an = _fast_handle(self._an_ds, self._an_path, self.targets)
        fc_vars = [select_variable(fc, v).transpose(INIT_TIME, LEAD_TIME, MEMBER, *self.spatial)
                   for v in self.variables]
        an_vars = []
        for t in self.targets:
            da = select_variable(an, t)
            extra = [d for d in da.dims if d not in (TIME, *spatial_dims(an))]
            if extra:  # an analysis ensemble: its first member (control) verifies
                da = da.isel({d: 0 for d in extra})
            an_vars.append(da.transpose(TIME, *spatial_dims(an)))
        lead_index = pd.Index(fc[LEAD_TIME].values.astype("timedelta64[ns]"))
        raw_fc = _raw_vars(fc, self._fc_path, self.variables) if fc is not self._fc_ds else None
        raw_an = _raw_vars(an, self._an_path, self.targets) if an is not self._an_ds else None
        if raw_an is not None and any(not set(r.dims) <= {TIME, LEVEL, *spatial_dims(an)}
                                      for r in raw_an):
            raw_an = None
        self._h = {
            "raw_fc": raw_fc, "raw_an": raw_an,
            "fc": fc_vars, "an": an_vars, "an_ds": an,
            "init_index": pd.Index(fc[INIT_TIME].values.astype("datetime64[ns]")),
            "time_index": pd.Index(an[TIME].values.astype("datetime64[ns]")),
            "lead_pos": [int(lead_index.get_loc(lead)) for lead in self.leads],
            "members": fc[MEMBER].values.astype(np.int64),
            "cache": BlockCache(int(self.cache_mb * 2**20)) if self.cache_mb else None,
        }
        self._pid = os.getpid()
        return self._h

    def members(self) -> np.ndarray:
        """The member numbers in the store, in store order."""
        return self._handles()["members"]  # type: ignore[return-value]

    def read_inputs(self, init_time: np.datetime64, *, members: np.ndarray,
                    region: Region) -> np.ndarray:
        """``[K, C, *spatial]`` float32 for the given member numbers (0-based) and region
        (``{"latitude": slice, "longitude": slice}``; ``{}`` for stations: all of them)."""
        h = self._handles()
        ip = int(h["init_index"].get_loc(np.datetime64(init_time, "ns")))
        store_members: np.ndarray = h["members"]  # type: ignore[assignment]
        pos = np.searchsorted(store_members, members) if _sorted(store_members) else \
            np.array([int(np.nonzero(store_members == m)[0][0]) for m in members])
        contiguous = len(pos) > 0 and np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos)))
        msel = slice(int(pos[0]), int(pos[-1]) + 1) if contiguous else slice(None)
        cache: BlockCache | None = h["cache"]  # type: ignore[assignment]
        where = tuple(region.get(d, slice(None)) for d in self.spatial)
        blocks = []
        for lp in h["lead_pos"]:
            for j in range(len(h["fc"])):
                whole = None if cache is None else cache.get(
                    ("fc", ip, lp, j), lambda lp=lp, j=j: self._forecast_block(h, ip, lp, j, slice(None), {}))
                if whole is not None:
                    blocks.append(whole[(pos, *where)])
                    continue
                block = self._forecast_block(h, ip, lp, j, msel, region)
                blocks.append(block if contiguous else block[pos])
        return np.stack(blocks, axis=1)

    def _forecast_block(self, h: dict, ip: int, lp: int, j: int, msel: slice,
                        region: Region) -> np.ndarray:
        """``[members in msel, *region]`` float32 of variable ``j`` at init ``ip``, lead ``lp``."""
        raw = h["raw_fc"]
        if raw is not None:
            return raw[j].read({INIT_TIME: ip, LEAD_TIME: lp, MEMBER: msel, **region},
                               (MEMBER, *self.spatial)).astype(np.float32, copy=False)
        return np.asarray(h["fc"][j].isel({INIT_TIME: ip, LEAD_TIME: lp, MEMBER: msel,
                                           **region}).values, dtype=np.float32)

    def read_targets(self, valid_time: np.datetime64, *, region: Region) -> np.ndarray:
        """``[T, *spatial]`` float32: the analyses at ``valid_time`` (regridded if asked)."""
        h = self._handles()
        tp = int(h["time_index"].get_loc(np.datetime64(valid_time, "ns")))
        cache: BlockCache | None = h["cache"]  # type: ignore[assignment]
        where = tuple(region.get(d, slice(None)) for d in self.spatial)
        out = []
        for t, da in enumerate(h["an"]):
            if self.regrid is None:  # regridded targets are not cached
                whole = None if cache is None else cache.get(
                    ("an", tp, t), lambda t=t: self._analysis_field(h, tp, t, {}))
                out.append(whole[where] if whole is not None else
                           self._analysis_field(h, tp, t, region))
                continue
            field = da.isel({TIME: tp}).load()
            lat = self.latitude[region.get(LATITUDE, slice(None))]
            lon = self.longitude[region.get(LONGITUDE, slice(None))]
            out.append(np.asarray(regrid_like(field, latitude=lat, longitude=lon,
                                              method=self.regrid).values, dtype=np.float32))
        return np.stack(out)

    def _analysis_field(self, h: dict, tp: int, t: int, region: Region) -> np.ndarray:
        """``[*region]`` float32 of target ``t`` at time ``tp`` (no regridding)."""
        if h["raw_an"] is not None:
            return h["raw_an"][t].read({TIME: tp, **region}, self.spatial).astype(np.float32,
                                                                                copy=False)
        return np.asarray(h["an"][t].isel({TIME: tp, **region}).values, dtype=np.float32)


def _sorted(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1]))
