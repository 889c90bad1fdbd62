"""Pointwise scores of one system's field against the truth, whatever the system's type.

The metric functions themselves live in :mod:`evaluation.metrics`; this module only picks
the right one for an ensemble or a Gaussian :class:`~evaluation.systems.SystemField` (the
case studies and the twCRPS of :func:`evaluation.evaluate.evaluate` use it; the bulk scores
of an evaluation are fused in :mod:`evaluation.fused`).  Every CRPS carries its estimator in
``attrs["estimator"]``: ``fair`` or ``standard`` for ensembles, ``gaussian`` for closed-form
Gaussian products.
"""

from __future__ import annotations

import xarray as xr

from enspp.data.schema import MEMBER
from enspp.evaluation import metrics
from enspp.evaluation.systems import SystemField


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


def n_members(field: SystemField) -> int | None:
    return int(field.ensemble.sizes[MEMBER]) if field.kind == "ensemble" else None
