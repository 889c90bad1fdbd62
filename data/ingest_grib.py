"""The ingest's own GRIB decode loop (eccodes, one pass, values straight into the final array).

Why not :func:`data.readers.read_grib_eccodes`: it asks eccodes for ``shortName`` and ``units``
of every message.  Those are *concept* keys that eccodes evaluates by scanning its parameter
tables: 2-15 ms per message, i.e. 2-15x the decode of a 181x360 field, which made an ingest
~10x the decode floor.  Here the concepts are looked up once per distinct parameter, keyed on
the section 1/4 keys they are defined by, and each field is decoded into its slot of the output
array (no merge, no re-sort).  Conventions and inventory checks are those of :mod:`data.grib`
(its public :class:`~data.grib.GribMessage`, :func:`~data.grib.check_inventory`,
:func:`~data.grib.absent_fields`, :func:`~data.grib.kind_of_messages`); the tests check that
both give the same dataset.
"""

from __future__ import annotations

import os
from collections import defaultdict

import eccodes
import numpy as np
import xarray as xr

from data import schema
from data.grib import GribMessage, absent_fields, check_inventory, kind_of_messages
from data.translate import ReaderError, canonical_name, canonical_variable, normalise_longitude

#: cheap integer keys that, with edition/centre/typeOfLevel/stepType, determine the concepts
#: shortName and units (GRIB 2: section 4 parameter and surfaces; GRIB 1: section 1 tables)
_PARAM_KEYS = {
    2: ("discipline", "parameterCategory", "parameterNumber", "productDefinitionTemplateNumber",
        "typeOfFirstFixedSurface", "scaleFactorOfFirstFixedSurface",
        "scaledValueOfFirstFixedSurface", "typeOfSecondFixedSurface"),
    1: ("table2Version", "indicatorOfParameter", "indicatorOfTypeOfLevel", "timeRangeIndicator",
        "localDefinitionNumber"),
}
#: GRIB 2 product templates with a statistical process (max/accumulation over a window)
_STATISTICAL_PDTS = frozenset({8, 9, 10, 11, 12, 13, 14, 15, 34, 42, 43, 46, 47, 61, 62, 63})
_STAT_KEYS = ("typeOfStatisticalProcessing", "lengthOfTimeRange", "indicatorOfUnitForTimeRange")
_STEP_UNITS = {0: "m", 1: "h"}


def decode_grib(path: str | os.PathLike[str], *, kind: schema.Kind | None = None,
                allow_nan: bool = False) -> xr.Dataset:
    """Decode one GRIB file into a canonical numpy-backed dataset (float32).

    Raises :class:`~data.translate.ReaderError` naming the file: not GRIB, corrupt or truncated,
    missing (NaN) points unless ``allow_nan``, mixed grids, duplicate fields, members missing
    in one init time, fields absent for some lead times, unknown units.
    """
    source = str(path)
    messages = _scan(source, allow_nan=allow_nan)
    kind = kind or kind_of_messages(messages, source=source)
    check_inventory(messages, kind=kind)
    absent = absent_fields(messages, kind=kind)
    if absent and not allow_nan:
        raise ReaderError(f"{source}: fields absent from the file (they would be NaN): "
                          f"{absent[:6]}; every variable needs the same lead times, members and "
                          f"levels (pass allow_nan=True to store them as NaN)")
    forecast = kind == "forecast"
    times = sorted({m.init_time if forecast else m.valid_time for m in messages})
    leads = sorted({m.lead_time for m in messages}) if forecast else [np.timedelta64(0, "ns")]
    lat, lon = messages[0].latitudes, messages[0].longitudes
    by_var: dict[str, list[GribMessage]] = defaultdict(list)
    for m in messages:
        by_var[m.variable].append(m)
    arrays: dict[str, xr.DataArray] = {}
    for msgs in by_var.values():
        da = _assemble(msgs, forecast=forecast, times=times, leads=leads, lat=lat, lon=lon)
        name, da = canonical_variable(da, msgs[0].short_name, source=source,
                                      type_of_level=msgs[0].type_of_level)
        if name in arrays:
            raise ReaderError(f"{source}: two GRIB parameters map to variable {name!r}")
        arrays[name] = da
    ds = xr.Dataset(arrays)
    if absent:
        ds.attrs["enspp_absent_fields"] = absent
    return normalise_longitude(ds)


