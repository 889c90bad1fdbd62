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

from evaluation import kernels
from evaluation.aggregate import weighted_mean

Estimator = Literal["standard", "fair"]
Tail = Literal["upper", "lower"]

REFERENCE_PROPERSCORING = "equals properscoring.crps_ensemble"


class MetricInputError(ValueError):
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
                            estimator=estimator)
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
