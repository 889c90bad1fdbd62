"""GRIB inventory and fast decode with the eccodes Python API (no cfgrib).

:func:`scan_grib` lists every message of a file (keys only, or keys and values) and turns
eccodes failures into :class:`~data.translate.ReaderError` naming the file: a truncated
message, a file with no GRIB message at all, NaN (bitmap-missing) points.  :func:`read_grib_eccodes`
assembles the messages of one or more files into a canonical, numpy-backed dataset; it decodes
each message exactly once, so its cost is the eccodes decode floor plus array copies.

Conventions (shared with the cfgrib reader in :mod:`data.readers`):

* member = GRIB ``number`` (control ``cf`` = 0, perturbed ``pf`` = 1..N; a file with only ``pf``
  messages has members 1..N); deterministic ``fc`` messages are member 0 of a 1-member ensemble.
* lead_time = the end of the step range (``69-72`` -> 72 h).
* ``isobaricInhPa`` levels become the ``level`` dim; single other levels (2 m, 10 m, surface,
  theta 320 K...) are dropped into ``grib_type_of_level`` / ``grib_level`` attributes.
* Variables with different lead times (or init times) are aligned on the union of the
  coordinates; a field the files do not hold is NaN and listed in the dataset attribute
  ``enspp_absent_fields`` (``"z@72h"``...).  NaN *inside* a decoded field is an error unless
  ``allow_nan``.
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import eccodes
import numpy as np
import pandas as pd
import xarray as xr

from enspp.data import schema
from enspp.data.translate import ReaderError, canonical_name, canonical_variable, finalise

__all__ = ["GribMessage", "absent_fields", "check_inventory", "expand_inputs", "expand_paths", "scan_grib", "read_grib_eccodes", "read_messages", "kind_of_messages", "messages_kind",
           "FORECAST_DATA_TYPES", "ANALYSIS_DATA_TYPES"]

T = TypeVar("T")

FORECAST_DATA_TYPES = frozenset({"cf", "pf", "fc"})
ANALYSIS_DATA_TYPES = frozenset({"an", "4v", "ia", "oi"})
_GRIB_SUFFIXES = (".grib", ".grb", ".grib2", ".grb2", ".grib1")


@dataclass
class GribMessage:
    """Header of one GRIB message, translated to canonical names (values optional)."""

    path: str
    index: int
    data_type: str
    variable: str  # canonical name
    short_name: str  # GRIB shortName
    units: str
    type_of_level: str
    level: int | float
    init_time: np.datetime64
    lead_time: np.timedelta64  # end of the step range
    number: int
    grid: tuple  # (Ni, Nj, lat0, lon0, lat1, lon1)
    n_missing: int = 0
    values: np.ndarray | None = field(default=None, repr=False)
    #: originating centre (GRIB ``centre`` abbreviation: ``ecmf``, ``kwbc``...)
    centre: str = ""
    #: minimum / maximum of the decoded values (NaN: not decoded), for the plausibility check
    vmin: float = float("nan")
    vmax: float = float("nan")
    latitudes: np.ndarray | None = field(default=None, repr=False)
    longitudes: np.ndarray | None = field(default=None, repr=False)

    @property
    def valid_time(self) -> np.datetime64:
        return self.init_time + self.lead_time

    def describe(self) -> str:
        return (f"{self.path} message {self.index} ({self.short_name}, {self.data_type}, "
                f"init {pd.Timestamp(self.init_time)}, +{_hours(self.lead_time)} h, number {self.number})")


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A file, a directory (its GRIB files, sorted), a glob pattern, or a list of those."""
    return expand_inputs(paths, suffixes=_GRIB_SUFFIXES, what="GRIB files", error=ReaderError)


def expand_inputs(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                  suffixes: Iterable[str], what: str, error: type[Exception] = ReaderError,
                  is_unit: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    """Files, directories (their files with ``suffixes``, sorted) and glob patterns -> paths.

    ``is_unit(path)`` marks a directory that is one input itself (e.g. a Zarr store).
    A directory or pattern that matches nothing, or no input at all, raises ``error``; a path
    that does not exist raises ``FileNotFoundError``.
    """
    suffixes = tuple(suffixes)
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and not is_unit(p):
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in suffixes)
            if not found:
                raise error(f"{p}: directory holds no {what} ({', '.join(suffixes)})")
            out.extend(found)
        elif p.is_file() or (p.is_dir() and is_unit(p)):
            out.append(p)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(q for q in map(Path, glob.glob(str(item))) if q.is_file() or is_unit(q))
            if not found:
                raise error(f"{item}: the pattern matches no files")
            out.extend(found)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not out:
        raise error("no input files given")
    return out


