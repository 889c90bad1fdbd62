"""Normalisation statistics: computed lazily with dask on the training period only, written
to a statistics file tied to the store they came from, carried inside models as buffers."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.progress import dask_progress, plural, step
from enspp.data.schema import INIT_TIME, LEAD_TIME, MEMBER, STATION, TIME, select_variable, spatial_dims

#: relative floor of a standard deviation (constant fields never give std <= 0)
STD_FLOOR_REL = 1e-6
STD_FLOOR_ABS = 1e-6
_ARRAYS = ("channel_mean", "channel_std", "channel_mean_local", "channel_std_local",
           "target_mean", "target_std", "target_mean_local", "target_std_local")


class StatsMismatchError(EnsppError):
    """A statistics file does not belong to the store (or configuration) in use."""


class NotStatisticsError(EnsppError):
    """The file at the statistics path is not an enspp statistics file at all (no
    ``enspp_kind == "normalisation_statistics"``): someone else's data, never to be replaced.

    Deliberately not a :class:`StatsMismatchError`: stale statistics may be recomputed, a
    foreign file must be refused."""


@dataclass(frozen=True, eq=False)
class NormStats:
    """Per channel mean/std, global ``[C]`` and per grid point ``[C, Ny, Nx]`` (stations:
    ``[C, n_stations, 1]``), the same for targets, the names, the training period, the hash of
    the data they came from (``source_hash``) and of their own content (:attr:`hash`)."""

    channels: tuple[str, ...]
    targets: tuple[str, ...]
    channel_mean: np.ndarray
    channel_std: np.ndarray
    channel_mean_local: np.ndarray
    channel_std_local: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray
    target_mean_local: np.ndarray
    target_std_local: np.ndarray
    train_start: str
    train_end: str
    source_hash: str

    @property
    def hash(self) -> str:
        """sha256 of names, period, source hash and every array's bytes."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.channels), list(self.targets), self.train_start,
                             self.train_end, self.source_hash]).encode())
        for key in _ARRAYS:
            arr = np.ascontiguousarray(getattr(self, key), dtype=np.float32)
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.channel_mean_local.shape[1:])  # type: ignore[return-value]

    def to_dict(self) -> dict[str, np.ndarray | str]:
        """Plain numpy arrays (float32; names as unicode arrays) and strings."""
        out: dict[str, np.ndarray | str] = {k: np.asarray(getattr(self, k), dtype=np.float32)
                                            for k in _ARRAYS}
        out["channels"] = np.asarray(self.channels, dtype=str)
        out["targets"] = np.asarray(self.targets, dtype=str)
        out.update(train_start=self.train_start, train_end=self.train_end,
                   source_hash=self.source_hash, hash=self.hash)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> NormStats:
        """Inverse of :meth:`to_dict`; a stored ``hash`` that disagrees with the content is an
        error."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise StatsMismatchError(f"statistics lack the keys {missing}")
        kw: dict[str, object] = {k: np.asarray(d[k], dtype=np.float32) for k in _ARRAYS}
        kw["channels"] = tuple(str(c) for c in np.asarray(d["channels"]).reshape(-1))
        kw["targets"] = tuple(str(c) for c in np.asarray(d["targets"]).reshape(-1))
        for k in ("train_start", "train_end", "source_hash"):
            kw[k] = str(d[k])
        stats = cls(**kw)  # type: ignore[arg-type]
        if "hash" in d and str(d["hash"]) != stats.hash:
            raise StatsMismatchError(f"statistics content hash {stats.hash[:12]} differs from the "
                                     f"recorded hash {str(d['hash'])[:12]}: they were modified")
        return stats

    def to_file(self, path: str | Path) -> Path:
        """Write a NetCDF file (``.nc``) or Zarr store (``.zarr``), whole or not at all: written
        beside ``path`` and renamed into place (:mod:`enspp.data.durable`), so a training
        starting meanwhile, or a kill, never meets half a file."""
        from enspp.data import durable

        path = Path(path)
        d = self.to_dict()
        c_dims, t_dims = ("channel", "y", "x"), ("target", "y", "x")
        ds = xr.Dataset(
            {k: (c_dims[: np.ndim(d[k])] if k.startswith("channel") else t_dims[: np.ndim(d[k])],
                 d[k]) for k in _ARRAYS},
            coords={"channel": list(self.channels), "target": list(self.targets)},
            attrs={"train_start": self.train_start, "train_end": self.train_end,
                   "source_hash": self.source_hash, "hash": self.hash,
                   "enspp_kind": "normalisation_statistics"})
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".zarr":
            tmp = path.parent / f".{path.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # zarr v3 notes on string dtypes
                    ds.to_zarr(tmp, mode="w")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            durable.swap_tree(tmp, path)
        else:
            durable.write_via(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))
        return path

    @classmethod
    def from_file(cls, path: str | Path, *, expected_source_hash: str | None = None) -> NormStats:
        """Read a statistics file; with ``expected_source_hash``, a file computed from other
        data (another store, other init times, other channels) is an error."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"statistics file {path} does not exist")
        opener = xr.open_zarr if path.suffix == ".zarr" else xr.open_dataset
        with opener(path) as ds:
            if ds.attrs.get("enspp_kind") != "normalisation_statistics":
                raise NotStatisticsError(
                    f"{path} is not an enspp statistics file (it has no enspp_kind "
                    f"'normalisation_statistics'): point pipeline.stores.statistics at another "
                    f"path or move that file away (nothing was changed)")
            d: dict[str, object] = {k: ds[k].values for k in _ARRAYS}
            d["channels"] = ds["channel"].values
            d["targets"] = ds["target"].values
            d.update({k: ds.attrs[k] for k in ("train_start", "train_end", "source_hash", "hash")})
        stats = cls.from_dict(d)
        if expected_source_hash is not None and stats.source_hash != expected_source_hash:
            raise StatsMismatchError(
                f"statistics file {path} does not match the store: it was computed from data "
                f"with hash {stats.source_hash[:16]}, the store and configuration in use hash to "
                f"{expected_source_hash[:16]}; delete it or point stores.statistics elsewhere")
        return stats


