"""Fused per-chunk scoring for :func:`evaluation.evaluate.evaluate`: one pass per chunk.

A chunk of init times arrives as plain numpy arrays (each read once from its store): the
ensemble ``(init, lead, member, lat, lon)`` or Gaussian ``mu``/``sigma``
``(init, lead, lat, lon)``, and the truth at the chunk's distinct valid times ``(time, lat,
lon)`` with ``tidx[i, l]``, the position of ``init_i + lead_l`` in it (no ``(init, lead)``
copy of the truth is built).  Numba kernels compute the pointwise scores and reduce them at
once to the mergeable sums of :mod:`evaluation.aggregate` -- area-weighted sums and weights
per (quantity, region, init, lead), sums and counts over init times per grid point (the
CRPS maps) and area-weighted rank/PIT counts -- without full-size temporaries.

Quantities (:data:`QUANTITIES`): ``crps`` (ensemble: ``fair`` or ``standard`` estimator;
Gaussian: closed form), ``error`` (mean - truth), ``abs_error``, ``sq_error`` and
``variance`` (unbiased member variance, 0 for one member; sigma^2).

NaN policy (as :mod:`evaluation.kernels`): NaN members are skipped; a point whose truth is
NaN or that has no valid member is dropped from every quantity (weight 0 in the numerator
and the denominator) and counted in ``n_nan``; a point scored with only some of its members
is counted in ``n_partial``; ``variance`` also drops a point with a
single valid member out of several.  A rank needs the full ensemble (any NaN member: no
rank).  Ties of the truth with members are broken by a uniform number hashed from the
point's position in the whole period (``seed``, global init index, lead, lat, lon), so
ranks do not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy.special import ndtr

from enspp.evaluation.kernels import check_estimator, crps_gaussian_kernel, crps_sorted, sorted_valid

QUANTITIES = ("crps", "error", "abs_error", "sq_error", "variance")

#: up to this many members the CRPS spread term is summed over pairs along the contiguous
#: longitude axis (vectorised, O(M^2)); above it, members are sorted point by point
#: (O(M log M)); both give the same value (tests), the switch is only about speed
PAIRWISE_MAX_MEMBERS = 24

#: bins of the PIT histogram of distributional products
PIT_BINS = 10

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def _uniform(seed, index):  # pragma: no cover - compiled
    """Uniform in [0, 1) from (seed, index) by the splitmix64 finaliser."""
    z = np.uint64(seed) + (np.uint64(index) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, error_model="numpy")
def _row_moments_pairwise(e, o, fair, cnt, mean, var, crps, below, ties):  # pragma: no cover
    """Per point of a row (``e``: members x longitudes, float64 C-contiguous; ``o``: truth):
    valid members, mean, unbiased variance, CRPS by the pairwise formula and rank counts,
    every loop running along the contiguous longitude axis (SIMD) -- O(M^2), but faster than
    sorting for small M."""
    n_mem, nx = e.shape
    cnt[:] = 0.0
    mean[:] = 0.0
    var[:] = 0.0
    crps[:] = 0.0
    below[:] = 0.0
    ties[:] = 0.0
    pair = np.zeros(nx)
    for m in range(n_mem):
        for x in range(nx):
            v = e[m, x]
            ok = v == v
            cnt[x] += 1.0 if ok else 0.0
            mean[x] += v if ok else 0.0
            crps[x] += abs(v - o[x]) if ok else 0.0
            below[x] += 1.0 if v < o[x] else 0.0
            ties[x] += 1.0 if v == o[x] else 0.0
        em = e[m]
        for k in range(m + 1, n_mem):
            ek = e[k]
            for x in range(nx):
                d = abs(em[x] - ek[x])
                pair[x] += d if d == d else 0.0
    for x in range(nx):
        mean[x] = mean[x] / cnt[x] if cnt[x] > 0 else np.nan
    for m in range(n_mem):
        for x in range(nx):
            d = e[m, x] - mean[x]
            var[x] += d * d if d == d else 0.0
    for x in range(nx):
        n = cnt[x]
        var[x] = var[x] / (n - 1.0) if n > 1 else 0.0
        if n == 0:
            crps[x] = np.nan
        elif n == 1:
            pass
        elif fair:
            crps[x] = crps[x] / n - pair[x] / (n * (n - 1.0))
        else:
            crps[x] = crps[x] / n - pair[x] / (n * n)


@njit(cache=True, error_model="numpy")
def _row_moments_sorted(e, o, fair, buf, cnt, mean, var, crps, below, ties):  # pragma: no cover
    """The same as :func:`_row_moments_pairwise` point by point, sort-based O(M log M)."""
    n_mem, nx = e.shape
    for x in range(nx):
        n = sorted_valid(e[:, x], buf)
        cnt[x] = n
        below[x] = 0.0
        ties[x] = 0.0
        if n == 0:
            mean[x] = var[x] = crps[x] = np.nan
            continue
        crps[x] = crps_sorted(buf, n, np.float64(o[x]), fair)
        s = 0.0
        for k in range(n):
            s += buf[k]
            below[x] += 1.0 if buf[k] < o[x] else 0.0
            ties[x] += 1.0 if buf[k] == o[x] else 0.0
        mean[x] = s / n
        ss = 0.0
        for k in range(n):
            ss += (buf[k] - mean[x]) * (buf[k] - mean[x])
        var[x] = ss / (n - 1) if n > 1 else 0.0


@njit(parallel=True, cache=True, error_model="numpy")
def _ensemble_kernel(ens, obs, tidx, weights, fair, pairwise, want_rank, seed, i0,
                     qsum, wsum, map_sum, map_count, hist, n_nan, n_partial):  # pragma: no cover
    n_init, n_lead, n_mem, ny, nx = ens.shape
    n_reg = weights.shape[0]
    for row in prange(n_lead * ny):
        lead = row // ny
        y = row % ny
        buf = np.empty(max(n_mem, 1), dtype=np.float64)
        e = np.empty((n_mem, nx))  # the members of the row, float64, contiguous (SIMD)
        o = np.empty(nx)
        cnt = np.empty(nx)
        mean = np.empty(nx)
        var = np.empty(nx)
        crps = np.empty(nx)
        below = np.empty(nx)
        ties = np.empty(nx)
        acc = np.zeros((5, n_reg))
        wacc = np.zeros((5, n_reg))
        for i in range(n_init):
            for x in range(nx):
                o[x] = np.float64(obs[tidx[i, lead], y, x])
            for m in range(n_mem):
                for x in range(nx):
                    e[m, x] = ens[i, lead, m, y, x]
            if pairwise:
                _row_moments_pairwise(e, o, fair, cnt, mean, var, crps, below, ties)
            else:
                _row_moments_sorted(e, o, fair, buf, cnt, mean, var, crps, below, ties)
            acc[:] = 0.0
            wacc[:] = 0.0
            for x in range(nx):
                n = cnt[x]
                if n == 0 or np.isnan(o[x]):
                    n_nan[lead, y] += 1
                    continue
                if n < n_mem:
                    n_partial[lead, y] += 1
                c = crps[x]
                err = mean[x] - o[x]
                has_var = n > 1 or n_mem == 1
                map_sum[lead, y, x] += c
                map_count[lead, y, x] += 1
                for r in range(n_reg):
                    w = weights[r, y, x]
                    acc[0, r] += w * c
                    acc[1, r] += w * err
                    acc[2, r] += w * abs(err)
                    acc[3, r] += w * err * err
                    wacc[0, r] += w
                    if has_var:
                        acc[4, r] += w * var[x]
                        wacc[4, r] += w
                if want_rank and n == n_mem:
                    b = int(below[x])
                    if ties[x] > 0:
                        u = _uniform(seed, (((i0 + i) * n_lead + lead) * ny + y) * nx + x)
                        b += int(np.floor(u * (ties[x] + 1.0)))
                    for r in range(n_reg):
                        hist[r, lead, y, b] += weights[r, y, x]
            for r in range(n_reg):
                for q in range(5):
                    qsum[q, r, i, lead, y] = acc[q, r]
                    wsum[q, r, i, lead, y] = wacc[0, r] if q < 4 else wacc[4, r]


@njit(parallel=True, cache=True, error_model="numpy")
def _point_sums_kernel(q, weights, qsum, wsum):  # pragma: no cover - compiled
    n_init, n_lead, ny, nx = q.shape
    for row in prange(n_init * n_lead * ny):
        i = row // (n_lead * ny)
        lead = (row // ny) % n_lead
        y = row % ny
        for x in range(nx):
            v = q[i, lead, y, x]
            if np.isnan(v):
                continue
            for r in range(weights.shape[0]):
                qsum[r, i, lead, y] += weights[r, y, x] * v
                wsum[r, i, lead, y] += weights[r, y, x]


@njit(parallel=True, cache=True, error_model="numpy")
def _hist_kernel(bins, weights, hist):  # pragma: no cover - compiled
    n_init, n_lead, ny, nx = bins.shape
    for row in prange(n_lead * ny):
        lead = row // ny
        y = row % ny
        for i in range(n_init):
            for x in range(nx):
                b = bins[i, lead, y, x]
                if np.isnan(b):
                    continue
                for r in range(weights.shape[0]):
                    hist[r, lead, y, int(b)] += weights[r, y, x]


@dataclass
class ChunkSums:
    """Mergeable sums of consecutive init times (join the next chunk with :meth:`merge`)."""

    #: area-weighted sums and weights, ``(quantity, region, init, lead)``
    sums: np.ndarray
    weights: np.ndarray
    names: tuple[str, ...]
    #: sum and count of the CRPS over init times per ``(lead, lat, lon)``
    map_sum: np.ndarray
    map_count: np.ndarray
    #: area-weighted rank/PIT counts ``(region, lead, bin)``, or ``None``
    hist: np.ndarray | None
    #: points dropped by the NaN policy
    n_nan: int
    #: ensembles: points scored with fewer members than the ensemble has (NaN members skipped)
    n_partial: int = 0

    def merge(self, later: "ChunkSums") -> "ChunkSums":
        """The sums of this chunk followed by those of the ``later`` chunk."""
        if later.names != self.names:
            raise ValueError(f"cannot merge sums of {later.names} into sums of {self.names}")
        return ChunkSums(np.concatenate([self.sums, later.sums], axis=2),
                         np.concatenate([self.weights, later.weights], axis=2), self.names,
                         self.map_sum + later.map_sum, self.map_count + later.map_count,
                         None if self.hist is None else self.hist + later.hist,
                         self.n_nan + later.n_nan, self.n_partial + later.n_partial)

    def with_extra(self, name: str, sums: tuple[np.ndarray, np.ndarray]) -> "ChunkSums":
        """A copy with one more quantity (e.g. a twCRPS) from :func:`point_sums`."""
        return ChunkSums(np.concatenate([self.sums, sums[0][None]]),
                         np.concatenate([self.weights, sums[1][None]]), (*self.names, name),
                         self.map_sum, self.map_count, self.hist, self.n_nan, self.n_partial)


def point_sums(score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted sums and weights ``(region, init, lead)`` of a pointwise score
    ``(init, lead, lat, lon)`` over its non-NaN points; ``weights`` is ``(region, lat, lon)``."""
    n_init, n_lead, ny, _ = score.shape
    qsum = np.zeros((weights.shape[0], n_init, n_lead, ny))
    wsum = np.zeros_like(qsum)
    _point_sums_kernel(score, weights, qsum, wsum)
    return qsum.sum(-1), wsum.sum(-1)


