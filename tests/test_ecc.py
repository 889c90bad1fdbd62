"""Ensemble copula coupling and quantiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from enspp.models.distributions import censored_logistic_moments
from enspp.models.ecc import (
    ECCError,
    ecc_members,
    ecc_template,
    output_ecc_members,
    output_quantiles,
    quantiles,
)


def ranks(x: np.ndarray, axis: int) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=axis, kind="stable"), axis=axis, kind="stable")


@pytest.fixture
def field(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """raw [B=4, K=5, T=2, H=6, W=7], mu/sigma [B, T, H, W]."""
    raw = rng.normal(size=(4, 5, 2, 6, 7))
    mu = rng.normal(size=(4, 2, 6, 7))
    sigma = rng.uniform(0.5, 2.0, size=(4, 2, 6, 7))
    return raw, mu, sigma


def test_ecc_keeps_raw_ranks_and_predicted_moments(field) -> None:
    raw, mu, sigma = field
    out = ecc_members(mu, sigma, raw, member_dim=1)
    assert out.shape == raw.shape
    np.testing.assert_array_equal(ranks(out, 1), ranks(raw, 1))
    np.testing.assert_allclose(out.mean(axis=1), mu, atol=1e-12)
    # the members are the quantiles at i / (K + 1), in some order
    expected = np.sort(quantiles(mu, sigma, np.arange(1, 6) / 6.0, level_axis=1), axis=1)
    np.testing.assert_allclose(np.sort(out, axis=1), expected, atol=1e-12)


def test_ecc_many_members_matches_mean_and_spread(rng: np.random.Generator) -> None:
    """M = 50 > K = 5: mean exact, spread that of the 50 equidistant quantiles (6 % below sigma)."""
    raw = rng.normal(size=(5, 40, 30))
    mu, sigma = rng.normal(size=(40, 30)), rng.uniform(0.5, 2.0, size=(40, 30))
    out = ecc_members(mu, sigma, raw, n_out=50, member_dim=0, seed=1)
    assert out.shape == (50, 40, 30)
    np.testing.assert_allclose(out.mean(axis=0), mu, atol=1e-12)
    ratio = out.std(axis=0, ddof=1) / sigma
    np.testing.assert_allclose(ratio, stats.norm.ppf(np.arange(1, 51) / 51).std(ddof=1), rtol=1e-9)
    assert np.all(np.abs(ratio - 1.0) < 0.06)
    # the first K output members follow raw members 0..K-1 and keep their rank order
    np.testing.assert_array_equal(ranks(out[:5], 0), ranks(raw, 0))
    # every output member follows its template raw member: sorted by output value, the
    # template values never decrease (copies of one member tie and may come in either order)
    idx = ecc_template(5, 50, seed=1)
    assert_follows(out, raw[idx], axis=0)


def assert_follows(out: np.ndarray, template: np.ndarray, *, axis: int) -> None:
    """Members ordered by output value have non-decreasing template values."""
    by_out = np.take_along_axis(template, np.argsort(out, axis=axis, kind="stable"), axis=axis)
    assert np.all(np.diff(by_out, axis=axis) >= 0)


def test_ecc_fewer_members_and_reproducibility(field) -> None:
    raw, mu, sigma = field
    a = ecc_members(mu, sigma, raw, n_out=3, member_dim=1, seed=5)
    b = ecc_members(mu, sigma, raw, n_out=3, member_dim=1, seed=5)
    np.testing.assert_array_equal(a, b)
    idx = ecc_template(5, 3, seed=5)
    np.testing.assert_array_equal(ranks(a, 1), ranks(raw[:, idx], 1))
    c = ecc_members(mu, sigma, raw, n_out=12, member_dim=1, seed=5)
    d = ecc_members(mu, sigma, raw, n_out=12, member_dim=1, seed=6)
    assert c.shape == (4, 12, 2, 6, 7) and not np.array_equal(c, d)


def test_ecc_template() -> None:
    np.testing.assert_array_equal(ecc_template(4, 4, seed=0), np.arange(4))
    t = ecc_template(4, 10, seed=0)
    np.testing.assert_array_equal(t[:8], np.tile(np.arange(4), 2))
    assert len(set(t[8:])) == 2 and np.all(np.diff(t[8:]) > 0)
    sub = ecc_template(10, 4, seed=0)
    assert len(set(sub)) == 4 and np.all(np.diff(sub) > 0)
    with pytest.raises(ECCError, match="K=0, M=3"):
        ecc_template(0, 3, seed=0)


def test_ecc_draws_are_uniform_and_independent_of_the_other_fields() -> None:
    """The counter-based draws: each subset of the template equally likely, each priority
    a permutation, each key's draws its own whatever keys are drawn with it."""
    from enspp.models.ecc import _priorities, _templates, ecc_keys

    keys = ecc_keys(0, np.arange(20000))
    subsets = _templates(keys, 5, 2)  # 10 subsets of 2 of 5 members
    _, counts = np.unique(subsets[:, 0] * 5 + subsets[:, 1], return_counts=True)
    assert len(counts) == 10
    expected = len(keys) / 10
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < stats.chi2.ppf(0.999, df=9)
    pri = _priorities(keys[:100], 7)
    assert all(sorted(p) == list(range(7)) for p in pri)
    np.testing.assert_array_equal(_templates(keys[37:38], 5, 2), subsets[37:38])
    np.testing.assert_array_equal(_priorities(keys[5:6], 7), pri[5:6])
    assert len(set(ecc_keys(3, np.arange(1000)).tolist())) == 1000
    assert not np.array_equal(ecc_keys(3, np.arange(10)), ecc_keys(4, np.arange(10)))
    np.testing.assert_array_equal(ecc_keys(3, np.arange(10), 24)[4], ecc_keys(3, 4, 24)[0])
    with pytest.raises(ECCError, match="not a generator"):
        ecc_members(np.zeros(3), np.ones(3), np.zeros((2, 3)), member_dim=0,
                    seed=np.random.default_rng(0))


