"""evaluation: scores of probabilistic forecasts, their aggregation and their uncertainty.

Public API (everything else is internal):

* CRPS family (``evaluation.metrics``): :func:`crps_ensemble` (``estimator="fair" |
  "standard"``), :func:`crps_gaussian`, :func:`crps_censored`, :func:`twcrps`,
  :func:`twcrps_gaussian`, :func:`climatological_quantile`, :func:`efi`, :func:`eecrps`
* diagnostics: :func:`ensemble_mean_error` (bias / mae / rmse), :func:`spread_skill_ratio`,
  :func:`rank_histogram`, :func:`pit_histogram`
* skill and the registry: :func:`skill_score`, :func:`skill_scores`, :data:`REFERENCES`,
  :data:`METRICS`, :func:`get_metric`
* weights: :func:`latitude_weights`, :func:`region_mask`, :func:`region_weights`,
  :class:`Region`, :data:`REGIONS`
* aggregation: :func:`weighted_mean`, :func:`score_sums`, :func:`merge_sums`,
  :func:`finalize_sums`, :func:`accumulate_over_chunks`, :func:`observation_at_valid_time`
* uncertainty: :func:`bootstrap_skill`, :func:`diebold_mariano`
* evaluations (``evaluation.evaluate``, ``evaluation.config``): :func:`evaluate` (what
  ``enspp evaluate`` and the Prefect flow run), :class:`EvaluateConfig`,
  :func:`config_from_mapping`, :class:`EvaluationResult`
* case studies (``evaluation.cases``): :func:`load_catalogue`, :class:`Case`,
  :data:`SHIPPED_CATALOGUE`, :func:`evaluate_case`
* reports (``evaluation.report``, ``evaluation.dashboard``): :func:`write_report`,
  :func:`read_scores`, :func:`write_dashboard`, :func:`combine_dashboards`

``import enspp.evaluation`` does not import matplotlib: :mod:`enspp.evaluation.plots` is imported when
a report draws its figures.  ``evaluation.evaluate`` names the function here; its module is
``sys.modules["enspp.evaluation.evaluate"]`` (``from enspp.evaluation.evaluate import ...`` works as
usual).
"""

from enspp.evaluation.aggregate import (
    AggregationError,
    accumulate_over_chunks,
    finalize_sums,
    merge_sums,
    observation_at_valid_time,
    score_sums,
    sums_over,
    weighted_mean,
)
from enspp.evaluation.bootstrap import BootstrapError, bootstrap_skill, diebold_mariano
from enspp.evaluation.cases import SHIPPED_CATALOGUE, Case, CatalogueError, evaluate_case, load_catalogue
from enspp.evaluation.config import EvaluateConfig, EvaluateConfigError, config_from_mapping
from enspp.evaluation.dashboard import combine_dashboards, write_dashboard
from enspp.evaluation.diagnostics import (
    ensemble_mean_error,
    pit_histogram,
    rank_histogram,
    spread_skill_ratio,
)
from enspp.evaluation.evaluate import EvaluationResult, MissingDataError, NanPolicyError, evaluate
from enspp.evaluation.metrics import (
    MetricInputError,
    climatological_quantile,
    crps_censored,
    crps_ensemble,
    crps_gaussian,
    eecrps,
    efi,
    twcrps,
    twcrps_gaussian,
)
from enspp.evaluation.registry import (
    METRICS,
    REFERENCES,
    SYSTEMS,
    MetricInfo,
    MissingReferenceError,
    get_metric,
    skill_score,
    skill_scores,
)
from enspp.evaluation.report import read_scores, write_report
from enspp.evaluation.systems import AlignmentError, SystemDataError
from enspp.evaluation.weights import (
    REGIONS,
    Region,
    RegionError,
    get_region,
    latitude_weights,
    region_mask,
    region_weights,
)

__all__ = [
    "METRICS",
    "REFERENCES",
    "REGIONS",
    "SHIPPED_CATALOGUE",
    "SYSTEMS",
    "AggregationError",
    "AlignmentError",
    "BootstrapError",
    "Case",
    "CatalogueError",
    "EvaluateConfig",
    "EvaluateConfigError",
    "EvaluationResult",
    "MetricInfo",
    "MetricInputError",
    "MissingReferenceError",
    "MissingDataError",
    "NanPolicyError",
    "Region",
    "RegionError",
    "SystemDataError",
    "accumulate_over_chunks",
    "bootstrap_skill",
    "climatological_quantile",
    "combine_dashboards",
    "config_from_mapping",
    "crps_censored",
    "crps_ensemble",
    "crps_gaussian",
    "diebold_mariano",
    "eecrps",
    "efi",
    "ensemble_mean_error",
    "evaluate",
    "evaluate_case",
    "finalize_sums",
    "get_metric",
    "get_region",
    "latitude_weights",
    "load_catalogue",
    "merge_sums",
    "observation_at_valid_time",
    "pit_histogram",
    "rank_histogram",
    "read_scores",
    "region_mask",
    "region_weights",
    "score_sums",
    "skill_score",
    "skill_scores",
    "spread_skill_ratio",
    "sums_over",
    "twcrps",
    "twcrps_gaussian",
    "weighted_mean",
    "write_dashboard",
    "write_report",
]
