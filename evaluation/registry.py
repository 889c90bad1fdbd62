"""Skill scores against named references, and the registry of metrics by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import xarray as xr

from enspp.data.errors import EnsppError
from enspp.evaluation import diagnostics, metrics

#: Named reference systems a skill score may be computed against.
REFERENCES = ("raw_full", "raw_subset", "emos", "climatology")
#: Names of the systems in reports.
SYSTEMS = ("raw_full", "raw_subset", "emos", "mlp", "unet", "mixed", "oracle", "climatology")


class MissingReferenceError(EnsppError):
    """A skill score asks for a reference that was not evaluated."""


def skill_score(score: xr.DataArray, reference: xr.DataArray) -> xr.DataArray:
    """``1 - score / reference`` for a negatively oriented score (1 = perfect, 0 = no skill).

    Both must already be averaged the same way (skill of means, not mean of skills); the
    coordinates must agree.  A zero reference gives NaN.
    """
    try:
        score, reference = xr.align(score, reference, join="exact")
    except ValueError as exc:
        raise metrics.MetricInputError(f"score and reference are not aligned: {exc}") from exc
    ref = reference.where(reference != 0)
    out = 1.0 - score / ref
    out.attrs = {"long_name": f"skill score of {score.attrs.get('long_name', score.name or 'score')}",
                 "units": "1"}
    for key in ("estimator", "score"):
        if key in score.attrs:
            out.attrs[key] = score.attrs[key]
    return out.rename("skill")


def skill_scores(
    scores: Mapping[str, xr.DataArray],
    *,
    reference: str = "raw_full",
) -> dict[str, xr.DataArray]:
    """Skill of every system in ``scores`` against the system named ``reference``.

    Raises :class:`MissingReferenceError` if ``reference`` is not among ``scores``.
    """
    if reference not in REFERENCES:
        raise MissingReferenceError(
            f"unknown reference {reference!r}: choose one of {', '.join(REFERENCES)}"
        )
    if reference not in scores:
        raise MissingReferenceError(
            f"reference {reference!r} was not evaluated: available systems {sorted(scores)}"
        )
    out = {}
    for name, score in scores.items():
        s = skill_score(score, scores[reference])
        s.attrs["reference_system"] = reference
        out[name] = s
    return out


@dataclass(frozen=True)
class MetricInfo:
    """A metric in the registry: the function and what a reader needs to know about it."""

    name: str
    func: Callable[..., xr.DataArray]
    #: "negative": lower is better; "positive": higher is better; "target_one": 1 is best;
    #: "target_zero": 0 is best; "flat": a histogram, flat is best
    orientation: Literal["negative", "positive", "target_one", "target_zero", "flat"]
    #: "ensemble" (members), "gaussian" (mu, sigma), "censored" (loc, scale)
    inputs: Literal["ensemble", "gaussian", "censored"]
    estimator: str | None
    description: str


def _info(name, func, orientation, inputs, estimator, description) -> MetricInfo:
    return MetricInfo(name, func, orientation, inputs, estimator, description)


def _fixed(func: Callable, **fixed) -> Callable[..., xr.DataArray]:
    def wrapped(*args, **kwargs):
        return func(*args, **fixed, **kwargs)

    wrapped.__name__ = func.__name__
    wrapped.__doc__ = func.__doc__
    return wrapped


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        _info("crps_fair", _fixed(metrics.crps_ensemble, estimator="fair"), "negative",
              "ensemble", "fair", "ensemble CRPS, fair estimator (spread term / M(M-1))"),
        _info("crps_standard", _fixed(metrics.crps_ensemble, estimator="standard"), "negative",
              "ensemble", "standard", "ensemble CRPS, standard estimator (= properscoring)"),
        _info("crps_gaussian", metrics.crps_gaussian, "negative", "gaussian", "gaussian",
              "CRPS of a Gaussian predictive distribution, closed form"),
        _info("crps_censored_logistic", _fixed(metrics.crps_censored, family="logistic"),
              "negative", "censored", "censored_logistic",
              "CRPS of a zero-censored logistic distribution (precipitation)"),
        _info("crps_censored_gaussian", _fixed(metrics.crps_censored, family="gaussian"),
              "negative", "censored", "censored_gaussian",
              "CRPS of a zero-censored Gaussian distribution (precipitation)"),
        _info("twcrps_fair", _fixed(metrics.twcrps, estimator="fair"), "negative", "ensemble",
              "fair", "threshold-weighted ensemble CRPS (chaining function), fair estimator"),
        _info("twcrps_standard", _fixed(metrics.twcrps, estimator="standard"), "negative",
              "ensemble", "standard", "threshold-weighted ensemble CRPS, standard estimator"),
        _info("twcrps_gaussian", metrics.twcrps_gaussian, "negative", "gaussian", "gaussian",
              "threshold-weighted CRPS of a Gaussian, closed form"),
        _info("eecrps_fair", _fixed(metrics.eecrps, estimator="fair"), "negative", "ensemble",
              "fair", "ENS-10 extreme-event weighted CRPS |EFI| x CRPS, fair estimator"),
        _info("bias", _fixed(diagnostics.ensemble_mean_error, kind="bias"), "target_zero",
              "ensemble", None, "bias of the ensemble mean"),
        _info("mae", _fixed(diagnostics.ensemble_mean_error, kind="mae"), "negative",
              "ensemble", None, "mean absolute error of the ensemble mean"),
        _info("rmse", _fixed(diagnostics.ensemble_mean_error, kind="rmse"), "negative",
              "ensemble", None, "root mean squared error of the ensemble mean"),
        _info("spread_skill_ratio", diagnostics.spread_skill_ratio, "target_one", "ensemble",
              None, "spread/skill ratio with the sqrt((M+1)/M) correction"),
        _info("rank_histogram", diagnostics.rank_histogram, "flat", "ensemble", None,
              "rank histogram of the observation among the members"),
        _info("pit_histogram", diagnostics.pit_histogram, "flat", "gaussian", None,
              "PIT histogram of a Gaussian forecast"),
    ]
}


def get_metric(name: str) -> MetricInfo:
    """The registry entry called ``name``; an unknown name lists the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise metrics.MetricInputError(
            f"unknown metric {name!r}: known metrics are {', '.join(sorted(METRICS))}"
        ) from None


def is_better(name: str, a: float, b: float) -> bool:
    """Whether value ``a`` of metric ``name`` is better than ``b`` (by its orientation)."""
    o = get_metric(name).orientation
    if o == "negative":
        return a < b
    if o == "positive":
        return a > b
    if o == "target_one":
        return abs(a - 1.0) < abs(b - 1.0)
    if o == "target_zero":
        return abs(a) < abs(b)
    raise metrics.MetricInputError(f"metric {name!r} is a histogram: no scalar ordering")

