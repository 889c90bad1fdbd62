"""Station (point) data for the experiment: features, in-memory batches, the fit loop.

Stations are tiny (thousands of dates x one station), so the point path builds the pipeline's
batch contract (ARCHITECTURE.md, "Pipeline -> models contract") directly from in-memory
tensors: ``inputs [B, K, C=1, 1, 1]`` in physical units, ``static [B, S, 1, 1]`` scaled to
O(1), ``target [B, 1, 1, 1]``, ``x0`` the station index, ``y0 = 0``.  The models, their
losses (``PostProcessor.loss``, the closed-form CRPS of the model's distribution) and their
normalisation buffers are the library's own (``models.build_model``); only the loop is a plain
PyTorch loop (Adam, mini-batches, early stopping on the validation CRPS, best weights kept)
instead of the Lightning Trainer, which would cost more than the fit itself here.

Features (all causal: built only from observations valid at or before the forecast's init
time; see docs/results.md for the timing argument):

* ``sin_doy``, ``cos_doy``: day of year of the valid time (known at init time);
* past errors of the mean of the K members in use (forecast minus observation), over the
  earlier forecasts whose verifying observation is valid at or before this forecast's init
  time: ``err_lag1``/``err_lag2`` the latest and second-latest such error, ``err_ewm`` their
  exponentially weighted mean (half-life ``halflife_days``), all divided by the training-period
  error std; ``obs_init`` the latest observation valid at or before the init time,
  standardised with the training-period observation mean/std.  A value older than
  ``max_age_days`` (a gap in the record), or none at all, is 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from enspp.data import schema
from enspp.data.errors import EnsppError
from enspp.models import build_model

STATIC_DOY = ("sin_doy", "cos_doy")
STATIC_PAST = ("err_lag1", "err_lag2", "obs_init", "err_ewm")
STATIC_HRES = ("hres_dev",)
STATIC_SPREAD = ("err_ewm_abs",)


class PointDataError(EnsppError):
    """A station file or a split does not fit the experiment."""


@dataclass(frozen=True)
class PointData:
    """One station's forecasts and observations as plain arrays (dates in one order)."""

    variable: str
    units: str
    station: str
    members: np.ndarray  # [N, M] physical units, members 0..M-1 (control = 0)
    observation: np.ndarray  # [N]
    init_time: np.ndarray  # [N] datetime64[ns]
    lead_time: np.timedelta64
    #: [N] the deterministic high-resolution forecast of the same init (NaN where missing), or None
    hres: np.ndarray | None = None

    @property
    def valid_time(self) -> np.ndarray:
        return self.init_time + self.lead_time

    def subset(self, mask: np.ndarray) -> PointData:
        return PointData(self.variable, self.units, self.station, self.members[mask],
                         self.observation[mask], self.init_time[mask], self.lead_time,
                         None if self.hres is None else self.hres[mask])


#: the timing of the two station files of ../shared/data (the experiment files' convention)
_LEGACY_TIMING = {"t2m": dict(units="degC", time="valid", hour=12, lead_time=24),
                  "tp24": dict(units="mm", time="init", hour=0, lead_time=30, deterministic="tp_hres")}