def ensemble_chunk_sums(ensemble: np.ndarray, obs: np.ndarray, tidx: np.ndarray,
                        weights: np.ndarray, *, estimator: str, rank: bool, seed: int = 0,
                        init_offset: int = 0) -> ChunkSums:
    """Sums of every quantity of an ensemble ``(init, lead, member, lat, lon)`` against the
    truth ``obs`` ``(time, lat, lon)`` at ``tidx`` ``(init, lead)``, one pass over the members.

    ``rank``: also the rank histogram (``M + 1`` bins); ``init_offset`` is the index of the
    chunk's first init time in the period (for the tie-breaking hash).
    """
    check_estimator(estimator)
    n_init, n_lead, n_mem, ny, nx = ensemble.shape
    n_reg = weights.shape[0]
    qsum = np.zeros((len(QUANTITIES), n_reg, n_init, n_lead, ny))
    wsum = np.zeros_like(qsum)
    map_sum = np.zeros((n_lead, ny, nx))
    map_count = np.zeros((n_lead, ny, nx))
    hist = np.zeros((n_reg, n_lead, ny, n_mem + 1) if rank else (1, 1, 1, 1))
    n_nan = np.zeros((n_lead, ny), dtype=np.int64)
    n_partial = np.zeros((n_lead, ny), dtype=np.int64)
    _ensemble_kernel(ensemble, obs, tidx.astype(np.int64), np.ascontiguousarray(weights, dtype=np.float64),
                     estimator == "fair", n_mem <= PAIRWISE_MAX_MEMBERS, rank, seed, init_offset,
                     qsum, wsum, map_sum, map_count, hist, n_nan, n_partial)
    return ChunkSums(qsum.sum(-1), wsum.sum(-1), QUANTITIES, map_sum, map_count,
                     hist.sum(2) if rank else None, int(n_nan.sum()), int(n_partial.sum()))


