"""Uncertainty of skill: block bootstrap over init dates and the Diebold-Mariano test.

Both take per-date scores already averaged over space (e.g. ``finalize_sums`` of each date's
sums, dim ``init_time``) and vectorise over any other dims (lead time, region, variable).
Scores on consecutive dates are correlated, so dates are resampled in blocks, and the
Diebold-Mariano variance is a Newey-West (HAC, Bartlett kernel) estimate.

The skill is a ratio of means, ``1 - mean(score) / mean(reference)``; the bootstrap resamples
the system and the reference *paired* (the same dates), which keeps their correlation.
Dates where either score is NaN are dropped before resampling.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import xarray as xr
from scipy.special import stdtr

from enspp.data.errors import EnsppError


class BootstrapError(EnsppError):
    """Bad input to a bootstrap or a test (dims, lengths, options)."""


def default_block_length(n: int) -> int:
    """``ceil(n ** (1/3))``, the usual rate for block bootstraps of means."""
    return max(1, math.ceil(n ** (1.0 / 3.0)))


def has_interval(n: int, block_length: int) -> bool:
    """Whether ``n`` dates hold at least two whole blocks of ``block_length``, the fewest
    with which a block bootstrap gives an interval worth reporting.

    A resample is a sequence of blocks of consecutive dates.  With ``n <= block_length``
    every circular resample is the series rotated (every moving one the series itself), so
    every resampled mean equals the sample mean and the "interval" has zero width.  With
    ``block_length < n < 2 * block_length`` a resample is one block covering more than half
    of the series plus a stub, so the resamples barely vary and the interval is far too
    narrow.  From two blocks on, resamples combine independently drawn stretches, which is
    what the block bootstrap's variance estimate rests on.  Below that no interval is given
    (NaN) rather than a silently overconfident one; the block length is never shrunk behind
    the caller's back.
    """
    return n >= 2 * block_length


def block_indices(
    n: int,
    *,
    block_length: int,
    n_resamples: int,
    method: Literal["circular", "moving"] = "circular",
    rng: np.random.Generator,
) -> np.ndarray:
    """``[n_resamples, n]`` indices of moving- or circular-block bootstrap resamples."""
    if n < 2:
        raise BootstrapError(f"need at least 2 dates to bootstrap, got {n}")
    if not 1 <= block_length <= n:
        raise BootstrapError(f"block_length must be in 1..{n} (the number of dates), got {block_length}")
    if method not in ("circular", "moving"):
        raise BootstrapError(f"unknown block bootstrap {method!r}: choose circular or moving")
    if n_resamples < 1:
        raise BootstrapError(f"n_resamples must be >= 1, got {n_resamples}")
    n_blocks = math.ceil(n / block_length)
    n_starts = n if method == "circular" else n - block_length + 1
    starts = rng.integers(0, n_starts, size=(n_resamples, n_blocks))
    idx = starts[:, :, None] + np.arange(block_length)[None, None, :]
    idx = idx.reshape(n_resamples, -1)[:, :n]
    return idx % n


def _paired_valid(score: xr.DataArray, reference: xr.DataArray, dim: str):
    for name, da in (("score", score), ("reference", reference)):
        if dim not in da.dims:
            raise BootstrapError(f"{name} has no dim {dim!r}: dims {tuple(da.dims)}")
    try:
        score, reference = xr.align(score, reference, join="exact")
    except ValueError as exc:
        raise BootstrapError(f"score and reference are not paired on the same dates: {exc}") from exc
    score, reference = xr.broadcast(score.astype(np.float64), reference.astype(np.float64))
    score = score.transpose(..., dim)
    reference = reference.transpose(..., dim)
    return score, reference


def bootstrap_skill(
    score: xr.DataArray,
    reference: xr.DataArray,
    *,
    dim: str = "init_time",
    confidence: float = 0.9,
    n_resamples: int = 1000,
    block_length: int | None = None,
    method: Literal["circular", "moving"] = "circular",
    seed: int = 0,
) -> xr.Dataset:
    """Skill ``1 - mean(score)/mean(reference)`` over ``dim`` with a block-bootstrap
    percentile interval.  Returns a Dataset with ``value``, ``low``, ``high`` (and the
    settings in attrs), one value per point of the other dims.

    When the dates hold fewer than two blocks (:func:`has_interval`), ``low`` and ``high``
    are NaN and ``attrs["interval"]`` says why; ``value`` is still the skill."""
    if not 0.0 < confidence < 1.0:
        raise BootstrapError(f"confidence must lie in (0, 1), got {confidence}")
    s, r = _paired_valid(score, reference, dim)
    n = s.sizes[dim]
    if n < 2:
        raise BootstrapError(f"need at least 2 dates to bootstrap, got {n}")
    bl = default_block_length(n) if block_length is None else block_length
    if bl < 1:
        raise BootstrapError(f"block_length must be >= 1, got {bl}")
    interval = has_interval(n, bl)
    sv, rv = s.values, r.values
    valid = ~(np.isnan(sv) | np.isnan(rv))
    sv0, rv0 = np.where(valid, sv, 0.0), np.where(valid, rv, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 1.0 - (sv0.sum(-1) / valid.sum(-1)) / (rv0.sum(-1) / valid.sum(-1))
    if interval:
        idx = block_indices(n, block_length=bl, n_resamples=n_resamples, method=method,
                            rng=np.random.default_rng(seed))
        cnt = valid[..., idx].sum(-1)  # [..., R]
        with np.errstate(invalid="ignore", divide="ignore"):
            ms = sv0[..., idx].sum(-1) / cnt
            mr = rv0[..., idx].sum(-1) / cnt
            boot = 1.0 - ms / mr
        alpha = 1.0 - confidence
        low = np.nanquantile(boot, alpha / 2, axis=-1) if boot.size else boot
        high = np.nanquantile(boot, 1 - alpha / 2, axis=-1) if boot.size else boot
    else:
        if method not in ("circular", "moving"):
            raise BootstrapError(f"unknown block bootstrap {method!r}: choose circular or moving")
        if n_resamples < 1:
            raise BootstrapError(f"n_resamples must be >= 1, got {n_resamples}")
        low = high = np.full_like(np.asarray(value, dtype=np.float64), np.nan)
    other = [d for d in s.dims if d != dim]
    coords = {k: v for k, v in s.coords.items() if dim not in v.dims}
    out = xr.Dataset(
        {name: (other, np.asarray(arr)) for name, arr in
         (("value", value), ("low", low), ("high", high))},
        coords=coords,
    )
    out.attrs = {"statistic": "skill = 1 - mean(score)/mean(reference)",
                 "interval": (f"{confidence:.0%} percentile, {method} block bootstrap over {dim}"
                              if interval else f"none: {n} dates ({dim}) are fewer than two blocks of "
                              f"{bl}"),
                 "confidence": confidence, "block_length": bl, "n_resamples": n_resamples,
                 "method": method, "seed": seed}
    for key in ("estimator",):
        if key in score.attrs:
            out.attrs[key] = score.attrs[key]
    return out


def newey_west_lag(n: int) -> int:
    """Default HAC truncation lag ``floor(4 (n/100)^(2/9))`` (Newey & West 1994)."""
    return int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))


def _hac_variance(d: np.ndarray, lag: int) -> np.ndarray:
    """Newey-West long-run variance of the mean's numerator along the last axis."""
    n = d.shape[-1]
    e = d - d.mean(-1, keepdims=True)
    var = (e * e).sum(-1) / n
    for k in range(1, lag + 1):
        w = 1.0 - k / (lag + 1.0)
        var = var + 2.0 * w * (e[..., k:] * e[..., :-k]).sum(-1) / n
    return var