def load_station(path: str | Path, *, variable: str | None = None, hres: bool = False) -> PointData:
    """A station NetCDF file (``data.station.open_station``, with the timing of the files of
    ../shared/data) as :class:`PointData`; ``hres``: also its deterministic forecast."""
    import xarray as xr

    from enspp.data.station import StationOptions, open_station

    with xr.open_dataset(path) as raw:
        names = sorted(str(v)[:-4] for v in raw.data_vars if str(v).endswith("_ens"))
        labels = [str(m) for m in raw["member"].values]
        has_hres = {f"{n}_hres" for n in names} | {"tp_hres"}
        has_hres &= set(map(str, raw.data_vars))
    name = variable or (names[0] if len(names) == 1 else None)
    if name not in _LEGACY_TIMING:
        raise PointDataError(f"{path}: no station timing known for {name!r} (known: {sorted(_LEGACY_TIMING)})")
    timing = dict(_LEGACY_TIMING[name])
    if timing.get("deterministic") not in has_hres:
        timing.pop("deterministic", None)
    control = next((x for x in labels if x.upper().endswith(("CTR", "CTRL"))), None)
    opts = StationOptions(variable=name, control=control, station={"id": Path(path).stem}, **timing)
    d = open_station(path, opts)
    fc, obs = d.forecast, d.observations
    da = fc[name].isel({schema.STATION: 0, schema.LEAD_TIME: 0}).transpose(schema.INIT_TIME, schema.MEMBER)
    lead = fc[schema.LEAD_TIME].values[0]
    valid = fc[schema.INIT_TIME].values + lead
    ob = obs[name].isel({schema.STATION: 0}).reindex({schema.TIME: valid})
    if hres and d.deterministic is None:
        raise PointDataError(f"{path}: no deterministic forecast '{name}_hres' in the file")
    return PointData(variable=name, units=str(fc[name].attrs.get("units", "")),
                     station=str(fc[schema.STATION].values[0]),
                     members=np.asarray(da.values, dtype=np.float32),
                     observation=np.asarray(ob.values, dtype=np.float32),
                     init_time=np.asarray(fc[schema.INIT_TIME].values, dtype="datetime64[ns]"),
                     lead_time=np.timedelta64(lead, "ns"),
                     hres=(d.deterministic[name].values[:, 0, 0, 0] if hres else None))


def transform_members(data: PointData, *, offset: float = 0.0, spread: float = 1.0) -> PointData:
    """``data`` with every member moved by ``offset`` and its departure from the ensemble mean
    (of all members) scaled by ``spread`` (a stress test: a biased, under-dispersed raw
    ensemble)."""
    if not spread > 0:
        raise PointDataError(f"transform: spread must be > 0, got {spread}")
    m = data.members.astype(np.float64)
    mean = np.mean(m, axis=1, keepdims=True)
    members = (mean + offset + spread * (m - mean)).astype(np.float32)
    return PointData(data.variable, data.units, data.station, members, data.observation, data.init_time,
                     data.lead_time, data.hres)


def day_of_year_features(times: np.ndarray) -> np.ndarray:
    """``[N, 2]``: sin and cos of 2 pi (day of year - 1) / 365.25."""
    t = np.asarray(times, dtype="datetime64[ns]")
    doy = (t - t.astype("datetime64[Y]")).astype("timedelta64[s]").astype(np.float64) / 86400.0
    angle = 2.0 * np.pi * doy / 365.25
    return np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def hres_features(hres: np.ndarray, members: np.ndarray, *, train: np.ndarray) -> np.ndarray:
    """``[N, 1]``: the deterministic forecast's departure from the members' mean, divided by
    its std over the ``train`` rows; 0 where the deterministic forecast is missing."""
    dev = hres - np.nanmean(members, axis=1)
    scale = float(np.nanstd(dev[train]))
    if not (math.isfinite(scale) and scale > 0):
        raise PointDataError(f"hres feature: the training-period departures have no spread ({scale})")
    return np.where(np.isfinite(dev), dev / scale, 0.0).astype(np.float32)[:, None]


