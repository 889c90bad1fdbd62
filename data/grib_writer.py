"""Write canonical datasets as GRIB2 with the eccodes Python API (cfgrib's writer is broken).

One message per (time, lead, member, level) field.  Values are packed with 16-bit simple
packing, so a round trip returns each field within its packing precision
(``(max - min) / 2**16`` of that field, e.g. ~0.001 K for temperature, ~0.5 m2 s-2 for z500);
grid coordinates are stored in micro-degrees (GRIB2), so e.g. 84.193548... reads back as 84.193548.

Forecasts (dims ``init_time``, ``lead_time``, ``member``, optional ``level``, ``latitude``,
``longitude``) become ensemble messages (product definition template 1, or 11 for accumulated /
max-in-window variables): member 0 is the control (``dataType`` ``cf``, ``number`` 0), other
members are perturbed (``pf``, ``number`` = member), ``numberOfForecastsInEnsemble`` = the
member count.  Analyses (dim ``time``, optional ``member`` for an analysis ensemble) become
``dataType`` ``an`` messages at step 0.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# eccodes is imported inside the functions that encode, so that importing this module (the
# synthetic world's config does) needs no GRIB library: training runs where it is absent
import numpy as np
import pandas as pd
import xarray as xr

from enspp.data import schema
from enspp.data.errors import EnsppError

__all__ = ["GribWriteError", "GRIB_PARAMS", "GribFields", "write_grib", "write_fields"]

BITS_PER_VALUE = 16


class GribWriteError(EnsppError):
    """A dataset cannot be written as GRIB; the message names the file and the variable."""


@dataclass(frozen=True)
class GribParam:
    """How one canonical variable is encoded: ECMWF shortName, level type and time processing."""

    short_name: str
    type_of_level: str
    level: int = 0
    #: "instant", "accum" (from step 0) or "max" (over the last ``window_h`` hours)
    step_type: Literal["instant", "accum", "max"] = "instant"
    window_h: int = 0
    #: units the values must be in (canonical units, which are the GRIB units)
    units: str = ""


GRIB_PARAMS: dict[str, GribParam] = {
    "z": GribParam("z", "isobaricInhPa", units="m2 s-2"),
    "t": GribParam("t", "isobaricInhPa", units="K"),
    "u": GribParam("u", "isobaricInhPa", units="m s-1"),
    "v": GribParam("v", "isobaricInhPa", units="m s-1"),
    "w": GribParam("w", "isobaricInhPa", units="Pa s-1"),
    "q": GribParam("q", "isobaricInhPa", units="kg kg-1"),
    "r": GribParam("r", "isobaricInhPa", units="%"),
    "t2m": GribParam("2t", "heightAboveGround", 2, units="K"),
    "d2m": GribParam("2d", "heightAboveGround", 2, units="K"),
    "u10": GribParam("10u", "heightAboveGround", 10, units="m s-1"),
    "v10": GribParam("10v", "heightAboveGround", 10, units="m s-1"),
    "msl": GribParam("msl", "meanSea", units="Pa"),
    "sp": GribParam("sp", "surface", units="Pa"),
    "tp": GribParam("tp", "surface", step_type="accum", units="m"),
    "10fg3": GribParam("10fg3", "heightAboveGround", 10, "max", 3, units="m s-1"),
    "10fg6": GribParam("10fg6", "heightAboveGround", 10, "max", 6, units="m s-1"),
    "lsm": GribParam("lsm", "surface", units="1"),
    "orog": GribParam("orog", "surface", units="m"),
}

#: (from, to) -> function converting values to the GRIB units
_CONVERSIONS = {
    ("degC", "K"): lambda x: x + 273.15,
    ("hPa", "Pa"): lambda x: x * 100.0,
    ("mm", "m"): lambda x: x / 1000.0,
}


def write_grib(path: str | Path, ds: xr.Dataset, *, kind: Literal["forecast", "analysis"],
               append: bool = False) -> int:
    """Write ``ds`` (canonical, regular lat/lon grid) to ``path`` as GRIB2; return messages written.

    Variables are written in the order of ``ds.data_vars``; within a variable the loop runs
    over time (init_time or time), lead_time, member, level.  A field that is entirely NaN is
    absent and not written (so variables with different lead times can share a dataset); a
    partly-NaN field is an error.  ``append=True`` adds messages to
    an existing file.  16-bit packing: values round-trip within the packing precision.
    Everything is checked before the file is opened, so a dataset that cannot be written
    leaves no file (or, with ``append``, an unchanged one).
    """
    path = Path(path)
    _check_kind(kind, path)
    time_dim = schema.INIT_TIME if kind == "forecast" else schema.TIME
    needed = (schema.INIT_TIME, schema.LEAD_TIME, schema.MEMBER) if kind == "forecast" else (schema.TIME,)
    for dim in (*needed, schema.LATITUDE, schema.LONGITUDE):
        if dim not in ds.dims:
            raise GribWriteError(f"{path}: a {kind} needs dim {dim!r} (dims: {tuple(ds.dims)})")
    fields = [_fields_of(str(name), da, kind=kind, time_dim=time_dim, path=path)
              for name, da in ds.data_vars.items()]
    return write_fields(path, fields, kind=kind, latitude=ds[schema.LATITUDE].values,
                        longitude=ds[schema.LONGITUDE].values, append=append,
                        n_members=ds.sizes[schema.MEMBER] if schema.MEMBER in ds.dims else None)


@dataclass(frozen=True)
class GribFields:
    """One variable's fields as plain arrays: the input of :func:`write_fields`.

    ``values`` has shape ``(time, lead, member, level, latitude, longitude)``, with a member
    (level) axis of length 1 when ``members`` (``levels``) is None; ``lead_hours`` is ``(0,)``
    for an analysis.  ``units`` are the values' units (converted to the GRIB units if known).
    """

    name: str
    values: np.ndarray
    times: Sequence
    lead_hours: Sequence[int]
    members: Sequence[int] | None = None
    levels: Sequence[int] | None = None
    units: str = ""


def write_fields(path: str | Path, fields: Sequence[GribFields], *,
                 kind: Literal["forecast", "analysis"], latitude: np.ndarray, longitude: np.ndarray,
                 append: bool = False, n_members: int | None = None) -> int:
    """Write variables given as arrays (:class:`GribFields`) to ``path``; return messages written.

    The array form of :func:`write_grib` (same checks, same bytes, no xarray on the way), for
    writers that produce many small files.  ``n_members`` (the ensemble size in the headers)
    defaults to the longest member list.
    """
    path = Path(path)
    _check_kind(kind, path)
    grid = _grid_keys(np.asarray(latitude, dtype=float), np.asarray(longitude, dtype=float), path)
    if n_members is None:
        sizes = [len(f.members) for f in fields if f.members is not None]
        n_members = max(sizes) if sizes else None
    plans = [_plan_variable(f, kind=kind, path=path) for f in fields]
    messages: list[bytes] = []
    for plan in plans:
        types = ["an"] if kind == "analysis" else sorted({"cf" if m == 0 else "pf" for m in plan.members})
        encoders = {t: _encoder(plan.param, grid, kind=kind, n_members=n_members, data_type=t)
                    for t in types}
        try:
            messages.extend(_encode_variable(encoders, plan, kind=kind))
        except BaseException:
            for enc in encoders.values():
                _drop_encoder(enc)
            raise
    with open(path, "ab" if append else "wb") as fh:
        fh.write(b"".join(messages))
    return len(messages)


def _check_kind(kind: str, path: Path) -> None:
    if kind not in ("forecast", "analysis"):
        raise GribWriteError(f"{path}: kind must be 'forecast' or 'analysis', got {kind!r}")


def _fields_of(name: str, da: xr.DataArray, *, kind: str, time_dim: str, path: Path) -> GribFields:
    """The :class:`GribFields` of one canonical DataArray."""
    order = [d for d in (time_dim, schema.LEAD_TIME, schema.MEMBER, schema.LEVEL,
                         schema.LATITUDE, schema.LONGITUDE) if d in da.dims]
    extra = set(da.dims) - set(order)
    if extra:
        raise GribWriteError(f"{path}: variable {name!r} has unsupported dims {sorted(extra)}")
    values = da.transpose(*order).values
    for axis, dim in ((1, schema.LEAD_TIME), (2, schema.MEMBER), (3, schema.LEVEL)):
        if dim not in da.dims:
            values = np.expand_dims(values, axis)
    default_units = GRIB_PARAMS[name].units if name in GRIB_PARAMS else ""
    return GribFields(
        name=name, values=values, times=pd.DatetimeIndex(da[time_dim].values),
        lead_hours=_lead_hours(da, path, name) if kind == "forecast" else [0],
        members=[int(m) for m in da[schema.MEMBER].values] if schema.MEMBER in da.dims else None,
        levels=[int(v) for v in da[schema.LEVEL].values] if schema.LEVEL in da.dims else None,
        units=str(da.attrs.get("units", default_units)))


@dataclass(frozen=True)
class _VariablePlan:
    """One variable ready to encode: values ``(time, lead, member, level, point)`` and the keys."""

    name: str
    param: GribParam
    values: np.ndarray
    absent: np.ndarray  # (time, lead, member, level): the field is all-NaN, not written
    dates: list[tuple[int, int]]  # (dataDate, dataTime) per time
    steps: list[tuple[str, int | str]]  # ("step", hours) or ("stepRange", "a-b") per lead
    members: list[int | None]
    levels: list[int | None]


def _plan_variable(f: GribFields, *, kind: str, path: Path) -> _VariablePlan:
    """Check one variable and lay out its values and per-message keys (raises before any write)."""
    name = f.name
    param = GRIB_PARAMS.get(name)
    if param is None:
        raise GribWriteError(f"{path}: variable {name!r} has no GRIB encoding "
                             f"(known: {sorted(GRIB_PARAMS)})")
    if f.levels is not None and param.type_of_level != "isobaricInhPa":
        raise GribWriteError(f"{path}: variable {name!r} is a single-level variable but has "
                             f"a {schema.LEVEL!r} dim")
    times = pd.DatetimeIndex(f.times)
    members = [int(m) for m in f.members] if f.members is not None else [None]
    levels = [int(v) for v in f.levels] if f.levels is not None else [None]
    shape = (len(times), len(f.lead_hours), len(members), len(levels))
    values = np.asarray(f.values)
    if values.ndim != 6 or values.shape[:4] != shape:
        raise GribWriteError(f"{path}: variable {name!r}: values of shape {values.shape} do not "
                             f"match (time, lead, member, level) = {shape} + (lat, lon)")
    values = _to_grib_units(values, f.units, param, path, name)
    values = np.asarray(values, dtype=np.float64).reshape(*shape, -1)
    finite = np.isfinite(values)
    absent = ~finite.any(axis=-1)
    if not (finite.all(axis=-1) | absent).all():
        raise GribWriteError(f"{path}: variable {name!r} holds fields partly NaN/inf; GRIB fields "
                             "here carry no missing-value bitmap")
    # a lead whose fields are all absent (e.g. a 3-hour maximum at step 0) needs no step
    present = ~absent.all(axis=(0, 2, 3))
    steps = [_step_key(param, int(lead), kind=kind, path=path, name=name) if ok else ("step", 0)
             for lead, ok in zip(f.lead_hours, present)]
    dates = [(t.year * 10000 + t.month * 100 + t.day, t.hour * 100 + t.minute) for t in times]
    return _VariablePlan(name=name, param=param, values=values, absent=absent, dates=dates,
                         steps=steps, members=members, levels=levels)


def _grid_keys(lat: np.ndarray, lon: np.ndarray, path: Path) -> dict[str, float | int]:
    if lat.size < 2 or lon.size < 2:
        raise GribWriteError(f"{path}: need at least 2 latitudes and 2 longitudes, "
                             f"got {lat.size} x {lon.size}")
    dlat, dlon = np.diff(lat), np.diff(lon)
    if not (np.allclose(dlat, dlat[0], atol=1e-6) and np.allclose(dlon, dlon[0], atol=1e-6)) or dlon[0] <= 0:
        raise GribWriteError(f"{path}: only regular lat/lon grids with increasing longitude can be "
                             "written as GRIB")
    return {
        "Ni": int(lon.size), "Nj": int(lat.size),
        "jScansPositively": int(dlat[0] > 0),
        "latitudeOfFirstGridPointInDegrees": float(lat[0]),
        "longitudeOfFirstGridPointInDegrees": float(lon[0]),
        "latitudeOfLastGridPointInDegrees": float(lat[-1]),
        "longitudeOfLastGridPointInDegrees": float(lon[-1]),
        "iDirectionIncrementInDegrees": float(abs(dlon[0])),
        "jDirectionIncrementInDegrees": float(abs(dlat[0])),
    }


def _to_grib_units(values: np.ndarray, units: str, param: GribParam, path: Path,
                   name: str) -> np.ndarray:
    units = schema.normalise_units(units or param.units)
    if units == param.units:
        return values
    convert = _CONVERSIONS.get((units, param.units))
    if convert is None:
        raise GribWriteError(f"{path}: variable {name!r} is in {units!r}; GRIB needs {param.units!r}")
    return convert(values)


class _Encoder:
    """One reusable eccodes handle for one (parameter, grid, kind, ensemble size, data type).

    Messages differ only in date, step, member number and level (and values), so the handle is
    kept and only the keys whose value changes are set: about 8x cheaper than cloning a template
    per message.  ``state`` remembers what was set last (the handle outlives one call).  The
    data type (``cf``/``pf``/``an``) is fixed per handle: setting ``type`` on a handle again and
    again makes each later message slower (eccodes 2.x grows the handle), so control and
    perturbed members use two handles.
    """

    __slots__ = ("handle", "state", "cache_key")

    def __init__(self, handle: int, cache_key: tuple) -> None:
        self.handle = handle
        self.state: dict[str, int | str] = {}
        self.cache_key = cache_key

    def set_long(self, key: str, value: int) -> None:
        import eccodes
        if self.state.get(key) != value:
            eccodes.codes_set_long(self.handle, key, value)
            self.state[key] = value

    def set_string(self, key: str, value: str) -> None:
        import eccodes
        if self.state.get(key) != value:
            eccodes.codes_set_string(self.handle, key, value)
            self.state[key] = value


#: per thread: cache key -> encoder (a handle must not be shared between threads)
_ENCODERS = threading.local()
_MAX_ENCODERS = 32


def _encoder(param: GribParam, grid: dict, *, kind: str, n_members: int | None,
             data_type: str) -> _Encoder:
    """The cached encoder for this parameter, grid, kind, ensemble size and data type (made on
    first use)."""
    cache: dict[tuple, _Encoder] | None = getattr(_ENCODERS, "cache", None)
    if cache is None:
        cache = _ENCODERS.cache = {}
    key = (param, tuple(grid.items()), kind, n_members, data_type)
    enc = cache.get(key)
    if enc is None:
        if len(cache) >= _MAX_ENCODERS:
            _drop_encoder(next(iter(cache.values())))
        enc = cache[key] = _Encoder(_template(param, grid, kind=kind, n_members=n_members,
                                              data_type=data_type), key)
    return enc


def _drop_encoder(enc: _Encoder) -> None:
    """Forget and release an encoder (after an error its handle's state is not trusted)."""
    import eccodes
    cache = getattr(_ENCODERS, "cache", {})
    if cache.get(enc.cache_key) is enc:
        del cache[enc.cache_key]
    eccodes.codes_release(enc.handle)


def _template(param: GribParam, grid: dict, *, kind: str, n_members: int | None,
              data_type: str) -> int:
    """A GRIB2 handle with grid, parameter, level type and product template set."""
    import eccodes
    sample = "regular_ll_pl_grib2" if param.type_of_level == "isobaricInhPa" else "regular_ll_sfc_grib2"
    h = eccodes.codes_grib_new_from_samples(sample)
    eccodes.codes_set(h, "setLocalDefinition", 1)
    eccodes.codes_set(h, "localDefinitionNumber", 1)
    ensemble = kind == "forecast" or n_members is not None
    statistical = param.step_type != "instant" and kind == "forecast"
    pdt = (11 if statistical else 1) if ensemble else (8 if statistical else 0)
    eccodes.codes_set(h, "productDefinitionTemplateNumber", pdt)
    eccodes.codes_set(h, "type", "pf" if kind == "forecast" else "an")
    eccodes.codes_set(h, "shortName", param.short_name)
    eccodes.codes_set(h, "typeOfLevel", param.type_of_level)
    if param.type_of_level == "isobaricInhPa":
        # setting level 0 would switch the sample to pressure in Pa; levels are set per message
        eccodes.codes_set(h, "pressureUnits", "hPa")
    else:
        eccodes.codes_set(h, "level", param.level)
    if ensemble:
        eccodes.codes_set(h, "typeOfEnsembleForecast", 3)
        eccodes.codes_set(h, "numberOfForecastsInEnsemble", int(n_members or 1))
    for key, value in grid.items():
        eccodes.codes_set(h, key, value)
    eccodes.codes_set(h, "packingType", "grid_simple")
    eccodes.codes_set(h, "bitsPerValue", BITS_PER_VALUE)
    if data_type != ("pf" if kind == "forecast" else "an"):
        eccodes.codes_set(h, "type", data_type)
    return h


def _encode_variable(encoders: dict[str, _Encoder], plan: _VariablePlan, *, kind: str) -> list[bytes]:
    """The messages of one variable, in (time, lead, member, level) order; ``encoders`` by data
    type (``cf`` and ``pf`` for a forecast, ``an`` for an analysis)."""
    import eccodes
    out: list[bytes] = []
    values, absent = plan.values, plan.absent
    for it, (date, hhmm) in enumerate(plan.dates):
        for il, (step_key, step) in enumerate(plan.steps):
            for im, member in enumerate(plan.members):
                enc = encoders["an" if kind == "analysis" else ("cf" if member == 0 else "pf")]
                for iv, level in enumerate(plan.levels):
                    if absent[it, il, im, iv]:
                        continue
                    enc.set_long("dataDate", date)
                    enc.set_long("dataTime", hhmm)
                    if member is not None:
                        enc.set_long("perturbationNumber", member)
                    if level is not None:
                        enc.set_long("level", level)
                    if step_key == "step":
                        enc.set_long("step", step)
                    else:
                        enc.set_string("stepRange", step)
                    eccodes.codes_set_double_array(enc.handle, "values", values[it, il, im, iv])
                    out.append(eccodes.codes_get_message(enc.handle))
    return out


def _lead_hours(da: xr.DataArray, path: Path, name: str) -> list[int]:
    hours = pd.to_timedelta(da[schema.LEAD_TIME].values) / pd.Timedelta(hours=1)
    if not np.allclose(hours, np.round(hours)):
        raise GribWriteError(f"{path}: variable {name!r}: lead times must be whole hours, got {list(hours)}")
    return [int(round(h)) for h in hours]


def _step_key(param: GribParam, lead: int, *, kind: str, path: Path, name: str) -> tuple[str, int | str]:
    """``("step", lead)`` for an instant field, ``("stepRange", "start-lead")`` for a window."""
    if kind != "forecast" or param.step_type == "instant":
        return "step", lead
    start = 0 if param.step_type == "accum" else lead - param.window_h
    if start < 0:
        raise GribWriteError(f"{path}: variable {name!r} ({param.short_name}): a {param.window_h} h "
                             f"window cannot end at lead {lead} h")
    return "stepRange", f"{start}-{lead}"
