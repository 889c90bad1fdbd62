"""Members and quantiles from a predictive distribution: ensemble copula coupling (ECC).

``ecc_members`` draws the quantiles of the predictive distribution at the equidistant levels
``i / (M + 1)``, ``i = 1..M`` (ECC-Q, Schefzik et al. 2013) and hands them to the output members
in the rank order of a *template* built from the raw members, so each output field keeps the
spatial (and inter-variable) structure of the raw member it came from.

Template of M members from K raw members (reproducible with ``seed``, a 64-bit key):

* ``M == K``: the raw members themselves, output member ``j`` follows raw member ``j``.
* ``M < K``: a random subset of M raw members (in increasing member order).
* ``M > K``: every raw member ``M // K`` times, plus ``M % K`` distinct random members once
  more (output members ``0..K-1`` follow raw members ``0..K-1``, the copies come after).

Ties: copies of one raw member tie everywhere; they are ordered by a random priority drawn
once per template position, the same at every point, so a copy keeps its place across the
field. Ties between *different* raw members at a point (e.g. several dry members) are broken
at random per point (the usual ECC convention for precipitation).

Random draws (the template's subset, the copies' priority, the per-point tie-breakers) are
counter-based: hashes of (key, stream, position) (:func:`ecc_keys`, :func:`_hash32`), not a
generator's sequence, so the draws of many fields (every init time of a station product) are
computed in one vectorised call, a field's draws do not depend on which fields are computed
with it, and the tie-breakers of a large field are computed only at the points where raw
members tie.

Distributions: ``gaussian`` takes ``(mu, sigma)``; ``censored_logistic`` takes the latent
``(loc, scale)`` and censors the quantiles at 0. numpy arrays and torch tensors are accepted
(torch inputs are processed in numpy on the CPU and returned on their device and dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


#: the draw streams of one key (:func:`_hash32`)
_TEMPLATE, _PRIORITY, _TIES = 1, 2, 3


def _mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``uint64`` values (a bijection; wraps modulo 2**64)."""
    z = np.array(z, dtype=np.uint64)
    z += np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _fmix32(h: np.ndarray) -> np.ndarray:
    """The murmur3 finaliser of ``uint32`` values, in place (a bijection)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def ecc_keys(seed: int, *parts: np.ndarray | int) -> np.ndarray:
    """The ``uint64`` draw keys of fields named by ``parts`` (integers or integer arrays,
    broadcast together, e.g. init times in ns and a lead in hours) under ``seed``."""
    key = _mix64(np.uint64(int(seed) % 2**64))
    for part in parts:
        key = _mix64(key ^ np.asarray(part).astype(np.int64).view(np.uint64))
    return np.atleast_1d(key)


def _hash32(keys: np.ndarray, stream: int, counters: np.ndarray) -> np.ndarray:
    """``uint32`` draws of ``keys`` ``[G]`` at ``counters`` (``uint32``, ``[G or 1, ...]``):
    for one key and stream, distinct counters give distinct draws (a bijection)."""
    salt = _mix64(np.asarray(keys, dtype=np.uint64) ^ np.uint64(stream))
    shape = (len(salt),) + (1,) * (np.ndim(counters) - 1)
    lo = (salt & np.uint64(0xFFFFFFFF)).astype(np.uint32).reshape(shape)
    hi = (salt >> np.uint64(32)).astype(np.uint32).reshape(shape)
    h = _fmix32(np.bitwise_xor(counters, lo, dtype=np.uint32))
    h ^= hi
    return _fmix32(h)


def _templates(keys: np.ndarray, n_raw: int, n_out: int) -> np.ndarray:
    """:func:`ecc_template` of every key: ``[G, n_out]``."""
    if n_raw < 1 or n_out < 1:
        raise ECCError(f"ECC needs >= 1 raw and >= 1 output member, got K={n_raw}, M={n_out}")
    g = len(keys)
    whole = np.broadcast_to(np.tile(np.arange(n_raw), n_out // n_raw), (g, n_raw * (n_out // n_raw)))
    n_extra = n_out if n_out < n_raw else n_out % n_raw
    if not n_extra:
        return np.ascontiguousarray(whole)
    draw = _hash32(keys, _TEMPLATE, np.arange(n_raw, dtype=np.uint32)[None])
    extra = np.sort(np.argsort(draw, axis=1)[:, :n_extra], axis=1)
    return np.concatenate([whole, extra], axis=1)


def _priorities(keys: np.ndarray, n_out: int) -> np.ndarray:
    """The copies' priority of every key: a permutation of ``n_out``, ``[G, n_out]``."""
    return np.argsort(_hash32(keys, _PRIORITY, np.arange(n_out, dtype=np.uint32)[None]), axis=1)


def _tie_draws(keys: np.ndarray, member: np.ndarray | int, points: np.ndarray,
               n_points: int) -> np.ndarray:
    """The tie-breakers of raw ``member`` at flat ``points`` of fields of ``n_points``."""
    counters = (np.asarray(member, dtype=np.int64) * n_points + points).astype(np.uint32)
    return _hash32(keys, _TIES, counters)


def ecc_template(n_raw: int, n_out: int, *, seed: int) -> np.ndarray:
    """Indices (length ``n_out``) of the raw members each output member follows, for the
    draw key ``seed`` (:func:`ecc_keys`)."""
    return _templates(np.array([int(seed) % 2**64], dtype=np.uint64), n_raw, n_out)[0]


