"""Pointwise scores of one system's field against the truth, whatever the system's type.

The metric functions themselves live in :mod:`evaluation.metrics`; this module only picks
the right one for an ensemble or a Gaussian :class:`~evaluation.systems.SystemField` and
computes the few moments the reports aggregate (error of the mean, predictive variance,
rank / PIT).  Every CRPS carries its estimator in ``attrs["estimator"]``: ``fair`` or
``standard`` for ensembles, ``gaussian`` for closed-form Gaussian products.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.special import ndtr

from data.schema import MEMBER
from evaluation import kernels, metrics
from evaluation.systems import SystemField

#: bins of the PIT histogram of distributional products
PIT_BINS = 10


def crps(field: SystemField, obs: xr.DataArray, *, estimator: str) -> xr.DataArray:
    """Pointwise CRPS: ensemble (``estimator``) or Gaussian closed form."""
    if field.kind == "ensemble":
        return metrics.crps_ensemble(field.ensemble, obs, member_dim=MEMBER, estimator=estimator)
    return metrics.crps_gaussian(field.mu, field.sigma, obs)


def twcrps(field: SystemField, obs: xr.DataArray, *, threshold: float | xr.DataArray, tail: str,
           estimator: str) -> xr.DataArray:
    """Pointwise threshold-weighted CRPS: ensemble (``estimator``) or Gaussian closed form."""
    if field.kind == "ensemble":
        return metrics.twcrps(field.ensemble, obs, threshold=threshold, tail=tail,
                              member_dim=MEMBER, estimator=estimator)
    return metrics.twcrps_gaussian(field.mu, field.sigma, obs, threshold=threshold, tail=tail)


def moments(field: SystemField, obs: xr.DataArray) -> dict[str, xr.DataArray]:
    """Pointwise ``error`` (mean - obs), ``abs_error``, ``sq_error`` and ``variance`` (the
    predictive variance: unbiased member variance, or sigma^2), NaN where obs is NaN."""
    if field.kind == "ensemble":
        ens = field.ensemble
        mean = ens.mean(MEMBER)
        var = ens.var(MEMBER, ddof=1) if ens.sizes[MEMBER] > 1 else xr.zeros_like(mean)
    else:
        mean, var = field.mu, field.sigma ** 2
    err = (mean - obs).astype(np.float64)
    var = var.astype(np.float64).where(obs.notnull())
    return {"error": err, "abs_error": abs(err), "sq_error": err ** 2, "variance": var}


def n_members(field: SystemField) -> int | None:
    return int(field.ensemble.sizes[MEMBER]) if field.kind == "ensemble" else None


def rank_or_pit(field: SystemField, obs: xr.DataArray, *, seed: int = 0) -> tuple[xr.DataArray, int]:
    """The rank of ``obs`` among the members (0..M, ties at random; bins M+1) for an
    ensemble, or the PIT binned into :data:`PIT_BINS` bins for a Gaussian; NaN where
    undefined.  Returns ``(bin index, number of bins)``."""
    if field.kind == "ensemble":
        ens = field.ensemble.transpose(..., MEMBER)
        o = obs.broadcast_like(ens.isel({MEMBER: 0}, drop=True))
        u = np.random.default_rng(seed).random(o.shape)
        r = kernels.rank_kernel(ens.values, o.transpose(*ens.dims[:-1]).values, u)
        return xr.DataArray(r, dims=ens.dims[:-1], coords=o.coords), int(ens.sizes[MEMBER]) + 1
    pit = xr.apply_ufunc(lambda m, s, y: ndtr((y - m) / np.where(s > 0, s, np.nan)),
                         field.mu, field.sigma, obs)
    b = np.floor(pit * PIT_BINS).clip(0, PIT_BINS - 1)
    return b.where(pit.notnull()), PIT_BINS
