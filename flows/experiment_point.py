"""Station (point) data for the experiment: features, in-memory batches, the fit loop.

Stations are tiny (thousands of dates x one station), so the point path builds the pipeline's
batch contract (ARCHITECTURE.md, "Pipeline -> models contract") directly from in-memory
tensors: ``inputs [B, K, C=1, 1, 1]`` in physical units, ``static [B, S, 1, 1]`` scaled to
O(1), ``target [B, 1, 1, 1]``, ``x0`` the station index, ``y0 = 0``.  The models, their
losses (``PostProcessor.loss``, the closed-form CRPS of the model's distribution) and their
normalisation buffers are the library's own (``models.build_model``); only the loop is a plain
PyTorch loop (Adam, mini-batches, early stopping on the validation CRPS, best weights kept)
instead of the Lightning Trainer, which would cost more than the fit itself here.

Features (all causal: nothing from the verifying observation or later):

* ``sin_doy``, ``cos_doy``: day of year of the valid time (known at init time);
* ``lagged_error``, ``lagged_error_mean``: the error (ensemble mean of the K members in use
  minus observation) of the latest earlier forecast whose observation was valid at least
  ``lag_hours`` before this forecast's init time, and the mean of such errors over the
  ``window_days`` before that cut-off; divided by the training target std, 0 where none.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data import schema

STATIC_DOY = ("sin_doy", "cos_doy")
STATIC_LAG = ("lagged_error", "lagged_error_mean")


class PointDataError(ValueError):
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

    @property
    def valid_time(self) -> np.ndarray:
        return self.init_time + self.lead_time

    def subset(self, mask: np.ndarray) -> PointData:
        return PointData(self.variable, self.units, self.station, self.members[mask],
                         self.observation[mask], self.init_time[mask], self.lead_time)


def load_station(path: str | Path, *, variable: str | None = None) -> PointData:
    """A station NetCDF file (``data.point_readers.open_station_netcdf``) as :class:`PointData`."""
    from data.point_readers import open_station_netcdf

    fc, obs = open_station_netcdf(path, variable=variable, allow_nan=True)
    name = next(iter(fc.data_vars))
    if fc.sizes[schema.STATION] != 1 or fc.sizes[schema.LEAD_TIME] != 1:
        raise PointDataError(f"{path}: the experiment reads one station and one lead time, got "
                             f"{fc.sizes[schema.STATION]} stations, {fc.sizes[schema.LEAD_TIME]} leads")
    da = fc[name].isel({schema.STATION: 0, schema.LEAD_TIME: 0}).transpose(schema.INIT_TIME, schema.MEMBER)
    lead = fc[schema.LEAD_TIME].values[0]
    valid = fc[schema.INIT_TIME].values + lead
    ob = obs[name].isel({schema.STATION: 0}).reindex({schema.TIME: valid})
    return PointData(variable=name, units=str(fc[name].attrs.get("units", "")),
                     station=str(fc[schema.STATION].values[0]),
                     members=np.asarray(da.values, dtype=np.float32),
                     observation=np.asarray(ob.values, dtype=np.float32),
                     init_time=np.asarray(fc[schema.INIT_TIME].values, dtype="datetime64[ns]"),
                     lead_time=np.timedelta64(lead, "ns"))


def day_of_year_features(times: np.ndarray) -> np.ndarray:
    """``[N, 2]``: sin and cos of 2 pi (day of year - 1) / 365.25."""
    t = np.asarray(times, dtype="datetime64[ns]")
    doy = (t - t.astype("datetime64[Y]")).astype("timedelta64[s]").astype(np.float64) / 86400.0
    angle = 2.0 * np.pi * doy / 365.25
    return np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def lagged_error_features(data: PointData, members: np.ndarray, *, scale: float, lag_hours: float = 24.0,
                          window_days: float = 7.0) -> np.ndarray:
    """``[N, 2]``: latest and window-mean past error of the mean of ``members`` (indices; the
    K members in use), see the module doc."""
    if lag_hours <= 0 or window_days <= 0:
        raise PointDataError(f"lagged errors need lag_hours > 0 (strictly before the init time) and "
                             f"window_days > 0, got lag_hours={lag_hours}, window_days={window_days}")
    err = data.members[:, members].mean(axis=1) - data.observation
    ok = np.isfinite(err)
    vt = data.valid_time[ok].astype(np.int64)
    e = err[ok].astype(np.float64)
    order = np.argsort(vt, kind="stable")
    vt, e = vt[order], e[order]
    csum = np.concatenate([[0.0], np.cumsum(e)])
    cutoff = data.init_time.astype(np.int64) - int(lag_hours * 3.6e12)
    hi = np.searchsorted(vt, cutoff, side="right")  # errors with valid time <= cutoff
    if e.size == 0:
        return np.zeros((data.members.shape[0], 2), np.float32)
    window = int(window_days * 8.64e13)
    j = np.maximum(hi - 1, 0)
    latest = np.where((hi > 0) & (cutoff - vt[j] <= window), e[j], 0.0)
    lo = np.searchsorted(vt, cutoff - window, side="right")
    n = hi - lo
    mean = np.where(n > 0, (csum[hi] - csum[lo]) / np.maximum(n, 1), 0.0)
    return (np.stack([latest, mean], axis=1) / scale).astype(np.float32)


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
    epochs: int


def fit_point_model(spec, train: Mapping[str, torch.Tensor], val: Mapping[str, torch.Tensor], *,
                    settings: FitSettings, seed: int) -> FitResult:
    """Fit ``build_model(spec)`` by minimum closed-form CRPS; early stopping on ``val``."""
    from models import build_model

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    n = train["inputs"].shape[0]
    best, best_state, stale, epoch = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(settings.batch_size):
            sub = take(train, idx)
            loss = model.loss(model(sub), sub["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(model.loss(model(val), val["target"]))
        if v < best - 1e-6:
            best, best_state, stale = v, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model=model, best_val=best, epochs=epoch)


def predict_point(models: Sequence[torch.nn.Module], batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Seed-ensemble prediction: the mean of each distribution parameter over ``models``
    (``mu``/``sigma``, and ``loc``/``scale`` for a censored model), as ``[N]`` arrays."""
    outs = []
    with torch.no_grad():
        for m in models:
            outs.append({k: v[:, 0, 0, 0].double().numpy() for k, v in m(batch).items()})
    return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}
