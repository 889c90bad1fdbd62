"""``evaluate(config, out_dir)``: score every system against the truth, chunk by chunk.

For each variable the init times (common to all systems, in the period) are processed in
chunks of ``config.chunk_size``: each chunk is loaded, scored pointwise
(:mod:`evaluation.scoring`) and reduced at once to mergeable sums
(:mod:`evaluation.aggregate`): area-weighted sums per region, init time and lead time (small:
they feed the block bootstrap), sums over init times per grid point (the CRPS maps) and
rank/PIT counts.  Memory is one chunk plus these sums, whatever the length of the period;
the result does not depend on the chunking.

Missing data: see :mod:`evaluation.config` (``missing``): refused by default, naming the
system, the variable and the init time; skipped and reported with ``missing: skip``.
"""

from __future__ import annotations

import datetime as _dt
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data import durable, output_dir
from enspp.data.errors import EnsppError
from enspp.data.progress import LOGGER, Step, listed, plural, summary_line
from enspp.data.schema import INIT_TIME, LATITUDE, LEAD_TIME, LONGITUDE, MEMBER, STATION
from enspp.evaluation import fused, kernels, scoring
from enspp.evaluation.bootstrap import bootstrap_skill, diebold_mariano, has_interval
from enspp.evaluation.cases import CaseResult, evaluate_case, load_catalogue
from enspp.evaluation.config import EvaluateConfig, EvaluateConfigError
from enspp.evaluation.labels import grid_text
from enspp.evaluation.metrics import climatological_quantile
from enspp.evaluation.registry import MissingReferenceError
from enspp.evaluation.systems import (
    AlignmentError,
    SystemField,
    check_same_grid,
    common_init_times,
    open_systems,
    open_truth,
    recent_window,
    select_period,
    truth_at_valid_time,
    truth_values,
)
from enspp.evaluation.weights import Region, RegionError, region_weights, split_regions, station_weights


class MissingDataError(EnsppError):
    """Data are missing (an init time, a valid time, values) and ``missing: error`` refuses
    to score without them."""


#: the former name of :class:`MissingDataError`
NanPolicyError = MissingDataError

_SKIP_HINT = "set evaluate.missing: skip to score without them"


@dataclass
class VariableScores:
    """Everything computed for one variable."""

    variable: str
    units: str
    systems: list[str]
    #: per (system, region, init_time, lead_time): ``<q>_ws`` weighted sums and ``<q>_w`` weights
    per_init: xr.Dataset
    #: per (system, lead_time, latitude, longitude): mean CRPS over init times
    crps_map: xr.DataArray
    #: {system: (region, lead_time, bin) area-weighted counts}, and kind (rank/pit) per system
    histograms: dict[str, xr.DataArray]
    hist_kind: dict[str, str]
    members: dict[str, int | None]
    nan_dropped: dict[str, int]
    tw_labels: list[str] = field(default_factory=list)
    #: regions holding no grid point of this variable (skipped) and notes for the reader
    regions_skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: {system: ensemble | gaussian | censored_logistic}
    kinds: dict[str, str] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """The scores of an evaluation, ready for :mod:`evaluation.report`."""

    config: EvaluateConfig
    variables: dict[str, VariableScores]
    scores: dict[str, xr.Dataset]
    cases: list[CaseResult]
    provenance: dict
    out_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        """What the reader should know that is not an error (e.g. a region skipped)."""
        return [n for vs in self.variables.values() for n in vs.notes]


# ------------------------------------------------------------------ per-variable accumulation
def _is_point(template: xr.DataArray) -> bool:
    return STATION in template.dims


def _weights_array(template: xr.DataArray, regions: list[Region]) -> np.ndarray:
    """``(region, lat, lon)`` area weights; station data ``(region, station, 1)`` with one
    weight per station (:func:`evaluation.weights.station_weights`)."""
    if _is_point(template):
        return np.ascontiguousarray(np.stack([
            station_weights(template, r).values[:, None] for r in regions]), dtype=np.float64)
    return np.ascontiguousarray(np.stack([
        xr.broadcast(region_weights(template[LATITUDE], template[LONGITUDE], r),
                     template[LATITUDE], template[LONGITUDE])[0].transpose(LATITUDE, LONGITUDE).values
        for r in regions]), dtype=np.float64)


def _space(template: xr.DataArray) -> dict[str, np.ndarray]:
    """The coordinates of the arrays' two spatial axes: the grid's, or for station data the
    station index and one column (the internal layout of the chunk scoring)."""
    if _is_point(template):
        return {LATITUDE: np.arange(template.sizes[STATION]), LONGITUDE: np.zeros(1)}
    return {LATITUDE: template[LATITUDE].values, LONGITUDE: template[LONGITUDE].values}


def _regions_of(config: EvaluateConfig, template: xr.DataArray, variable: str
                ) -> tuple[list[Region], list[str]]:
    """The configured regions holding grid points (stations), and a note for each one skipped."""
    if _is_point(template):
        kept, empty = [], []
        for r in config.region_list:
            try:
                station_weights(template, r)
                kept.append(r)
            except RegionError:
                empty.append(r)
        if not kept:
            raise RegionError(f"evaluate.regions: none of {[r.name for r in empty]} holds a "
                              f"station of {variable!r}")
        return kept, [f"region {r.name!r} holds no station of {variable!r}: skipped" for r in empty]
    kept, empty = split_regions(template[LATITUDE], template[LONGITUDE], config.region_list)
    grid = grid_text(template[LATITUDE].values, template[LONGITUDE].values)
    if not kept:
        raise RegionError(f"evaluate.regions: none of {[r.name for r in empty]} holds a grid "
                          f"point of {variable!r} (grid {grid})")
    return kept, [f"region {r.name!r} holds no grid point of {variable!r} (grid {grid}): "
                  "skipped" for r in empty]


