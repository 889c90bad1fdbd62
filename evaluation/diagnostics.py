"""Calibration and deterministic diagnostics: spread/skill, rank and PIT histograms, and the
bias, MAE and RMSE of the ensemble mean.  Same conventions and NaN policy as
:mod:`evaluation.metrics`; NaN members are skipped in the ensemble mean and spread, but a rank
needs the full ensemble (a NaN member gives a NaN rank, left out of the histogram).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import xarray as xr
from scipy.special import ndtr

from enspp.evaluation import kernels
from enspp.evaluation.aggregate import weighted_mean
from enspp.evaluation.metrics import (
    MetricInputError,
    _check_aligned,
    _check_member_dim,
    _single_chunk,
)


def _ensemble_mean(forecast: xr.DataArray, observation: xr.DataArray, member_dim: str) -> xr.DataArray:
    _check_member_dim(forecast, observation, member_dim)
    _check_aligned(forecast, observation, names=("forecast", "observation"))
    return forecast.astype(np.float64).mean(member_dim, skipna=True)


def _need_reduce(reduce_dims, what: str) -> list[Hashable]:
    if reduce_dims is None:
        raise MetricInputError(f"{what} is a statistic over many cases: give reduce_dims")
    return [reduce_dims] if isinstance(reduce_dims, str) else list(reduce_dims)


def ensemble_mean_error(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    *,
    kind: Literal["bias", "mae", "rmse"],
    member_dim: str = "member",
    reduce_dims: Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Bias (mean - obs), MAE or RMSE of the ensemble mean; also accepts a deterministic
    forecast when ``member_dim`` is absent from it.  RMSE needs ``reduce_dims`` (the root is
    taken after the weighted mean of the squared error)."""
    if kind not in ("bias", "mae", "rmse"):
        raise MetricInputError(f"unknown ensemble-mean error {kind!r}: choose bias, mae or rmse")
    if member_dim in forecast.dims:
        mean = _ensemble_mean(forecast, observation, member_dim)
    else:
        _check_aligned(forecast, observation, names=("forecast", "observation"))
        mean = forecast.astype(np.float64)
    err = mean - observation
    if kind == "bias":
        point = err
    elif kind == "mae":
        point = abs(err)
    else:
        point = err**2
        _need_reduce(reduce_dims, "rmse")
    out = weighted_mean(point, reduce_dims=reduce_dims, weights=weights)
    if kind == "rmse":
        out = np.sqrt(out)
    out.attrs = {"long_name": f"{kind} of the ensemble mean", "score": kind}
    if "units" in observation.attrs:
        out.attrs["units"] = observation.attrs["units"]
    return out.rename(kind)


def spread_skill_ratio(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    *,
    member_dim: str = "member",
    reduce_dims: Sequence[Hashable],
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """``sqrt((M+1)/M) * sqrt(mean var) / RMSE(ensemble mean)``; 1 for a calibrated ensemble.

    The variance is the unbiased member variance (ddof=1); the factor ``(M+1)/M`` (Fortin et
    al. 2014) accounts for the finite ensemble, whose mean error includes the mean's own
    sampling error.
    """
    dims = _need_reduce(reduce_dims, "spread_skill_ratio")
    mean = _ensemble_mean(forecast, observation, member_dim)
    m_valid = forecast.notnull().sum(member_dim)
    if int(forecast.sizes[member_dim]) < 2:
        raise MetricInputError("spread_skill_ratio needs at least 2 members")
    var = forecast.astype(np.float64).var(member_dim, ddof=1, skipna=True)
    corr = (m_valid + 1.0) / m_valid
    valid = observation.notnull() & var.notnull()
    mse = weighted_mean(((mean - observation) ** 2).where(valid), reduce_dims=dims, weights=weights)
    spread2 = weighted_mean((corr * var).where(valid), reduce_dims=dims, weights=weights)
    out = np.sqrt(spread2 / mse)
    out.attrs = {"long_name": "spread/skill ratio", "score": "spread_skill_ratio",
                 "correction": "sqrt((M+1)/M) on the spread (Fortin et al. 2014)",
                 "units": "1"}
    return out.rename("spread_skill_ratio")


def rank_histogram(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    *,
    member_dim: str = "member",
    reduce_dims: Sequence[Hashable],
    seed: int = 0,
) -> xr.DataArray:
    """Counts of the observation's rank among the members (dim ``rank``, 0..M).

    Ties are broken at random (seeded); points with any NaN are left out.
    """
    dims = _need_reduce(reduce_dims, "rank_histogram")
    _check_member_dim(forecast, observation, member_dim)
    _check_aligned(forecast, observation, names=("forecast", "observation"))
    n_members = int(forecast.sizes[member_dim])
    rng = np.random.default_rng(seed)
    template = xr.broadcast(forecast.isel({member_dim: 0}, drop=True), observation)[0]
    uniform = xr.DataArray(rng.random(template.shape), dims=template.dims, coords=template.coords)
    if template.chunks is not None:
        uniform = uniform.chunk(dict(zip(template.dims, template.chunks)))
    ranks = xr.apply_ufunc(
        kernels.rank_kernel, _single_chunk(forecast, member_dim), observation, uniform,
        input_core_dims=[[member_dim], [], []], dask="parallelized", output_dtypes=[np.float64],
    )
    return _histogram(ranks, np.arange(n_members + 1), "rank", dims, "rank histogram")


def pit_histogram(
    mu: xr.DataArray,
    sigma: xr.DataArray,
    observation: xr.DataArray,
    *,
    n_bins: int = 10,
    reduce_dims: Sequence[Hashable],
) -> xr.DataArray:
    """Histogram of the PIT ``Phi((y - mu)/sigma)`` of a Gaussian forecast in ``n_bins``
    equal bins of [0, 1] (dim ``pit_bin``, coordinate = bin centre)."""
    dims = _need_reduce(reduce_dims, "pit_histogram")
    if n_bins < 1:
        raise MetricInputError(f"pit_histogram: n_bins must be >= 1, got {n_bins}")
    _check_aligned(mu, sigma, observation, names=("mu", "sigma", "observation"))
    pit = xr.apply_ufunc(lambda m, s, y: ndtr((y - m) / np.where(s > 0, s, np.nan)),
                         mu, sigma, observation, dask="parallelized", output_dtypes=[np.float64])
    bins = np.minimum(np.floor(pit * n_bins), n_bins - 1)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    hist = _histogram(bins, np.arange(n_bins), "pit_bin", dims, "PIT histogram")
    return hist.assign_coords(pit_bin=centres)


def _histogram(values: xr.DataArray, categories: np.ndarray, name: str,
               dims: list[Hashable], long_name: str) -> xr.DataArray:
    """Counts of each integer category over ``dims`` (NaN values are not counted)."""
    missing = [d for d in dims if d not in values.dims]
    if missing:
        raise MetricInputError(f"{long_name}: reduce_dims {missing} not in dims {tuple(values.dims)}")
    cats = xr.DataArray(categories.astype(np.float64), dims=name, coords={name: categories})
    counts = (values == cats).sum(dims).astype(np.int64)
    counts.attrs = {"long_name": long_name, "units": "1"}
    return counts.rename(name + "_count")