def read_messages(path: str, read: Callable[[int, int], T]) -> list[T]:
    """``read(handle, index)`` for every GRIB message of ``path``, in file order; each handle
    is released after its ``read``.  Raises
    :class:`ReaderError` naming ``path`` for a file without GRIB messages, a corrupt or
    truncated message, or a message eccodes cannot read.
    """
    out: list[T] = []
    with open(path, "rb") as fh:
        while True:
            try:
                h = eccodes.codes_grib_new_from_file(fh)
            except eccodes.GribInternalError as e:
                if not out:
                    raise ReaderError(f"{path}: not a GRIB file, or corrupt from its first message "
                                      f"({e})") from e
                raise ReaderError(f"{path}: corrupt or truncated GRIB after {len(out)} complete "
                                  f"messages ({e})") from e
            if h is None:
                break
            try:
                out.append(read(h, len(out)))
            except eccodes.GribInternalError as e:
                raise ReaderError(f"{path}: cannot decode message {len(out)} ({e})") from e
            finally:
                eccodes.codes_release(h)
        rest = fh.read()
    if not out:
        raise ReaderError(f"{path}: not a GRIB file (no GRIB message found)")
    if b"GRIB" in rest:
        raise ReaderError(f"{path}: truncated GRIB: data after message {len(out) - 1} "
                          "start a message that does not end")
    return out


def scan_grib(path: str | os.PathLike, *, values: bool = False, allow_nan: bool = False) -> list[GribMessage]:
    """Inventory of all messages in ``path`` (and their values, float32, when ``values``).

    Raises :class:`ReaderError` for a file without GRIB messages, a truncated/corrupt message,
    or (unless ``allow_nan``) a message with missing points.
    """
    path = str(path)
    grids: dict[tuple, tuple] = {}
    messages = read_messages(path, lambda h, i: _read_message(h, path, i, values=values,
                                                              grids=grids))
    if not allow_nan:
        bad = [m for m in messages if m.n_missing]
        if bad:
            raise ReaderError(f"{path}: {len(bad)} field(s) hold missing (NaN) values, first "
                              f"{bad[0].describe()} with {bad[0].n_missing} missing points; "
                              "pass allow_nan=True to accept them")
    return messages


#: cheap integer keys that (with the edition) determine the parameter concepts shortName/units,
#: which eccodes evaluates by scanning its tables (~1 ms and ~14 ms per message)
_PARAM_KEYS = {1: ("centre", "table2Version", "indicatorOfParameter", "indicatorOfTypeOfLevel",
                   "timeRangeIndicator", "localDefinitionNumber"),
               2: ("centre", "discipline", "parameterCategory", "parameterNumber",
                   "productDefinitionTemplateNumber", "typeOfFirstFixedSurface",
                   "scaleFactorOfFirstFixedSurface", "scaledValueOfFirstFixedSurface",
                   "typeOfSecondFixedSurface", "typeOfStatisticalProcessing", "lengthOfTimeRange",
                   "indicatorOfUnitForTimeRange", "localTablesVersion")}
_PARAM_CACHE: dict[tuple, tuple[str, str]] = {}
_STEP_UNITS = {0: "m", 1: "h", 13: "s"}


def _param(h: int) -> tuple[str, str]:
    """(shortName, units) of a message, looked up once per distinct parameter encoding."""
    edition = eccodes.codes_get_long(h, "edition")
    key: list = [edition]
    for k in _PARAM_KEYS.get(edition, ()):
        try:
            key.append(eccodes.codes_get_long(h, k))
        except eccodes.GribInternalError:
            key.append(None)
    key_t = tuple(key)
    if key_t not in _PARAM_CACHE:
        _PARAM_CACHE[key_t] = (eccodes.codes_get(h, "shortName"), eccodes.codes_get(h, "units"))
    return _PARAM_CACHE[key_t]


