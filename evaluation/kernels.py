"""Pointwise numba/numpy kernels of the scores; the member axis is always the last axis.

The xarray layer (:mod:`evaluation.metrics`) moves the named member dim to the end with
``xr.apply_ufunc`` and calls these.  Every kernel accepts float32 or float64 input and
accumulates in float64.

NaN policy (the same in every ensemble kernel, and the one properscoring follows):

* a NaN observation gives a NaN score;
* NaN members are skipped: the score is that of the ensemble of the valid members
  (``M`` = number of valid members); an ensemble with no valid member gives NaN.

Ensemble CRPS, with the members sorted ``x_(1) <= ... <= x_(M)``::

    CRPS = (1/M) sum_i |x_i - y| - c * sum_i sum_j |x_i - x_j| / 2
    sum_i sum_j |x_i - x_j| = 2 * sum_k (2k - M - 1) x_(k)          (k = 1..M)

with ``c = 1/M**2`` for the ``standard`` estimator (the CRPS of the empirical distribution,
equal to ``properscoring.crps_ensemble``) and ``c = 1/(M(M-1))`` for the ``fair`` estimator
(Ferro 2014; unbiased for the CRPS of the distribution the members are drawn from).  So
``standard - fair = sum_i sum_j |x_i - x_j| / (2 M**2 (M-1))``.  With a single member the
spread term is zero for both estimators and the score is the absolute error.
"""

from __future__ import annotations

import ctypes
import math
import sys

import numba
import numpy as np
from numba import guvectorize, njit, prange
from scipy.special import ndtr

ESTIMATORS = ("standard", "fair")


def start_numba_threads() -> None:
    """Start numba's thread pool, keeping the calling thread's OpenMP thread count.

    Without a TBB install numba's parallel kernels run on its OpenMP layer, and starting that
    pool sets the calling thread's OpenMP thread count (the one torch's intra-op pool reads)
    to numba's own count (all cores).  A process told ``OMP_NUM_THREADS=1`` or
    ``torch.set_num_threads(n)`` would otherwise train with every core after its first
    evaluation, and a model trained after an evaluation would differ in its last bits from
    the same model trained alone.  The pool starts once per process; later calls do nothing.
    """
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    try:  # the process's first GNU OpenMP runtime (the one torch reads when imported later)
        gomp = ctypes.CDLL("libgomp.so.1")
        before = gomp.omp_get_max_threads()
    except (OSError, AttributeError):  # no GNU OpenMP runtime: nothing to keep
        gomp = None
    numba.get_num_threads()  # starts the pool (once)
    if gomp is not None and gomp.omp_get_max_threads() != before:
        gomp.omp_set_num_threads(before)
    if torch is not None and torch.get_num_threads() != torch_before:
        torch.set_num_threads(torch_before)


# at import, before any parallel kernel can run (and from this, the importing, thread)
start_numba_threads()

_INSERTION_MAX = 64  # below this many members insertion sort beats a general sort


@njit(cache=True)
def sorted_valid(row, buf):  # pragma: no cover - compiled
    """Copy the non-NaN values of ``row`` into ``buf`` (float64), sort them; return their number."""
    n = 0
    for i in range(row.shape[0]):
        v = np.float64(row[i])
        if not np.isnan(v):
            buf[n] = v
            n += 1
    if n <= _INSERTION_MAX:
        for i in range(1, n):
            v = buf[i]
            j = i - 1
            while j >= 0 and buf[j] > v:
                buf[j + 1] = buf[j]
                j -= 1
            buf[j + 1] = v
    else:
        buf[:n] = np.sort(buf[:n])
    return n


@njit(cache=True)
def crps_sorted(xs, n, y, fair):  # pragma: no cover - compiled
    """CRPS of the ``n`` sorted members ``xs[:n]`` (n >= 1) against ``y`` (module docstring)."""
    abs_sum = 0.0
    spread = 0.0  # sum_k (2k - n - 1) x_(k) = (1/2) sum_ij |x_i - x_j|
    for k in range(n):
        abs_sum += abs(xs[k] - y)
        spread += (2.0 * k + 1.0 - n) * xs[k]
    if n == 1:
        return abs_sum
    if fair:
        return abs_sum / n - spread / (n * (n - 1.0))
    return abs_sum / n - spread / (n * n)


def _crps_presorted_impl(xs, y, fair, out):  # pragma: no cover - compiled
    """Rows of ``xs`` sorted ascending with their NaNs last (numpy's sort order)."""
    n_rows, m_total = xs.shape
    for r in prange(n_rows):
        yy = np.float64(y[r])
        n = m_total
        while n > 0 and np.isnan(xs[r, n - 1]):
            n -= 1
        if np.isnan(yy) or n == 0:
            out[r] = np.nan
        else:
            out[r] = crps_sorted(xs[r], n, yy, fair)


