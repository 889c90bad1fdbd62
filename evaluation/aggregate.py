"""Weighted averaging and mergeable per-chunk sums of pointwise scores.

A long period is evaluated chunk by chunk (e.g. a few init times at a time): each chunk is
reduced to *sums* -- ``weighted_sum = sum(w * s)``, ``weight_sum = sum(w)`` and ``count``
over the valid (non-NaN) points -- which merge by addition.  The mean is
``weighted_sum / weight_sum`` only at the end, so memory stays flat in the period and the
result does not depend on how the period was chunked.  The same functions work on numpy- and
dask-backed arrays (lazy until ``.compute()``), in one process or on a dask cluster.

NaN policy: a NaN score is excluded from every mean and its weight leaves the denominator
(weights are renormalised over the valid points); a mean over no valid point is NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.errors import EnsppError

SUM_VARS = ("weighted_sum", "weight_sum", "count")


class AggregationError(EnsppError):
    """Bad dims, weights or sums given to an aggregation; the message says which."""


def _check_dims(da: xr.DataArray, dims: Sequence[Hashable], what: str) -> list[Hashable]:
    dims = [dims] if isinstance(dims, str) else list(dims)
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise AggregationError(
            f"{what}: dims {missing} are not dims of {da.name or 'the score'} {tuple(da.dims)}"
        )
    return dims


def score_sums(
    score: xr.DataArray,
    *,
    reduce_dims: Sequence[Hashable],
    weights: xr.DataArray | None = None,
) -> xr.Dataset:
    """Reduce a pointwise score over ``reduce_dims`` into mergeable sums (lazy on dask)."""
    dims = _check_dims(score, reduce_dims, "score_sums reduce_dims")
    valid = score.notnull()
    if weights is None:
        w = valid.astype(np.float64)
    else:
        extra = [d for d in weights.dims if d not in score.dims]
        if extra:
            raise AggregationError(
                f"weights have dims {extra} that the score {tuple(score.dims)} does not have"
            )
        if weights.isnull().any():
            raise AggregationError("weights contain NaN: use 0 to exclude points")
        w = weights.astype(np.float64).where(valid, 0.0)
    ws = (score.astype(np.float64).fillna(0.0) * w).sum(dims)
    wsum = w.sum(dims)
    count = valid.sum(dims).astype(np.int64)
    out = xr.Dataset({"weighted_sum": ws, "weight_sum": wsum, "count": count})
    out.attrs.update({k: v for k, v in score.attrs.items() if isinstance(v, (str, int, float))})
    out.attrs["reduce_dims"] = " ".join(str(d) for d in dims)
    return out


def merge_sums(*parts: xr.Dataset) -> xr.Dataset:
    """Merge sums of disjoint chunks by adding them (the coordinates must agree)."""
    if not parts:
        raise AggregationError("merge_sums needs at least one set of sums")
    for i, p in enumerate(parts):
        missing = [v for v in SUM_VARS if v not in p.data_vars]
        if missing:
            raise AggregationError(f"merge_sums part {i} lacks variables {missing}")
        if p.attrs.get("reduce_dims") != parts[0].attrs.get("reduce_dims"):
            raise AggregationError(
                f"merge_sums part {i} was reduced over {p.attrs.get('reduce_dims')!r}, "
                f"part 0 over {parts[0].attrs.get('reduce_dims')!r}"
            )
    total = parts[0][list(SUM_VARS)]
    for p in parts[1:]:
        total = xr.align(total, p[list(SUM_VARS)], join="exact")[0] + p[list(SUM_VARS)]
    total.attrs = dict(parts[0].attrs)
    return total


def finalize_sums(sums: xr.Dataset) -> xr.DataArray:
    """The weighted mean from merged sums (NaN where no valid point contributed)."""
    mean = sums["weighted_sum"] / sums["weight_sum"].where(sums["weight_sum"] > 0)
    mean.attrs = dict(sums.attrs)
    return mean


def weighted_mean(
    score: xr.DataArray,
    *,
    reduce_dims: Sequence[Hashable] | None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Weighted mean over ``reduce_dims`` (``None``: no reduction, the score is returned).

    NaN scores are excluded and the weights renormalised over the valid points.
    """
    if reduce_dims is None:
        return score
    attrs = dict(score.attrs)
    out = finalize_sums(score_sums(score, reduce_dims=reduce_dims, weights=weights))
    out.attrs = attrs
    return out.rename(score.name)


