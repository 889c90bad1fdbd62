"""Seeded station stores for tests: a biased ensemble at a few stations, observations, HRES."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.schema import annotate
from enspp.data.store_writer import append


@dataclass(frozen=True)
class StationStores:
    forecast: Path
    analysis: Path
    deterministic: Path
    init_times: np.ndarray
    lead: np.timedelta64


def station_datasets(*, n_days: int = 240, n_stations: int = 2, n_members: int = 11,
                     start: str = "2010-01-01T12", lead_hours: int = 24, bias: float = 1.5,
                     seed: int = 0, variable: str = "t2m") -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """(forecast, observations, deterministic) at ``n_stations`` stations: truth with a
    seasonal cycle and persistent weather, members = truth + bias + shared and own noise,
    a sharper deterministic forecast; member 0 is the control; a few gaps (NaN)."""
    rng = np.random.default_rng(seed)
    init = pd.date_range(start, periods=n_days, freq="1D").values.astype("datetime64[ns]")
    lead = np.timedelta64(lead_hours, "h").astype("timedelta64[ns]")
    valid = init + lead
    doy = pd.DatetimeIndex(valid).day_of_year.values
    anomaly = np.zeros((n_days, n_stations))
    for i in range(1, n_days):  # persistent anomalies: past errors carry information
        anomaly[i] = 0.7 * anomaly[i - 1] + rng.normal(0, 1.5, n_stations)
    truth = 10 + 8 * np.sin(2 * np.pi * (doy[:, None] - 100) / 365.25) + anomaly
    shared = rng.normal(0, 1.5, (n_days, 1, n_stations))
    ens = truth[:, None] + bias + shared + rng.normal(0, 0.8, (n_days, n_members, n_stations))
    obs = truth + rng.normal(0, 0.5, (n_days, n_stations))
    det = truth + 0.5 * bias + rng.normal(0, 1.0, (n_days, n_stations))
    obs[[7, 100]] = np.nan  # missing observations
    ens[50, 3, 0] = np.nan  # a missing member
    det[[5, 60]] = np.nan
    stations = {"station": np.asarray([f"S{i}" for i in range(n_stations)], dtype=object),
                "latitude": ("station", np.linspace(45.0, 55.0, n_stations)),
                "longitude": ("station", np.linspace(5.0, 15.0, n_stations))}
    dims = ("init_time", "lead_time", "member", "station")

    def forecast(values: np.ndarray, members: np.ndarray) -> xr.Dataset:
        da = xr.DataArray(values[:, None].astype(np.float32), dims=dims,
                          coords={"init_time": init, "lead_time": [lead], "member": members},
                          attrs={"units": "degC"})
        return xr.Dataset({variable: annotate(da, variable)}).assign_coords(stations)

    fc = forecast(ens, np.arange(n_members))
    hres = forecast(det[:, None], np.array([0]))
    an = xr.Dataset({variable: annotate(xr.DataArray(obs.astype(np.float32), dims=("time", "station"),
                                                     coords={"time": valid}, attrs={"units": "degC"}),
                                        variable)}).assign_coords(stations)
    return fc, an, hres


def write_station_stores(directory: Path, **kw) -> StationStores:
    fc, an, det = station_datasets(**kw)
    directory = Path(directory)
    paths = [directory / n for n in ("forecast.zarr", "analysis.zarr", "hres.zarr")]
    append(paths[0], fc, kind="forecast", allow_nan=True)
    append(paths[1], an, kind="analysis", allow_nan=True)
    append(paths[2], det, kind="forecast", allow_nan=True)
    return StationStores(*paths, init_times=fc["init_time"].values, lead=fc["lead_time"].values[0])
