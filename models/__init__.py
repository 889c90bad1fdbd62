"""models: post-processing networks, CRPS losses, ensemble copula coupling.

Public API (see ARCHITECTURE.md, "Building a model" and "Models -> products contract"):

* :class:`ModelSpec`, :func:`build_model`, :class:`PostProcessor`, :func:`loss_for`
* losses: :func:`crps_gaussian`, :func:`crps_ensemble` (estimators ``fair``/``standard``),
  :func:`crps_censored_logistic`, :func:`reduce_crps`
* members and quantiles: :func:`ecc_members`, :func:`quantiles`
"""

from enspp.models.base import (
    CLOSED_FORM_ESTIMATOR,
    MODEL_NAMES,
    ModelSpec,
    ModelSpecError,
    PostProcessor,
    build_model,
    ensemble_moments,
    loss_for,
)
from enspp.models.distributions import censored_logistic_moments
from enspp.models.ecc import (
    ECCError,
    ecc_members,
    ecc_template,
    output_ecc_members,
    output_quantiles,
    quantiles,
)
from enspp.models.losses import (
    DISTRIBUTIONS,
    ENSEMBLE_ESTIMATORS,
    LossError,
    crps_censored_logistic,
    crps_ensemble,
    crps_gaussian,
    distribution_crps,
    reduce_crps,
)
from enspp.models.normalize import STAT_KEYS, StatsError, resolve_stats

__all__ = [
    "CLOSED_FORM_ESTIMATOR",
    "ECCError",
    "DISTRIBUTIONS",
    "ENSEMBLE_ESTIMATORS",
    "MODEL_NAMES",
    "STAT_KEYS",
    "LossError",
    "ModelSpec",
    "ModelSpecError",
    "PostProcessor",
    "StatsError",
    "build_model",
    "censored_logistic_moments",
    "crps_censored_logistic",
    "crps_ensemble",
    "crps_gaussian",
    "distribution_crps",
    "ecc_members",
    "ecc_template",
    "ensemble_moments",
    "loss_for",
    "output_ecc_members",
    "output_quantiles",
    "quantiles",
    "reduce_crps",
    "resolve_stats",
]
