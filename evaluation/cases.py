"""Case studies: a YAML catalogue of named events, and the scores and maps of each case.

Catalogue schema (``evaluation/catalogue/cases.yaml``; the synthetic world's ``events.yaml``
uses the same, under ``cases:`` or ``events:``)::

    cases:
      - id: stjude-2013                # unique, [a-z0-9-_]
        name: St Jude storm (Cyclone Christian)
        variable: 10fg3                # addressed as data.schema.select_variable does
        kind: windstorm                # free text (optional)
        box: {lat_min: 47, lat_max: 60, lon_min: -10, lon_max: 15}
        window: {start: 2013-10-28T00:00, end: 2013-10-28T12:00}   # valid times, inclusive
        threshold: 25.0                # variable units; for exceedance maps (optional)
        how_chosen: "..."              # required: how the case was selected
        selected_on_outcome: true      # chosen because of what happened (forecaster's dilemma)
        map_time: 2013-10-28T06:00     # valid time of the maps (optional; default: window start)
        notes: "..."                   # e.g. "no verifying analysis" (optional)

Longitudes may be given in -180..180 or 0..360 and may wrap (``lon_min: 172, lon_max: -178``).

On station data (a ``station`` dim with ``latitude(station)``, ``longitude(station)``) a case
scores the stations whose own latitude and longitude are in the box, each weighing the same
(no latitude weights), and instead of maps carries a time series per station over the window
(:func:`_case_series`: truth, each system's mean and spread, its CRPS).

Selecting cases by the observed outcome alone favours forecasts that cry wolf (the
forecaster's dilemma, Lerch et al. 2017): every case says how it was chosen, and the report
prints it beside the scores, with a warning when ``selected_on_outcome`` is true.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from pydantic import Field, ValidationError, model_validator
from scipy.special import ndtr

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.schema import INIT_TIME, LATITUDE, LEAD_TIME, LONGITUDE, MEMBER, STATION
from enspp.data.yaml_file import read_yaml_mapping
from enspp.evaluation.config import _Frozen
from enspp.evaluation.labels import lat_text, lon_text
from enspp.evaluation.systems import SystemField

#: The catalogue shipped with the package.
SHIPPED_CATALOGUE = Path(__file__).parent / "catalogue" / "cases.yaml"


class CatalogueError(EnsppError):
    """A case catalogue is malformed; the message names the file and the key."""


class Box(_Frozen):
    lat_min: float = Field(ge=-90, le=90)
    lat_max: float = Field(ge=-90, le=90)
    lon_min: float = Field(ge=-180, le=360)
    lon_max: float = Field(ge=-180, le=360)

    @model_validator(mode="after")
    def _order(self) -> "Box":
        if self.lat_max < self.lat_min:
            raise ValueError(f"box: lat_max {self.lat_max} < lat_min {self.lat_min}")
        return self

    def lon_mask(self, lon: np.ndarray) -> np.ndarray:
        """Longitudes inside the box, whatever the convention and across the date line."""
        width = (self.lon_max - self.lon_min) % 360.0
        width = 360.0 if width == 0 and self.lon_max != self.lon_min else width
        return ((np.asarray(lon, dtype=float) - self.lon_min) % 360.0) <= width + 1e-9

    def lat_mask(self, lat: np.ndarray) -> np.ndarray:
        lat = np.asarray(lat, dtype=float)
        return (lat >= self.lat_min - 1e-9) & (lat <= self.lat_max + 1e-9)

    def describe(self) -> str:
        """``40°N–60°N, 10°W–20°E``: in the convention of the maps (:mod:`evaluation.labels`)."""
        return (f"{lat_text(self.lat_min, 2)}–{lat_text(self.lat_max, 2)}, "
                f"{lon_text(self.lon_min, 2)}–{lon_text(self.lon_max, 2)}")


class Window(_Frozen):
    start: _dt.datetime
    end: _dt.datetime

    @model_validator(mode="after")
    def _order(self) -> "Window":
        if self.end < self.start:
            raise ValueError(f"window: end {self.end} is before start {self.start}")
        return self


class Case(_Frozen):
    id: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    name: str
    variable: str
    kind: str | None = None
    box: Box
    window: Window
    threshold: float | None = None
    how_chosen: str = Field(min_length=3)
    selected_on_outcome: bool = False
    map_time: _dt.datetime | None = None
    notes: str | None = None


def load_catalogue(path: Path) -> list[Case]:
    """Read a catalogue; raise :class:`CatalogueError` naming the file and the bad entry."""
    path = Path(path)
    doc = read_yaml_mapping(path, what="case catalogue", error=CatalogueError)
    if not ({"cases", "events"} & set(doc)):
        raise CatalogueError(f"{path}: expected a mapping with a 'cases' (or 'events') list")
    entries = doc.get("cases", doc.get("events"))
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: 'cases' must be a list, got {type(entries).__name__}")
    cases: list[Case] = []
    for i, entry in enumerate(entries):
        try:
            cases.append(Case.model_validate(entry))
        except ValidationError as e:
            where = entry.get("id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
            raise CatalogueError(f"{path}: case {where}: {format_validation_error(e)}") from None
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CatalogueError(f"{path}: duplicate case ids {dup}")
    return cases


# ------------------------------------------------------------------ selecting a case's data
class CaseOutOfRange(EnsppError):
    """The data do not cover a case's window, box or variable (reported, not fatal)."""


