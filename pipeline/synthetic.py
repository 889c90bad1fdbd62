"""Small seeded stores in the canonical layout, for tests and benchmarks of the pipeline.

(The synthetic *world* with GRIB files and an oracle is ``data.synth``; these are just
Zarr stores with known values, written chunk by chunk so large ones never sit in memory.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.schema import annotate
from enspp.data.store_writer import append


@dataclass(frozen=True)
class StorePaths:
    forecast: Path
    analysis: Path
    static: Path


def forecast_dataset(*, init_times: pd.DatetimeIndex, lead_hours: tuple[int, ...],
                     n_members: int, ny: int, nx: int, seed: int = 0,
                     stations: int | None = None, levels: tuple[int, ...] = (500, 850)
                     ) -> xr.Dataset:
    """A canonical forecast: ``z``/``t`` on ``levels`` and ``t2m``; member m of init i at
    lead l holds ``truth(valid) + noise``, so targets are predictable from inputs."""
    rng = np.random.default_rng(seed)
    leads = pd.to_timedelta(list(lead_hours), unit="h")
    spatial = _spatial(ny, nx, stations)
    shape_sp = tuple(len(c) for c in spatial.values())
    n_i, n_l = len(init_times), len(leads)
    base = {"z": 5.5e4, "t": 260.0, "t2m": 285.0}
    data = {}
    for name in ("z", "t", "t2m"):
        noise = rng.standard_normal((n_i, n_l, n_members, *shape_sp)).astype(np.float32)
        field = base[name] + (50.0 if name == "z" else 2.0) * noise
        if name == "t2m":
            data[name] = ((("init_time", "lead_time", "member", *spatial)), field)
        else:
            lev = np.stack([field + 10.0 * j for j in range(len(levels))], axis=3)
            data[name] = (("init_time", "lead_time", "member", "level", *spatial), lev)
    ds = xr.Dataset(data, coords={"init_time": init_times.astype("datetime64[ns]"),
                                  "lead_time": leads.astype("timedelta64[ns]"),
                                  "member": np.arange(n_members), "level": list(levels),
                                  **spatial})
    for name in ds.data_vars:
        ds[name] = annotate(ds[name], str(name))
    return ds.assign_attrs(enspp_kind="forecast", enspp_schema_version="1")


def analysis_dataset(*, times: pd.DatetimeIndex, ny: int, nx: int, seed: int = 1,
                     stations: int | None = None, levels: tuple[int, ...] = (500, 850)
                     ) -> xr.Dataset:
    """A canonical analysis with the same variables as :func:`forecast_dataset`."""
    rng = np.random.default_rng(seed)
    spatial = _spatial(ny, nx, stations)
    shape_sp = tuple(len(c) for c in spatial.values())
    base = {"z": 5.5e4, "t": 260.0, "t2m": 285.0}
    data = {}
    for name in ("z", "t", "t2m"):
        field = base[name] + rng.standard_normal((len(times), *shape_sp)).astype(np.float32)
        if name == "t2m":
            data[name] = (("time", *spatial), field)
        else:
            lev = np.stack([field + 10.0 * j for j in range(len(levels))], axis=1)
            data[name] = (("time", "level", *spatial), lev)
    ds = xr.Dataset(data, coords={"time": times.astype("datetime64[ns]"),
                                  "level": list(levels), **spatial})
    for name in ds.data_vars:
        ds[name] = annotate(ds[name], str(name))
    return ds.assign_attrs(enspp_kind="analysis", enspp_schema_version="1")


def static_dataset(*, ny: int, nx: int) -> xr.Dataset:
    spatial = _spatial(ny, nx, None)
    lat2, lon2 = np.meshgrid(spatial["latitude"], spatial["longitude"], indexing="ij")
    lsm = (np.sin(np.deg2rad(lon2) * 4) > 0).astype(np.float32)
    orog = (1500.0 * lsm * np.cos(np.deg2rad(lat2))).astype(np.float32)
    ds = xr.Dataset({"lsm": (("latitude", "longitude"), lsm),
                     "orog": (("latitude", "longitude"), orog)}, coords=spatial)
    return ds.assign({"lsm": annotate(ds.lsm, "lsm"), "orog": annotate(ds.orog, "orog")})


def write_store(ds: xr.Dataset, path: Path, *, time_dim: str) -> Path:
    """Write ``ds`` with one ``time_dim`` value per chunk (full grid, all members)."""
    chunks = {d: (1 if d == time_dim else -1) for d in ds.dims}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.chunk(chunks).to_zarr(path, mode="w", consolidated=True)
    return path


def write_stores(directory: Path, *, n_init: int = 12, lead_hours: tuple[int, ...] = (0, 24, 48),
                 n_members: int = 11, ny: int = 16, nx: int = 24, start: str = "2019-01-01",
                 freq: str = "1D", stations: int | None = None, seed: int = 0,
                 batch_init: int = 16) -> StorePaths:
    """Write enspp forecast/analysis stores (``data.store_writer``) and, for grids,
    ``static.nc`` into ``directory``, appending ``batch_init`` init times at a time so memory
    stays bounded."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inits = pd.date_range(start, periods=n_init, freq=freq)
    fc_path, an_path = directory / "forecast.zarr", directory / "analysis.zarr"
    max_lead = pd.Timedelta(hours=max(lead_hours))
    times = pd.date_range(inits[0], inits[-1] + max_lead, freq=freq)
    for i in range(0, n_init, batch_init):
        fc = forecast_dataset(init_times=inits[i:i + batch_init], lead_hours=lead_hours,
                              n_members=n_members, ny=ny, nx=nx, seed=seed + i,
                              stations=stations)
        append(fc_path, fc, kind="forecast")
    append(an_path, analysis_dataset(times=times, ny=ny, nx=nx, seed=seed + 10**6,
                                     stations=stations), kind="analysis")
    static_path = directory / "static.nc"
    if stations is None:
        static_dataset(ny=ny, nx=nx).to_netcdf(static_path)
    return StorePaths(forecast=fc_path, analysis=an_path, static=static_path)


def _spatial(ny: int, nx: int, stations: int | None) -> dict[str, np.ndarray]:
    if stations is not None:
        return {"station": np.arange(stations)}
    return {"latitude": np.linspace(70.0, 30.0, ny), "longitude": np.linspace(-20.0, 40.0, nx)}
