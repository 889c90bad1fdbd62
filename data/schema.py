"""The canonical data model: dims, variable names, units, and one validation function.

Conventions (said out loud once, used everywhere):

* Forecasts: dims ``init_time`` (datetime64[ns]), ``lead_time`` (timedelta64[ns]),
  ``member`` (int, 0-based; the control is member 0), optional ``level`` (hPa), and either
  ``latitude``/``longitude`` (degrees; latitude strictly monotonic, longitude strictly
  increasing) or ``station``.  ``valid_time = init_time + lead_time`` is a derived coordinate.
* Analyses / observations: dim ``time`` plus the same spatial dims (and optionally ``level``,
  ``member`` for an analysis ensemble).
* Data variables use ECMWF short names (``z``, ``t``, ``t2m``, ``10fg3``...), carry CF
  ``units`` and, where one exists, ``standard_name``.  A variable at a level is addressed as
  ``<short><level>``, e.g. ``z500`` or ``t850``; :func:`select_variable` resolves such a name
  both in a dataset that has ``z`` with a ``level`` dim and in one holding ``z500`` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError

INIT_TIME = "init_time"
LEAD_TIME = "lead_time"
VALID_TIME = "valid_time"
MEMBER = "member"
LEVEL = "level"
LATITUDE = "latitude"
LONGITUDE = "longitude"
STATION = "station"
TIME = "time"

SPATIAL_DIMS_GRID = (LATITUDE, LONGITUDE)
SPATIAL_DIMS_POINT = (STATION,)

#: The order in which dims are stored (those present, in this order).
FORECAST_DIM_ORDER = (INIT_TIME, LEAD_TIME, MEMBER, LEVEL, LATITUDE, LONGITUDE, STATION)
ANALYSIS_DIM_ORDER = (TIME, MEMBER, LEVEL, LATITUDE, LONGITUDE, STATION)

Kind = Literal["forecast", "analysis"]

#: CF attributes of the canonical coordinates (stores write them; the time coordinates get
#: their ``units`` from the encoding: seconds since 1970 for records, seconds for lead times)
COORD_ATTRS: dict[str, dict[str, str]] = {
    INIT_TIME: {"standard_name": "forecast_reference_time",
                "long_name": "initialisation time of the forecast"},
    LEAD_TIME: {"standard_name": "forecast_period", "long_name": "lead time",
                "units": "seconds"},
    TIME: {"standard_name": "time", "long_name": "time", "axis": "T"},
    MEMBER: {"standard_name": "realization", "long_name": "ensemble member (0: the control)",
             "units": "1"},
    LEVEL: {"standard_name": "air_pressure", "long_name": "pressure level", "units": "hPa",
            "positive": "down", "axis": "Z"},
    LATITUDE: {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north",
               "axis": "Y"},
    LONGITUDE: {"standard_name": "longitude", "long_name": "longitude",
                "units": "degrees_east", "axis": "X"},
    STATION: {"long_name": "station", "cf_role": "timeseries_id"},
}


class SchemaError(EnsppError):
    """A dataset does not follow the canonical data model; the message says what and where."""


class VariableNotFoundError(SchemaError, KeyError):
    """A variable (or its level) is not in a dataset; a ``KeyError`` too, for lookups."""


@dataclass(frozen=True)
class VariableInfo:
    short_name: str
    units: str
    long_name: str
    standard_name: str | None = None
    #: pressure-level variable (True) or single-level / surface (False)
    on_levels: bool = False


_VARIABLES = [
    VariableInfo("z", "m2 s-2", "Geopotential", "geopotential", True),
    VariableInfo("t", "K", "Temperature", "air_temperature", True),
    VariableInfo("u", "m s-1", "U component of wind", "eastward_wind", True),
    VariableInfo("v", "m s-1", "V component of wind", "northward_wind", True),
    VariableInfo("w", "Pa s-1", "Vertical velocity", "lagrangian_tendency_of_air_pressure", True),
    VariableInfo("q", "kg kg-1", "Specific humidity", "specific_humidity", True),
    VariableInfo("r", "%", "Relative humidity", "relative_humidity", True),
    VariableInfo("pv", "K m2 kg-1 s-1", "Potential vorticity", "ertel_potential_vorticity", True),
    VariableInfo("t2m", "K", "2 metre temperature", "air_temperature"),
    VariableInfo("d2m", "K", "2 metre dewpoint temperature", "dew_point_temperature"),
    VariableInfo("u10", "m s-1", "10 metre U wind component", "eastward_wind"),
    VariableInfo("v10", "m s-1", "10 metre V wind component", "northward_wind"),
    VariableInfo("msl", "Pa", "Mean sea level pressure", "air_pressure_at_mean_sea_level"),
    VariableInfo("sp", "Pa", "Surface pressure", "surface_air_pressure"),
    VariableInfo("tp", "m", "Total precipitation", "precipitation_amount"),
    VariableInfo("tp24", "mm", "24 hour accumulated precipitation", "precipitation_amount"),
    VariableInfo("10fg", "m s-1", "10 metre wind gust", "wind_speed_of_gust"),
    VariableInfo("10fg3", "m s-1", "Maximum 10 metre wind gust in the last 3 hours", "wind_speed_of_gust"),
    VariableInfo("10fg6", "m s-1", "Maximum 10 metre wind gust in the last 6 hours", "wind_speed_of_gust"),
    VariableInfo("lsm", "1", "Land-sea mask", "land_binary_mask"),
    VariableInfo("orog", "m", "Orography (height of the surface)", "surface_altitude"),
]
VARIABLES: dict[str, VariableInfo] = {v.short_name: v for v in _VARIABLES}

#: Foreign short names translated at the edge (cfgrib / WeatherBench / station files).
SHORT_NAME_ALIASES = {
    "2t": "t2m",
    "2d": "d2m",
    "10u": "u10",
    "10v": "v10",
    "gh": "z",  # geopotential height is converted by the reader, not just renamed
    "geopotential": "z",
    "temperature": "t",
    "2m_temperature": "t2m",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "specific_humidity": "q",
    "mean_sea_level_pressure": "msl",
    "total_precipitation": "tp",
    # WeatherBench 2 names
    "10m_u_component_of_wind": "u10",
    "10m_v_component_of_wind": "v10",
    "2m_dewpoint_temperature": "d2m",
    "surface_pressure": "sp",
    "relative_humidity": "r",
    "vertical_velocity": "w",
    "total_precipitation_24hr": "tp24",
    "land_sea_mask": "lsm",
    "geopotential_at_surface": "orog",
}

#: Units accepted as spelled differently but meaning the same thing.
UNIT_SYNONYMS = {
    "m**2 s**-2": "m2 s-2",
    "m^2 s^-2": "m2 s-2",
    "m**2/s**2": "m2 s-2",
    "m s**-1": "m s-1",
    "m/s": "m s-1",
    "kelvin": "K",
    "Pa s**-1": "Pa s-1",
    "kg kg**-1": "kg kg-1",
    "K m**2 kg**-1 s**-1": "K m2 kg-1 s-1",
    "(0 - 1)": "1",
    "0-1": "1",
    "~": "1",
    "millimeter": "mm",
    "degC": "degC",
    "°C": "degC",
    "Celsius": "degC",
}

#: Units we know for each variable besides the canonical one (converted by readers).
KNOWN_UNITS = {"m2 s-2", "K", "degC", "m s-1", "Pa s-1", "kg kg-1", "%", "K m2 kg-1 s-1",
               "Pa", "hPa", "m", "mm", "1", "gpm"}

_LEVEL_NAME = re.compile(r"^([A-Za-z][A-Za-z_]*?)(\d+)$")


def normalise_units(units: str) -> str:
    """Map a spelling of a unit onto the canonical one (``m**2 s**-2`` -> ``m2 s-2``)."""
    u = units.strip()
    return UNIT_SYNONYMS.get(u, u)


def split_level_name(name: str) -> tuple[str, int | None]:
    """``"z500"`` -> ``("z", 500)``; ``"t2m"`` / ``"10fg3"`` -> (name, None).

    Names of known single-level variables are never split (``t2m`` is not ``t`` at 2 hPa).
    """
    if name in VARIABLES and not VARIABLES[name].on_levels:
        return name, None
    m = _LEVEL_NAME.match(name)
    if m and m.group(1) in VARIABLES and VARIABLES[m.group(1)].on_levels:
        return m.group(1), int(m.group(2))
    return name, None


def level_name(short_name: str, level: int | float | None) -> str:
    """Inverse of :func:`split_level_name`."""
    return short_name if level is None else f"{short_name}{int(level)}"


def select_variable(ds: xr.Dataset, name: str) -> xr.DataArray:
    """Return the variable ``name`` (e.g. ``"z500"``, ``"t2m"``) without a level dim.

    Looks for a data variable called exactly ``name`` first, then for the short name with a
    ``level`` dim holding that level.  Raises :class:`VariableNotFoundError` (a ``KeyError``)
    naming what is available.
    """
    if name in ds.data_vars:
        da = ds[name]
        if LEVEL in da.dims and da.sizes[LEVEL] == 1:
            da = da.isel({LEVEL: 0}, drop=True)
        return da.rename(name)
    short, level = split_level_name(name)
    if level is not None and short in ds.data_vars and LEVEL in ds[short].dims:
        levels = ds[short][LEVEL].values
        if level not in levels:
            raise VariableNotFoundError(f"variable {name!r}: level {level} hPa is not in the data "
                           f"(levels of {short!r}: {sorted(int(x) for x in levels)})")
        return ds[short].sel({LEVEL: level}, drop=True).rename(name)
    raise VariableNotFoundError(f"variable {name!r} is not in the dataset (available: {available_variables(ds)})")


def available_variables(ds: xr.Dataset) -> list[str]:
    """All addressable names: ``z500``, ``z850``, ``t2m``, ... (level variables expanded)."""
    names: list[str] = []
    for v, da in ds.data_vars.items():
        if LEVEL in da.dims:
            names.extend(level_name(str(v), lev) for lev in da[LEVEL].values)
        else:
            names.append(str(v))
    return names


def spatial_dims(ds: xr.Dataset | xr.DataArray) -> tuple[str, ...]:
    """``("latitude", "longitude")`` for gridded data, ``("station",)`` for point data."""
    if LATITUDE in ds.dims and LONGITUDE in ds.dims:
        return SPATIAL_DIMS_GRID
    if STATION in ds.dims:
        return SPATIAL_DIMS_POINT
    raise SchemaError(f"no spatial dims: expected {LATITUDE!r}/{LONGITUDE!r} or {STATION!r}, "
                      f"found dims {tuple(ds.dims)}")


def add_valid_time(ds: xr.Dataset) -> xr.Dataset:
    """Attach the derived coordinate ``valid_time(init_time, lead_time)``."""
    return ds.assign_coords({VALID_TIME: ds[INIT_TIME] + ds[LEAD_TIME]})


def detect_kind(ds: xr.Dataset) -> Kind:
    if INIT_TIME in ds.dims or LEAD_TIME in ds.dims:
        return "forecast"
    if TIME in ds.dims:
        return "analysis"
    raise SchemaError(f"cannot tell forecast from analysis: neither {INIT_TIME!r}/{LEAD_TIME!r} "
                      f"nor {TIME!r} among dims {tuple(ds.dims)}")


def validate(ds: xr.Dataset, *, kind: Kind | None = None, source: str | None = None,
             allow_nan: bool = False) -> xr.Dataset:
    """Check ``ds`` against the canonical data model; return it unchanged or raise SchemaError.

    Checks: required dims present; dtypes of time, lead-time, member and level coordinates;
    strictly monotonic spatial and time coordinates; no duplicate init times / times / members;
    every data variable has known ``units``; no NaN in data variables unless ``allow_nan``
    (only checked on numpy-backed data here, dask-backed data are checked when written).
    ``source`` (a file or store name) prefixes every message.
    """
    where = f"{source}: " if source else ""

    def fail(msg: str) -> None:
        raise SchemaError(where + msg)

    kind = kind or detect_kind(ds)
    required = (INIT_TIME, LEAD_TIME, MEMBER) if kind == "forecast" else (TIME,)
    for dim in required:
        if dim not in ds.dims:
            fail(f"missing dim {dim!r} for {'an' if kind == 'analysis' else 'a'} {kind} "
                 f"(dims: {tuple(ds.dims)})")
    try:
        spatial = spatial_dims(ds)
    except SchemaError as e:
        fail(str(e))
    for dim in (*required, *spatial, *( (LEVEL,) if LEVEL in ds.dims else ())):
        if dim not in ds.coords:
            fail(f"dim {dim!r} has no coordinate")

    def check_dtype(name: str, kinds: str, what: str) -> None:
        if name in ds.coords and ds[name].dtype.kind not in kinds:
            fail(f"coordinate {name!r} must be {what}, got dtype {ds[name].dtype}")

    check_dtype(INIT_TIME, "M", "datetime64")
    check_dtype(TIME, "M", "datetime64")
    check_dtype(LEAD_TIME, "m", "timedelta64")
    check_dtype(MEMBER, "iu", "integer (0-based member numbers)")
    check_dtype(LEVEL, "iuf", "numeric (hPa)")

    for dim in (INIT_TIME, TIME, MEMBER, LEAD_TIME, LEVEL, STATION):
        if dim in ds.coords and ds[dim].ndim == 1:
            vals = ds[dim].values
            uniq, counts = np.unique(vals, return_counts=True)
            if len(uniq) != len(vals):
                dup = uniq[counts > 1][:3]
                fail(f"duplicate values in {dim!r}: {[str(d) for d in dup]}")
    if MEMBER in ds.coords and ds[MEMBER].size and int(ds[MEMBER].min()) < 0:
        fail(f"member numbers are 0-based and non-negative, got {int(ds[MEMBER].min())}")
    for dim in (INIT_TIME, TIME, LEAD_TIME):
        if dim in ds.coords and ds[dim].size > 1 and not _strictly_increasing(ds[dim].values):
            fail(f"coordinate {dim!r} is not strictly increasing")
    if LATITUDE in ds.dims and ds[LATITUDE].size > 1:  # (on stations it is a plain coordinate)
        lat = ds[LATITUDE].values
        if not (_strictly_increasing(lat) or _strictly_increasing(lat[::-1])):
            fail(f"coordinate {LATITUDE!r} is not strictly monotonic")
        if np.nanmax(np.abs(lat)) > 90:
            fail(f"latitudes out of range: {float(np.nanmin(lat))}..{float(np.nanmax(lat))}")
    if LONGITUDE in ds.dims and ds[LONGITUDE].size > 1:
        if not _strictly_increasing(ds[LONGITUDE].values):
            fail(f"coordinate {LONGITUDE!r} is not strictly increasing")

    if not ds.data_vars:
        fail("no data variables")
    for name, da in ds.data_vars.items():
        units = da.attrs.get("units")
        if units is None:
            fail(f"variable {name!r} has no 'units' attribute")
        if normalise_units(str(units)) not in KNOWN_UNITS:
            fail(f"variable {name!r} is in unknown units {units!r} (known: {sorted(KNOWN_UNITS)})")
        if da.dtype.kind not in "f":
            fail(f"variable {name!r} must be floating point, got {da.dtype}")
        if (not allow_nan and not _is_dask(da) and not _known_nan_free(da) and da.size
                and bool(np.isnan(da.values).any())):
            n = int(np.isnan(da.values).sum())
            fail(f"variable {name!r} holds {n} NaN values of {da.size}")
    return ds


def _strictly_increasing(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1]))


def _known_nan_free(da: xr.DataArray) -> bool:
    """True for lazily decoded data whose reader already proved it free of missing values
    (``data.ingest_grib``: the GRIB bitmaps), so validation need not decode it."""
    data = da.variable._data
    for _ in range(8):  # lazily indexed wrappers around the backend array
        if getattr(data, "nan_free", False):
            return True
        data = getattr(data, "array", None)
        if data is None:
            return False
    return False


def _is_dask(da: xr.DataArray) -> bool:
    # not ``da.data``: for lazily indexed (backend) arrays that property loads the values
    return da.chunks is not None


def annotate(da: xr.DataArray, short_name: str) -> xr.DataArray:
    """Set CF ``units``, ``standard_name`` and ``long_name`` from the variable table, keeping
    units already present (readers convert units before calling this)."""
    info = VARIABLES.get(short_name)
    attrs = dict(da.attrs)
    if info is not None:
        attrs.setdefault("units", info.units)
        attrs.setdefault("long_name", info.long_name)
        if info.standard_name:
            attrs.setdefault("standard_name", info.standard_name)
    return da.assign_attrs(attrs)