def _read_message(h: int, path: str, index: int, *, values: bool, grids: dict) -> GribMessage:
    get = eccodes.codes_get
    short, units = _param(h)
    tol = get(h, "typeOfLevel")
    data_type = get(h, "dataType")
    date, time = get(h, "dataDate"), get(h, "dataTime")
    init = np.datetime64(f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}T"
                         f"{time // 100:02d}:{time % 100:02d}", "ns")
    step_unit = _STEP_UNITS.get(get(h, "stepUnits", int))
    if step_unit is None:  # eccodes reports steps in hours, minutes or seconds; be safe anyway
        eccodes.codes_set(h, "stepUnits", "s")
        step_unit = "s"
    lead = np.timedelta64(int(get(h, "endStep", int)), step_unit).astype("timedelta64[ns]")
    number = 0
    if eccodes.codes_is_defined(h, "number") and not eccodes.codes_is_missing(h, "number"):
        number = int(get(h, "number"))
    key = (get(h, "gridType"), get(h, "Ni"), get(h, "Nj"),
           get(h, "latitudeOfFirstGridPointInDegrees"), get(h, "longitudeOfFirstGridPointInDegrees"),
           get(h, "latitudeOfLastGridPointInDegrees"), get(h, "longitudeOfLastGridPointInDegrees"))
    if key[0] != "regular_ll":
        raise ReaderError(f"{path}: message {index} ({short}) is on a {key[0]!r} grid; only "
                          "regular_ll is supported")
    if key not in grids:
        grids[key] = (eccodes.codes_get_array(h, "distinctLatitudes"),
                      eccodes.codes_get_array(h, "distinctLongitudes"))
    n_missing = int(get(h, "numberOfMissing")) if get(h, "bitmapPresent") else 0
    vals = None
    if values:
        vals = eccodes.codes_get_values(h).astype(np.float32)
        if n_missing:
            vals[eccodes.codes_get_array(h, "bitmap") == 0] = np.nan
        vals = vals.reshape(key[2], key[1])
    return GribMessage(path=path, index=index, data_type=data_type,
                       variable=canonical_name(short, type_of_level=tol), short_name=short,
                       units=units, type_of_level=tol, level=get(h, "level"),
                       init_time=init, lead_time=lead, number=number, grid=key, n_missing=n_missing,
                       values=vals, latitudes=grids[key][0], longitudes=grids[key][1],
                       centre=str(get(h, "centre")))


def kind_of_messages(messages: Sequence[GribMessage], *, source: str) -> schema.Kind:
    """``forecast`` for cf/pf/fc messages, ``analysis`` for an/4v...; a mixture is an error."""
    types = {m.data_type for m in messages}
    if types <= FORECAST_DATA_TYPES:
        return "forecast"
    if types <= ANALYSIS_DATA_TYPES:
        return "analysis"
    raise ReaderError(f"{source}: cannot tell forecast from analysis: dataType values {sorted(types)} "
                      f"(forecast: {sorted(FORECAST_DATA_TYPES)}, analysis: {sorted(ANALYSIS_DATA_TYPES)})")


def messages_kind(messages: Sequence[GribMessage], kind: schema.Kind | None, *,
                  source: str) -> schema.Kind:
    """The kind the messages are read as: ``kind`` when given, else detected
    (:func:`kind_of_messages`).  A given kind must agree with the messages' dataType, except
    that forecast fields at step 0 may be read as analyses (a step-0 field is the analysis
    the forecast started from); a forecast at a later step given as an analysis (its valid
    time would be taken as the analysis time) is an error naming the file."""
    found = kind_of_messages(messages, source=source)
    if kind is None or kind == found:
        return found
    later = sorted({m.lead_time for m in messages if m.lead_time != np.timedelta64(0, "ns")})
    if kind == "analysis" and not later:
        return kind
    steps = ", ".join(f"+{int(t // np.timedelta64(1, 'h'))} h" for t in later[:4])
    raise ReaderError(f"{source}: holds {found} messages (dataType "
                      f"{sorted({m.data_type for m in messages})}"
                      + (f", steps {steps}" if later else "") + "), expected "
                      + ("analyses" if kind == "analysis" else "forecasts")
                      + (": ingest it without --kind analysis (a forecast store), or give the "
                         "analyses" if kind == "analysis" else ""))


