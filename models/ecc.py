"""Members and quantiles from a predictive distribution: ensemble copula coupling (ECC).

``ecc_members`` draws the quantiles of the predictive distribution at the equidistant levels
``i / (M + 1)``, ``i = 1..M`` (ECC-Q, Schefzik et al. 2013) and hands them to the output members
in the rank order of a *template* built from the raw members, so each output field keeps the
spatial (and inter-variable) structure of the raw member it came from.

Template of M members from K raw members (reproducible with ``seed``):

* ``M == K``: the raw members themselves, output member ``j`` follows raw member ``j``.
* ``M < K``: a random subset of M raw members (in increasing member order).
* ``M > K``: every raw member ``M // K`` times, plus ``M % K`` distinct random members once
  more (output members ``0..K-1`` follow raw members ``0..K-1``, the copies come after).

Ties: copies of one raw member tie everywhere; they are ordered by a random priority drawn
once per template position, the same at every point, so a copy keeps its place across the
field. Ties between *different* raw members at a point (e.g. several dry members) are broken
at random per point (the usual ECC convention for precipitation).

Distributions: ``gaussian`` takes ``(mu, sigma)``; ``censored_logistic`` takes the latent
``(loc, scale)`` and censors the quantiles at 0. numpy arrays and torch tensors are accepted
(torch inputs are processed in numpy on the CPU and returned on their device and dtype).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import logit, ndtri

from enspp.data.errors import EnsppError

DISTRIBUTIONS = ("gaussian", "censored_logistic")


class ECCError(EnsppError):
    """Inconsistent shapes, levels or options given to ECC or quantile functions."""


def _to_numpy(x: Any) -> np.ndarray:
    """A float numpy array: float32/float64 kept (so float32 products are computed in
    float32), anything else as float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x if x.dtype in (torch.float32, torch.float64) else x.double()).numpy()
    arr = np.asarray(x)
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def _like(result: np.ndarray, reference: Any) -> Any:
    if isinstance(reference, torch.Tensor):
        return torch.as_tensor(result, dtype=reference.dtype, device=reference.device)
    dtype = reference.dtype if isinstance(reference, np.ndarray) and reference.dtype.kind == "f" else np.float64
    return result.astype(dtype, copy=False)


def _ppf(levels: np.ndarray, distribution: str) -> np.ndarray:
    """Standardised quantile function of the latent distribution."""
    if distribution == "gaussian":
        return ndtri(levels)
    if distribution == "censored_logistic":
        return logit(levels)
    raise ECCError(f"unknown distribution {distribution!r}: expected one of {DISTRIBUTIONS}")


def _check_levels(levels: Sequence[float] | np.ndarray) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or np.any(~(lv > 0.0) | ~(lv < 1.0)):
        raise ECCError(f"quantile levels must be non-empty and strictly inside (0, 1), got {lv.tolist()}")
    return lv


def quantiles(
    mu: Any,
    sigma: Any,
    levels: Sequence[float] | np.ndarray,
    *,
    distribution: str = "gaussian",
    level_axis: int = 0,
) -> Any:
    """Quantiles at ``levels`` of N(mu, sigma) or of the zero-censored logistic(loc=mu,
    scale=sigma); the level axis is inserted at ``level_axis`` of the broadcast shape."""
    lv = _check_levels(levels)
    z = _ppf(lv, distribution)
    m, s = np.broadcast_arrays(_to_numpy(mu), _to_numpy(sigma))
    z = z.astype(np.result_type(m.dtype, s.dtype))
    q = m[..., None] + s[..., None] * z
    if distribution == "censored_logistic":
        q = np.maximum(q, 0.0)
    q = np.moveaxis(q, -1, level_axis if level_axis >= 0 else q.ndim + level_axis)
    return _like(q, mu)


def output_quantiles(
    out: Mapping[str, Any], levels: Sequence[float] | np.ndarray, *, distribution: str, level_axis: int = 0
) -> Any:
    """:func:`quantiles` of a model output dict (``mu``/``sigma`` or ``loc``/``scale``)."""
    a, b = _params(out, distribution)
    return quantiles(a, b, levels, distribution=distribution, level_axis=level_axis)


def _params(out: Mapping[str, Any], distribution: str) -> tuple[Any, Any]:
    keys = ("loc", "scale") if distribution == "censored_logistic" else ("mu", "sigma")
    missing = [k for k in keys if k not in out]
    if missing:
        raise ECCError(f"model output lacks {missing} for distribution {distribution!r} (has {sorted(out)})")
    return out[keys[0]], out[keys[1]]


