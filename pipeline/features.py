"""Input channels, static features and the day-of-year encoding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.schema import LATITUDE, LONGITUDE, STATION, select_variable, spatial_dims

#: static feature names, in the order of ``batch["static"]``
STATIC_NAMES: tuple[str, ...] = ("lsm", "orog", "sin_lat", "cos_lat", "sin_lon", "cos_lon",
                                 "sin_doy", "cos_doy")
#: orography is given in km, so it is O(1) on Earth
OROG_SCALE_M = 1000.0
_YEAR_DAYS = 365.25


def channel_leads(*, target_lead_time: int, input_lead_times: Sequence[int],
                  target_lead_times: Sequence[int] = ()) -> tuple[int, ...]:
    """Lead times (hours) in channel order: the target lead(s) first (increasing), then the
    further inputs."""
    targets = tuple(sorted(target_lead_times)) or (target_lead_time,)
    return (*targets, *[h for h in input_lead_times if h not in targets])


def lead_target_channels(channels: Sequence[str], targets: Sequence[str],
                         leads: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Per target lead (hours), the index into ``channels`` of each target at that lead."""
    index = {name: i for i, name in enumerate(channels)}
    out = []
    for h in leads:
        missing = [f"{t}@{h}h" for t in targets if f"{t}@{h}h" not in index]
        if missing:
            raise EnsppError(f"channels {missing} are missing: a target lead's inputs must be "
                             f"channels (channels: {list(channels)})")
        out.append(tuple(index[f"{t}@{h}h"] for t in targets))
    return tuple(out)


def channel_names(variables: Sequence[str], leads: Sequence[int]) -> tuple[str, ...]:
    """``("z500@48h", "t2m@48h", "z500@24h", ...)``: per lead block, the variables in order."""
    return tuple(f"{v}@{h}h" for h in leads for v in variables)


def parse_channel(name: str) -> tuple[str, int]:
    """``"t2m@24h"`` -> ``("t2m", 24)``."""
    var, _, lead = name.rpartition("@")
    if not var or not lead.endswith("h") or not lead[:-1].isdigit():
        raise EnsppError(f"channel name {name!r} is not of the form '<variable>@<hours>h'")
    return var, int(lead[:-1])


def target_channels(variables: Sequence[str], targets: Sequence[str]) -> tuple[int, ...]:
    """Index into the channels of each target at the target lead (the first lead block)."""
    return tuple(list(variables).index(t) for t in targets)


def doy_encoding(valid_time: np.datetime64) -> tuple[float, float]:
    """``(sin, cos)`` of the day of year of ``valid_time`` (period 365.25 days)."""
    sin, cos = doy_encodings(np.asarray([valid_time], dtype="datetime64[ns]"))
    return float(sin[0]), float(cos[0])


def doy_encodings(valid_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`doy_encoding` of many valid times at once: float64 ``(sin, cos)`` arrays."""
    t = pd.DatetimeIndex(np.asarray(valid_times, dtype="datetime64[ns]"))
    phase = 2 * np.pi * (t.day_of_year.to_numpy() - 1 + t.hour.to_numpy() / 24) / _YEAR_DAYS
    return np.sin(phase), np.cos(phase)


def static_fields(forecast: xr.Dataset, static: xr.Dataset | None, *,
                  regrid: str | None = None) -> np.ndarray:
    """The time-independent static features ``[6, Ny, Nx]`` (``[6, n_stations, 1]``):
    land-sea mask, orography (km), sin/cos latitude, sin/cos longitude.

    Without a static dataset the land-sea mask and orography are zeros.  Stations without
    ``latitude``/``longitude`` coordinates get zeros for the lat/lon encodings.
    """
    from enspp.pipeline.align import check_grids, regrid_like

    point = spatial_dims(forecast) == (STATION,)
    if point:
        n = forecast.sizes[STATION]
        lat = _station_coord(forecast, LATITUDE, n)
        lon = _station_coord(forecast, LONGITUDE, n)
        lat2, lon2 = lat[:, None], lon[:, None]
        shape = (n, 1)
    else:
        lat = forecast[LATITUDE].values.astype(np.float64)
        lon = forecast[LONGITUDE].values.astype(np.float64)
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
        shape = lat2.shape
    lsm = np.zeros(shape)
    orog = np.zeros(shape)
    if static is not None:
        needs_regrid = check_grids(forecast, static, regrid=regrid, what="static fields")
        fields = []
        for name in ("lsm", "orog"):
            da = select_variable(static, name)
            da = da.squeeze(drop=True) if da.ndim > len(spatial_dims(static)) else da
            if needs_regrid:
                da = regrid_like(da.load(), latitude=forecast[LATITUDE].values,
                                 longitude=forecast[LONGITUDE].values, method=str(regrid))
            fields.append(np.asarray(da.transpose(*spatial_dims(static)).values,
                                     dtype=np.float64).reshape(shape))
        lsm = np.clip(np.nan_to_num(fields[0]), 0.0, 1.0)
        orog = np.nan_to_num(fields[1]) / OROG_SCALE_M
    rlat, rlon = np.deg2rad(lat2) * np.ones(shape), np.deg2rad(lon2) * np.ones(shape)
    enc = [np.sin(rlat), np.cos(rlat), np.sin(rlon), np.cos(rlon)]
    if point and not (_has_station_coord(forecast, LATITUDE) and
                      _has_station_coord(forecast, LONGITUDE)):
        enc = [np.zeros(shape)] * 4
    return np.stack([lsm, orog, *enc]).astype(np.float32)


def _has_station_coord(ds: xr.Dataset, name: str) -> bool:
    return name in ds.coords and ds[name].dims == (STATION,)


def _station_coord(ds: xr.Dataset, name: str, n: int) -> np.ndarray:
    if _has_station_coord(ds, name):
        return ds[name].values.astype(np.float64)
    return np.zeros(n)
