"""Zarr stores and NetCDF files in WeatherBench 2 or CF layout, translated at the edge, lazily.

Each dim is given its canonical role from its coordinate's CF ``standard_name`` (or ``axis``),
else from its name:

============================  ==========================================================
role                          standard_name / names
============================  ==========================================================
``init_time``                 ``forecast_reference_time``; init_time, reftime, (``time`` when a lead dim is there: WeatherBench 2)
``lead_time``                 ``forecast_period``; prediction_timedelta, step, lead_time, leadtime
``time`` (analyses)           ``time``; time, valid_time
``member``                    ``realization``; number, member, realization, ensemble_member, ens
``level`` (hPa)               ``air_pressure``; level, pressure_level, plev, isobaricInhPa (Pa converted)
``latitude`` / ``longitude``  ``latitude`` / ``longitude``; lat / lon
============================  ==========================================================

A dim with no role refuses the input, naming the dims.  Variables keep ECMWF short names
(``t2m``, ``z``...): WeatherBench 2 long names (``2m_temperature``), ECMWF short names and CF
standard names are translated, units converted (:func:`data.translate.canonical_variable`).
A deterministic forecast is a 1-member ensemble.  Nothing is loaded: the dataset is
dask-backed, chunked as stored, so a multi-terabyte WeatherBench 2 store is read chunk by
chunk by whoever indexes it (the ingest reads one field at a time).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from enspp.data import schema
from enspp.data.translate import ReaderError, canonical_variable, finalise

__all__ = ["open_cf", "open_cf_netcdf", "open_cf_zarr", "open_weatherbench_zarr"]

_ROLE_BY_STANDARD_NAME = {
    "forecast_reference_time": schema.INIT_TIME, "forecast_period": schema.LEAD_TIME,
    "time": schema.TIME, "realization": schema.MEMBER, "air_pressure": schema.LEVEL,
    "latitude": schema.LATITUDE, "longitude": schema.LONGITUDE, "grid_latitude": schema.LATITUDE,
    "grid_longitude": schema.LONGITUDE,
}
_ROLE_BY_NAME = {
    "init_time": schema.INIT_TIME, "forecast_reference_time": schema.INIT_TIME,
    "reftime": schema.INIT_TIME, "reference_time": schema.INIT_TIME,
    "lead_time": schema.LEAD_TIME, "prediction_timedelta": schema.LEAD_TIME,
    "step": schema.LEAD_TIME, "leadtime": schema.LEAD_TIME, "forecast_period": schema.LEAD_TIME,
    "time": schema.TIME, "valid_time": schema.TIME,
    "member": schema.MEMBER, "number": schema.MEMBER, "realization": schema.MEMBER,
    "ensemble_member": schema.MEMBER, "ens": schema.MEMBER,
    "level": schema.LEVEL, "pressure_level": schema.LEVEL, "plev": schema.LEVEL,
    "isobaricinhpa": schema.LEVEL, "pressure": schema.LEVEL,
    "latitude": schema.LATITUDE, "lat": schema.LATITUDE,
    "longitude": schema.LONGITUDE, "lon": schema.LONGITUDE,
}
#: CF standard names of variables -> canonical short name (surface, on pressure levels)
_BY_STANDARD_NAME = {
    "air_temperature": ("t2m", "t"), "geopotential": ("orog", "z"),
    "geopotential_height": (None, "gh"), "eastward_wind": ("u10", "u"),
    "northward_wind": ("v10", "v"), "specific_humidity": ("q", "q"),
    "relative_humidity": ("r", "r"), "lagrangian_tendency_of_air_pressure": ("w", "w"),
    "air_pressure_at_mean_sea_level": ("msl", None), "surface_air_pressure": ("sp", None),
    "precipitation_amount": ("tp", None), "dew_point_temperature": ("d2m", None),
    "wind_speed_of_gust": ("10fg", None), "land_binary_mask": ("lsm", None),
    "surface_altitude": ("orog", None),
}
_PRESSURE_UNITS = {"hpa": 1.0, "millibar": 1.0, "mbar": 1.0, "mb": 1.0, "pa": 0.01}


def open_cf(path: str | os.PathLike[str], *, kind: schema.Kind | None = None,
            allow_nan: bool = True) -> xr.Dataset:
    """A Zarr store (directory) or NetCDF file in CF or WeatherBench 2 layout, canonical."""
    p = Path(path)
    return open_cf_zarr(p, kind=kind, allow_nan=allow_nan) if p.is_dir() else \
        open_cf_netcdf(p, kind=kind, allow_nan=allow_nan)


def open_cf_zarr(path: str | os.PathLike[str], *, kind: schema.Kind | None = None,
                 allow_nan: bool = True) -> xr.Dataset:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such Zarr store")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            raw = xr.open_zarr(p, consolidated=None, chunks={}, decode_timedelta=True)
    except Exception as e:  # noqa: BLE001 - zarr raises several types for a non-store
        raise ReaderError(f"{p}: not a readable Zarr store ({type(e).__name__}: {e})") from e
    return translate(raw, source=str(p), kind=kind, allow_nan=allow_nan)


def open_cf_netcdf(path: str | os.PathLike[str], *, kind: schema.Kind | None = None,
                   allow_nan: bool = True) -> xr.Dataset:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        raw = xr.open_dataset(p, chunks={}, decode_timedelta=True)
    except (OSError, ValueError) as e:
        raise ReaderError(f"{p}: not a readable NetCDF file ({e})") from e
    if raw.attrs.get("enspp_kind") in ("forecast", "analysis"):
        return _own_export(raw, source=str(p), kind=kind, allow_nan=allow_nan)
    return translate(raw, source=str(p), kind=kind, allow_nan=allow_nan)


def _own_export(raw: xr.Dataset, *, source: str, kind: schema.Kind | None,
                allow_nan: bool) -> xr.Dataset:
    """One of our stores exported to NetCDF (``xr.open_zarr(store).to_netcdf(f)``): already
    in the canonical model (grids and stations alike), so read as it is, lazily; a field
    the store did not hold is NaN everywhere there and is recorded as absent again."""
    found = str(raw.attrs["enspp_kind"])
    if kind is not None and kind != found:
        raise ReaderError(f"{source}: holds {'forecasts' if found == 'forecast' else 'analyses'} "
                          f"(an enspp {found} store exported to NetCDF), expected a {kind}")
    data = {name: da for name, da in raw.data_vars.items() if da.dtype.kind in "fiu"}
    if not data:
        raise ReaderError(f"{source}: no data variables")
    ds = xr.Dataset(data, coords=raw.coords)
    ds.attrs.update({k: v for k, v in raw.attrs.items() if k in ("enspp_centre",)})
    return finalise(ds, kind=found, source=source, allow_nan=allow_nan)  # type: ignore[arg-type]


def open_weatherbench_zarr(path: str | os.PathLike[str], *, allow_nan: bool = True) -> xr.Dataset:
    """A WeatherBench 2 store: forecasts (``time``, ``prediction_timedelta``, ``number``...)
    or analyses (``time`` only, as WB2's ERA5), canonical and lazy."""
    return open_cf_zarr(path, allow_nan=allow_nan)


def _role(ds: xr.Dataset, dim: str) -> str | None:
    coord = ds.coords.get(dim)
    if coord is not None:
        std = str(coord.attrs.get("standard_name", "")).lower()
        if std in _ROLE_BY_STANDARD_NAME:
            return _ROLE_BY_STANDARD_NAME[std]
        axis = str(coord.attrs.get("axis", "")).upper()
        if axis == "Z":
            return schema.LEVEL
    return _ROLE_BY_NAME.get(dim.lower())


def translate(raw: xr.Dataset, *, source: str, kind: schema.Kind | None = None,
              allow_nan: bool = True) -> xr.Dataset:
    """``raw`` (a CF / WeatherBench 2 dataset) in the canonical model, without loading it."""
    bounds = {str(c.attrs["bounds"]) for c in raw.variables.values() if "bounds" in c.attrs}
    data = {name: da for name, da in raw.data_vars.items()
            if name not in bounds and da.ndim > 0 and da.dtype.kind in "fiu"}
    if not data:
        raise ReaderError(f"{source}: no data variables (variables: {sorted(map(str, raw.variables))})")
    dims = sorted({str(d) for da in data.values() for d in da.dims})
    roles = {d: _role(raw, d) for d in dims}
    unknown = [d for d, r in roles.items() if r is None]
    if unknown:
        raise ReaderError(f"{source}: dims {unknown} are not ones enspp knows (known roles: "
                          "init_time/forecast_reference_time, lead_time/prediction_timedelta/"
                          "step, time, member/number/realization, level/pressure_level, "
                          "latitude/lat, longitude/lon)")
    has_lead = schema.LEAD_TIME in roles.values()
    if has_lead and schema.INIT_TIME not in roles.values():
        roles = {d: schema.INIT_TIME if r == schema.TIME else r for d, r in roles.items()}
    found = "forecast" if has_lead or schema.INIT_TIME in roles.values() else "analysis"
    # an analysis whose time reads as an init time (and no lead dim): say why it is a forecast
    why = "" if has_lead else _why_init(raw, roles)
    if kind is not None and kind != found:
        raise ReaderError(f"{source}: holds {'forecasts' if found == 'forecast' else 'analyses'} "
                          f"(dims {dims}{why}), expected {'an' if kind == 'analysis' else 'a'} "
                          f"{kind}")
    taken: dict[str, str] = {}
    for d, r in roles.items():
        if r in taken:
            raise ReaderError(f"{source}: dims {taken[r]!r} and {d!r} both read as {r!r}")
        taken[str(r)] = d
    ds = xr.Dataset(data).drop_vars([c for c in raw.coords if c not in dims], errors="ignore")
    ds = ds.rename({d: r for d, r in roles.items() if d != r})
    ds = _fix_coords(ds, raw, roles, source)
    for r, d in taken.items():  # zero init times (times, members...): nothing to read
        if ds.sizes.get(r, 1) == 0:
            what = {schema.INIT_TIME: "init times", schema.TIME: "times",
                    schema.LEAD_TIME: "lead times", schema.MEMBER: "members",
                    schema.LEVEL: "levels"}.get(r, f"{r} values")
            raise ReaderError(f"{source}: holds no {what} (dim {d!r} is empty)")
    if found == "forecast":
        for dim in (schema.INIT_TIME, schema.LEAD_TIME):
            if dim not in ds.dims:
                hint = ("; an analysis? its time dim must read as 'time' (standard_name "
                        "'time', or none)" if dim == schema.LEAD_TIME and why else "")
                raise ReaderError(f"{source}: a forecast needs {dim!r} (dims {dims}{why}){hint}")
        _check_leads(ds[schema.LEAD_TIME], taken[schema.LEAD_TIME], source)
        if schema.MEMBER not in ds.dims:  # a deterministic forecast: a 1-member ensemble
            ds = ds.expand_dims({schema.MEMBER: [0]})
    out = {}
    for name, da in ds.data_vars.items():
        new, converted = canonical_variable(_with_units(da, str(name), source),
                                            _short_name(str(name), da), source=source)
        if new in out:
            raise ReaderError(f"{source}: two variables map to {new!r}")
        out[new] = converted
    ds = xr.Dataset(out, coords={c: ds[c] for c in ds.dims if c in ds.coords})
    centre = raw.attrs.get("centre") or raw.attrs.get("institution")
    if centre and len(str(centre).split()) == 1:
        ds.attrs["enspp_centre"] = str(centre)
    return finalise(ds, kind=found, source=source, allow_nan=allow_nan)  # type: ignore[arg-type]


def _why_init(raw: xr.Dataset, roles: dict) -> str:
    """Why a dim reads as the init time (its ``standard_name``, else its name), for the
    messages of an input read as a forecast without a lead time; "" when none does."""
    for d, r in roles.items():
        if r != schema.INIT_TIME:
            continue
        coord = raw.coords.get(d)
        std = "" if coord is None else str(coord.attrs.get("standard_name", ""))
        if std.lower() in _ROLE_BY_STANDARD_NAME:
            return f"; dim {d!r} is an init time by its standard_name {std!r}"
        return f"; dim {d!r} is an init time by its name"
    return ""


def _check_leads(lead: xr.DataArray, dim: str, source: str) -> None:
    """Lead times are >= 0 and not missing (a forecast is valid at or after its init)."""
    values = np.asarray(lead.values)
    if values.dtype.kind != "m":
        return
    missing = np.isnat(values)
    if missing.any():
        raise ReaderError(f"{source}: lead time dim {dim!r} holds a missing value (NaT)")
    negative = values < np.timedelta64(0, "ns")
    if negative.any():
        h = values[negative][0] / np.timedelta64(1, "h")
        raise ReaderError(f"{source}: lead time {h:g} h (dim {dim!r}) is negative; a forecast's "
                          f"lead times are >= 0")


def _fix_coords(ds: xr.Dataset, raw: xr.Dataset, roles: dict, source: str) -> xr.Dataset:
    if schema.LEVEL in ds.coords:
        lev = ds[schema.LEVEL]
        units = str(lev.attrs.get("units", "hPa")).lower()
        if units not in _PRESSURE_UNITS:
            raise ReaderError(f"{source}: level coordinate in units {units!r}; only pressure "
                              "levels (hPa, Pa) become a level dim")
        values = lev.values.astype(float) * _PRESSURE_UNITS[units]
        ds = ds.assign_coords({schema.LEVEL: values})
    if schema.LEAD_TIME in ds.coords and ds[schema.LEAD_TIME].dtype.kind != "m":
        lead = ds[schema.LEAD_TIME]
        units = str(lead.attrs.get("units", "")).split(" since ")[0].strip().lower()
        step = {"hours": "h", "hour": "h", "h": "h", "minutes": "m", "seconds": "s",
                "days": "D"}.get(units)
        if step is None:
            raise ReaderError(f"{source}: lead time coordinate in units {units!r} is not a "
                              "duration (hours, minutes, seconds, days)")
        ds = ds.assign_coords({schema.LEAD_TIME: (lead.values.astype(np.int64)
                                                  .astype(f"timedelta64[{step}]"))})
    return ds


def _short_name(name: str, da: xr.DataArray) -> str:
    from enspp.data.translate import canonical_name

    if canonical_name(name) in schema.VARIABLES:
        return name
    std = str(da.attrs.get("standard_name", "")).lower()
    pair = _BY_STANDARD_NAME.get(std)
    if pair is not None:
        pick = pair[1] if schema.LEVEL in da.dims else pair[0]
        if pick:
            return pick
    return name


def _with_units(da: xr.DataArray, name: str, source: str) -> xr.DataArray:
    """Units a WeatherBench 2 store may leave out, from the variable table."""
    if "units" in da.attrs:
        return da
    from enspp.data.translate import canonical_name

    info = schema.VARIABLES.get(canonical_name(_short_name(name, da)))
    if info is None:
        raise ReaderError(f"{source}: variable {name!r} has no units")
    return da.assign_attrs(units=info.units)