def case_subset(template: xr.DataArray, case: Case) -> dict[str, np.ndarray]:
    """Integer indexers of the grid points in the box and of the ``(init_time, lead_time)``
    whose valid time is in the window; raise :class:`CaseOutOfRange` saying what is missing.

    Station data (a ``station`` dim): ``{"station": ..., "inside": ...}``, the stations whose
    own latitude and longitude are in the box (:func:`station_subset`)."""
    if STATION in template.dims:
        return {"station": station_subset(template, case), "inside": _window(template, case)}
    lat, lon = template[LATITUDE].values, template[LONGITUDE].values
    ilat = np.flatnonzero(case.box.lat_mask(lat))
    ilon = np.flatnonzero(case.box.lon_mask(lon))
    if ilat.size == 0 or ilon.size == 0:
        raise CaseOutOfRange(
            f"case {case.id!r}: box {case.box.describe()} is outside the data's domain "
            f"(latitudes {lat.min():g}..{lat.max():g}, longitudes {lon.min():g}..{lon.max():g})")
    return {"lat": ilat, "lon": ilon, "inside": _window(template, case)}


def station_subset(template: xr.DataArray, case: Case) -> np.ndarray:
    """Positions along ``station`` of the stations inside the case's box, each by its own
    latitude and longitude (a station without coordinates, NaN, is outside); raise
    :class:`CaseOutOfRange` when the box holds none."""
    n = template.sizes[STATION]
    if LATITUDE not in template.coords or LONGITUDE not in template.coords:
        raise CaseOutOfRange(f"case {case.id!r}: the data's {n} stations have no latitude/longitude "
                             "coordinates to place them in the box")
    lat = np.asarray(template[LATITUDE].values, dtype=float)
    lon = np.asarray(template[LONGITUDE].values, dtype=float)
    with np.errstate(invalid="ignore"):
        inside = case.box.lat_mask(lat) & case.box.lon_mask(lon) & ~np.isnan(lon)
    if not inside.any():
        known = ~(np.isnan(lat) | np.isnan(lon))
        where = (f"latitudes {lat[known].min():g}..{lat[known].max():g}, "
                 f"longitudes {lon[known].min():g}..{lon[known].max():g}") if known.any() \
            else "none with coordinates"
        raise CaseOutOfRange(
            f"case {case.id!r}: box {case.box.describe()} holds none of the data's stations "
            f"({n} station{'s' if n != 1 else ''}: {where})")
    return np.flatnonzero(inside)


def _window(template: xr.DataArray, case: Case) -> np.ndarray:
    """``(init_time, lead_time)`` mask of the valid times in the case's window."""
    valid = (template[INIT_TIME] + template[LEAD_TIME]).values  # (init, lead)
    start, end = np.datetime64(case.window.start, "ns"), np.datetime64(case.window.end, "ns")
    inside = (valid >= start) & (valid <= end)
    if not inside.any():
        raise CaseOutOfRange(
            f"case {case.id!r}: window {case.window.start:%Y-%m-%d %H:%M}..{case.window.end:%Y-%m-%d %H:%M} "
            f"is outside the data's valid times ({_fmt(valid.min())}..{_fmt(valid.max())})")
    return inside