def past_error_features(data: PointData, members: np.ndarray, *, err_scale: float, obs_mean: float,
                        obs_scale: float, halflife_days: float = 5.0, max_age_days: float = 3.0,
                        spread: bool = False) -> np.ndarray:
    """``[N, 4]`` causal features (``STATIC_PAST``) of each forecast, from the errors of the mean
    of ``members`` (indices: the K members in use) and observations valid at or before that
    forecast's init time; see the module doc.  ``spread``: a fifth column (``STATIC_SPREAD``),
    the same exponentially weighted mean of the errors' magnitude |e|, for the spread."""
    if halflife_days <= 0 or max_age_days <= 0 or err_scale <= 0 or obs_scale <= 0:
        raise PointDataError(f"{data.variable}: past-error features need halflife_days, max_age_days, err_scale "
                             f"and obs_scale > 0, got {halflife_days}, {max_age_days}, {err_scale}, {obs_scale}")
    n = data.members.shape[0]
    init = data.init_time.astype(np.int64)
    valid = data.valid_time.astype(np.int64)
    day = 8.64e13
    out = np.zeros((n, len(STATIC_PAST) + (len(STATIC_SPREAD) if spread else 0)), np.float64)

    def known(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted valid times, their order, and per forecast the count valid <= its init."""
        order = np.argsort(valid[ok], kind="stable")
        vt = valid[ok][order]
        return vt, order, np.searchsorted(vt, init, side="right")

    err = data.members[:, members].mean(axis=1).astype(np.float64) - data.observation
    ok = np.isfinite(err)
    vt, order, hi = known(ok)
    e = err[ok][order] / err_scale
    for col, lag in ((0, 1), (1, 2)):
        j = np.maximum(hi - lag, 0)
        fresh = (hi >= lag) & (init - vt[j] <= max_age_days * day) if vt.size else np.zeros(n, bool)
        out[:, col] = np.where(fresh, e[j] if vt.size else 0.0, 0.0)
    if vt.size:
        # exponentially weighted mean of the errors valid <= t: running sums A (weighted errors)
        # and B (weights) decayed to each error's valid time; decaying both further to the init
        # time leaves A / B unchanged
        rate = np.log(2.0) / (halflife_days * day)
        a, b, c = np.empty(vt.size), np.empty(vt.size), np.empty(vt.size)
        acc_a = acc_b = acc_c = 0.0
        for i in range(vt.size):
            decay = np.exp(-rate * (vt[i] - vt[i - 1])) if i else 0.0
            acc_a, acc_b = acc_a * decay + e[i], acc_b * decay + 1.0
            acc_c = acc_c * decay + abs(e[i])
            a[i], b[i], c[i] = acc_a, acc_b, acc_c
        j = np.maximum(hi - 1, 0)
        fresh = (hi >= 1) & (init - vt[j] <= max_age_days * day)
        out[:, 3] = np.where(fresh, a[j] / np.maximum(b[j], 1e-12), 0.0)
        if spread:  # no recent error: the training mean of |e| / err_scale, sqrt(2/pi) for a normal
            out[:, 4] = np.where(fresh, c[j] / np.maximum(b[j], 1e-12), np.sqrt(2 / np.pi))
    obs_ok = np.isfinite(data.observation)
    vo, order_o, hi_o = known(obs_ok)
    if vo.size:
        o = (data.observation[obs_ok][order_o].astype(np.float64) - obs_mean) / obs_scale
        j = np.maximum(hi_o - 1, 0)
        fresh = (hi_o >= 1) & (init - vo[j] <= max_age_days * day)
        out[:, 2] = np.where(fresh, o[j], 0.0)
    return out.astype(np.float32)


def point_batch(members: np.ndarray, observation: np.ndarray, static: np.ndarray,
                init_time: np.ndarray, lead_time: np.timedelta64, *, station: int = 0) -> dict:
    """The pipeline batch of point data (``H = W = 1``, ``x0`` = station index)."""
    n = members.shape[0]
    return {
        "inputs": torch.as_tensor(members, dtype=torch.float32)[:, :, None, None, None],
        "static": torch.as_tensor(static, dtype=torch.float32)[:, :, None, None],
        "target": torch.as_tensor(observation, dtype=torch.float32)[:, None, None, None],
        "init_time": torch.as_tensor(init_time.astype(np.int64)),
        "lead_time": torch.full((n,), int(lead_time.astype("timedelta64[ns]").astype(np.int64))),
        "y0": torch.zeros(n, dtype=torch.int64),
        "x0": torch.full((n,), int(station), dtype=torch.int64),
    }


def take(batch: Mapping[str, torch.Tensor], idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in batch.items()}


def point_stats(members: np.ndarray, observation: np.ndarray, channel: str, target: str) -> dict:
    """NormStats-like dict (global channel and target mean/std) from the training period."""
    m_mean, m_std = float(np.nanmean(members)), float(np.nanstd(members))
    o_mean, o_std = float(np.nanmean(observation)), float(np.nanstd(observation))
    if not (math.isfinite(m_std) and m_std > 0 and math.isfinite(o_std) and o_std > 0):
        raise PointDataError(f"{target}: the training period has no spread (member std {m_std}, obs std {o_std})")
    return {"channels": np.array([channel]), "targets": np.array([target]),
            "channel_mean": np.array([m_mean], np.float32), "channel_std": np.array([m_std], np.float32),
            "target_mean": np.array([o_mean], np.float32), "target_std": np.array([o_std], np.float32)}


@dataclass(frozen=True)
class FitSettings:
    max_epochs: int = 300
    patience: int = 25
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class FitResult:
    model: torch.nn.Module
    best_val: float  # normalised closed-form CRPS (the model's loss) on validation
    epochs: int  # epochs run by the early-stopped fit
    best_epoch: int  # the epoch of the kept weights (early stopping), or the refit's epoch count
    #: the early-stopped model, fitted without the validation dates (``model`` itself unless refit)
    early: torch.nn.Module | None = None

    @property
    def validation_model(self) -> torch.nn.Module:
        """The model to score on the validation dates (one that never saw them)."""
        return self.early if self.early is not None else self.model


def _val_loss(model: torch.nn.Module, val: Mapping[str, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return float(model.loss(model(val), val["target"]))


def _train_epochs(model: torch.nn.Module, train: Mapping[str, torch.Tensor], settings: FitSettings, seed: int,
                  *, epochs: int, val: Mapping[str, torch.Tensor] | None = None) -> tuple[float, int, int]:
    """Adam steps over ``train`` for at most ``epochs`` epochs; with ``val``, stop after
    ``settings.patience`` epochs without a better validation loss and keep the best weights,
    the untrained model (its anchor) included: epoch 0 is scored too, so a network that never
    beats its anchor EMOS on validation stays that EMOS.
    Returns (best validation loss or nan, epochs run, best epoch)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    n = train["inputs"].shape[0]
    full = settings.batch_size >= n  # one full-batch step per epoch: no shuffling or copies
    best, best_state, best_epoch, stale, epoch = math.inf, copy.deepcopy(model.state_dict()), 0, 0, 0
    if val is not None:
        best = _val_loss(model, val)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in [None] if full else torch.randperm(n, generator=gen).split(settings.batch_size):
            sub = train if idx is None else take(train, idx)
            loss = model.loss(model(sub), sub["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val is None:
            continue
        v = _val_loss(model, val)
        if v < best - 1e-6:
            best, best_state, best_epoch, stale = v, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if val is not None:
        model.load_state_dict(best_state)
    model.eval()
    return (best if val is not None else math.nan), epoch, (best_epoch if val is not None else epoch)


def _fresh(spec, seed: int, train: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """``build_model(spec)`` seeded, EMOS fitted exactly on ``train`` (an EMOS model itself, or
    a network's anchor)."""
    from enspp.models.emos import EMOS, emos_chunk, fit_anchor, fit_emos

    torch.manual_seed(seed)
    model = build_model(spec)
    if isinstance(model, EMOS):
        fit_emos(model, [emos_chunk(model, train)])
    else:
        fit_anchor(model, [train])
    model.eval()
    return model


def fit_point_model(spec, train: Mapping[str, torch.Tensor], val: Mapping[str, torch.Tensor], *,
                    settings: FitSettings, seed: int, refit: bool = False) -> FitResult:
    """Fit ``models.build_model(spec)`` by minimum closed-form CRPS.

    EMOS models are fitted exactly (``models.emos.fit_emos``: the minimum over ``train``, no
    epochs). Networks first get their anchor EMOS fitted exactly on ``train``, then train
    with early stopping on ``val`` (epoch 0, the anchor itself, included); with
    ``settings.batch_size >= len(train)`` every epoch is one full-batch Adam step.
    ``refit``: then fit a fresh model (same seed) on ``train`` + ``val`` (a network for the
    chosen number of epochs) and return that one (``best_val`` stays the first fit's)."""
    from enspp.models.emos import EMOS

    model = _fresh(spec, seed, train)
    if isinstance(model, EMOS):
        best, epochs, best_epoch = _val_loss(model, val), 0, 0
    else:
        best, epochs, best_epoch = _train_epochs(model, train, settings, seed, epochs=settings.max_epochs, val=val)
    if not refit:
        return FitResult(model=model, best_val=best, epochs=epochs, best_epoch=best_epoch)
    both = {k: torch.cat([train[k], val[k]]) for k in train}
    early, model = model, _fresh(spec, seed, both)
    if best_epoch >= 1:
        _train_epochs(model, both, settings, seed, epochs=best_epoch)
    return FitResult(model=model, best_val=best, epochs=epochs, best_epoch=best_epoch, early=early)


def predict_point(models: Sequence[torch.nn.Module], batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Seed-ensemble prediction: the mean of each distribution parameter over ``models``
    (``mu``/``sigma``, and ``loc``/``scale`` for a censored model), as ``[N]`` arrays."""
    outs = []
    with torch.no_grad():
        for m in models:
            outs.append({k: v[:, 0, 0, 0].double().numpy() for k, v in m(batch).items()})
    return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}


def window_emos(data: PointData, members: np.ndarray, targets: np.ndarray, *, days: float, stats: dict,
                channel: str, distribution: str, min_cases: int = 10) -> dict[str, np.ndarray]:
    """A sliding-window EMOS, as operational centres run it: for every forecast in
    ``targets`` (a boolean mask), a global EMOS fitted exactly on the forecasts of the last
    ``days`` days whose observation is known at its init time (valid time at or before the
    init time; at least the ``min_cases`` most recent such forecasts). Returns the predicted
    distribution parameters of the target rows (``[n]`` arrays, as :func:`predict_point`).

    All windows are fitted in one exact fit: each target forecast is one station of an
    ``emos_local`` model whose cases are its window."""
    from enspp.models import ModelSpec
    from enspp.models.emos import emos_chunk, fit_emos

    if days <= 0 or min_cases < 1:
        raise PointDataError(f"window EMOS needs days > 0 and min_cases >= 1, got {days}, {min_cases}")
    ok = np.isfinite(data.observation) & np.isfinite(data.members[:, members]).all(axis=1)
    known = np.nonzero(ok)[0]
    known = known[np.argsort(data.valid_time[known], kind="stable")]
    vt = data.valid_time[known]
    tgt = np.nonzero(targets)[0]
    init = data.init_time[tgt]
    hi = np.searchsorted(vt, init, side="right")
    lo = np.searchsorted(vt, init - np.timedelta64(int(days * 86400), "s"), side="right")
    lo = np.maximum(np.minimum(lo, hi - min_cases), 0)
    if np.any(hi - lo < 1):
        first = str(init[np.argmax(hi - lo < 1)])[:10]
        raise PointDataError(f"window EMOS: no earlier observed forecast for the forecast of {first}")
    rows = np.concatenate([known[a:b] for a, b in zip(lo, hi)])
    group = np.repeat(np.arange(tgt.size), hi - lo)
    spec = ModelSpec(name="emos_local", channels=(channel,), targets=(data.variable,), target_channels=(0,),
                     static_names=(), n_members=len(members), grid_shape=(tgt.size, 1), stats=stats,
                     distribution=distribution)
    model = build_model(spec)
    no_static = np.zeros((rows.size, 0), np.float32)
    fit_batch = point_batch(data.members[rows][:, members], data.observation[rows], no_static,
                            data.init_time[rows], data.lead_time)
    fit_batch["x0"] = torch.as_tensor(group, dtype=torch.int64)
    fit_emos(model, [emos_chunk(model, fit_batch)])
    pred_batch = point_batch(data.members[tgt][:, members], data.observation[tgt], np.zeros((tgt.size, 0), np.float32),
                             data.init_time[tgt], data.lead_time)
    pred_batch["x0"] = torch.arange(tgt.size, dtype=torch.int64)
    return predict_point([model], pred_batch)