def _times(values: np.ndarray, limit: int = 3) -> str:
    shown = ", ".join(str(np.datetime_as_string(t, unit="h")) for t in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


class StoreReadFailed(EnsppError):
    """A chunk of a store could not be read or decoded (a corrupt or unreadable file)."""


@contextmanager
def _reading(what: str, path: str, variable: str, init: np.ndarray):
    """Turn a failed read or decode of stored data into one line naming the store, the
    variable and the init times of the chunk being read (errors that already name their
    chunk, user errors, pass through; ``--debug`` shows the original traceback)."""
    try:
        yield
    except EnsppError:
        raise
    except (RuntimeError, ValueError, OSError) as e:
        span = _times(init[:1]) if init.size == 1 else f"{_times(init[:1])}..{_times(init[-1:])}"
        raise StoreReadFailed(f"{what} ({path}): {variable!r} for init times {span} cannot be "
                              f"read: {type(e).__name__}: {' '.join(str(e).split())[:160]} "
                              "(a corrupt or unreadable chunk)") from e


def _check_missing_values(obs: np.ndarray, tidx: np.ndarray, arrays: dict[str, list[np.ndarray]],
                          chunk: dict[str, SystemField], *, variable: str,
                          paths: dict[str, str]) -> None:
    """``missing: error``: refuse the first missing value (NaN) of the chunk, naming where."""
    init = next(iter(chunk.values())).template[INIT_TIME].values
    bad_obs = np.isnan(obs).any(axis=(1, 2))[tidx]  # (init, lead)
    if bad_obs.any():
        n = int(np.isnan(obs).sum(axis=(1, 2))[tidx].sum())
        raise MissingDataError(
            f"the truth ({paths.get('truth', 'truth')}) has {n} missing values of {variable!r} "
            f"at the valid times of init times {_times(init[bad_obs.any(axis=1)])}; "
            + _SKIP_HINT)
    for key, parts in arrays.items():
        for part in parts:
            nan = np.isnan(part)
            if nan.any():
                per_init = nan.reshape(nan.shape[0], -1).sum(axis=1)
                raise MissingDataError(
                    f"system {key!r} ({paths.get(key, '')}) has {int(per_init.sum())} missing "
                    f"values (NaN) of {variable!r} at init times {_times(init[per_init > 0])} "
                    f"(a field absent from the store or a lost chunk); " + _SKIP_HINT)


def _tw_thresholds(config: EvaluateConfig, truth: xr.DataArray, template: xr.DataArray,
                   init_times: np.ndarray) -> dict[str, float | xr.DataArray]:
    """Fixed thresholds and local climatological percentiles of the truth."""
    tw = config.twcrps
    out: dict[str, float | xr.DataArray] = {f"t{t:g}": float(t) for t in tw.thresholds}
    if tw.percentiles:
        if tw.climatology is not None:
            t = truth["time"].values.astype("datetime64[D]")
            sel = (t >= np.datetime64(tw.climatology.start)) & (t <= np.datetime64(tw.climatology.end))
            clim = truth.isel(time=np.flatnonzero(sel))
        else:
            lo, hi = init_times.min(), init_times.max() + template[LEAD_TIME].values.max()
            clim = truth.sel(time=slice(lo, hi))
        if clim.sizes["time"] < 2:
            raise AlignmentError(f"twcrps: the climatology of {truth.name!r} holds "
                                 f"{clim.sizes['time']} times; need at least 2")
        for p in tw.percentiles:
            q = climatological_quantile(clim, p, dim="time").load()
            if _is_point(template):  # the chunk scoring's layout: (station index, 1)
                q = xr.DataArray(q.transpose(STATION).values[:, None], dims=(LATITUDE, LONGITUDE))
            out[f"p{round(p * 100):d}"] = q.assign_coords(_space(template))
    return out


_GRID = (INIT_TIME, LEAD_TIME, LATITUDE, LONGITUDE)


def _read_chunk(f: SystemField) -> list[np.ndarray]:
    """The chunk of a system as numpy, canonical order, each array read once: ``[ensemble]``
    ``(init, lead, member, lat, lon)``, ``[mu, sigma]`` ``(init, lead, lat, lon)`` or, for a
    censored logistic, ``[mu, sigma, loc, scale]``; station data with ``(station, 1)`` in place
    of ``(lat, lon)``."""
    point = _is_point(f.template)
    space = (STATION,) if point else (LATITUDE, LONGITUDE)

    def read(da: xr.DataArray, *head: str) -> np.ndarray:
        values = da.transpose(INIT_TIME, LEAD_TIME, *head, *space).values
        return values[..., None] if point else values

    if f.kind == "ensemble":
        return [read(f.ensemble, MEMBER)]
    if f.kind == "censored_logistic":
        return [read(f.mu), read(f.sigma), read(f.loc), read(f.scale)]
    return [read(f.mu), read(f.sigma)]


def _obs(f: SystemField, obs: np.ndarray, tidx: np.ndarray) -> xr.DataArray:
    """The truth of a chunk at the forecasts' valid times, ``(init, lead, lat, lon)`` (station
    data: ``(init, lead, station index, 1)``)."""
    t = f.template
    return xr.DataArray(obs[tidx], dims=_GRID, coords={INIT_TIME: t[INIT_TIME].values,
                                                       LEAD_TIME: t[LEAD_TIME].values, **_space(t)})


def _chunk_field(f: SystemField, arrays: list[np.ndarray], obs: np.ndarray,
                 tidx: np.ndarray) -> SystemField:
    """A system's chunk (already read as numpy) as a :class:`SystemField` for the pointwise
    scores of :mod:`evaluation.scoring`."""
    y = _obs(f, obs, tidx)
    if f.kind == "ensemble":
        return SystemField(f.key, f.variable, f.kind, ensemble=xr.DataArray(
            arrays[0], dims=(INIT_TIME, LEAD_TIME, MEMBER, LATITUDE, LONGITUDE), coords=y.coords))
    if f.kind == "censored_logistic":
        return SystemField(f.key, f.variable, f.kind, mu=y.copy(data=arrays[0]),
                           sigma=y.copy(data=arrays[1]), loc=y.copy(data=arrays[2]),
                           scale=y.copy(data=arrays[3]))
    return SystemField(f.key, f.variable, f.kind, mu=y.copy(data=arrays[0]),
                       sigma=y.copy(data=arrays[1]))


def model_climate(config: EvaluateConfig, variable: str, fields: dict[str, SystemField]
                  ) -> tuple[str, np.ndarray, np.ndarray]:
    """``(system, quantiles, levels)`` for the EECRPS weights: the quantiles ``(lead, lat,
    lon, level)`` of the reference ensemble's members (else the first ensemble system's) over
    ``eecrps.climatology`` (default: the evaluated init times), at most
    ``eecrps.max_init_times`` init times evenly spaced, per lead time and grid point."""
    ens = [k for k, f in fields.items() if f.kind == "ensemble"]
    if not ens:
        raise EvaluateConfigError(f"evaluate.metrics: eecrps of {variable!r} needs an ensemble "
                                  "system for the model climate (e.g. raw_full)")
    key = config.reference if config.reference in ens else ens[0]
    ee = config.eecrps
    f = fields[key]
    if ee.climatology is not None:
        system = next(s for s in config.systems if s.key == key)
        full = open_systems(config.model_copy(update={"systems": [system]}))[key][variable]
        f = select_period(full, ee.climatology, config.lead_times)
        if f.template.sizes[INIT_TIME] == 0:
            raise AlignmentError(f"evaluate.eecrps.climatology: {key!r} holds no init time of "
                                 f"{variable!r} in {ee.climatology.start}..{ee.climatology.end}")
        ref = fields[key].template[LEAD_TIME].values
        if not np.array_equal(f.template[LEAD_TIME].values, ref):
            raise AlignmentError(f"evaluate.eecrps.climatology: the lead times of {key!r} differ "
                                 "from the evaluated ones; set evaluate.lead_times")
    n = f.template.sizes[INIT_TIME]
    pick = np.unique(np.linspace(0, n - 1, min(n, ee.max_init_times)).round().astype(int))
    levels = np.arange(1, ee.n_quantiles + 1) / (ee.n_quantiles + 1)
    quantiles = []
    for j in range(f.template.sizes[LEAD_TIME]):
        x = f.ensemble.isel({INIT_TIME: pick, LEAD_TIME: j}).transpose(
            INIT_TIME, MEMBER, LATITUDE, LONGITUDE).values
        x = x.reshape(-1, *x.shape[2:]).astype(np.float64)
        q = np.nanquantile(x, levels, axis=0)  # (level, lat, lon)
        quantiles.append(np.moveaxis(q, 0, -1))
    return key, np.stack(quantiles), levels


def efi_blocks(ensemble: np.ndarray, climate: np.ndarray, levels: np.ndarray, *,
               max_elements: int = 2 ** 24) -> np.ndarray:
    """EFI ``(init, lead, lat, lon)`` of an ensemble ``(init, lead, member, lat, lon)`` against
    model-climate quantiles ``(lead, lat, lon, level)``, in blocks of latitude rows so the
    kernel's (member x level) comparisons stay within ``max_elements``."""
    n_init, n_lead, n_mem, ny, nx = ensemble.shape
    out = np.empty((n_init, n_lead, ny, nx))
    rows = max(1, max_elements // max(1, nx * n_mem * levels.size))
    x = np.moveaxis(ensemble, 2, -1)  # (init, lead, lat, lon, member)
    for i in range(n_init):
        for j in range(n_lead):
            for y0 in range(0, ny, rows):
                out[i, j, y0:y0 + rows] = kernels.efi_kernel(
                    x[i, j, y0:y0 + rows], climate[j, y0:y0 + rows], levels)
    return out


def _chunk_sums(config: EvaluateConfig, f: SystemField, arrays: list[np.ndarray], obs: np.ndarray,
                tidx: np.ndarray, weights: np.ndarray, tw: dict, *, rank: bool,
                offset: int) -> fused.ChunkSums:
    """Fused sums of one system's chunk; twCRPS (if asked) through :mod:`evaluation.metrics`."""
    if f.kind == "ensemble":
        cs = fused.ensemble_chunk_sums(arrays[0], obs, tidx, weights, estimator=config.crps_estimator,
                                       rank=rank, seed=config.bootstrap.seed, init_offset=offset)
    elif f.kind == "censored_logistic":
        cs = fused.censored_chunk_sums(*arrays, obs, tidx, weights, pit=rank,
                                       seed=config.bootstrap.seed, init_offset=offset)
    else:
        cs = fused.gaussian_chunk_sums(arrays[0], arrays[1], obs, tidx, weights, pit=rank)
    if tw:
        y = _obs(f, obs, tidx)
        field = _chunk_field(f, arrays, obs, tidx)
        for label, thr in tw.items():
            score = scoring.twcrps(field, y, threshold=thr, tail=config.twcrps.tail,
                                   estimator=config.crps_estimator)
            cs = cs.with_extra(f"twcrps_{label}", fused.point_sums(score.transpose(*_GRID).values, weights))
    return cs


def score_variable(config: EvaluateConfig, variable: str, fields: dict[str, SystemField],
                   truth: xr.DataArray, *, progress: bool = True) -> VariableScores:
    """Chunked scores of every system for ``variable`` (fields already cut to the period).

    Per chunk of init times every system is read once as numpy and the truth once at the
    chunk's distinct valid times; :mod:`evaluation.fused` turns them into sums in one pass.
    """
    keys = list(fields)
    ref = fields[config.reference] if config.reference in fields else fields[keys[0]]
    tmpl = ref.template
    init_times = tmpl[INIT_TIME].values
    kept, notes = _regions_of(config, tmpl, variable)
    regions = [r.name for r in kept]
    weights = _weights_array(tmpl, kept)
    tw = _tw_thresholds(config, truth, tmpl, init_times) if "twcrps" in config.metrics else {}
    ee_key = None
    if "eecrps" in config.metrics:
        ee_key, climate, levels = model_climate(config, variable, fields)
        notes.append(f"eecrps of {variable!r}: weights |EFI| of {ee_key!r} against its model "
                     f"climate ({climate.shape[-1]} quantiles)")
    want_hist = "rank_histogram" in config.metrics
    totals: dict[str, fused.ChunkSums] = {}
    starts = range(0, init_times.size, config.chunk_size)

    paths = _paths(config)

    def read(start: int) -> tuple[dict[str, SystemField], np.ndarray, np.ndarray, dict[str, list[np.ndarray]]]:
        chunk = {k: f.isel({INIT_TIME: slice(start, start + config.chunk_size)}) for k, f in fields.items()}
        init = chunk[keys[0]].template[INIT_TIME].values
        with _reading("the truth", paths["truth"], variable, init):
            obs, tidx = truth_values(truth, chunk[keys[0]].template,
                                     what=f"truth vs forecasts of {variable!r}")
        arrays = {}
        for k, f in chunk.items():
            with _reading(f"system {k!r}", paths.get(k, ""), variable, init):
                arrays[k] = _read_chunk(f)
        return chunk, obs, tidx, arrays

    # the next chunk is read (I/O, decompression: outside the GIL) while this one is scored;
    # memory is two chunks at most
    bar = Step(f"score {variable}", total=int(init_times.size), unit="init time", bar=progress)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, starts[0])
        for n, start in enumerate(starts):
            chunk, obs, tidx, arrays = pending.result()
            if n + 1 < len(starts):
                pending = pool.submit(read, starts[n + 1])
            if config.missing == "error":
                _check_missing_values(obs, tidx, arrays, chunk, variable=variable,
                                      paths=_paths(config))
            efi = None if ee_key is None else np.abs(efi_blocks(arrays[ee_key][0], climate, levels))
            for k in keys:
                cs = _chunk_sums(config, chunk[k], arrays[k], obs, tidx, weights, tw, rank=want_hist,
                                 offset=start)
                if efi is not None:
                    crps = scoring.crps(_chunk_field(chunk[k], arrays[k], obs, tidx), _obs(chunk[k], obs, tidx),
                                        estimator=config.crps_estimator)
                    cs = cs.with_extra("eecrps", fused.point_sums(
                        efi * crps.transpose(*_GRID).values, weights))
                totals[k] = cs if k not in totals else totals[k].merge(cs)
            bar.update(min(config.chunk_size, init_times.size - start))
            del chunk, obs, arrays
    bar.close()
    dropped = {k: int(c.n_nan) for k, c in totals.items()}
    if any(dropped.values()):
        notes.append(f"{variable}: missing values skipped (points with NaN in the truth or the "
                     "system): " + ", ".join(f"{k} {n}" for k, n in dropped.items()))
    partial = {k: int(c.n_partial) for k, c in totals.items() if c.n_partial}
    if partial:
        notes.append(f"{variable}: points scored with only some of their members (the others "
                     "missing): " + ", ".join(f"{k} {n}" for k, n in partial.items()))
    per_init = _per_init(totals, keys, regions, tmpl)

    def mean_map(c: fused.ChunkSums) -> xr.DataArray:
        values = np.divide(c.map_sum, c.map_count, out=np.full_like(c.map_sum, np.nan),
                           where=c.map_count > 0)
        if _is_point(tmpl):  # per station
            return xr.DataArray(values[..., 0], dims=(LEAD_TIME, STATION),
                                coords={LEAD_TIME: tmpl[LEAD_TIME].values, STATION: tmpl[STATION].values})
        return xr.DataArray(values, dims=(LEAD_TIME, LATITUDE, LONGITUDE),
                            coords={LEAD_TIME: tmpl[LEAD_TIME].values, **_space(tmpl)})

    crps_map = xr.concat([mean_map(c).expand_dims(system=[k]) for k, c in totals.items()], "system")
    crps_map.attrs = {"long_name": "mean CRPS over init times", "estimator": estimator_label(
        config, kinds={k: f.kind for k, f in fields.items()},
        members={k: scoring.n_members(f) for k, f in fields.items()})}
    hists = {k: xr.DataArray(c.hist, dims=("region", LEAD_TIME, "bin"),
                             coords={"region": regions, LEAD_TIME: tmpl[LEAD_TIME].values,
                                     "bin": np.arange(c.hist.shape[-1])})
             for k, c in totals.items() if c.hist is not None}
    hist_kind = {k: "rank" if fields[k].kind == "ensemble" else "pit" for k in hists}
    units = str(truth.attrs.get("units", ""))
    return VariableScores(variable, units, keys, per_init, crps_map, hists, hist_kind,
                          {k: scoring.n_members(f) for k, f in fields.items()},
                          {k: c.n_nan for k, c in totals.items()}, tw_labels=list(tw),
                          regions_skipped=[r.name for r in config.region_list
                                           if r.name not in regions], notes=notes,
                          kinds={k: f.kind for k, f in fields.items()})


def _per_init(parts: dict[str, fused.ChunkSums], keys: list[str], regions: list[str],
              template: xr.DataArray) -> xr.Dataset:
    """``<q>_ws`` / ``<q>_w`` with dims (system, region, init_time, lead_time)."""
    coords = {"system": pd.Index(keys, dtype=object), "region": pd.Index(regions, dtype=object),
              INIT_TIME: template[INIT_TIME].values, LEAD_TIME: template[LEAD_TIME].values}
    dims = ("system", "region", INIT_TIME, LEAD_TIME)
    out = {}
    for j, name in enumerate(parts[keys[0]].names):
        out[f"{name}_ws"] = (dims, np.stack([parts[k].sums[j] for k in keys]))
        out[f"{name}_w"] = (dims, np.stack([parts[k].weights[j] for k in keys]))
    return xr.Dataset(out, coords=coords)


# ------------------------------------------------------------------ summary scores and skill
def summarise(config: EvaluateConfig, vs: VariableScores) -> xr.Dataset:
    """Scores per (system, region, lead_time) and over all leads (``*_all``), with skill,
    bootstrap CIs and a Diebold-Mariano test against the reference."""
    p = vs.per_init

    def mean(q: str, dims: tuple[str, ...]) -> xr.DataArray:
        w = p[f"{q}_w"].sum(dims)
        return p[f"{q}_ws"].sum(dims) / w.where(w > 0)

    out = xr.Dataset()
    for suffix, dims in (("", (INIT_TIME,)), ("_all", (INIT_TIME, LEAD_TIME))):
        out[f"crps{suffix}"] = mean("crps", dims)
        out[f"rmse{suffix}"] = np.sqrt(mean("sq_error", dims))
        out[f"mae{suffix}"] = mean("abs_error", dims)
        out[f"bias{suffix}"] = mean("error", dims)
        spread = np.sqrt(mean("variance", dims))
        factor = xr.DataArray([np.sqrt((m + 1) / m) if m else 1.0 for m in
                               (vs.members[s] for s in vs.systems)], dims="system",
                              coords={"system": vs.systems})
        out[f"spread{suffix}"] = spread
        out[f"spread_skill{suffix}"] = factor * spread / out[f"rmse{suffix}"]
        for label in vs.tw_labels:
            out[f"twcrps_{label}{suffix}"] = mean(f"twcrps_{label}", dims)
        if "eecrps_ws" in p:
            out[f"eecrps{suffix}"] = mean("eecrps", dims)
    ref = config.reference
    if ref in vs.systems:
        series = p["crps_ws"] / p["crps_w"].where(p["crps_w"] > 0)  # (system, region, init, lead)
        series_all = p["crps_ws"].sum(LEAD_TIME) / p["crps_w"].sum(LEAD_TIME).where(p["crps_w"].sum(LEAD_TIME) > 0)
        bs = config.bootstrap
        n = series.sizes[INIT_TIME]
        if n and not has_interval(n, bs.block_length):
            # never shrink the block behind the user's back: no interval, and say so
            note = (f"{vs.variable}: bootstrap: {plural(n, 'init time')} "
                    f"{'is' if n == 1 else 'are'} fewer than two blocks of "
                    f"{bs.block_length} (evaluate.bootstrap.block_length): no confidence interval")
            if note not in vs.notes:
                vs.notes.append(note)
        for suffix, s in (("", series), ("_all", series_all)):
            r = s.sel(system=ref, drop=True)
            if n >= 2:
                sk = bootstrap_skill(s, r, dim=INIT_TIME, confidence=bs.ci_level, n_resamples=bs.n,
                                     block_length=bs.block_length, seed=bs.seed)
                out[f"skill{suffix}"] = sk["value"]
                out[f"skill_low{suffix}"] = sk["low"]
                out[f"skill_high{suffix}"] = sk["high"]
            else:
                out[f"skill{suffix}"] = 1.0 - out[f"crps{suffix}"] / out[f"crps{suffix}"].sel(system=ref)
                out[f"skill_low{suffix}"] = out[f"skill{suffix}"] * np.nan
                out[f"skill_high{suffix}"] = out[f"skill{suffix}"] * np.nan
            if n >= 4:
                others = [k for k in vs.systems if k != ref]
                pv = xr.full_like(out[f"skill{suffix}"], np.nan)
                for k in others:
                    dm = diebold_mariano(s.sel(system=k, drop=True), r, dim=INIT_TIME,
                                         max_lag=min(config.bootstrap.block_length, n - 2) - 1
                                         if n > 3 else 0)
                    pv.loc[{"system": k}] = dm["p_value"]
                out[f"dm_pvalue{suffix}"] = pv
    out = out.assign_coords(init_count=vs.per_init.sizes[INIT_TIME],
                            crps_kind=("system", [_crps_kind(config, vs.kinds.get(s, "ensemble"))
                                                  for s in out["system"].values]))
    out.attrs = {
        "variable": vs.variable, "units": vs.units,
        "crps_estimator": _estimator_label_from(config, vs),
        "reference": ref,
        "skill": "1 - CRPS/CRPS(reference), mean scores over init times, area-weighted",
        "ci": f"{config.bootstrap.ci_level:.0%} circular block bootstrap over init dates "
              f"(block length {config.bootstrap.block_length}, {config.bootstrap.n} resamples)",
        "dm_test": "Diebold-Mariano (Newey-West HAC, HLN correction), two-sided, vs reference",
        "spread_skill": "sqrt((M+1)/M) * spread / RMSE of the mean (1 = calibrated; Gaussian: factor 1)",
        "missing": config.missing,
    }
    for k, v in vs.nan_dropped.items():
        out.attrs[f"nan_dropped_{k}"] = v
    if vs.regions_skipped:
        out.attrs["regions_skipped"] = ", ".join(vs.regions_skipped)
    return out


#: how a one-member "ensemble" (a deterministic forecast) is scored: every CRPS estimator
#: reduces to the absolute error there (the spread term is zero)
ONE_MEMBER = "absolute error (one member)"


def _crps_kind(config: EvaluateConfig, kind: str, n_members: int | None = None) -> str:
    """The CRPS estimator that scores a system of ``kind`` (ensemble, gaussian, ...)."""
    if kind == "ensemble":
        return ONE_MEMBER if n_members == 1 else f"{config.crps_estimator} ensemble CRPS"
    return f"closed-form {kind.replace('_', ' ')} CRPS"


def estimator_label(config: EvaluateConfig, *, kinds: dict[str, str],
                    members: dict[str, int | None]) -> str:
    """Which CRPS estimator scored which system (``kinds``: system -> ensemble | gaussian |
    censored_logistic; ``members``: system -> member count), e.g. ``fair ensemble CRPS for
    raw_full, raw_subset; closed-form gaussian CRPS for mixed``: the printed line and the
    output attributes."""
    by_label: dict[str, list[str]] = {}
    for s, kind in kinds.items():
        by_label.setdefault(_crps_kind(config, kind, members.get(s)), []).append(s)
    return "; ".join(f"{label} for {', '.join(systems)}" for label, systems in by_label.items())


def _estimator_label_from(config: EvaluateConfig, vs: VariableScores) -> str:
    order = {"ensemble": 0, "gaussian": 1, "censored_logistic": 2}
    systems = sorted(vs.systems, key=lambda s: order.get(vs.kinds.get(s, "ensemble"), 3))
    return estimator_label(config, kinds={s: vs.kinds.get(s, "ensemble") for s in systems},
                           members={s: vs.members.get(s) for s in systems})


# ------------------------------------------------------------------ orchestration
def _paths(config: EvaluateConfig) -> dict[str, str]:
    return {s.key: str(s.path) for s in config.systems} | {"truth": str(config.truth)}


def prepare_fields(config: EvaluateConfig, notes: dict[str, list[str]] | None = None
                   ) -> dict[str, dict[str, SystemField]]:
    """Open the systems, cut them to the period and lead times, keep the init times every
    system has; ``{variable: {system: field}}``.  An init time some systems lack is an error
    unless ``missing: skip`` (then it is left out and a note added to ``notes[variable]``)."""
    systems = open_systems(config)
    if config.reference not in systems:
        raise MissingReferenceError(
            f"evaluate.reference: the reference {config.reference!r} for the skill scores is not "
            f"among the systems {sorted(systems)}; add it to evaluate.systems or change "
            f"evaluate.reference")
    period = config.resolved_period()
    if config.recent_days is not None:
        period = _recent_period(config, systems)
    out: dict[str, dict[str, SystemField]] = {}
    for v in config.variables:
        fs = {k: select_period(d[v], period, config.lead_times) for k, d in systems.items() if v in d}
        if config.reference not in fs:
            raise MissingReferenceError(f"evaluate.reference: the reference {config.reference!r} "
                                        f"does not provide variable {v!r}")
        common = common_init_times(list(fs.values()))
        _missing_init_times(config, v, fs, common, notes)
        fs = {k: _keep_init_times(f, common) for k, f in fs.items()}
        ref = fs[config.reference].template
        for k, f in fs.items():
            t = f.template
            if not np.array_equal(t[LEAD_TIME].values, ref[LEAD_TIME].values):
                raise AlignmentError(f"system {k!r}, {v!r}: lead times {_hours(t)} differ from the "
                                     f"reference's {_hours(ref)}; set evaluate.lead_times")
            check_same_grid(t, ref, what=f"system {k!r} vs reference {config.reference!r} ({v!r})")
        out[v] = fs
    return out


def _recent_period(config: EvaluateConfig, systems: dict[str, dict[str, SystemField]]):
    """``evaluate.recent_days`` as a period: the last days of the reference system's init
    times whose valid times (at the evaluated lead times) the truth holds, for every variable."""
    if config.truth is None:
        raise EvaluateConfigError("evaluate.recent_days needs evaluate.truth")
    times = {}
    for v in config.variables:
        if v in systems[config.reference]:
            ref = select_period(systems[config.reference][v], None, config.lead_times).template
            times[v] = (ref[INIT_TIME].values, ref[LEAD_TIME].values)
    period = recent_window(config.truth, times, days=config.recent_days)
    if period is None:
        raise MissingReferenceError(f"evaluate.recent_days: the reference {config.reference!r} "
                                    f"and the truth share no variable of {config.variables}")
    return period


def _missing_init_times(config: EvaluateConfig, variable: str, fields: dict[str, SystemField],
                        common: np.ndarray, notes: dict[str, list[str]] | None) -> None:
    """Init times of the period that some systems have and others lack.

    Systems covering different spans (a product predicted for the last months, the raw
    ensemble for years) are compared on the span they all cover, with a note.  An init time
    missing *inside* that span (a hole: a failed ingest or prediction) is an error unless
    ``missing: skip``, which leaves it out for every system with a note."""
    times = {k: f.template[INIT_TIME].values for k, f in fields.items()}
    union = np.unique(np.concatenate(list(times.values())))
    if union.size == common.size:
        return
    lo = max(t.min() for t in times.values() if t.size)
    hi = min(t.max() for t in times.values() if t.size)
    inside = union[(union >= lo) & (union <= hi)]
    paths = _paths(config)
    holes = {k: np.setdiff1d(inside, t) for k, t in times.items()}
    parts = [f"{k} ({paths.get(k, '')}) lacks {t.size} ({_times(t)})"
             for k, t in holes.items() if t.size]
    if parts and config.missing == "error":
        raise MissingDataError(f"{variable!r}: init times are missing from some systems: "
                               f"{'; '.join(parts)}; ingest or predict them, or " + _SKIP_HINT)
    if notes is None:
        return
    outside = union.size - inside.size
    if outside:
        notes.setdefault(variable, []).append(
            f"{variable}: scored on the init times every system covers, "
            f"{_times(np.array([lo]))}..{_times(np.array([hi]))}; {plural(outside, 'init time')} "
            f"outside that span {'is' if outside == 1 else 'are'} left out")
    if parts:
        notes.setdefault(variable, []).append(
            f"{variable}: {plural(inside.size - common.size, 'init time')} skipped for every system "
            f"({common.size} scored) because some systems lack them: {'; '.join(parts)}")


def _truth_covers(config: EvaluateConfig, variable: str, fields: dict[str, SystemField],
                  truth: xr.DataArray, notes: dict[str, list[str]]) -> dict[str, SystemField]:
    """``missing: skip``: leave out init times whose valid times the truth lacks (with a
    note); ``error`` leaves them, so :func:`truth_values` names them."""
    from enspp.evaluation.aggregate import valid_time_positions

    tmpl = next(iter(fields.values())).template
    _, _, missing = valid_time_positions(truth["time"].values, tmpl[INIT_TIME].values,
                                         tmpl[LEAD_TIME].values)
    if config.missing == "error" or not missing.size:
        return fields
    init = tmpl[INIT_TIME].values
    valid = init[:, None] + tmpl[LEAD_TIME].values[None, :]
    bad = np.isin(valid, missing).any(axis=1)
    if bad.all():
        raise AlignmentError(f"the truth ({config.truth}) holds no valid time of any init time "
                             f"of {variable!r}")
    notes.setdefault(variable, []).append(
        f"{variable}: {plural(int(bad.sum()), 'init time')} skipped because the truth lacks "
        f"{'its valid times' if int(bad.sum()) == 1 else 'their valid times'} ({_times(init[bad])})")
    return {k: _keep_init_times(f, init[~bad]) for k, f in fields.items()}


def _keep_init_times(field: SystemField, init_times: np.ndarray) -> SystemField:
    """``field`` at ``init_times`` (a subset of its own, in that order): a slice where they are consecutive,
    so the store's chunks are read as they are rather than through a fancy-index copy."""
    pos = pd.Index(field.template[INIT_TIME].values).get_indexer(init_times)
    if pos.size and np.array_equal(pos, np.arange(pos[0], pos[-1] + 1)):
        return field.isel({INIT_TIME: slice(int(pos[0]), int(pos[-1]) + 1)})
    return field.isel({INIT_TIME: pos})


def _cases_text(cases: list[CaseResult]) -> str:
    """``"2 cases"``, or ``"1 case (19 outside the data)"`` when the data miss some."""
    outside = sum(c.status == "out_of_range" for c in cases)
    if not outside:
        return plural(len(cases), "case")
    return f"{plural(len(cases) - outside, 'case')} ({outside} outside the data)"


def _hours(da: xr.DataArray) -> list[float]:
    return (da[LEAD_TIME].values / np.timedelta64(1, "h")).tolist()


def evaluate(config: EvaluateConfig, out_dir: Path | str | None = None, *,
             progress: bool = True) -> EvaluationResult:
    """Score all systems, evaluate the cases, and (when ``out_dir`` is given) write the
    report and the dashboard there (:func:`evaluation.report.write_report`).  ``progress``:
    a bar per variable on a terminal; one summary line is logged either way."""
    if config.truth is None:
        raise EvaluateConfigError("evaluate.truth: not set; name the analysis store to score "
                                  "against")
    t0 = time.perf_counter()
    notes: dict[str, list[str]] = {}
    fields = prepare_fields(config, notes)
    truth = open_truth(config.truth, config.variables)
    variables: dict[str, VariableScores] = {}
    scores: dict[str, xr.Dataset] = {}
    for v, fs in list(fields.items()):
        if v in truth:
            fs = fields[v] = _truth_covers(config, v, fs, truth[v], notes)
            vs = score_variable(config, v, fs, truth[v], progress=progress)
            vs.notes[:0] = notes.get(v, [])
            variables[v] = vs
            scores[v] = summarise(config, vs)
    cases = run_cases(config, fields, truth)
    result = EvaluationResult(config, variables, scores, cases, provenance(config, fields))
    if out_dir is not None:
        write_report_atomically(result, Path(out_dir))
    n_init = max((f.template.sizes[INIT_TIME] for fs in fields.values() for f in fs.values()),
                 default=0)
    LOGGER.info(summary_line(
        f"evaluate {config.title!r}",
        f"{plural(len(config.systems), 'system')}, {plural(len(scores), 'variable')} scored over "
        f"{plural(int(n_init), 'init time')}, {_cases_text(cases)}"
        + (f"; report in {out_dir}" if out_dir is not None else ""), time.perf_counter() - t0))
    return result


def write_report_atomically(result: EvaluationResult, out_dir: Path) -> None:
    """Write the report into a sibling temporary directory, then swap it into ``out_dir``: a
    killed run leaves the previous report or the new one, never a mix.  Only a directory that
    is absent, empty or an earlier report (its manifest lists every file in it:
    :mod:`enspp.data.output_dir`) is replaced.  Any other directory (a user's, the working
    directory) is written in place, so nothing else in it is ever removed, and only when the
    report's own names there (``index.html``, ``scores.json``, ...) are free or its own:
    else one line, nothing changed."""
    import shutil

    from enspp.evaluation.report import write_report

    out = out_dir.resolve()
    swap = out != Path.cwd().resolve() and (not out.exists() or (out.is_dir() and (
        not any(out.iterdir()) or output_dir.owned(out, kind="report", legacy=_legacy_report))))
    if not swap:
        _check_in_place(out)
        write_report(result, out_dir)
        doc = output_dir.read_manifest(out)
        before = set(doc["files"]) if doc is not None and doc.get("kind") == "report" else set()
        output_dir.write_manifest(out, kind="report", files=before | set(_report_files(out)))
        return
    from enspp.data.lock import store_lock

    tmp = out.parent / f".{out.name}.partial"
    # one writer of a report at a time (two runs of the nightly evaluation, or a manual one
    # beside it, would share the scratch directory): the second waits for the first
    with store_lock(out, timeout=REPORT_LOCK_TIMEOUT):
        shutil.rmtree(tmp, ignore_errors=True)
        durable.recover_tree(out)  # a run killed mid-swap: the previous report back in place
        write_report(result, tmp)
        output_dir.write_manifest(tmp, kind="report")
        durable.swap_tree(tmp, out)
    result.out_dir = out_dir
    result.files = {k: str(out_dir / Path(v).relative_to(tmp)) for k, v in result.files.items()}


def _report_files(out: Path) -> list[str]:
    """The files under ``out`` with a report's names (relative paths)."""
    return [f for f in output_dir.files_under(out)
            if _is_report_entry(out / f.split("/", 1)[0])]


def _legacy_report(out: Path) -> bool:
    """A report written before manifests: a ``scores.json`` of the report schema and nothing
    but report entries."""
    from enspp.evaluation.report import read_scores

    try:
        read_scores(out)
    except (OSError, ValueError, EnsppError):
        return False
    return all(_is_report_entry(p) for p in out.iterdir())


def _check_in_place(out: Path) -> None:
    """A report written into ``out`` in place may replace only its own earlier files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise output_dir.OutputDirError(f"report {out}: exists and is not a directory "
                                        "(nothing was changed)")
    doc = output_dir.read_manifest(out)
    if doc is not None and doc.get("kind") == "report":
        ours = set(doc["files"])
    else:
        from enspp.evaluation.report import read_scores

        try:  # a report written in place before manifests: its files are its own
            read_scores(out)
            ours = set(_report_files(out))
        except (OSError, ValueError, EnsppError):
            ours = set()
    clash = sorted(set(_report_files(out)) - ours)
    if clash:
        raise output_dir.OutputDirError(
            f"report {out}: the directory already holds {listed(clash)}, not written by an enspp "
            "report; move them aside or give another --out (nothing was changed)")


#: seconds a report write waits for another run writing the same report
REPORT_LOCK_TIMEOUT = 1800.0


def _is_report_entry(p: Path) -> bool:
    """A file or folder a report writes (``index.html``, ``scores.json``, ``scores_*.nc``,
    ``plots/``)."""
    if p.is_dir():
        return p.name == "plots"
    return p.name in ("index.html", "scores.json") or (p.name.startswith("scores_")
                                                      and p.suffix == ".nc")


def run_cases(config: EvaluateConfig, fields: dict[str, dict[str, SystemField]],
              truth: dict[str, xr.DataArray]) -> list[CaseResult]:
    """Every case of every catalogue (a grid's box, or the stations in it:
    :func:`evaluation.cases.evaluate_case`); a case the data do not cover is reported, not
    fatal."""
    results: list[CaseResult] = []
    for path in config.cases:
        for case in load_catalogue(path):
            fs = fields.get(case.variable, {})
            obs = None
            if fs and case.variable in truth:
                try:
                    obs = truth_at_valid_time(truth[case.variable], next(iter(fs.values())).template,
                                              what=f"case {case.id!r}")
                except AlignmentError:
                    obs = None
            if not fs:
                results.append(CaseResult(case, "out_of_range",
                                          f"case {case.id!r}: variable {case.variable!r} is not "
                                          f"evaluated (variables: {list(fields)})"))
                continue
            # the estimators used, without system keys (the dashboard's column header)
            label = "; ".join(dict.fromkeys(_crps_kind(config, f.kind, scoring.n_members(f))
                                            for f in fs.values()))
            results.append(evaluate_case(
                case, fs, obs, reference=config.reference, estimator=label,
                score_fn=lambda f, o: scoring.crps(f, o, estimator=config.crps_estimator)))
    return results


def provenance(config: EvaluateConfig, fields: dict[str, dict[str, SystemField]]) -> dict:
    """Config, stores, versions, git commit and time of the run."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    n_init = {v: int(next(iter(fs.values())).template.sizes[INIT_TIME]) for v, fs in fields.items()}
    first = {v: str(np.datetime_as_string(next(iter(fs.values())).template[INIT_TIME].values.min(), unit="h"))
             for v, fs in fields.items()}
    last = {v: str(np.datetime_as_string(next(iter(fs.values())).template[INIT_TIME].values.max(), unit="h"))
            for v, fs in fields.items()}
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or "unknown",
        "config": config.model_dump(mode="json"),
        "stores": {s.key: str(s.path) for s in config.systems} | {"truth": str(config.truth)},
        "init_times": {v: {"count": n_init[v], "first": first[v], "last": last[v]} for v in fields},
        "versions": {p: ver(p) for p in ("enspp", "xarray", "numpy", "zarr", "dask", "numba")}
                    | {"python": platform.python_version()},
    }
