"""Reading one sample's chunks from the stores: one init time (all members) per read, each
process with its own store handles (worker-safe), no dask graph on the hot path."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from data.schema import (INIT_TIME, LATITUDE, LEAD_TIME, LONGITUDE, MEMBER, STATION, TIME,
                         select_variable, spatial_dims)
from pipeline.align import StoreLike, open_dataset, regrid_like, source_path

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


class StoreReader:
    """Reads input blocks ``[K, C, h, w]`` and target blocks ``[T, h, w]`` for one sample.

    Holds the store paths (or, for in-memory datasets, the datasets) and opens its own
    handles lazily in each process, so DataLoader workers never share handles or dask graphs.
    """

    def __init__(self, forecast: StoreLike, analysis: StoreLike, *, variables: Sequence[str],
                 leads_h: Sequence[int], targets: Sequence[str], regrid: str | None = None,
                 forecast_ds: xr.Dataset | None = None, analysis_ds: xr.Dataset | None = None):
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
        self._pid: int | None = None
        self._h: dict[str, object] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pid"], state["_h"] = None, {}
        return state

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
        self._h = {
            "fc": fc_vars, "an": an_vars, "an_ds": an,
            "init_index": pd.Index(fc[INIT_TIME].values.astype("datetime64[ns]")),
            "time_index": pd.Index(an[TIME].values.astype("datetime64[ns]")),
            "lead_pos": [int(lead_index.get_loc(lead)) for lead in self.leads],
            "members": fc[MEMBER].values.astype(np.int64),
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
        blocks = []
        for lp in h["lead_pos"]:
            for da in h["fc"]:
                block = np.asarray(da.isel({INIT_TIME: ip, LEAD_TIME: lp, MEMBER: msel,
                                            **region}).values, dtype=np.float32)
                blocks.append(block if contiguous else block[pos])
        return np.stack(blocks, axis=1)

    def read_targets(self, valid_time: np.datetime64, *, region: Region) -> np.ndarray:
        """``[T, *spatial]`` float32: the analyses at ``valid_time`` (regridded if asked)."""
        h = self._handles()
        tp = int(h["time_index"].get_loc(np.datetime64(valid_time, "ns")))
        out = []
        for da in h["an"]:
            if self.regrid is None:
                out.append(np.asarray(da.isel({TIME: tp, **region}).values, dtype=np.float32))
                continue
            field = da.isel({TIME: tp}).load()
            lat = self.latitude[region.get(LATITUDE, slice(None))]
            lon = self.longitude[region.get(LONGITUDE, slice(None))]
            out.append(np.asarray(regrid_like(field, latitude=lat, longitude=lon,
                                              method=self.regrid).values, dtype=np.float32))
        return np.stack(out)


def _sorted(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1]))