def ecc_members(
    mu: Any,
    sigma: Any,
    raw_members: Any,
    *,
    n_out: int | None = None,
    member_dim: int = 1,
    seed: int = 0,
    distribution: str = "gaussian",
) -> Any:
    """``n_out`` (default K) ECC members with the member axis at ``member_dim``; ``seed``:
    the field's draw key (an integer, e.g. one of :func:`ecc_keys`).

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
    if isinstance(seed, np.random.Generator):
        raise ECCError("seed: a draw key (an integer, see ecc_keys), not a generator")
    key = np.array([int(seed) % 2**64], dtype=np.uint64)
    idx, priority = _templates(key, n_raw, n_out)[0], _priorities(key, n_out)[0]
    n_points = raw[0].size
    _check_counters(n_raw, n_points)

    def per_point(member: int, points: np.ndarray) -> np.ndarray:
        return _tie_draws(key, member, points, n_points)

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
    keys: np.ndarray,
    distribution: str = "gaussian",
) -> np.ndarray:
    """:func:`ecc_members` of ``G`` small fields at once, each with its own draw key:
    ``mu``/``sigma`` ``[G, ...]``, ``raw_members`` ``[G, K, ...]``, ``keys`` ``[G]``
    (:func:`ecc_keys`); returns ``[G, n_out, ...]``, equal to ``ecc_members(mu[g], sigma[g],
    raw_members[g], n_out=n_out, member_dim=0, seed=keys[g])`` for every ``g`` (the same
    draws, computed for all fields in one call; the members ordered by one sort per point as
    :func:`_raw_order_sorted` orders them)."""
    raw = np.asarray(raw_members)
    m, s = np.asarray(mu), np.asarray(sigma)
    n_fields, n_raw = raw.shape[:2]
    shape = raw.shape[2:]
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    if m.shape != (n_fields, *shape) or s.shape != m.shape or len(keys) != n_fields:
        raise ECCError(f"mu {m.shape}, sigma {s.shape} and {len(keys)} keys do not match "
                       f"raw_members {raw.shape} ([G, K, ...])")
    idx, priority = _templates(keys, n_raw, n_out), _priorities(keys, n_out)
    n_points = int(np.prod(shape, dtype=np.int64))
    _check_counters(n_raw, n_points)
    members = np.arange(n_raw)[None, :, None]  # the tie-breakers of every field: [G, K, P]
    draws = _tie_draws(keys, members, np.arange(n_points)[None, None], n_points)
    flat = raw.reshape(n_fields, n_raw, -1)
    values = np.where(np.isnan(flat), np.inf, flat)
    index = np.broadcast_to(np.arange(n_raw)[None, :, None], values.shape)
    order = np.lexsort((index, draws, values), axis=1)
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
                            keys: np.ndarray, distribution: str) -> np.ndarray:
    """:func:`ecc_members_many` of a model output dict whose arrays have a leading field
    axis (``mu``/``sigma`` or ``loc``/``scale``)."""
    a, b = _params(out, distribution)
    return ecc_members_many(a, b, raw_members, n_out=n_out, keys=keys, distribution=distribution)


def _check_counters(n_raw: int, n_points: int) -> None:
    if n_raw * n_points >= 2**32:
        raise ECCError(f"ECC of {n_raw} members x {n_points} points: more than 2**32 draws "
                       "per field")


#: per-point tie-breakers: an array ``[K, ...]`` like the raw members, or a function of a
#: raw member and flat point indices giving its draws there
PerPoint = np.ndarray | Callable[[int, np.ndarray], np.ndarray]


def _draws_at(per_point: PerPoint, member: int, points: np.ndarray) -> np.ndarray:
    if callable(per_point):
        return per_point(member, points)
    return per_point[member].reshape(-1)[points]


def _raw_order(raw: np.ndarray, per_point: PerPoint, idx: np.ndarray,
               priority: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Where each output member goes in the order of the M outputs.

    Output member ``j`` follows raw member ``idx[j]``. Raw members are ordered by value
    (NaN last), ties by ``per_point`` (then by member index; a function is asked only at
    the points where two members tie in value); the copies of one raw member
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
            tie = np.flatnonzero(values[a] == values[b])
            if tie.size:
                a_first.reshape(-1)[tie] |= (_draws_at(per_point, a, tie)
                                             <= _draws_at(per_point, b, tie))
            before[b] += a_first * dtype(counts[a])
            before[a] += ~a_first * dtype(counts[b])
    return before, place


#: fields of up to this many points (stations) order their raw members by one sort per
#: point instead of one vectorised comparison per pair of members (the same order: the
#: pairwise loop's Python overhead dominates on small fields, the sort's on large ones;
#: measured with 10 of 25 members, one thread: 0.46 vs 1.6 ms per call at 1 point, 1.2 vs
#: 1.7 ms at 1000 points, 3.9 vs 2.2 ms at 4096)
SORT_POINTS = 1024


def _raw_order_sorted(raw: np.ndarray, per_point: PerPoint,
                      counts: np.ndarray) -> dict[int, np.ndarray]:
    """``before`` of :func:`_raw_order` by sorting the used raw members at every point: by
    value (NaN last), then by the per-point draw, then by member index."""
    used = np.flatnonzero(counts)
    flat = raw[used].reshape(len(used), -1)
    values = np.where(np.isnan(flat), np.inf, flat)
    points = np.arange(flat.shape[1])
    draws = np.stack([_draws_at(per_point, int(k), points) for k in used])
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
    seed: int = 0,
) -> Any:
    """:func:`ecc_members` of a model output dict (``mu``/``sigma`` or ``loc``/``scale``)."""
    a, b = _params(out, distribution)
    return ecc_members(
        a, b, raw_members, n_out=n_out, member_dim=member_dim, seed=seed, distribution=distribution
    )