_crps_presorted_serial = njit(cache=True)(_crps_presorted_impl)
_crps_presorted_parallel = njit(parallel=True, cache=True)(_crps_presorted_impl)

#: rows sorted by numpy at a time (its SIMD sort, ~5x numba's insertion sort at 50 members):
#: a block's sorted copy is 2**16 x M values
_SORT_BLOCK = 1 << 16


def check_estimator(estimator: str) -> None:
    """Raise ``ValueError`` unless ``estimator`` is ``standard`` or ``fair``."""
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown CRPS estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}"
        )


def _as_float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.float32 or a.dtype == np.float64:
        return a
    return a.astype(np.float64)


def crps_ensemble_kernel(
    members: np.ndarray, obs: np.ndarray, *, estimator: str = "fair", parallel: bool = True
) -> np.ndarray:
    """Ensemble CRPS over the last axis of ``members`` (float64 result, shape of ``obs``).

    Sort-based O(M log M): numpy's vectorised sort of blocks of rows (NaNs last), then one
    numba pass per row in float64 (2.9x faster than sorting inside the numba loop at 50
    members: ``tests/benchmarks/bench_evaluation.py``).
    ``parallel`` spreads the points over numba's threads; use ``False`` inside dask tasks,
    which are already parallel.
    """
    check_estimator(estimator)
    members = _as_float(members)
    obs = _as_float(obs)
    shape = np.broadcast_shapes(members.shape[:-1], obs.shape)
    m = members.shape[-1]
    n_points = int(np.prod(shape, dtype=np.int64))
    x = np.ascontiguousarray(np.broadcast_to(members, shape + (m,))).reshape(n_points, m)
    y = np.ascontiguousarray(np.broadcast_to(obs, shape)).reshape(n_points)
    out = np.empty(y.shape[0], dtype=np.float64)
    if y.shape[0] and m:
        run = _crps_presorted_parallel if parallel else _crps_presorted_serial
        for lo in range(0, n_points, _SORT_BLOCK):
            hi = min(lo + _SORT_BLOCK, n_points)
            run(np.sort(x[lo:hi], axis=1), y[lo:hi], estimator == "fair", out[lo:hi])
    elif y.shape[0]:
        out[:] = np.nan
    return out.reshape(shape)


def crps_ensemble_pairwise(members: np.ndarray, obs: np.ndarray, *, estimator: str = "fair") -> np.ndarray:
    """Brute-force O(M^2) ensemble CRPS (reference for tests; no NaN handling)."""
    check_estimator(estimator)
    x = np.asarray(members, dtype=np.float64)
    y = np.asarray(obs, dtype=np.float64)[..., None]
    m = x.shape[-1]
    abs_term = np.abs(x - y).mean(axis=-1)
    pair = np.abs(x[..., :, None] - x[..., None, :]).sum(axis=(-1, -2))
    if m == 1:
        return abs_term
    denom = 2.0 * m * (m - 1) if estimator == "fair" else 2.0 * m * m
    return abs_term - pair / denom


# ---------------------------------------------------------------- parametric distributions
_SQRT_PI = math.sqrt(math.pi)
_SQRT2 = math.sqrt(2.0)


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _g_gaussian(t: np.ndarray) -> np.ndarray:
    """int_{-inf}^{t} Phi(s)^2 ds = t Phi^2 + 2 phi Phi - Phi(sqrt2 t)/sqrt(pi); 0 at -inf."""
    with np.errstate(invalid="ignore"):
        cdf = ndtr(t)
        out = t * cdf * cdf + 2.0 * _phi(t) * cdf - ndtr(_SQRT2 * t) / _SQRT_PI
    return np.where(np.isneginf(t), 0.0, out)


def _g_logistic(t: np.ndarray) -> np.ndarray:
    """int_{-inf}^{t} L(s)^2 ds = softplus(t) - L(t) for the standard logistic cdf L."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.logaddexp(0.0, t) - 1.0 / (1.0 + np.exp(-t))
    return np.where(np.isneginf(t), 0.0, out)


_G = {"gaussian": _g_gaussian, "logistic": _g_logistic}


def _standardise(loc, scale, obs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``loc``, the scale (NaN where ``scale <= 0``) and ``z = (obs - loc) / scale``."""
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(scale > 0, scale, np.nan)
        return loc, s, (np.asarray(obs, dtype=np.float64) - loc) / s