def test_ecc_censored_precipitation(rng: np.random.Generator) -> None:
    """Dry raw members tie: ties are broken at random per point, quantiles censored at 0."""
    raw = np.zeros((6, 5000))
    raw[:, :2500] = rng.gamma(1.0, 2.0, size=(6, 2500))
    loc, scale = np.full(5000, 0.5), np.full(5000, 1.0)
    out = ecc_members(loc, scale, raw, member_dim=0, n_out=200, distribution="censored_logistic", seed=2)
    assert out.min() == 0.0
    mean, std = censored_logistic_moments(torch.tensor(0.5), torch.tensor(1.0))
    assert abs(out.mean(axis=0).mean() - mean.item()) < 0.02
    assert abs(out.std(axis=0).mean() - std.item()) < 0.05
    # dry points: which member gets the largest quantile varies from point to point
    wettest = np.argmax(out[:6, 2500:], axis=0)
    assert len(np.unique(wettest)) == 6
    # wet points: output members follow the raw ranks (censored quantiles may tie at 0)
    by_raw = np.take_along_axis(out[:6, :2500], np.argsort(raw[:, :2500], axis=0), axis=0)
    assert np.all(np.diff(by_raw, axis=0) >= 0)


def test_ecc_torch_round_trip(field) -> None:
    raw, mu, sigma = field
    t = [torch.as_tensor(a, dtype=torch.float32) for a in field]
    out = ecc_members(t[1], t[2], t[0], member_dim=1, n_out=7, seed=3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (4, 7, 2, 6, 7)
    ref = ecc_members(mu.astype(np.float32), sigma.astype(np.float32), raw.astype(np.float32), member_dim=1, n_out=7, seed=3)
    assert ref.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    via_dict = output_ecc_members({"mu": t[1], "sigma": t[2]}, t[0], distribution="gaussian", n_out=7, seed=3)
    torch.testing.assert_close(via_dict, out)


def test_quantiles_match_scipy(rng: np.random.Generator) -> None:
    mu, sigma = rng.normal(size=(3, 4)), rng.uniform(0.5, 2, size=(3, 4))
    levels = [0.05, 0.5, 0.9]
    q = quantiles(mu, sigma, levels, level_axis=-1)
    assert q.shape == (3, 4, 3)
    np.testing.assert_allclose(q, stats.norm.ppf(levels, loc=mu[..., None], scale=sigma[..., None]))
    qc = quantiles(mu, sigma, levels, distribution="censored_logistic")
    assert qc.shape == (3, 3, 4)
    np.testing.assert_allclose(qc, np.maximum(0, stats.logistic.ppf(np.array(levels)[:, None, None], loc=mu, scale=sigma)))
    out = {"loc": torch.tensor(mu), "scale": torch.tensor(sigma)}
    qt = output_quantiles(out, levels, distribution="censored_logistic")
    assert isinstance(qt, torch.Tensor)
    np.testing.assert_allclose(qt.numpy(), qc)


def test_ecc_and_quantile_errors(field) -> None:
    raw, mu, sigma = field
    with pytest.raises(ECCError, match="strictly inside \\(0, 1\\)"):
        quantiles(mu, sigma, [0.0, 0.5])
    with pytest.raises(ECCError, match="strictly inside"):
        quantiles(mu, sigma, [])
    with pytest.raises(ECCError, match="unknown distribution 'gamma'"):
        quantiles(mu, sigma, [0.5], distribution="gamma")
    with pytest.raises(ECCError, match="must have the shape of raw_members without the member axis"):
        ecc_members(mu, sigma, raw, member_dim=0)
    with pytest.raises(ECCError, match="member_dim=7 is out of range"):
        ecc_members(mu, sigma, raw, member_dim=7)
    with pytest.raises(ECCError, match="must have a member axis"):
        ecc_members(0.0, 1.0, np.float64(1.0))
    with pytest.raises(ECCError, match="K=5, M=0"):
        ecc_members(mu, sigma, raw, n_out=0)
    with pytest.raises(ECCError, match="lacks \\['loc', 'scale'\\]"):
        output_quantiles({"mu": mu, "sigma": sigma}, [0.5], distribution="censored_logistic")


@pytest.mark.parametrize("n_out", [3, 5, 7, 12])
def test_small_fields_sort_the_members_as_the_pairwise_order_does(rng, monkeypatch, n_out):
    """Small fields (stations) order the raw members by one sort per point; the members are
    the ones the pairwise comparisons give, with ties of value, NaN and repeated members."""
    import enspp.models.ecc as E

    raw = rng.normal(size=(5, 3, 40)).round(1)  # [K, T, points]: many ties of value
    raw[1, 0, :5] = raw[3, 0, :5]
    raw[2, 1, 10:14] = np.nan
    raw[0, 2, 20:] = raw[4, 2, 20:] = np.nan
    mu, sigma = rng.normal(size=(3, 40)), rng.uniform(0.5, 2.0, size=(3, 40))
    got = {}
    for name, points in (("pairwise", 0), ("sorted", 10**9)):
        monkeypatch.setattr(E, "SORT_POINTS", points)
        got[name] = ecc_members(mu, sigma, raw, n_out=n_out, member_dim=0, seed=3)
    np.testing.assert_array_equal(got["sorted"], got["pairwise"])
    # the ranks themselves: before + place of every output member, both ways
    per_point = rng.random(raw.shape, dtype=np.float32)
    idx = ecc_template(5, n_out, seed=1)
    priority = np.random.default_rng(2).permutation(n_out)
    monkeypatch.setattr(E, "SORT_POINTS", 0)
    before_pairwise, place = E._raw_order(raw, per_point, idx, priority)
    monkeypatch.setattr(E, "SORT_POINTS", 10**9)
    before_sorted, place_sorted = E._raw_order(raw, per_point, idx, priority)
    np.testing.assert_array_equal(place_sorted, place)
    assert before_sorted.keys() == before_pairwise.keys()
    for k in before_pairwise:
        np.testing.assert_array_equal(before_sorted[k], before_pairwise[k])
        assert before_sorted[k].dtype == before_pairwise[k].dtype


@pytest.mark.parametrize("distribution", ["gaussian", "censored_logistic"])
@pytest.mark.parametrize("n_out", [3, 5, 12])
def test_many_small_fields_at_once_are_each_fields_members(rng, distribution, n_out):
    """ecc_members_many gives, bit for bit, what ecc_members gives field by field with the
    same keys (ties of value, NaN, fewer and more outputs than raw members), on either of
    ecc_members' orderings (one sort per point, or pairwise with tie-breakers drawn only
    where members tie)."""
    from enspp.models.ecc import ecc_members_many

    raw = rng.normal(size=(6, 5, 2, 3, 1)).round(1).astype(np.float32)  # [G, K, T, S, 1]
    raw[1, :, 0] = raw[1, 2, 0]  # every member tied
    raw[2, 3, 1, 0] = np.nan
    mu = rng.normal(size=(6, 2, 3, 1)).astype(np.float32)
    sigma = rng.uniform(0.5, 2.0, size=(6, 2, 3, 1)).astype(np.float32)
    import enspp.models.ecc as E
    from enspp.models.ecc import ecc_keys

    keys = ecc_keys(7, np.arange(6))
    many = ecc_members_many(mu, sigma, raw, n_out=n_out, distribution=distribution, keys=keys)
    for points in (0, 10**9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(E, "SORT_POINTS", points)
            for g in range(6):
                one = ecc_members(mu[g], sigma[g], raw[g], n_out=n_out, member_dim=0,
                                  seed=int(keys[g]), distribution=distribution)
                assert one.dtype == many.dtype
                np.testing.assert_array_equal(many[g], one)
    # a field's members do not depend on the fields computed with it
    np.testing.assert_array_equal(
        ecc_members_many(mu[2:4], sigma[2:4], raw[2:4], n_out=n_out, distribution=distribution,
                         keys=keys[2:4]), many[2:4])
    with pytest.raises(ECCError, match="do not match"):
        ecc_members_many(mu, sigma, raw, n_out=n_out, keys=keys[:1])
