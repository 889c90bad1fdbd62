"""CRPS family of scores as pure functions over xarray (kernels in :mod:`evaluation.kernels`).

Every function takes the data first and keyword-only options, names its dims, and returns a
float64 ``xr.DataArray`` whose attrs name the score and, for a CRPS, the estimator.  Nothing
is averaged unless ``reduce_dims`` is given; ``weights`` (e.g. latitude weights times a
region mask, :mod:`evaluation.weights`) apply to that mean.  Dask-backed input stays lazy.

NaN policy: a NaN observation gives a NaN score; NaN members are skipped (the score is that
of the valid members; no valid member gives NaN); NaN scores are left out of means and the
weights renormalised over the valid points (:func:`evaluation.aggregate.weighted_mean`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.evaluation import kernels
from enspp.evaluation.aggregate import weighted_mean

Estimator = Literal["standard", "fair"]
Tail = Literal["upper", "lower"]

REFERENCE_PROPERSCORING = "equals properscoring.crps_ensemble"


class MetricInputError(EnsppError):
    """Forecast and observation do not fit together (dims, alignment, values)."""


def _check_aligned(*arrays: xr.DataArray, names: Sequence[str]) -> None:
    """Raise unless the arrays' shared dims have identical coordinates."""
    try:
        xr.align(*arrays, join="exact", copy=False)
    except ValueError as exc:
        raise MetricInputError(
            f"{' and '.join(names)} are not aligned on their shared dims ({exc}); "
            "select the observation at the forecast's valid times first"
        ) from exc


def _check_member_dim(forecast: xr.DataArray, observation: xr.DataArray, member_dim: str) -> None:
    if member_dim not in forecast.dims:
        raise MetricInputError(
            f"forecast {forecast.name or ''} has no member dim {member_dim!r}: dims {tuple(forecast.dims)}"
        )
    if member_dim in observation.dims:
        raise MetricInputError(
            f"observation {observation.name or ''} has the member dim {member_dim!r}: "
            "pass a single truth (e.g. .sel(member=0) of an analysis ensemble)"
        )


def _single_chunk(da: xr.DataArray, dim: Hashable) -> xr.DataArray:
    if da.chunks is not None:
        return da.chunk({dim: -1})
    return da


def _finish(score: xr.DataArray, attrs: dict, observation: xr.DataArray, reduce_dims, weights):
    attrs = dict(attrs)
    if "units" in observation.attrs and "units" not in attrs:
        attrs["units"] = observation.attrs["units"]
    score.attrs = attrs
    out = weighted_mean(score, reduce_dims=reduce_dims, weights=weights)
    if reduce_dims is not None:
        out.attrs["reduced_over"] = " ".join(str(d) for d in reduce_dims)
    return out