def source_hash(*, forecast_path: str | None, analysis_path: str | None,
                init_times: np.ndarray, channels: Sequence[str], targets: Sequence[str],
                provenance: Mapping[str, object] | None = None) -> str:
    """sha256 of what statistics depend on: the store paths, the training init times, the
    channels and targets, and the stores' provenance attributes (sources and their sha256)."""
    h = hashlib.sha256()
    h.update(json.dumps([forecast_path, analysis_path, list(channels), list(targets),
                         _jsonable(provenance or {})], sort_keys=True).encode())
    h.update(np.asarray(init_times, dtype="datetime64[ns]").astype(np.int64).tobytes())
    return h.hexdigest()


def provenance_of(ds: xr.Dataset) -> dict[str, object]:
    """The stable provenance attributes of a store (sources, schema version; not the
    ``updated`` time stamp)."""
    keep = ("enspp_kind", "enspp_schema_version", "sources", "provenance")
    return {k: ds.attrs[k] for k in keep if k in ds.attrs}


def _jsonable(v: object) -> object:
    return json.loads(json.dumps(v, default=str, sort_keys=True))


def floor_std(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``std`` floored at ``STD_FLOOR_REL * |mean|`` and ``STD_FLOOR_ABS`` (NaN -> floor)."""
    floor = np.maximum(STD_FLOOR_REL * np.abs(np.nan_to_num(mean)), STD_FLOOR_ABS)
    return np.where(np.isfinite(std) & (std > floor), std, floor)


def _moments(da: xr.DataArray, reduce_dims: Sequence[str]) -> tuple[xr.DataArray, xr.DataArray]:
    x = da.astype(np.float64)
    return x.mean(reduce_dims, skipna=True), (x * x).mean(reduce_dims, skipna=True)


def compute_stats(
    forecast: xr.Dataset,
    analysis: xr.Dataset,
    *,
    channels: Sequence[str],
    targets: Sequence[str],
    init_times: np.ndarray,
    valid_times: np.ndarray,
    source_hash: str,
    regrid_target: callable | None = None,
) -> NormStats:
    """Mean/std of every channel (``<var>@<hours>h``, pooled over training init times and
    members) and target (analyses at the training valid times), per grid point and global.

    Lazy: one dask graph reduces chunk by chunk (``skipna``), nothing is loaded whole.
    ``regrid_target`` maps an analysis-grid map onto the forecast grid when they differ.
    """
    from enspp.pipeline.features import parse_channel

    inits = np.asarray(init_times, dtype="datetime64[ns]")
    times = np.asarray(valid_times, dtype="datetime64[ns]")
    lazy = []
    for ch in channels:
        var, hours = parse_channel(ch)
        da = select_variable(forecast, var).sel({INIT_TIME: inits,
                                                 LEAD_TIME: np.timedelta64(hours, "h")})
        lazy.append(_moments(da, [d for d in (INIT_TIME, MEMBER) if d in da.dims]))
    for t in targets:
        da = select_variable(analysis, t).sel({TIME: times})
        lazy.append(_moments(da, [d for d in (TIME, MEMBER) if d in da.dims]))
    what = (f"{plural(len(channels), 'channel')} and {plural(len(targets), 'target')} over "
            f"{plural(len(inits), 'training init time')}")
    with step("statistics", unit="task") as s, dask_progress(s):
        computed = dask.compute(*lazy)
        s.amount = what
    sdims = spatial_dims(forecast)

    def local(pair: tuple[xr.DataArray, xr.DataArray], is_target: bool):
        m, m2 = pair
        if is_target and regrid_target is not None:
            m, m2 = regrid_target(m), regrid_target(m2)
        m = m.transpose(*sdims).values
        m2 = m2.transpose(*sdims).values
        if sdims == (STATION,):
            m, m2 = m[:, None], m2[:, None]
        gm, gm2 = np.nanmean(m), np.nanmean(m2)
        gstd = np.sqrt(max(gm2 - gm * gm, 0.0))
        lstd = np.sqrt(np.maximum(m2 - m * m, 0.0))
        gstd = float(floor_std(np.asarray(gstd), np.asarray(gm)))
        # points with no valid value at all (always NaN) take the global statistics
        lstd = np.where(np.isfinite(m), floor_std(lstd, m), gstd)
        m = np.where(np.isfinite(m), m, gm)
        return gm, gstd, m, lstd

    parts = [local(p, i >= len(channels)) for i, p in enumerate(computed)]
    ch, tg = parts[: len(channels)], parts[len(channels):]

    def stack(ps, i):
        return np.asarray([p[i] for p in ps], dtype=np.float32)

    return NormStats(
        channels=tuple(channels), targets=tuple(targets),
        channel_mean=stack(ch, 0), channel_std=stack(ch, 1),
        channel_mean_local=stack(ch, 2), channel_std_local=stack(ch, 3),
        target_mean=stack(tg, 0), target_std=stack(tg, 1),
        target_mean_local=stack(tg, 2), target_std_local=stack(tg, 3),
        train_start=str(inits.min()) if len(inits) else "",
        train_end=str(inits.max()) if len(inits) else "",
        source_hash=source_hash)