def diebold_mariano(
    score_a: xr.DataArray,
    score_b: xr.DataArray,
    *,
    dim: str = "init_time",
    max_lag: int | None = None,
) -> xr.Dataset:
    """Diebold-Mariano test of equal expected score of systems a and b (paired by date).

    ``d_t = a_t - b_t``; ``DM = mean(d) / sqrt(HAC var / n)`` with a Newey-West variance
    (Bartlett weights up to ``max_lag``, default :func:`newey_west_lag`) and the
    Harvey-Leybourne-Newbold small-sample factor; two-sided p-value from Student's t with
    n-1 dof.  Negative ``statistic`` means a scores lower (better) than b.  Dates with a NaN
    are dropped per series (complete cases along ``dim`` are required to be common).
    """
    a, b = _paired_valid(score_a, score_b, dim)
    d = a.values - b.values
    if np.isnan(d).any():
        keep = ~np.isnan(d).reshape(-1, d.shape[-1]).any(0)
        d = d[..., keep]
    n = d.shape[-1]
    if n < 3:
        raise BootstrapError(f"Diebold-Mariano needs at least 3 common valid dates, got {n}")
    lag = newey_west_lag(n) if max_lag is None else max_lag
    if not 0 <= lag < n - 1:
        raise BootstrapError(f"max_lag must be in 0..{n - 2}, got {lag}")
    mean = d.mean(-1)
    var = _hac_variance(d, lag)
    with np.errstate(invalid="ignore", divide="ignore"):
        dm = mean / np.sqrt(np.where(var > 0, var, np.nan) / n)
    h = lag + 1  # HLN correction for an h-step-like dependence of the differentials
    hln = math.sqrt(max((n + 1 - 2 * h + h * (h - 1) / n) / n, 1e-12))
    stat = dm * hln
    p = 2.0 * stdtr(n - 1, -np.abs(stat))  # two-sided Student t tail
    other = [x for x in a.dims if x != dim]
    coords = {k: v for k, v in a.coords.items() if dim not in v.dims}
    out = xr.Dataset({"statistic": (other, np.asarray(stat)),
                      "p_value": (other, np.asarray(p)),
                      "mean_difference": (other, np.asarray(mean))}, coords=coords)
    out.attrs = {"test": "Diebold-Mariano, Newey-West HAC variance, HLN correction",
                 "max_lag": lag, "n_dates": n, "difference": "score_a - score_b"}
    return out