def read_grib_eccodes(paths, *, kind: schema.Kind | None = None, allow_nan: bool = False) -> xr.Dataset:
    """Decode GRIB file(s) directly with eccodes into one canonical, numpy-backed dataset.

    ``paths``: a file, directory, glob or list of them.  ``kind`` is detected from the
    dataType keys when not given.  Errors (:class:`ReaderError`) name the file: corrupt or
    non-GRIB input, NaN fields (unless ``allow_nan``), different grids, the same field twice,
    an init time missing members that other init times have, unknown units.
    """
    files = expand_paths(paths)
    messages: list[GribMessage] = []
    for f in files:
        msgs = scan_grib(f, values=True, allow_nan=allow_nan)
        messages.extend(msgs)
    source = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
    kind = messages_kind(messages, kind, source=source)
    check_inventory(messages, kind=kind)
    lat, lon = messages[0].latitudes, messages[0].longitudes
    by_var: dict[str, list[GribMessage]] = defaultdict(list)
    for m in messages:
        by_var[m.variable].append(m)
    arrays = {}
    for msgs in by_var.values():
        da = _assemble(msgs, kind=kind, lat=lat, lon=lon)
        new, da = canonical_variable(da, msgs[0].short_name, source=msgs[0].path,
                                     type_of_level=msgs[0].type_of_level)
        arrays[new] = da
    ds = xr.merge(list(arrays.values()), join="outer", compat="no_conflicts",
                  combine_attrs="override")
    ds.attrs = {}
    absent = absent_fields(messages, kind=kind)
    if absent:
        ds.attrs["enspp_absent_fields"] = absent
    centres = sorted({m.centre for m in messages if m.centre})
    if centres:
        ds.attrs["enspp_centre"] = " ".join(centres)
    return finalise(ds, kind=kind, source=source, allow_nan=allow_nan or bool(absent))


def check_inventory(messages: Sequence[GribMessage], *, kind: schema.Kind) -> None:
    """One grid; each field once; every (variable, time, lead, level) with the same members."""
    grid0 = messages[0]
    for m in messages:
        if m.grid != grid0.grid:
            raise ReaderError(f"{m.path}: grid {_grid_str(m.grid)} differs from {_grid_str(grid0.grid)} "
                              f"of {grid0.path}")
    other_levels: dict[str, dict[tuple, GribMessage]] = defaultdict(dict)
    for m in messages:
        if m.type_of_level != "isobaricInhPa":
            other_levels[m.variable].setdefault((m.type_of_level, m.level), m)
    for found in other_levels.values():
        if len(found) > 1:
            first = next(iter(found.values()))
            raise ReaderError(f"{first.path}: variable {first.short_name!r} on several non-pressure "
                              f"levels {sorted(found)}; only pressure levels become a level dim")
    seen: dict[tuple, GribMessage] = {}
    members: dict[str, set[int]] = defaultdict(set)
    per_slot: dict[tuple, dict[int, GribMessage]] = defaultdict(dict)
    for m in messages:
        key = (m.variable, m.init_time, m.lead_time, m.number, _level_key(m))
        if key in seen:
            first = seen[key]
            raise ReaderError(f"{m.path}: duplicate field {m.describe()} already read from "
                              f"{first.path} message {first.index} (duplicate init time "
                              f"{pd.Timestamp(m.init_time)} across files?)")
        seen[key] = m
        members[m.variable].add(m.number)
        per_slot[(m.variable, m.init_time, m.lead_time, _level_key(m))][m.number] = m
    for (var, init, lead, level), got in per_slot.items():
        missing = members[var] - set(got)
        if missing:
            some = next(iter(got.values()))
            when = f"init {pd.Timestamp(init)}" if kind == "forecast" else f"time {pd.Timestamp(init + lead)}"
            raise ReaderError(f"{some.path}: missing members for {var!r} at {when} +{_hours(lead)} h"
                              f"{'' if level is None else f' level {level}'}: has {len(got)} of "
                              f"{len(members[var])} members, missing numbers {sorted(missing)[:10]}")


