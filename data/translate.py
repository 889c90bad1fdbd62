"""Translation of foreign names and units into the canonical data model, done once at the edge.

Every reader in :mod:`data.readers` funnels its output through :func:`canonical_variable` (name
and units of one variable) and :func:`finalise` (dim order, dtypes, validation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data import schema
from enspp.data.errors import EnsppError

__all__ = ["GRAVITY", "ReaderError", "canonical_name", "canonical_variable", "finalise",
           "normalise_longitude", "td_ns", "to_ns"]

#: standard gravity (m s-2), converts geopotential height (gpm) to geopotential (m2 s-2)
GRAVITY = 9.80665

#: GRIB shortNames that become a different canonical variable (``gh`` is converted by units)
_GRIB_NAMES = {**schema.SHORT_NAME_ALIASES, "fg10_3": "10fg3", "fg310": "10fg3", "i10fg": "10fg"}

#: (canonical variable, units found) -> (function to canonical units, canonical units)
_CONVERSIONS: dict[tuple[str, str], tuple[Callable, str]] = {
    ("z", "gpm"): (lambda x: x * GRAVITY, "m2 s-2"),
    ("z", "m"): (lambda x: x * GRAVITY, "m2 s-2"),
    ("orog", "m2 s-2"): (lambda x: x / GRAVITY, "m"),
    ("msl", "hPa"): (lambda x: x * 100.0, "Pa"),
    ("tp24", "m"): (lambda x: x * 1000.0, "mm"),
    ("sp", "hPa"): (lambda x: x * 100.0, "Pa"),
}


class ReaderError(EnsppError):
    """Input that cannot be read into the canonical model; the message names the file."""


def canonical_name(name: str, *, type_of_level: str | None = None) -> str:
    """Canonical short name of a foreign (GRIB / WeatherBench / CF) variable name.

    Geopotential on the surface is the orography (``z`` at ``surface`` -> ``orog``).
    """
    if name == "z" and type_of_level == "surface":
        return "orog"
    return _GRIB_NAMES.get(name, name)


def canonical_variable(da: xr.DataArray, name: str, *, source: str,
                       type_of_level: str | None = None) -> tuple[str, xr.DataArray]:
    """Rename ``da`` to its canonical name, convert to canonical units and set CF attributes.

    Units are taken from ``da.attrs['units']``; a variable of the variable table in other known
    units is converted (``gpm`` -> ``m2 s-2`` for geopotential, ``hPa`` -> ``Pa`` for pressure);
    units outside :data:`data.schema.KNOWN_UNITS` raise :class:`ReaderError` naming ``source``.
    Temperatures in ``degC`` stay in ``degC`` (station data).
    """
    new = canonical_name(name, type_of_level=type_of_level)
    raw_units = da.attrs.get("units")
    if raw_units is None:
        raise ReaderError(f"{source}: variable {name!r} has no units")
    units = schema.normalise_units(str(raw_units))
    if units not in schema.KNOWN_UNITS:
        raise ReaderError(f"{source}: variable {name!r} is in unknown units {raw_units!r} "
                          f"(known: {sorted(schema.KNOWN_UNITS)})")
    if new == "z" and name == "gh":
        units = "gpm" if units == "m" else units
    convert = _CONVERSIONS.get((new, units))
    if convert is not None:
        fn, units = convert
        da = fn(da)
    attrs = {k: v for k, v in da.attrs.items() if not k.startswith("GRIB_")}
    attrs = {k: v for k, v in attrs.items() if k not in ("units", "long_name", "standard_name")}
    attrs["units"] = units
    if "GRIB_shortName" in da.attrs:
        attrs["grib_short_name"] = da.attrs["GRIB_shortName"]
    da = schema.annotate(_with_attrs(da, attrs), new)
    return new, da.rename(new)


def _with_attrs(da: xr.DataArray, attrs: dict) -> xr.DataArray:
    out = da.copy(deep=False)
    out.attrs = dict(attrs)
    return out


def to_ns(values) -> np.ndarray:
    """datetime64 values of any resolution -> datetime64[ns] (pandas 3 makes [us])."""
    return pd.DatetimeIndex(np.atleast_1d(values)).as_unit("ns").values


def td_ns(values) -> np.ndarray:
    """timedelta64 values of any resolution -> timedelta64[ns]."""
    return pd.TimedeltaIndex(np.atleast_1d(values)).as_unit("ns").values


def normalise_longitude(ds: xr.Dataset) -> xr.Dataset:
    """Make longitude strictly increasing: wrap to -180..180 when a grid crosses 0 E in 0..360."""
    if schema.LONGITUDE not in ds.dims or ds.sizes[schema.LONGITUDE] < 2:
        return ds
    lon = ds[schema.LONGITUDE].values
    if np.all(np.diff(lon) > 0):
        return ds
    wrapped = ((lon + 180.0) % 360.0) - 180.0
    ds = ds.assign_coords({schema.LONGITUDE: wrapped})
    return ds.sortby(schema.LONGITUDE)


def finalise(ds: xr.Dataset, *, kind: schema.Kind, source: str, allow_nan: bool = False,
             float_dtype: str = "float32") -> xr.Dataset:
    """Order dims canonically, normalise coordinate dtypes and validate (``SchemaError`` ->
    :class:`ReaderError` naming ``source``)."""
    coords = {}
    for dim in (schema.INIT_TIME, schema.TIME):
        if dim in ds.coords:
            coords[dim] = (ds[dim].dims, to_ns(ds[dim].values).reshape(ds[dim].shape))
    if schema.LEAD_TIME in ds.coords:
        coords[schema.LEAD_TIME] = (ds[schema.LEAD_TIME].dims,
                                    td_ns(ds[schema.LEAD_TIME].values).reshape(ds[schema.LEAD_TIME].shape))
    if schema.MEMBER in ds.coords:
        coords[schema.MEMBER] = (ds[schema.MEMBER].dims, ds[schema.MEMBER].values.astype(np.int64))
    if schema.LEVEL in ds.coords:
        lev = ds[schema.LEVEL].values
        coords[schema.LEVEL] = (ds[schema.LEVEL].dims,
                                lev.astype(np.int64) if np.allclose(lev, np.round(lev)) else lev)
    ds = ds.assign_coords(coords)
    ds = normalise_longitude(ds)
    order = schema.FORECAST_DIM_ORDER if kind == "forecast" else schema.ANALYSIS_DIM_ORDER
    for dim in (schema.INIT_TIME, schema.TIME, schema.LEAD_TIME, schema.LEVEL):
        if dim in ds.dims and ds.sizes[dim] > 1 and not np.all(np.diff(ds[dim].values) > 0):
            ds = ds.sortby(dim)
    out = {}
    for name, da in ds.data_vars.items():
        dims = [d for d in order if d in da.dims] + [d for d in da.dims if d not in order]
        da = da.transpose(*dims)
        if da.dtype != np.dtype(float_dtype):
            da = da.astype(float_dtype)
        out[name] = da
    ds = xr.Dataset(out, coords=ds.coords, attrs=ds.attrs)
    try:
        return schema.validate(ds, kind=kind, source=source, allow_nan=allow_nan)
    except schema.SchemaError as e:
        raise ReaderError(str(e)) from e
