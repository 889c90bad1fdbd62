"""Pointwise scores of one system's field against the truth, whatever the system's type.

The metric functions themselves live in :mod:`evaluation.metrics`; this module only picks
the right one for an ensemble or a Gaussian :class:`~evaluation.systems.SystemField` (the
case studies and the twCRPS of :func:`evaluation.evaluate.evaluate` use it; the bulk scores
of an evaluation are fused in :mod:`evaluation.fused`).  Every CRPS carries its estimator in
``attrs["estimator"]``: ``fair`` or ``standard`` for ensembles, ``gaussian`` for closed-form
Gaussian products.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from enspp.data.schema import MEMBER
from enspp.evaluation import metrics
from enspp.evaluation.systems import SystemField

#: members of the equi-probable quantile ensemble that stands in for a censored distribution
#: where no closed form is available (the threshold-weighted CRPS)
N_TAIL_QUANTILES = 100


def crps(field: SystemField, obs: xr.DataArray, *, estimator: str) -> xr.DataArray:
    """Pointwise CRPS: ensemble (``estimator``), Gaussian or censored logistic closed form."""
    if field.kind == "ensemble":
        return metrics.crps_ensemble(field.ensemble, obs, member_dim=MEMBER, estimator=estimator)
    if field.kind == "censored_logistic":
        return metrics.crps_censored(field.loc, field.scale, obs, family="logistic")
    return metrics.crps_gaussian(field.mu, field.sigma, obs)


def quantile_members(field: SystemField, n: int = N_TAIL_QUANTILES) -> xr.DataArray:
    """``n`` equi-probable quantiles (levels ``(i + 0.5) / n``) of a censored logistic field,
    as an ensemble along ``member``."""
    p = xr.DataArray((np.arange(n) + 0.5) / n, dims=MEMBER)
    return np.maximum(field.loc + field.scale * np.log(p / (1 - p)), 0.0)


def twcrps(field: SystemField, obs: xr.DataArray, *, threshold: float | xr.DataArray, tail: str,
           estimator: str) -> xr.DataArray:
    """Pointwise threshold-weighted CRPS: ensemble (``estimator``) or Gaussian closed form; a
    censored logistic through its quantile ensemble (:func:`quantile_members`, ``standard``
    estimator)."""
    if field.kind == "censored_logistic":
        return metrics.twcrps(quantile_members(field), obs, threshold=threshold, tail=tail,
                              member_dim=MEMBER, estimator="standard")
    if field.kind == "ensemble":
        return metrics.twcrps(field.ensemble, obs, threshold=threshold, tail=tail,
                              member_dim=MEMBER, estimator=estimator)
    return metrics.twcrps_gaussian(field.mu, field.sigma, obs, threshold=threshold, tail=tail)


def n_members(field: SystemField) -> int | None:
    return int(field.ensemble.sizes[MEMBER]) if field.kind == "ensemble" else None