def gaussian_chunk_sums(mu: np.ndarray, sigma: np.ndarray, obs: np.ndarray, tidx: np.ndarray,
                        weights: np.ndarray, *, pit: bool) -> ChunkSums:
    """Sums of every quantity of a Gaussian ``mu``, ``sigma`` ``(init, lead, lat, lon)``
    (closed-form CRPS; ``pit``: also the PIT histogram in :data:`PIT_BINS` bins)."""
    y = obs[tidx].astype(np.float64)  # (init, lead, lat, lon)
    mu = mu.astype(np.float64, copy=False)
    sigma = sigma.astype(np.float64, copy=False)
    crps = crps_gaussian_kernel(mu, sigma, y)
    err = mu - y
    ok = ~np.isnan(crps)
    err[~ok] = np.nan
    var = np.where(ok, sigma * sigma, np.nan)
    parts = [point_sums(q, weights) for q in (crps, err, np.abs(err), err * err, var)]
    hist = None
    if pit:
        with np.errstate(invalid="ignore", divide="ignore"):
            u = ndtr((y - mu) / np.where(sigma > 0, sigma, np.nan))
        bins = np.where(ok, np.clip(np.floor(u * PIT_BINS), 0, PIT_BINS - 1), np.nan)
        h = np.zeros((weights.shape[0], mu.shape[1], mu.shape[2], PIT_BINS))
        _hist_kernel(bins, np.ascontiguousarray(weights, dtype=np.float64), h)
        hist = h.sum(2)
    return ChunkSums(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), QUANTITIES,
                     np.where(ok, crps, 0.0).sum(0), ok.sum(0).astype(np.float64), hist,
                     int((~ok).sum()))


