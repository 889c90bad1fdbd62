"""evaluation: scores of probabilistic forecasts, their aggregation and their uncertainty.

Public API (everything else is internal):

* metrics: :func:`crps_ensemble` (``estimator="fair" | "standard"``), :func:`crps_gaussian`,
  :func:`crps_censored`
* aggregation: :func:`weighted_mean`, :func:`score_sums`, :func:`merge_sums`,
  :func:`finalize_sums`
"""

from evaluation.aggregate import (
    AggregationError,
    finalize_sums,
    merge_sums,
    score_sums,
    weighted_mean,
)
from evaluation.metrics import MetricInputError, crps_censored, crps_ensemble, crps_gaussian

__all__ = [
    "AggregationError",
    "MetricInputError",
    "crps_censored",
    "crps_ensemble",
    "crps_gaussian",
    "finalize_sums",
    "merge_sums",
    "score_sums",
    "weighted_mean",
]