def _fmt(t: np.datetime64) -> str:
    return str(np.datetime_as_string(t, unit="m")).replace("T", " ")


def exceedance_probability(f: SystemField, threshold: float) -> xr.DataArray:
    """P(X > threshold): the member fraction, 1 - Phi for a Gaussian, the logistic tail of a
    zero-censored logistic (NaN members skipped)."""
    if f.kind == "ensemble":
        ens = f.ensemble
        return (ens > threshold).where(ens.notnull()).mean(MEMBER)
    if f.kind == "censored_logistic":
        z = (threshold - f.loc) / f.scale
        p = xr.apply_ufunc(lambda a: 1.0 / (1.0 + np.exp(np.clip(a, -700, 700))), z,
                           dask="parallelized", output_dtypes=[float])
        return p if threshold >= 0 else xr.ones_like(p)
    z = (threshold - f.mu) / f.sigma
    return xr.apply_ufunc(lambda a: 1.0 - ndtr(a), z, dask="parallelized", output_dtypes=[float])


# ------------------------------------------------------------------ evaluating a case
@dataclass
class CaseResult:
    """Scores and maps of one case; ``status`` is ``ok``, ``no_truth`` or ``out_of_range``."""

    case: Case
    status: str
    message: str = ""
    #: {system: mean CRPS over box and window} (``estimator`` named)
    crps: dict[str, float] = field(default_factory=dict)
    #: {system: improvement in % of CRPS over the reference}
    improvement_pct: dict[str, float] = field(default_factory=dict)
    estimator: str = ""
    map_valid_time: str | None = None
    map_lead_hours: float | None = None
    #: Dataset with ``<system>_mean/_spread/_prob/_error`` (latitude, longitude) and ``truth``
    maps: xr.Dataset | None = None
    #: station data: ``truth`` and ``<system>_mean/_spread/_crps/_prob`` per (station,
    #: valid_time) over the window (:func:`_case_series`), instead of maps
    series: xr.Dataset | None = None

    def to_dict(self) -> dict:
        d = self._dict()
        if self.series is not None:  # station data only: a gridded case's entry is as it was
            d["series"] = series_document(self.series)
        return d

    def _dict(self) -> dict:
        c = self.case
        return {
            "id": c.id, "name": c.name, "variable": c.variable, "kind": c.kind,
            "box": c.box.model_dump(), "box_text": c.box.describe(),
            "window": {"start": c.window.start.isoformat(), "end": c.window.end.isoformat()},
            "threshold": c.threshold, "how_chosen": c.how_chosen,
            "selected_on_outcome": c.selected_on_outcome, "notes": c.notes,
            "status": self.status, "message": self.message,
            "crps": self.crps, "crps_estimator": self.estimator,
            "improvement_pct": self.improvement_pct,
            "map_valid_time": self.map_valid_time, "map_lead_hours": self.map_lead_hours,
        }


