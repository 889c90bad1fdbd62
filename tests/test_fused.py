"""evaluation.fused: the one-pass chunk sums equal the metric functions, for both CRPS paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from enspp.evaluation import fused
from enspp.evaluation.kernels import crps_ensemble_kernel, crps_gaussian_kernel


def _chunk(rng, n_mem, *, nan=True, dtype=np.float32):
    ens = rng.normal(size=(3, 2, n_mem, 4, 7)).astype(dtype)
    obs = rng.normal(size=(4, 4, 7)).astype(dtype)
    tidx = np.array([[0, 1], [1, 2], [2, 3]])
    if nan:
        ens[0, 0, :, 1, 1] = np.nan       # no valid member: dropped
        ens[1, 1, 0, 2, 3] = np.nan       # one NaN member: scored on the others, no rank
        obs[2, 0, 0] = np.nan             # truth NaN at (1, 1) and (2, 0)
    weights = np.stack([np.ones((4, 7)), rng.random((4, 7))])
    return ens, obs, tidx, weights


def _reference(ens, obs, tidx, weights, estimator):
    """Sums of each quantity from the plain kernels and numpy (NaN points dropped)."""
    y = obs[tidx].astype(np.float64)
    x = np.moveaxis(ens.astype(np.float64), 2, -1)
    crps = crps_ensemble_kernel(x, y, estimator=estimator)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN points: nanmean warns
        mean = np.nanmean(x, -1)
        var = np.nanvar(x, -1, ddof=1) if x.shape[-1] > 1 else np.zeros_like(mean)
    ok = ~np.isnan(crps)
    err = np.where(ok, mean - y, np.nan)
    var = np.where(ok, var, np.nan)
    out = []
    for q in (crps, err, np.abs(err), err ** 2, var):
        v = ~np.isnan(q)
        w = weights[:, None, None] * v[None]
        out.append(((np.where(v, q, 0.0)[None] * w).sum((-1, -2)), w.sum((-1, -2))))
    return out, crps


@pytest.mark.parametrize("n_mem", [1, 2, 5, fused.PAIRWISE_MAX_MEMBERS + 3])
@pytest.mark.parametrize("estimator", ["fair", "standard"])
def test_ensemble_sums_equal_plain_kernels(rng, n_mem, estimator):
    ens, obs, tidx, weights = _chunk(rng, n_mem)
    cs = fused.ensemble_chunk_sums(ens, obs, tidx, weights, estimator=estimator, rank=True)
    ref, crps = _reference(ens, obs, tidx, weights, estimator)
    for j, (s, w) in enumerate(ref):
        np.testing.assert_allclose(cs.sums[j], s, rtol=1e-12, atol=1e-12, err_msg=cs.names[j])
        np.testing.assert_allclose(cs.weights[j], w, rtol=1e-12, err_msg=cs.names[j])
    assert cs.n_nan == int(np.isnan(crps).sum()) == (4 if n_mem == 1 else 3)
    np.testing.assert_allclose(cs.map_sum, np.nansum(crps, 0), rtol=1e-12)
    np.testing.assert_array_equal(cs.map_count, (~np.isnan(crps)).sum(0))
    # every point with a full ensemble and a truth is in exactly one rank bin
    full = (~np.isnan(ens).any(2)) & ~np.isnan(obs[tidx])
    np.testing.assert_allclose(cs.hist.sum(-1)[0], full.sum((0, 2, 3)))


def test_pairwise_and_sorted_paths_agree(rng, monkeypatch):
    ens, obs, tidx, weights = _chunk(rng, 9, dtype=np.float64)
    a = fused.ensemble_chunk_sums(ens, obs, tidx, weights, estimator="fair", rank=True)
    monkeypatch.setattr(fused, "PAIRWISE_MAX_MEMBERS", 0)
    b = fused.ensemble_chunk_sums(ens, obs, tidx, weights, estimator="fair", rank=True)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(a.hist, b.hist)


def test_rank_ties_are_uniform_and_chunk_independent():
    ens = np.zeros((4, 1, 3, 1, 500))        # every member ties with the truth: rank uniform 0..3
    obs = np.zeros((4, 1, 500))
    tidx = np.arange(4)[:, None]
    w = np.ones((1, 1, 500))
    one = fused.ensemble_chunk_sums(ens, obs, tidx, w, estimator="fair", rank=True, seed=7)
    counts = one.hist[0, 0]
    assert counts.sum() == 2000 and np.all(np.abs(counts - 500) < 4 * np.sqrt(2000 * 0.25 * 0.75))
    two = fused.ensemble_chunk_sums(ens[:2], obs, tidx[:2], w, estimator="fair", rank=True, seed=7)
    two = two.merge(fused.ensemble_chunk_sums(ens[2:], obs, tidx[2:], w, estimator="fair", rank=True,
                                              seed=7, init_offset=2))
    np.testing.assert_array_equal(one.hist, two.hist)
    np.testing.assert_allclose(one.sums, two.sums)


def test_gaussian_sums_and_pit(rng):
    mu = rng.normal(size=(3, 2, 4, 7))
    sigma = rng.random((3, 2, 4, 7)) + 0.5
    sigma[0, 0, 0, 0] = 0.0                    # invalid: dropped
    _, obs, tidx, weights = _chunk(rng, 2)
    cs = fused.gaussian_chunk_sums(mu, sigma, obs, tidx, weights, pit=True)
    crps = crps_gaussian_kernel(mu, sigma, obs[tidx])
    v = ~np.isnan(crps)
    np.testing.assert_allclose(cs.sums[0], (np.where(v, crps, 0)[None] * weights[:, None, None]).sum((-1, -2)))
    assert cs.n_nan == int((~v).sum()) == 3
    np.testing.assert_allclose(cs.hist.sum(-1)[0], v.sum((0, 2, 3)))


def test_merge_rejects_other_quantities(rng):
    ens, obs, tidx, weights = _chunk(rng, 3)
    a = fused.ensemble_chunk_sums(ens, obs, tidx, weights, estimator="fair", rank=False)
    b = a.with_extra("twcrps_p90", fused.point_sums(np.ones((3, 2, 4, 7)), weights))
    with pytest.raises(ValueError, match="cannot merge sums"):
        a.merge(b)
    with pytest.raises(ValueError, match="unknown CRPS estimator"):
        fused.ensemble_chunk_sums(ens, obs, tidx, weights, estimator="exact", rank=False)