def _ensemble_apply(func, forecast, observation, member_dim, **kwargs) -> xr.DataArray:
    _check_member_dim(forecast, observation, member_dim)
    _check_aligned(forecast, observation, names=("forecast", "observation"))
    if "parallel" in kwargs:  # dask tasks are already parallel: serial kernel inside them
        kwargs["parallel"] = forecast.chunks is None and observation.chunks is None
    return xr.apply_ufunc(
        func,
        _single_chunk(forecast, member_dim),
        observation,
        input_core_dims=[[member_dim], []],
        kwargs=kwargs,
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def crps_ensemble(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    *,
    member_dim: str = "member",
    estimator: Estimator = "fair",
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Ensemble CRPS with the ``standard`` (= properscoring) or ``fair`` estimator.

    ``fair`` divides the spread term by M(M-1) instead of M^2, which makes it unbiased for
    the CRPS of the distribution the members come from (Ferro 2014).  Sort-based
    O(M log M) numba kernel, float64 accumulation.
    """
    kernels.check_estimator(estimator)
    score = _ensemble_apply(kernels.crps_ensemble_kernel, forecast, observation, member_dim,
                            estimator=estimator, parallel=True)
    attrs = {"long_name": f"CRPS ({estimator} estimator)", "score": "crps",
             "estimator": estimator}
    if estimator == "standard":
        attrs["reference"] = REFERENCE_PROPERSCORING
    return _finish(score.rename("crps"), attrs, observation, reduce_dims, weights)


def _gaussian_apply(func, mu, sigma, observation, **kwargs) -> xr.DataArray:
    _check_aligned(mu, sigma, observation, names=("mu", "sigma", "observation"))
    return xr.apply_ufunc(func, mu, sigma, observation, kwargs=kwargs, dask="parallelized",
                          output_dtypes=[np.float64])


def crps_gaussian(
    mu: xr.DataArray,
    sigma: xr.DataArray,
    observation: xr.DataArray,
    *,
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Closed-form CRPS of N(mu, sigma^2) (= properscoring.crps_gaussian); sigma <= 0 -> NaN."""
    score = _gaussian_apply(kernels.crps_gaussian_kernel, mu, sigma, observation)
    attrs = {"long_name": "CRPS (gaussian, closed form)", "score": "crps", "estimator": "gaussian"}
    return _finish(score.rename("crps"), attrs, observation, reduce_dims, weights)


def crps_censored(
    loc: xr.DataArray,
    scale: xr.DataArray,
    observation: xr.DataArray,
    *,
    family: Literal["gaussian", "logistic"] = "logistic",
    lower: float | xr.DataArray = 0.0,
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Closed-form CRPS of a ``family`` distribution left-censored at ``lower`` (default 0).

    For precipitation products: the probability below ``lower`` is a point mass at ``lower``
    (``P(Y = 0) = F(0)``).  ``lower`` may be a field.
    """
    if family not in ("gaussian", "logistic"):
        raise MetricInputError(f"unknown censored family {family!r}: choose gaussian or logistic")
    low = lower if isinstance(lower, xr.DataArray) else xr.DataArray(float(lower))
    _check_aligned(loc, scale, observation, low, names=("loc", "scale", "observation", "lower"))
    score = xr.apply_ufunc(kernels.crps_censored_kernel, loc, scale, observation, low,
                           kwargs={"family": family}, dask="parallelized",
                           output_dtypes=[np.float64])
    attrs = {"long_name": f"CRPS (censored {family}, closed form)", "score": "crps",
             "estimator": f"censored_{family}"}
    return _finish(score.rename("crps"), attrs, observation, reduce_dims, weights)


# ------------------------------------------------------------------ threshold-weighted CRPS
def _check_tail(tail: str) -> None:
    if tail not in ("upper", "lower"):
        raise MetricInputError(f"unknown tail {tail!r}: choose 'upper' or 'lower'")


def _threshold(threshold: float | xr.DataArray) -> xr.DataArray:
    return threshold if isinstance(threshold, xr.DataArray) else xr.DataArray(float(threshold))


def twcrps(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    *,
    threshold: float | xr.DataArray,
    tail: Tail = "upper",
    member_dim: str = "member",
    estimator: Estimator = "fair",
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Threshold-weighted ensemble CRPS with weight ``1{z > t}`` (upper) or ``1{z < t}`` (lower).

    Computed through the chaining function (Allen et al. 2023): the twCRPS with weight
    ``1{z > t}`` is the CRPS of ``max(x, t)`` against ``max(y, t)`` (``min`` for the lower
    tail), so the same kernel and estimator apply.  ``threshold`` may be a field, e.g.
    :func:`climatological_quantile` of the training-period analysis.
    """
    _check_tail(tail)
    kernels.check_estimator(estimator)
    t = _threshold(threshold)
    _check_aligned(observation, t, names=("observation", "threshold"))
    if member_dim in t.dims:
        raise MetricInputError(f"threshold has the member dim {member_dim!r}: one value per point")
    chain = np.maximum if tail == "upper" else np.minimum
    fc = xr.apply_ufunc(chain, forecast, t, dask="allowed", keep_attrs=True)
    ob = xr.apply_ufunc(chain, observation, t, dask="allowed", keep_attrs=True)
    fc = fc.transpose(*forecast.dims, ...)
    score = crps_ensemble(fc, ob, member_dim=member_dim, estimator=estimator)
    attrs = {"long_name": f"threshold-weighted CRPS, {tail} tail ({estimator} estimator)",
             "score": "twcrps", "estimator": estimator, "tail": tail}
    if not isinstance(threshold, xr.DataArray):
        attrs["threshold"] = float(threshold)
    return _finish(score.rename("twcrps"), attrs, observation, reduce_dims, weights)


def twcrps_gaussian(
    mu: xr.DataArray,
    sigma: xr.DataArray,
    observation: xr.DataArray,
    *,
    threshold: float | xr.DataArray,
    tail: Tail = "upper",
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Threshold-weighted CRPS of N(mu, sigma^2), closed form.

    Upper tail: ``max(X, t)`` is a normal censored below at ``t``, scored against
    ``max(y, t)``; the lower tail is the mirror image (negate everything).
    """
    _check_tail(tail)
    t = _threshold(threshold)
    sign = 1.0 if tail == "upper" else -1.0
    obs_c = xr.apply_ufunc(np.maximum, sign * observation, sign * t, dask="allowed")
    score = crps_censored(sign * mu, sigma, obs_c, family="gaussian", lower=sign * t)
    attrs = {"long_name": f"threshold-weighted CRPS, {tail} tail (gaussian, closed form)",
             "score": "twcrps", "estimator": "gaussian", "tail": tail}
    if not isinstance(threshold, xr.DataArray):
        attrs["threshold"] = float(threshold)
    return _finish(score.rename("twcrps"), attrs, observation, reduce_dims, weights)


def climatological_quantile(
    analysis: xr.DataArray,
    q: float | Sequence[float],
    *,
    dim: str | Sequence[str] = "time",
) -> xr.DataArray:
    """Local climatological quantile(s) ``q`` over ``dim`` (e.g. the training period).

    A scalar ``q`` gives a field without a ``quantile`` dim (a threshold for
    :func:`twcrps`); a sequence keeps the ``quantile`` dim (a model climate for :func:`efi`).
    NaNs are skipped.
    """
    dims = [dim] if isinstance(dim, str) else list(dim)
    missing = [d for d in dims if d not in analysis.dims]
    if missing:
        raise MetricInputError(
            f"climatological_quantile: {analysis.name or 'analysis'} has no dims {missing} "
            f"(dims {tuple(analysis.dims)})"
        )
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if np.any((qs <= 0) | (qs >= 1)):
        raise MetricInputError(f"climatological_quantile: q must lie in (0, 1), got {q}")
    data = analysis
    if data.chunks is not None:
        data = data.chunk({d: -1 for d in dims})
    out = data.quantile(qs if np.ndim(q) else float(qs[0]), dim=dims, skipna=True)
    if np.ndim(q) == 0:
        out = out.drop_vars("quantile", errors="ignore")
    out.attrs = {k: v for k, v in analysis.attrs.items() if k in ("units", "standard_name")}
    out.attrs["long_name"] = f"climatological quantile over {', '.join(dims)}"
    return out


# ------------------------------------------------------------------ EFI and EECRPS
def efi(
    forecast: xr.DataArray,
    model_climate_quantiles: xr.DataArray,
    *,
    member_dim: str = "member",
    quantile_dim: str = "quantile",
) -> xr.DataArray:
    """Extreme Forecast Index (Lalaurette 2003; ECMWF) of the ensemble against a model climate.

    ``model_climate_quantiles`` holds quantiles of the model climate (e.g. reforecasts, or
    forecasts of the training period at the same lead time) at the probability levels in
    its ``quantile_dim`` coordinate.  EFI in [-1, 1]: +1 when every member exceeds the model
    climate's maximum, -1 when every member is below its minimum.
    """
    if quantile_dim not in model_climate_quantiles.dims:
        raise MetricInputError(
            f"model climate has no {quantile_dim!r} dim: dims {tuple(model_climate_quantiles.dims)}"
        )
    if member_dim not in forecast.dims:
        raise MetricInputError(f"forecast has no member dim {member_dim!r}: dims {tuple(forecast.dims)}")
    levels = np.asarray(model_climate_quantiles[quantile_dim].values, dtype=np.float64)
    if levels.size == 0 or np.any((levels <= 0) | (levels >= 1)) or np.any(np.diff(levels) <= 0):
        raise MetricInputError(
            f"model climate {quantile_dim!r} levels must increase strictly inside (0, 1), got {levels}"
        )
    _check_aligned(forecast, model_climate_quantiles, names=("forecast", "model climate"))
    out = xr.apply_ufunc(
        kernels.efi_kernel,
        _single_chunk(forecast, member_dim),
        _single_chunk(model_climate_quantiles, quantile_dim),
        input_core_dims=[[member_dim], [quantile_dim]],
        kwargs={"levels": levels},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    out.attrs = {"long_name": "Extreme Forecast Index", "units": "1",
                 "reference": "Lalaurette (2003), Q. J. R. Meteorol. Soc. 129, 3037-3057"}
    return out.rename("efi")


def eecrps(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    model_climate_quantiles: xr.DataArray,
    *,
    member_dim: str = "member",
    estimator: Estimator = "fair",
    quantile_dim: str = "quantile",
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Extreme-event weighted CRPS of ENS-10: ``|EFI| x CRPS``.

    Ashkboos et al. (2022), "ENS-10: A Dataset For Post-Processing Ensemble Weather
    Forecasts", NeurIPS Datasets and Benchmarks.  The weight depends on the forecast and the
    model climate only, never on the observation, so the weighted score stays proper.
    """
    crps = crps_ensemble(forecast, observation, member_dim=member_dim, estimator=estimator)
    index = efi(forecast, model_climate_quantiles, member_dim=member_dim, quantile_dim=quantile_dim)
    score = np.abs(index) * crps
    attrs = {"long_name": f"EECRPS, |EFI| x CRPS ({estimator} estimator)", "score": "eecrps",
             "estimator": estimator, "reference": "Ashkboos et al. (2022), ENS-10"}
    return _finish(score.rename("eecrps"), attrs, observation, reduce_dims, weights)