def ecc_template(n_raw: int, n_out: int, *, rng: np.random.Generator) -> np.ndarray:
    """Indices (length ``n_out``) of the raw members each output member follows."""
    if n_raw < 1 or n_out < 1:
        raise ECCError(f"ECC needs >= 1 raw and >= 1 output member, got K={n_raw}, M={n_out}")
    if n_out == n_raw:
        return np.arange(n_raw)
    if n_out < n_raw:
        return np.sort(rng.choice(n_raw, size=n_out, replace=False))
    extra = np.sort(rng.choice(n_raw, size=n_out % n_raw, replace=False))
    return np.concatenate([np.tile(np.arange(n_raw), n_out // n_raw), extra])


def ecc_members(
    mu: Any,
    sigma: Any,
    raw_members: Any,
    *,
    n_out: int | None = None,
    member_dim: int = 1,
    seed: int | np.random.Generator = 0,
    distribution: str = "gaussian",
) -> Any:
    """``n_out`` (default K) ECC members with the member axis at ``member_dim``.

    ``mu``/``sigma`` (``loc``/``scale`` for ``censored_logistic``) have the shape of
    ``raw_members`` without its member axis. Computed in the float dtype of ``mu``/``sigma``
    (float32 stays float32). Cost: K(K-1)/2 vectorised comparisons of raw member fields plus
    one gather and one multiply-add per output value; memory about 10 bytes per output value.
    """
    raw = _to_numpy(raw_members)
    if raw.ndim < 1:
        raise ECCError("raw_members must have a member axis")
    axis = member_dim if member_dim >= 0 else raw.ndim + member_dim
    if not 0 <= axis < raw.ndim:
        raise ECCError(f"member_dim={member_dim} is out of range for raw_members with {raw.ndim} dims")
    raw = np.moveaxis(raw, axis, 0)
    m, s = _to_numpy(mu), _to_numpy(sigma)
    if m.shape != raw.shape[1:] or s.shape != raw.shape[1:]:
        raise ECCError(
            f"mu {m.shape} and sigma {s.shape} must have the shape of raw_members without the "
            f"member axis {raw.shape[1:]}"
        )
    n_raw = raw.shape[0]
    n_out = n_raw if n_out is None else int(n_out)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = ecc_template(n_raw, n_out, rng=rng)
    priority = rng.permutation(n_out)
    # tie-breakers of different raw members, per point (drawn member-last: same draws as before)
    per_point = np.moveaxis(rng.random((*raw.shape[1:], n_raw), dtype=np.float32), -1, 0)
    before, place = _raw_order(raw, per_point, idx, priority)
    z = _ppf(np.arange(1, n_out + 1) / (n_out + 1.0), distribution).astype(np.result_type(m, s))
    q = np.empty((n_out, *m.shape), dtype=z.dtype)
    for j in range(n_out):  # output j takes the quantile of its rank among the M outputs
        np.multiply(s, np.take(z, before[idx[j]] + place[j]), out=q[j])
        q[j] += m
    if distribution == "censored_logistic":
        np.maximum(q, 0.0, out=q)
    return _like(np.moveaxis(q, 0, axis), mu)


def ecc_members_many(
    mu: np.ndarray,
    sigma: np.ndarray,
    raw_members: np.ndarray,
    *,
    n_out: int,
    rngs: Sequence[np.random.Generator],
    distribution: str = "gaussian",
) -> np.ndarray:
    """:func:`ecc_members` of ``G`` small fields at once, each with its own generator:
    ``mu``/``sigma`` ``[G, ...]``, ``raw_members`` ``[G, K, ...]``; returns ``[G, n_out, ...]``,
    equal to ``ecc_members(mu[g], sigma[g], raw_members[g], n_out=n_out, member_dim=0,
    seed=rngs[g])`` for every ``g`` (the same draws, in the same order, from each generator;
    the members ordered by one sort per point as :func:`_raw_order_sorted` orders them)."""
    raw = np.asarray(raw_members)
    m, s = np.asarray(mu), np.asarray(sigma)
    n_fields, n_raw = raw.shape[:2]
    shape = raw.shape[2:]
    if m.shape != (n_fields, *shape) or s.shape != m.shape or len(rngs) != n_fields:
        raise ECCError(f"mu {m.shape}, sigma {s.shape} and {len(rngs)} generators do not match "
                       f"raw_members {raw.shape} ([G, K, ...])")
    idx = np.empty((n_fields, n_out), dtype=np.int64)
    priority = np.empty((n_fields, n_out), dtype=np.int64)
    draws = np.empty(raw.shape, dtype=np.float32)
    for g, rng in enumerate(rngs):  # as ecc_members draws them
        idx[g] = ecc_template(n_raw, n_out, rng=rng)
        priority[g] = rng.permutation(n_out)
        draws[g] = np.moveaxis(rng.random((*shape, n_raw), dtype=np.float32), -1, 0)
    flat = raw.reshape(n_fields, n_raw, -1)
    values = np.where(np.isnan(flat), np.inf, flat)
    index = np.broadcast_to(np.arange(n_raw)[None, :, None], values.shape)
    order = np.lexsort((index, draws.reshape(values.shape), values), axis=1)
    counts = np.stack([np.bincount(i, minlength=n_raw) for i in idx])  # [G, K]
    weight = np.take_along_axis(np.broadcast_to(counts[:, :, None], values.shape), order, axis=1)
    before = np.empty(values.shape, dtype=np.int64)
    np.put_along_axis(before, order, np.cumsum(weight, axis=1) - weight, axis=1)
    place = ((idx[:, None, :] == idx[:, :, None])
             & (priority[:, None, :] < priority[:, :, None])).sum(2)  # [G, M]
    rank = np.take_along_axis(before, idx[:, :, None], axis=1) + place[:, :, None]  # [G, M, P]
    z = _ppf(np.arange(1, n_out + 1) / (n_out + 1.0), distribution).astype(np.result_type(m, s))
    flat_m, flat_s = m.reshape(n_fields, 1, -1), s.reshape(n_fields, 1, -1)
    q = flat_s * z[rank] + flat_m
    if distribution == "censored_logistic":
        np.maximum(q, 0.0, out=q)
    return q.reshape(n_fields, n_out, *shape)


def output_ecc_members_many(out: Mapping[str, Any], raw_members: np.ndarray, *, n_out: int,
                            rngs: Sequence[np.random.Generator],
                            distribution: str) -> np.ndarray:
    """:func:`ecc_members_many` of a model output dict whose arrays have a leading field
    axis (``mu``/``sigma`` or ``loc``/``scale``)."""
    a, b = _params(out, distribution)
    return ecc_members_many(a, b, raw_members, n_out=n_out, rngs=rngs, distribution=distribution)


def _raw_order(raw: np.ndarray, per_point: np.ndarray, idx: np.ndarray,
               priority: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Where each output member goes in the order of the M outputs.

    Output member ``j`` follows raw member ``idx[j]``. Raw members are ordered by value
    (NaN last), ties by ``per_point`` (then by member index); the copies of one raw member
    take consecutive places in the order of ``priority`` (the same at every point). So the
    rank of output ``j`` is ``before[idx[j]] + place[j]``: ``before[k]`` ``[...]`` counts the
    outputs following raw members ordered before ``k`` at each point (one vectorised
    comparison per pair of used raw members), ``place[j]`` is ``j``'s place among the copies
    of ``idx[j]``.
    """
    n_out = len(idx)
    counts = np.bincount(idx, minlength=raw.shape[0])
    # copies of the same raw member with a lower priority, per output member
    place = ((idx[None, :] == idx[:, None]) & (priority[None, :] < priority[:, None])).sum(1)
    if raw[0].size <= SORT_POINTS:
        return _raw_order_sorted(raw, per_point, counts), place
    used = [int(k) for k in np.flatnonzero(counts)]
    values = {k: raw[k] for k in used}
    if any(np.isnan(v).any() for v in values.values()):
        values = {k: np.where(np.isnan(v), np.inf, v) for k, v in values.items()}
    dtype = np.int16 if n_out < 2**15 else np.int64
    before = {k: np.zeros(raw.shape[1:], dtype=dtype) for k in used}
    for i, b in enumerate(used):
        for a in used[:i]:  # a < b: a goes first on ties of value and per-point draw
            a_first = values[a] < values[b]
            tie = values[a] == values[b]
            if tie.any():
                a_first |= tie & (per_point[a] <= per_point[b])
            before[b] += a_first * dtype(counts[a])
            before[a] += ~a_first * dtype(counts[b])
    return before, place


#: fields of up to this many points (stations) order their raw members by one sort per
#: point instead of one vectorised comparison per pair of members (the same order: the
#: pairwise loop's Python overhead dominates on small fields, the sort's on large ones;
#: measured with 10 of 25 members, one thread: 0.46 vs 1.6 ms per call at 1 point, 1.2 vs
#: 1.7 ms at 1000 points, 3.9 vs 2.2 ms at 4096)
SORT_POINTS = 1024


def _raw_order_sorted(raw: np.ndarray, per_point: np.ndarray,
                      counts: np.ndarray) -> dict[int, np.ndarray]:
    """``before`` of :func:`_raw_order` by sorting the used raw members at every point: by
    value (NaN last), then by the per-point draw, then by member index."""
    used = np.flatnonzero(counts)
    flat = raw[used].reshape(len(used), -1)
    values = np.where(np.isnan(flat), np.inf, flat)
    draws = per_point[used].reshape(len(used), -1)
    index = np.broadcast_to(np.arange(len(used))[:, None], values.shape)
    order = np.lexsort((index, draws, values), axis=0)  # [U, P]: used members, first first
    weight = counts[used][order]
    ahead = np.cumsum(weight, axis=0) - weight  # outputs following members ordered earlier
    dtype = np.int16 if int(counts.sum()) < 2**15 else np.int64
    before = np.empty(values.shape, dtype=dtype)
    np.put_along_axis(before, order, ahead.astype(dtype), axis=0)
    return {int(k): before[i].reshape(raw.shape[1:]) for i, k in enumerate(used)}


def output_ecc_members(
    out: Mapping[str, Any],
    raw_members: Any,
    *,
    distribution: str,
    n_out: int | None = None,
    member_dim: int = 1,
    seed: int | np.random.Generator = 0,
) -> Any:
    """:func:`ecc_members` of a model output dict (``mu``/``sigma`` or ``loc``/``scale``)."""
    a, b = _params(out, distribution)
    return ecc_members(
        a, b, raw_members, n_out=n_out, member_dim=member_dim, seed=seed, distribution=distribution
    )
