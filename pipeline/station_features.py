"""Station features that depend on the record, not only on the date: past errors and HRES.

All causal: a forecast's features use only observations valid at or before its init time.
Post-processing runs after the ensemble run has completed, so everything valid at the init
time is known then (docs/results.md gives the timing argument for the real stations).

Per forecast (init time ``t``) and station, from the earlier forecasts whose verifying
observation is valid at or before ``t`` (errors = mean of the members in use minus the
observation):

* ``err_lag1``, ``err_lag2``: the latest and second-latest such error / training error std;
* ``obs_init``: the latest observation valid at or before ``t``, standardised (training
  mean and std);
* ``err_ewm``: the exponentially weighted mean of all such errors (half-life
  ``halflife_days``) / training error std;
* ``err_ewm_abs`` (``spread``): the same weighted mean of the errors' magnitude |e| / training
  error std; ``sqrt(2/pi)`` (the mean |e| of a standard normal) when no recent error is known;
* ``hres_dev``: the deterministic forecast minus the members' mean / its training std (0
  where the deterministic forecast is missing).

A latest value older than ``max_age_days`` (a gap in the record), or none at all, is 0.
The scales come from the training init times only (:class:`FeatureScales`, stored in the
checkpoint so ``predict`` builds the same features).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.schema import INIT_TIME, LEAD_TIME, MEMBER, STATION, TIME, select_variable, spatial_dims
from enspp.pipeline.config import FeaturesConfig, PastErrorConfig

PAST_ERROR = ("err_lag1", "err_lag2", "obs_init", "err_ewm")
ERROR_SPREAD = ("err_ewm_abs",)
HRES = ("hres_dev",)
ALL_RECORD_FEATURES = PAST_ERROR + ERROR_SPREAD + HRES
_DAY_NS = 8.64e13


class StationFeatureError(EnsppError):
    """Station features cannot be built from the stores as configured."""


def feature_names(features: FeaturesConfig) -> tuple[str, ...]:
    """The names of the record features ``features`` asks for, in batch order."""
    names: tuple[str, ...] = ()
    if features.past_error is not None:
        names += PAST_ERROR + (ERROR_SPREAD if features.past_error.spread else ())
    if features.hres:
        names += HRES
    return names


@dataclass(frozen=True)
class FeatureScales:
    """Training-period scales of the record features, per station ``[S]``."""

    err_scale: np.ndarray
    obs_mean: np.ndarray
    obs_scale: np.ndarray
    hres_scale: np.ndarray | None = None

    def to_dict(self) -> dict[str, np.ndarray]:
        out = {"err_scale": self.err_scale, "obs_mean": self.obs_mean, "obs_scale": self.obs_scale}
        if self.hres_scale is not None:
            out["hres_scale"] = self.hres_scale
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FeatureScales:
        try:
            return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in ("err_scale", "obs_mean", "obs_scale")},
                       hres_scale=None if d.get("hres_scale") is None
                       else np.asarray(d["hres_scale"], dtype=np.float64))
        except KeyError as e:
            raise StationFeatureError(f"feature scales lack {e.args[0]!r}") from None


def _positive(x: np.ndarray, what: str) -> np.ndarray:
    bad = ~(np.isfinite(x) & (x > 0))
    if bad.any():
        raise StationFeatureError(f"{what}: the training period gives no positive scale at "
                                  f"{int(bad.sum())} station(s) (values {x[bad][:3].tolist()})")
    return x


class StationFeatures:
    """The record features of every init time of a station forecast store.

    ``members``: the member numbers in use (their mean's errors); ``train_init_times``: the
    init times the scales come from (ignored when ``scales`` is given, e.g. from a checkpoint).
    """

    def __init__(self, forecast: xr.Dataset, analysis: xr.Dataset | None, *, variable: str,
                 lead_time: np.timedelta64, members: np.ndarray, features: FeaturesConfig,
                 deterministic: xr.Dataset | None = None,
                 train_init_times: np.ndarray | None = None, scales: FeatureScales | None = None):
        if spatial_dims(forecast) != (STATION,):
            raise StationFeatureError("features.past_error and features.hres are station features: "
                                      "the forecast store has no 'station' dim")
        self.names = feature_names(features)
        lead = np.timedelta64(lead_time, "ns")
        fc = select_variable(forecast, variable).sel({LEAD_TIME: lead})
        fc = fc.sel({MEMBER: np.asarray(members)}).transpose(INIT_TIME, MEMBER, STATION)
        self.init = fc[INIT_TIME].values.astype("datetime64[ns]")
        self.index = pd.Index(self.init)
        mean = np.asarray(fc.values, dtype=np.float64).mean(axis=1)  # [N, S]; NaN member -> NaN
        valid = self.init + lead
        obs = None
        if features.past_error is not None:
            if analysis is None:
                raise StationFeatureError("features.past_error needs the observations (stores.analysis)")
            ob = select_variable(analysis, variable).transpose(TIME, STATION)
            obs = np.asarray(ob.reindex({TIME: valid}).values, dtype=np.float64)  # [N, S]
        hres = None
        if features.hres:
            if deterministic is None:
                raise StationFeatureError("features.hres needs a deterministic forecast store "
                                          "(stores.deterministic)")
            det = select_variable(deterministic, variable)
            if det.sizes.get(MEMBER, 1) != 1:
                raise StationFeatureError(f"the deterministic store holds {det.sizes[MEMBER]} members; "
                                          f"expected a one-member forecast")
            det = det.isel({MEMBER: 0}).sel({LEAD_TIME: lead}).transpose(INIT_TIME, STATION)
            if not np.array_equal(det[STATION].values, fc[STATION].values):
                raise StationFeatureError("the deterministic store's stations differ from the forecast store's")
            hres = np.asarray(det.reindex({INIT_TIME: self.init}).values, dtype=np.float64)
        if scales is None:
            if train_init_times is None:
                raise StationFeatureError("station features need the training init times or scales")
            rows = self.index.get_indexer(np.asarray(train_init_times, dtype="datetime64[ns]"))
            rows = rows[rows >= 0]
            scales = self._scales(mean[rows], None if obs is None else obs[rows],
                                  None if hres is None else hres[rows])
        self.scales = scales
        parts = []
        if features.past_error is not None:
            assert obs is not None
            parts.append(np.stack([
                past_error_features(mean[:, s], obs[:, s], self.init, valid, config=features.past_error,
                                    err_scale=float(scales.err_scale[s]), obs_mean=float(scales.obs_mean[s]),
                                    obs_scale=float(scales.obs_scale[s]))
                for s in range(mean.shape[1])], axis=-1))  # [N, F, S]
        if hres is not None:
            if scales.hres_scale is None:
                raise StationFeatureError("feature scales lack hres_scale (trained without features.hres)")
            dev = hres - mean
            parts.append(np.where(np.isfinite(dev), dev / scales.hres_scale[None], 0.0)[:, None])
        self.table = (np.concatenate(parts, axis=1) if parts
                      else np.zeros((len(self.init), 0, mean.shape[1]))).astype(np.float32)

    @staticmethod
    def _scales(mean: np.ndarray, obs: np.ndarray | None, hres: np.ndarray | None) -> FeatureScales:
        n = mean.shape[1]
        ones = np.ones(n)
        err_scale, obs_mean, obs_scale = ones, np.zeros(n), ones
        if obs is not None:
            err_scale = _positive(np.nanstd(mean - obs, axis=0), "past-error features (error std)")
            obs_mean = np.nanmean(obs, axis=0)
            obs_scale = _positive(np.nanstd(obs, axis=0), "past-error features (observation std)")
        hres_scale = None
        if hres is not None:
            hres_scale = _positive(np.nanstd(hres - mean, axis=0), "hres feature (departure std)")
        return FeatureScales(err_scale=err_scale, obs_mean=obs_mean, obs_scale=obs_scale,
                             hres_scale=hres_scale)

    def at(self, init_time: np.datetime64) -> np.ndarray:
        """``[F, S]`` float32 features of the forecast initialised at ``init_time``."""
        pos = self.index.get_indexer([np.datetime64(init_time, "ns")])[0]
        if pos < 0:
            raise StationFeatureError(f"no station features for init time {pd.Timestamp(init_time)}")
        return self.table[pos]


def past_error_features(mean: np.ndarray, obs: np.ndarray, init: np.ndarray, valid: np.ndarray, *,
                        config: PastErrorConfig, err_scale: float, obs_mean: float,
                        obs_scale: float) -> np.ndarray:
    """``[N, 4 or 5]`` features (:data:`PAST_ERROR` [+ :data:`ERROR_SPREAD`]) of one station's
    forecasts: ``mean`` the members' mean and ``obs`` the observation at the valid time, per
    forecast; see the module doc."""
    if err_scale <= 0 or obs_scale <= 0 or not (math.isfinite(err_scale) and math.isfinite(obs_scale)):
        raise StationFeatureError(f"past-error features need err_scale and obs_scale > 0, got "
                                  f"{err_scale}, {obs_scale}")
    init_ns = np.asarray(init, dtype="datetime64[ns]").astype(np.int64)
    valid_ns = np.asarray(valid, dtype="datetime64[ns]").astype(np.int64)
    n = len(init_ns)
    max_age = config.max_age_days * _DAY_NS
    out = np.zeros((n, len(PAST_ERROR) + (len(ERROR_SPREAD) if config.spread else 0)))

    def known(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted valid times, their order, and per forecast the count valid <= its init."""
        order = np.argsort(valid_ns[ok], kind="stable")
        vt = valid_ns[ok][order]
        return vt, order, np.searchsorted(vt, init_ns, side="right")

    err = np.asarray(mean, np.float64) - np.asarray(obs, np.float64)
    ok = np.isfinite(err)
    vt, order, hi = known(ok)
    if vt.size:
        e = err[ok][order] / err_scale
        for col, lag in ((0, 1), (1, 2)):
            j = np.maximum(hi - lag, 0)
            fresh = (hi >= lag) & (init_ns - vt[j] <= max_age)
            out[:, col] = np.where(fresh, e[j], 0.0)
        # exponentially weighted mean of the errors valid <= t: running sums decayed to each
        # error's valid time (decaying numerator and denominator further leaves the ratio)
        rate = np.log(2.0) / (config.halflife_days * _DAY_NS)
        a, b, c = np.empty(vt.size), np.empty(vt.size), np.empty(vt.size)
        acc_a = acc_b = acc_c = 0.0
        for i in range(vt.size):
            decay = math.exp(-rate * (vt[i] - vt[i - 1])) if i else 0.0
            acc_a, acc_b, acc_c = acc_a * decay + e[i], acc_b * decay + 1.0, acc_c * decay + abs(e[i])
            a[i], b[i], c[i] = acc_a, acc_b, acc_c
        j = np.maximum(hi - 1, 0)
        fresh = (hi >= 1) & (init_ns - vt[j] <= max_age)
        out[:, 3] = np.where(fresh, a[j] / np.maximum(b[j], 1e-12), 0.0)
        if config.spread:
            out[:, 4] = np.where(fresh, c[j] / np.maximum(b[j], 1e-12), np.sqrt(2 / np.pi))
    elif config.spread:
        out[:, 4] = np.sqrt(2 / np.pi)
    obs_ok = np.isfinite(obs)
    vo, order_o, hi_o = known(obs_ok)
    if vo.size:
        o = (np.asarray(obs, np.float64)[obs_ok][order_o] - obs_mean) / obs_scale
        j = np.maximum(hi_o - 1, 0)
        fresh = (hi_o >= 1) & (init_ns - vo[j] <= max_age)
        out[:, 2] = np.where(fresh, o[j], 0.0)
    return out.astype(np.float32)
