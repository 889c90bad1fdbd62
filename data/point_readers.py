"""Readers of Zarr stores in our own layout and of station NetCDF files (WeatherBench 2 and CF
layouts: :mod:`data.cf_readers`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data import schema
from enspp.data.translate import ReaderError, canonical_variable, finalise

__all__ = ["open_canonical_zarr", "open_station_netcdf",
           "open_station_deterministic", "STATION_SPECS",
           "StationSpec"]

def _open_zarr(path: str | os.PathLike) -> xr.Dataset:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such Zarr store")
    try:
        return xr.open_zarr(path, consolidated=None, decode_timedelta=True)
    except Exception as e:  # zarr raises several types for a directory that is not a store
        raise ReaderError(f"{path}: not a readable Zarr store ({type(e).__name__}: {e})") from e


def open_canonical_zarr(path: str | os.PathLike, *, allow_nan: bool = False) -> xr.Dataset:
    """A Zarr store in our own layout, lazily, validated (no completion filtering: see
    :func:`data.store.open_store` for that)."""
    ds = _open_zarr(path)
    kind = ds.attrs.get("enspp_kind")
    if kind not in (None, "forecast", "analysis"):
        raise ReaderError(f"{path}: attribute enspp_kind={kind!r} is neither 'forecast' nor 'analysis'")
    try:
        kind = kind or schema.detect_kind(ds)
        return schema.validate(ds, kind=kind, source=str(path), allow_nan=allow_nan)
    except schema.SchemaError as e:
        raise ReaderError(str(e)) from e


@dataclass(frozen=True)
class StationSpec:
    """How the rows of a station file map to forecast times (read from the file's description).

    ``time`` in the file is a date at 00 UTC; ``init_time = time + init_offset`` and the
    forecast verifies at ``init_time + lead_time``; the observation is at that valid time.
    """

    variable: str  # canonical
    init_offset: pd.Timedelta
    lead_time: pd.Timedelta
    units: str
    #: other names a file may give the HRES forecast besides ``<variable>_hres``
    hres_aliases: tuple[str, ...] = ()

    @property
    def hres_names(self) -> tuple[str, ...]:
        """The names the deterministic forecast is looked up under, in order."""
        return (f"{self.variable}_hres", *self.hres_aliases)


#: t2m (Magdeburg): "24-h ahead ... from 12 UTC runs"; the first row is 2002-01-02, so the row
#: date is the verifying date: init = date - 12 h (12 UTC the day before), lead 24 h.
#: tp24 (Frankfurt): "06-30h accumulated ... 00 UTC runs": the row date is the run date:
#: init = date 00 UTC, lead_time = 30 h (end of the 06-30 h window); the file of ../shared/data
#: calls its HRES precipitation ``tp_hres``.
STATION_SPECS = {
    "t2m": StationSpec("t2m", pd.Timedelta(hours=-12), pd.Timedelta(hours=24), "degC"),
    "tp24": StationSpec("tp24", pd.Timedelta(hours=0), pd.Timedelta(hours=30), "mm", hres_aliases=("tp_hres",)),
}

_DESCRIPTION_HINTS = {"t2m": ("12 UTC", "24-h"), "tp24": ("00 UTC", "06-30h")}


def open_station_netcdf(path: str | os.PathLike, *, variable: str | None = None,
                        allow_nan: bool = True) -> tuple[xr.Dataset, xr.Dataset]:
    """A station file (``<v>_ens(time, member)``, ``<v>_obs(time)``) -> (forecast, observations).

    forecast: ``<v>(init_time, lead_time=1, member, station=1)``; observations:
    ``<v>(time, station=1)`` at the valid times.  Members ``CTR``/``forc.CTRL`` -> 0,
    ``P7``/``forc.7`` -> 7.  Units: degC stays degC, precipitation in mm.  Station records have
    missing days (NaN), so NaN is accepted by default; ``allow_nan=False`` rejects them.
    """
    path = Path(path)
    raw = _read_station_file(path)
    candidates = sorted(str(v)[:-4] for v in raw.data_vars if str(v).endswith("_ens"))
    if variable is None:
        if len(candidates) != 1:
            raise ReaderError(f"{path}: pass variable= (ensemble variables: {candidates})")
        variable = candidates[0]
    if variable not in candidates or f"{variable}_obs" not in raw:
        raise ReaderError(f"{path}: needs {variable}_ens and {variable}_obs (ensemble variables: {candidates})")
    spec = STATION_SPECS.get(variable)
    if spec is None:
        raise ReaderError(f"{path}: no lead-time convention known for {variable!r} "
                          f"(known: {sorted(STATION_SPECS)})")
    desc = str(raw.attrs.get("description", ""))
    if desc and not all(h in desc for h in _DESCRIPTION_HINTS[variable]):
        raise ReaderError(f"{path}: description {desc!r} does not state the expected "
                          f"{_DESCRIPTION_HINTS[variable]} forecast timing for {variable!r}")
    ens = raw[f"{variable}_ens"]
    if "time" not in ens.dims or "member" not in ens.dims:
        raise ReaderError(f"{path}: {variable}_ens must have dims (time, member), has {ens.dims}")
    members = np.array([_member_number(str(m), path) for m in raw["member"].values])
    ens = ens.assign_coords(member=members).sortby("member")
    units = str(ens.attrs.get("units", spec.units))
    init = _init_times(raw, spec)
    station = _station_coords(path, desc)
    fc = ens.rename(time=schema.INIT_TIME).assign_coords({schema.INIT_TIME: init})
    fc = fc.expand_dims({schema.LEAD_TIME: [spec.lead_time.to_timedelta64()],
                         schema.STATION: [station["name"]]})
    _, fc = canonical_variable(fc.assign_attrs(units=units), variable, source=str(path))
    obs = raw[f"{variable}_obs"].rename(time=schema.TIME)
    obs = obs.assign_coords({schema.TIME: init + spec.lead_time.to_timedelta64()})
    obs = obs.expand_dims({schema.STATION: [station["name"]]})
    _, obs = canonical_variable(obs.assign_attrs(units=str(obs.attrs.get("units", spec.units))),
                                variable, source=str(path))
    extra = {k: (schema.STATION, [v]) for k, v in station.items() if k != "name"}
    forecast = finalise(xr.Dataset({variable: fc}).assign_coords(extra), kind="forecast",
                        source=str(path), allow_nan=allow_nan)
    observations = finalise(xr.Dataset({variable: obs}).assign_coords(extra), kind="analysis",
                            source=str(path), allow_nan=allow_nan)
    return forecast, observations


def open_station_deterministic(path: str | os.PathLike, *, variable: str) -> xr.DataArray:
    """The deterministic high-resolution forecast ``<variable>_hres(time)`` (or an alias of
    :attr:`StationSpec.hres_aliases`) of a station file
    as ``<variable>(init_time)`` (same init times and lead time as :func:`open_station_netcdf`'s
    members; NaN where the file has none).  A :class:`ReaderError` names the file when it has
    no such variable or its units differ from the members'."""
    path = Path(path)
    raw = _read_station_file(path)
    spec = STATION_SPECS.get(variable)
    names = spec.hres_names if spec is not None else (f"{variable}_hres",)
    name = next((n for n in names if n in raw), None)
    if name is None or spec is None:
        raise ReaderError(f"{path}: no deterministic forecast {' or '.join(map(repr, names))} for a known "
                          f"variable (variables: {sorted(map(str, raw.data_vars))})")
    da = raw[name]
    if da.dims != ("time",):
        raise ReaderError(f"{path}: {name} must have dims (time,), has {da.dims}")
    units = str(da.attrs.get("units", spec.units))
    ens_units = str(raw[f"{variable}_ens"].attrs.get("units", spec.units)) if f"{variable}_ens" in raw else units
    if units != ens_units:
        raise ReaderError(f"{path}: {name} is in {units!r} but {variable}_ens in {ens_units!r}")
    out = da.rename(time=schema.INIT_TIME).assign_coords({schema.INIT_TIME: _init_times(raw, spec)})
    # the same names, unit conversion and CF attributes as the members
    _, out = canonical_variable(out.astype(np.float32).assign_attrs(units=units), variable,
                                source=str(path))
    return out


def _read_station_file(path: Path) -> xr.Dataset:
    """A station NetCDF file, read whole (about 1 MB) and closed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with xr.open_dataset(path) as raw:
            return raw.load()
    except (OSError, ValueError) as e:
        raise ReaderError(f"{path}: not a readable NetCDF file ({e})") from e


def _init_times(raw: xr.Dataset, spec: StationSpec) -> np.ndarray:
    """The init times of a station file's rows (its ``time`` is the forecast's date)."""
    return (pd.DatetimeIndex(raw["time"].values).as_unit("ns") + spec.init_offset).values


def _member_number(label: str, path: Path) -> int:
    if label.upper().endswith(("CTR", "CTRL")):
        return 0
    m = re.search(r"(\d+)$", label)
    if m is None:
        raise ReaderError(f"{path}: cannot read a member number from label {label!r}")
    return int(m.group(1))


def _station_coords(path: Path, description: str) -> dict:
    m = re.search(r"_([a-z]+)_\d{4}-\d{4}$", path.stem)
    out: dict = {"name": m.group(1) if m else path.stem}
    wmo = re.search(r"WMO (\d+)", description)
    if wmo:
        out["wmo_id"] = wmo.group(1)
    ll = re.search(r"(\d+(?:\.\d+)?)([NS]) (\d+(?:\.\d+)?)([EW])", description)
    if ll:
        out["station_latitude"] = float(ll.group(1)) * (1 if ll.group(2) == "N" else -1)
        out["station_longitude"] = float(ll.group(3)) * (1 if ll.group(4) == "E" else -1)
    return out