def _assemble(msgs: list[GribMessage], *, forecast: bool, times: list, leads: list,
              lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    first = msgs[0]
    pressure = first.type_of_level == "isobaricInhPa"
    others = {(m.type_of_level, m.level) for m in msgs if m.type_of_level != "isobaricInhPa"}
    if len(others) > 1 or (others and pressure):
        raise ReaderError(f"{first.path}: variable {first.short_name!r} on several non-pressure "
                          f"levels {sorted(others)}; only pressure levels become a level dim")
    numbers = sorted({m.number for m in msgs})
    levels = sorted({int(m.level) for m in msgs}) if pressure else [None]
    has_member = forecast or len(numbers) > 1
    ti = {t: i for i, t in enumerate(times)}
    li = {v: i for i, v in enumerate(leads)}
    ni = {v: i for i, v in enumerate(numbers)}
    vi = {v: i for i, v in enumerate(levels)}
    dims = [schema.INIT_TIME if forecast else schema.TIME]
    shape = [len(times)]
    if forecast:
        dims.append(schema.LEAD_TIME)
        shape.append(len(leads))
    if has_member:
        dims.append(schema.MEMBER)
        shape.append(len(numbers))
    if pressure:
        dims.append(schema.LEVEL)
        shape.append(len(levels))
    data = np.empty((*shape, lat.size, lon.size), dtype=np.float32)
    if len(msgs) != int(np.prod(shape)):
        data.fill(np.nan)  # absent fields (allow_nan): NaN slots
    for m in msgs:
        idx = [ti[m.init_time if forecast else m.valid_time]]
        if forecast:
            idx.append(li[m.lead_time])
        if has_member:
            idx.append(ni[m.number])
        if pressure:
            idx.append(vi[int(m.level)])
        data[tuple(idx)] = m.values
    coords: dict[str, object] = {dims[0]: np.array(times, dtype="datetime64[ns]"),
                                 schema.LATITUDE: lat, schema.LONGITUDE: lon}
    if forecast:
        coords[schema.LEAD_TIME] = np.array(leads, dtype="timedelta64[ns]")
    if has_member:
        coords[schema.MEMBER] = np.array(numbers, dtype=np.int64)
    if pressure:
        coords[schema.LEVEL] = np.array(levels, dtype=np.int64)
    attrs: dict[str, object] = {"units": first.units, "GRIB_shortName": first.short_name}
    if not pressure and first.type_of_level not in ("surface", "meanSea"):
        attrs.update(grib_type_of_level=first.type_of_level, grib_level=first.level)
    return xr.DataArray(data, dims=(*dims, schema.LATITUDE, schema.LONGITUDE), coords=coords,
                        attrs=attrs)


def _scan(path: str, *, allow_nan: bool) -> list[GribMessage]:
    messages: list[GribMessage] = []
    params: dict[tuple, tuple[str, str]] = {}
    grids: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    with open(path, "rb") as fh:
        while True:
            try:
                h = eccodes.codes_grib_new_from_file(fh)
            except eccodes.GribInternalError as e:
                raise ReaderError(f"{path}: corrupt or truncated GRIB after {len(messages)} "
                                  f"complete messages ({e})") from e
            if h is None:
                break
            try:
                messages.append(_message(h, path, len(messages), params, grids, allow_nan))
            except eccodes.GribInternalError as e:
                raise ReaderError(f"{path}: cannot decode message {len(messages)} ({e})") from e
            finally:
                eccodes.codes_release(h)
        rest = fh.read()
    if not messages:
        raise ReaderError(f"{path}: not a GRIB file (no GRIB message found)")
    if b"GRIB" in rest:
        raise ReaderError(f"{path}: truncated GRIB: data after message {len(messages) - 1} "
                          "start a message that does not end")
    return messages


def _long(h: int, key: str) -> int | None:
    try:
        return int(eccodes.codes_get_long(h, key))
    except eccodes.GribInternalError:
        return None


def _message(h: int, path: str, index: int, params: dict, grids: dict,
             allow_nan: bool) -> GribMessage:
    get = eccodes.codes_get
    edition = int(get(h, "edition"))
    raw = tuple(_long(h, k) for k in _PARAM_KEYS.get(edition, ()))
    if edition == 2 and raw[3] in _STATISTICAL_PDTS:
        raw += tuple(_long(h, k) for k in _STAT_KEYS)
    pkey = (edition, get(h, "centre"), get(h, "typeOfLevel"), get(h, "stepType"), raw)
    if pkey not in params:  # concept keys: slow, so once per distinct parameter
        params[pkey] = (get(h, "shortName"), get(h, "units"))
    short, units = params[pkey]
    data_type = get(h, "dataType")
    tol = pkey[2]
    date, hhmm = int(get(h, "dataDate")), int(get(h, "dataTime"))
    init = np.datetime64(f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}T"
                         f"{hhmm // 100:02d}:{hhmm % 100:02d}", "ns")
    unit = int(get(h, "stepUnits", int))
    if unit not in _STEP_UNITS:
        raise ReaderError(f"{path}: message {index} ({short}) has step units code {unit}; "
                          "only minutes and hours are supported")
    lead = np.timedelta64(int(get(h, "endStep", int)), _STEP_UNITS[unit]).astype("timedelta64[ns]")
    number = _long(h, "number") or 0
    gkey = (get(h, "gridType"), get(h, "Ni"), get(h, "Nj"),
            get(h, "latitudeOfFirstGridPoint"), get(h, "longitudeOfFirstGridPoint"),
            get(h, "latitudeOfLastGridPoint"), get(h, "longitudeOfLastGridPoint"))
    if gkey[0] != "regular_ll":
        raise ReaderError(f"{path}: message {index} ({short}) is on a {gkey[0]!r} grid; only "
                          "regular_ll is supported")
    if gkey not in grids:
        grids[gkey] = (eccodes.codes_get_array(h, "distinctLatitudes"),
                       eccodes.codes_get_array(h, "distinctLongitudes"))
    lat, lon = grids[gkey]
    n_missing = int(get(h, "numberOfMissing")) if get(h, "bitmapPresent") else 0
    where = (f"{path} message {index} ({short}, {data_type}, "
             f"init {np.datetime_as_string(init, unit='m')}, "
             f"+{lead // np.timedelta64(1, 'h')} h, number {number})")
    if n_missing and not allow_nan:
        raise ReaderError(f"{where}: {n_missing} missing (NaN) points; pass allow_nan=True to "
                          "accept them")
    values = eccodes.codes_get_float_array(h, "values")  # float32 decode: no float64 detour
    if n_missing:
        values[eccodes.codes_get_array(h, "bitmap") == 0] = np.nan
    grid = (gkey[0], gkey[1], gkey[2], float(lat[0]), float(lon[0]), float(lat[-1]),
            float(lon[-1]))
    return GribMessage(path=path, index=index, data_type=data_type,
                       variable=canonical_name(short, type_of_level=tol), short_name=short,
                       units=units, type_of_level=tol, level=get(h, "level"), init_time=init,
                       lead_time=lead, number=number, grid=grid, n_missing=n_missing,
                       values=values.reshape(gkey[2], gkey[1]), latitudes=lat, longitudes=lon)


__all__ = ["decode_grib"]