def _level_key(m: GribMessage) -> int | None:
    return int(m.level) if m.type_of_level == "isobaricInhPa" else None


def absent_fields(messages: Sequence[GribMessage], *, kind: schema.Kind) -> list[str]:
    """Fields a dataset aligned on the union of coordinates lacks, as ``"z@72h"`` (forecast:
    some init time / member / level of that lead time is absent) or ``"t@2016-09-25T00:00"``
    (analysis: some member / level of that time is absent)."""
    forecast = kind == "forecast"
    slots = sorted({m.lead_time for m in messages}) if forecast else sorted({m.valid_time for m in messages})
    inits = {m.init_time for m in messages}
    by_var: dict[str, list[GribMessage]] = defaultdict(list)
    for m in messages:
        by_var[m.variable].append(m)
    out = []
    for var, msgs in by_var.items():
        per_member_level = len({m.number for m in msgs}) * len({_level_key(m) for m in msgs})
        expected = per_member_level * (len(inits) if forecast else 1)
        count: dict = defaultdict(int)
        for m in msgs:
            count[m.lead_time if forecast else m.valid_time] += 1
        for slot in slots:
            if count[slot] < expected:
                label = f"{_hours(slot)}h" if forecast else str(pd.Timestamp(slot).isoformat(timespec="minutes"))
                out.append(f"{var}@{label}")
    return sorted(out)


def _assemble(msgs: list[GribMessage], *, kind: str, lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    """Stack one variable's messages into (time, lead, member, level, lat, lon)."""
    first = msgs[0]
    if kind == "forecast":
        times = sorted({m.init_time for m in msgs})
        leads = sorted({m.lead_time for m in msgs})
        t_of = lambda m: m.init_time  # noqa: E731
    else:
        times = sorted({m.valid_time for m in msgs})
        leads = [np.timedelta64(0, "ns")]
        t_of = lambda m: m.valid_time  # noqa: E731
    numbers = sorted({m.number for m in msgs})
    levels = sorted({_level_key(m) for m in msgs}, key=lambda x: -1 if x is None else x)
    has_level = levels != [None]
    has_member = kind == "forecast" or len(numbers) > 1
    ti = {t: i for i, t in enumerate(times)}
    li = {v: i for i, v in enumerate(leads)}
    ni = {v: i for i, v in enumerate(numbers)}
    vi = {v: i for i, v in enumerate(levels)}
    shape = (len(times), len(leads), len(numbers), len(levels), lat.size, lon.size)
    data = np.full(shape, np.nan, dtype=np.float32)
    for m in msgs:
        idx = (ti[t_of(m)], li[m.lead_time if kind == "forecast" else leads[0]], ni[m.number], vi[_level_key(m)])
        data[idx] = m.values
    dims = [schema.INIT_TIME if kind == "forecast" else schema.TIME, schema.LEAD_TIME, schema.MEMBER,
            schema.LEVEL, schema.LATITUDE, schema.LONGITUDE]
    coords = {dims[0]: np.array(times), schema.LEAD_TIME: np.array(leads), schema.MEMBER: np.array(numbers),
              schema.LEVEL: np.array([0 if v is None else v for v in levels]),
              schema.LATITUDE: lat, schema.LONGITUDE: lon}
    da = xr.DataArray(data, dims=dims, coords=coords)
    drop = [] if kind == "forecast" else [schema.LEAD_TIME]
    if not has_level:
        drop.append(schema.LEVEL)
    if not has_member:
        drop.append(schema.MEMBER)
    da = da.isel({d: 0 for d in drop}, drop=True)
    attrs = {"units": first.units, "GRIB_shortName": first.short_name}
    if not has_level and first.type_of_level not in ("surface", "meanSea"):
        attrs.update(grib_type_of_level=first.type_of_level, grib_level=first.level)
    da.attrs = attrs
    return da


def _hours(td) -> str:
    h = pd.Timedelta(td) / pd.Timedelta(hours=1)
    return f"{h:g}"


def _grid_str(g: tuple) -> str:
    return f"{g[1]}x{g[2]} ({g[3]}N {g[4]}E .. {g[5]}N {g[6]}E)"