def evaluate_case(
    case: Case,
    fields: dict[str, SystemField],
    truth: xr.DataArray | None,
    *,
    score_fn,
    reference: str,
    estimator: str,
) -> CaseResult:
    """Score every system in the case's box and window and build its maps (station data:
    the stations in the box, uniformly weighted, and their time series instead of maps).

    ``fields`` are the systems' fields of ``case.variable``; ``truth`` is the truth already on
    the forecast's ``(init_time, lead_time)`` (or ``None`` when there is no verifying
    analysis: then only forecast maps and exceedance probabilities are made).
    ``score_fn(field, obs) -> pointwise CRPS`` is the evaluation's CRPS.
    A case the data do not cover gives ``status="out_of_range"`` with the reason.
    """
    if not fields:
        return CaseResult(case, "out_of_range", f"case {case.id!r}: no system provides variable "
                                                f"{case.variable!r}")
    first = next(iter(fields.values()))
    try:
        sub = case_subset(first.template, case)
    except CaseOutOfRange as e:
        return CaseResult(case, "out_of_range", str(e))
    points = STATION in first.template.dims
    inside = xr.DataArray(sub["inside"], dims=(INIT_TIME, LEAD_TIME),
                          coords={INIT_TIME: first.template[INIT_TIME], LEAD_TIME: first.template[LEAD_TIME]})
    if points:  # every station in the box weighs the same
        box = {STATION: sub["station"]}
        weights = xr.DataArray(np.ones(sub["station"].size), dims=(STATION,))
    else:
        box = {LATITUDE: sub["lat"], LONGITUDE: sub["lon"]}
        lat = first.template[LATITUDE].values[sub["lat"]]
        weights = xr.DataArray(np.cos(np.deg2rad(lat)), dims=(LATITUDE,))

    result = CaseResult(case, "ok" if truth is not None else "no_truth", estimator=estimator)
    if truth is None:
        result.message = (f"case {case.id!r}: no verifying analysis for {case.variable!r} in the "
                          "window; scores are not computed, forecast "
                          f"{'time series' if points else 'maps'} and exceedance probabilities "
                          "are shown")
    else:
        obs = truth.isel(box)
        for key, f in fields.items():
            crps = score_fn(f.isel(box), obs)
            w = weights.broadcast_like(crps).where(inside & crps.notnull(), 0.0)
            total = float(w.sum())
            result.crps[key] = float((crps.fillna(0.0) * w).sum() / total) if total > 0 else float("nan")
        if reference in result.crps and np.isfinite(result.crps[reference]) and result.crps[reference] > 0:
            ref = result.crps[reference]
            result.improvement_pct = {k: 100.0 * (1.0 - v / ref) for k, v in result.crps.items()}
    if points:
        result.series = _case_series(case, fields, truth, sub, score_fn)
    else:
        result.maps, result.map_valid_time, result.map_lead_hours = _case_maps(case, fields, truth, sub)
    return result