def crps_censored_kernel(
    loc: np.ndarray,
    scale: np.ndarray,
    obs: np.ndarray,
    lower: np.ndarray | float,
    *,
    family: str = "gaussian",
) -> np.ndarray:
    """CRPS of a location-scale distribution left-censored at ``lower`` (point mass there).

    With ``z = (y - loc)/scale``, ``l = (lower - loc)/scale`` and ``G(t) = int_{-inf}^t F^2``::

        CRPS / scale = G(z) + G(-z) - G(l)      if z >= l
                     = G(-l) + (l - z)          if z <  l

    ``lower = -inf`` gives the uncensored CRPS; ``scale <= 0`` gives NaN.
    """
    if family not in _G:
        raise ValueError(f"unknown distribution family {family!r}: choose gaussian or logistic")
    g = _G[family]
    loc, s, z = _standardise(loc, scale, obs)
    low = np.asarray(lower, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lz = np.where(np.isneginf(low), -np.inf, (low - loc) / s)
        above = g(z) + g(-z) - g(lz)
        below = g(-lz) + (lz - z)
        out = s * np.where(z >= lz, above, below)
    return out


def crps_gaussian_kernel(mu: np.ndarray, sigma: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2): sigma (z(2Phi(z)-1) + 2phi(z) - 1/sqrt(pi))."""
    _, s, z = _standardise(mu, sigma, obs)
    with np.errstate(invalid="ignore"):
        return s * (z * (2.0 * ndtr(z) - 1.0) + 2.0 * _phi(z) - 1.0 / _SQRT_PI)


# ---------------------------------------------------------------- ranks and EFI
@guvectorize(
    ["void(float32[:], float32, float64, float64[:])", "void(float64[:], float64, float64, float64[:])"],
    "(m),(),()->()",
    nopython=True,
    cache=True,
)
def _rank_gufunc(members, obs, u, out):  # pragma: no cover - compiled
    y = np.float64(obs)
    if np.isnan(y):
        out[0] = np.nan
        return
    below = 0
    ties = 0
    for i in range(members.shape[0]):
        v = np.float64(members[i])
        if np.isnan(v):
            out[0] = np.nan
            return
        if v < y:
            below += 1
        elif v == y:
            ties += 1
    # ties broken at random (u uniform in [0, 1)): rank uniform on below..below+ties
    out[0] = below + math.floor(u * (ties + 1))


def rank_kernel(members: np.ndarray, obs: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Rank (0..M) of ``obs`` among the members, ties broken with ``uniform`` in [0, 1).

    Any NaN member or a NaN observation gives NaN (a rank needs the full ensemble).
    """
    members = _as_float(members)
    obs = _as_float(obs).astype(members.dtype)
    return _rank_gufunc(members, obs, np.asarray(uniform, dtype=np.float64))


def efi_kernel(members: np.ndarray, clim_quantiles: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Extreme Forecast Index (Lalaurette 2003) from members (last axis) and model-climate
    quantiles (last axis, at probability ``levels`` in (0, 1), increasing).

    ``EFI = (2/pi) int_0^1 (p - F_f(p)) / sqrt(p(1-p)) dp`` with ``F_f(p)`` the fraction of
    members below the climate quantile at ``p``.  ``F_f`` is taken constant on the cell of
    each level (between the midpoints to its neighbours; the end cells reach 0 and 1) and the
    integral is exact on each cell: with ``p = sin^2(theta)``,
    ``int p / sqrt(p(1-p)) dp = theta - sin(theta)cos(theta)`` and
    ``int 1 / sqrt(p(1-p)) dp = 2 theta``.  So members all above the climate's top quantile
    give exactly +1, all below its bottom quantile exactly -1.  NaN members are skipped.
    """
    x = np.asarray(members, dtype=np.float64)
    q = np.asarray(clim_quantiles, dtype=np.float64)
    p = np.asarray(levels, dtype=np.float64)
    valid = ~np.isnan(x)
    n_valid = valid.sum(axis=-1)
    xs = np.where(valid, x, np.inf)
    # fraction of members strictly below each climate quantile: [..., Q]
    below = (xs[..., None, :] < q[..., :, None]).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = below / n_valid[..., None]
    edges = np.concatenate([[0.0], 0.5 * (p[1:] + p[:-1]), [1.0]])
    theta = np.arcsin(np.sqrt(edges))
    prim = theta - np.sin(theta) * np.cos(theta)
    p_part = np.diff(prim)  # int p / sqrt(p(1-p)) over each cell
    one_part = 2.0 * np.diff(theta)  # int 1 / sqrt(p(1-p)) over each cell
    out = 2.0 / math.pi * np.sum(p_part - frac * one_part, axis=-1)
    bad = (n_valid == 0) | np.isnan(q).any(axis=-1)
    return np.where(bad, np.nan, out)