def censored_chunk_sums(mean: np.ndarray, std: np.ndarray, loc: np.ndarray, scale: np.ndarray,
                        obs: np.ndarray, tidx: np.ndarray, weights: np.ndarray, *, pit: bool,
                        seed: int = 0, init_offset: int = 0) -> ChunkSums:
    """Sums of every quantity of a zero-censored logistic product ``(init, lead, lat, lon)``:
    the closed-form CRPS of the censored distribution (``loc``/``scale`` of the latent
    logistic), errors of its ``mean`` and its variance ``std**2``.  ``pit``: the PIT histogram,
    randomised on the point mass (an observation of 0 gets a uniform draw in ``[0, F(0)]``,
    seeded by ``seed`` and the chunk's position ``init_offset``)."""
    from enspp.evaluation.kernels import crps_censored_kernel

    y = obs[tidx].astype(np.float64)
    mean = mean.astype(np.float64, copy=False)
    loc = loc.astype(np.float64, copy=False)
    scale = scale.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        crps = crps_censored_kernel(loc, np.where(scale > 0, scale, np.nan), y, 0.0, family="logistic")
    err = mean - y
    ok = ~np.isnan(crps) & ~np.isnan(err)
    crps = np.where(ok, crps, np.nan)
    err[~ok] = np.nan
    var = np.where(ok, std.astype(np.float64) ** 2, np.nan)
    parts = [point_sums(q, weights) for q in (crps, err, np.abs(err), err * err, var)]
    hist = None
    if pit:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            cdf = 1.0 / (1.0 + np.exp(-(y - loc) / scale))
            at_zero = 1.0 / (1.0 + np.exp(loc / scale))
        draw = np.random.default_rng([seed, init_offset]).uniform(size=y.shape)
        u = np.where(y <= 0.0, draw * at_zero, cdf)
        bins = np.where(ok, np.clip(np.floor(u * PIT_BINS), 0, PIT_BINS - 1), np.nan)
        h = np.zeros((weights.shape[0], y.shape[1], y.shape[2], PIT_BINS))
        _hist_kernel(bins, np.ascontiguousarray(weights, dtype=np.float64), h)
        hist = h.sum(2)
    return ChunkSums(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), QUANTITIES,
                     np.where(ok, crps, 0.0).sum(0), ok.sum(0).astype(np.float64), hist,
                     int((~ok).sum()))