def _case_maps(case: Case, fields: dict[str, SystemField], truth: xr.DataArray | None,
               sub: dict[str, np.ndarray]) -> tuple[xr.Dataset, str, float]:
    """Maps at one valid time (``map_time`` or the first in the window), shortest lead."""
    first = next(iter(fields.values())).template
    valid = (first[INIT_TIME] + first[LEAD_TIME]).values
    inside = sub["inside"]
    target = np.datetime64(case.map_time or case.window.start, "ns")
    cand = np.argwhere(inside)
    times = valid[inside]
    best_t = times[np.argmin(np.abs(times - target))]
    pick = [(i, j) for i, j in cand if valid[i, j] == best_t]
    i, j = min(pick, key=lambda ij: first[LEAD_TIME].values[ij[1]])
    idx = {INIT_TIME: i, LEAD_TIME: j}
    maps = {}
    for key, f in fields.items():
        g = f.isel(idx)
        maps[f"{key}_mean"] = g.mean()
        maps[f"{key}_spread"] = g.spread()
        if case.threshold is not None:
            maps[f"{key}_prob"] = exceedance_probability(g, case.threshold)
        if truth is not None:
            maps[f"{key}_error"] = g.mean() - truth.isel(idx)
    if truth is not None:
        maps["truth"] = truth.isel(idx)
    ds = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in (LATITUDE, LONGITUDE)])
                     for k, v in maps.items()}).load()
    # a margin around the box so the event is seen in context
    lat, lon = ds[LATITUDE].values, ds[LONGITUDE].values
    la, lo = sub["lat"], sub["lon"]
    pad_la = max(2, la.size // 2)
    pad_lo = max(2, lo.size // 2)
    lsel = np.arange(max(0, la.min() - pad_la), min(lat.size, la.max() + pad_la + 1))
    contiguous = np.all(np.diff(lo) == 1)
    osel = (np.arange(max(0, lo.min() - pad_lo), min(lon.size, lo.max() + pad_lo + 1))
            if contiguous else lo)
    ds = ds.isel({LATITUDE: lsel, LONGITUDE: osel})
    ds.attrs.update({"case": case.id, "box": case.box.describe()})
    lead_h = float(first[LEAD_TIME].values[j] / np.timedelta64(1, "h"))
    return ds, _fmt(best_t), lead_h


#: the time-series dim of a station case
VALID_TIME = "valid_time"


def _case_series(case: Case, fields: dict[str, SystemField], truth: xr.DataArray | None,
                 sub: dict[str, np.ndarray], score_fn) -> xr.Dataset:
    """Per station in the box and valid time in the window: ``truth`` and each system's
    ``_mean``, ``_spread`` (ensemble standard deviation, or the distribution's), ``_crps``
    (with a truth) and ``_prob`` (P(X > threshold), with a threshold), from the forecast of the
    shortest lead time with that valid time (as the maps of a gridded case)."""
    tmpl = next(iter(fields.values())).template
    valid = (tmpl[INIT_TIME] + tmpl[LEAD_TIME]).values
    leads = tmpl[LEAD_TIME].values
    inside = sub["inside"]
    times = np.unique(valid[inside])
    pick = [min((tuple(ij) for ij in np.argwhere(inside & (valid == t))), key=lambda ij: leads[ij[1]])
            for t in times]
    idx = {INIT_TIME: xr.DataArray([i for i, _ in pick], dims=VALID_TIME),
           LEAD_TIME: xr.DataArray([j for _, j in pick], dims=VALID_TIME), STATION: sub["station"]}
    out: dict[str, xr.DataArray] = {}
    obs = None if truth is None else truth.isel(idx)
    for key, f in fields.items():
        g = f.isel(idx)
        out[f"{key}_mean"] = g.mean()
        out[f"{key}_spread"] = g.spread()
        if obs is not None:
            out[f"{key}_crps"] = score_fn(g, obs)
        if case.threshold is not None:
            out[f"{key}_prob"] = exceedance_probability(g, case.threshold)
    if obs is not None:
        out["truth"] = obs
    keep = (STATION, LATITUDE, LONGITUDE)
    ds = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in keep]).transpose(STATION, VALID_TIME)
                     for k, v in out.items()})
    ds = ds.assign_coords({VALID_TIME: times, "lead_hours": (VALID_TIME, leads[[j for _, j in pick]]
                                                              / np.timedelta64(1, "h"))})
    for name in ("station_name", "name"):
        if name in tmpl.coords and tmpl[name].dims == (STATION,):
            ds = ds.assign_coords(station_name=(STATION, tmpl[name].values[sub["station"]]))
            break
    ds.attrs.update({"case": case.id, "box": case.box.describe()})
    return ds.load()


def series_document(series: xr.Dataset) -> dict:
    """A station case's time series as JSON-ready lists: ``valid_times``, ``lead_hours``,
    ``systems`` and per station its ``id``, ``name``, ``latitude``, ``longitude``, ``truth``
    and per quantity (``mean``, ``spread``, ``crps``, ``prob``) ``{system: values}``."""
    systems = [n[:-len("_mean")] for n in series.data_vars if n.endswith("_mean")]
    quantities = ("mean", "spread", "crps", "prob")

    def values(da: xr.DataArray) -> list[float | None]:  # 7 significant digits: float32's
        return [float(f"{x:.7g}") if np.isfinite(x) else None for x in np.asarray(da.values, dtype=float)]

    stations = []
    for k in range(series.sizes[STATION]):
        st = series.isel({STATION: k})
        entry: dict = {"id": str(st[STATION].values) if STATION in st.coords else str(k)}
        if "station_name" in st.coords:
            entry["name"] = str(st["station_name"].values)
        for c in (LATITUDE, LONGITUDE):
            if c in st.coords:
                entry[c] = float(st[c].values)
        if "truth" in st:
            entry["truth"] = values(st["truth"])
        for q in quantities:
            per = {s: values(st[f"{s}_{q}"]) for s in systems if f"{s}_{q}" in st}
            if per:
                entry[q] = per
        stations.append(entry)
    return {"valid_times": [_fmt(t) for t in series[VALID_TIME].values],
            "lead_hours": [float(h) for h in series["lead_hours"].values],
            "systems": systems, "stations": stations}