def accumulate_over_chunks(
    score_fn: Callable[[slice], xr.DataArray],
    n_items: int,
    *,
    chunk_size: int,
    reduce_dims: Sequence[Hashable],
    weights: xr.DataArray | None = None,
) -> xr.Dataset:
    """Compute ``score_fn(slice)`` for consecutive slices of ``range(n_items)`` and merge sums.

    Each chunk's sums are computed (``.compute()``, with whatever dask scheduler or
    distributed client is active) before the next chunk is read, so the memory in use is one
    chunk's scores plus the small sums, whatever the length of the period.
    """
    if chunk_size < 1:
        raise AggregationError(f"chunk_size must be >= 1, got {chunk_size}")
    if n_items < 1:
        raise AggregationError(f"nothing to accumulate: n_items = {n_items}")
    total: xr.Dataset | None = None
    for start in range(0, n_items, chunk_size):
        part = score_sums(score_fn(slice(start, start + chunk_size)), reduce_dims=reduce_dims,
                          weights=weights).compute()
        total = part if total is None else merge_sums(total, part)
    assert total is not None
    return total


def sums_over(
    scores: Iterable[xr.DataArray],
    *,
    reduce_dims: Sequence[Hashable],
    weights: xr.DataArray | None = None,
) -> xr.Dataset:
    """Lazily merged sums of several score chunks (nothing computed on dask input)."""
    parts = [score_sums(s, reduce_dims=reduce_dims, weights=weights) for s in scores]
    return merge_sums(*parts)


def valid_time_positions(
    times: np.ndarray, init_times: np.ndarray, lead_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where ``valid_time = init_time + lead_time`` lies in ``times`` (an analysis' time axis).

    Returns ``(positions, index, missing)``: the sorted distinct positions in ``times`` of the
    valid times, ``index[i, l]`` the position of ``init_i + lead_l`` within ``positions``,
    and the valid times ``times`` lacks (empty when all are there; the positions are then
    meaningless).
    """
    valid = np.asarray(init_times)[:, None] + np.asarray(lead_times)[None, :]
    distinct, index = np.unique(valid, return_inverse=True)
    missing = np.setdiff1d(distinct, times)
    positions = pd.Index(times).get_indexer(distinct)
    return positions, index.reshape(valid.shape), missing


def observation_at_valid_time(
    analysis: xr.DataArray,
    init_time: xr.DataArray,
    lead_time: xr.DataArray,
    *,
    time_dim: str = "time",
) -> xr.DataArray:
    """The analysis at ``valid_time = init_time + lead_time``, with dims (init_time,
    lead_time, ...) so it aligns with a forecast.  Raises if a valid time is missing."""
    if time_dim not in analysis.dims:
        raise AggregationError(f"analysis {analysis.name or ''} has no {time_dim!r} dim: dims {tuple(analysis.dims)}")
    have = analysis[time_dim].values
    positions, index, missing = valid_time_positions(have, init_time.values, lead_time.values)
    if missing.size:
        raise AggregationError(
            f"analysis {analysis.name or ''} lacks {missing.size} valid time(s) of the forecast, "
            f"first {str(missing[0])[:19]}; it covers {str(have.min())[:19]}..{str(have.max())[:19]}"
        )
    at = xr.DataArray(positions[index], dims=(init_time.dims[0], lead_time.dims[0]),
                      coords={init_time.dims[0]: init_time.values, lead_time.dims[0]: lead_time.values})
    return analysis.isel({time_dim: at}).drop_vars(time_dim, errors="ignore")
