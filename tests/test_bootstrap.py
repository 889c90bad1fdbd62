"""Block bootstrap of skill scores covers the truth at about the nominal rate; the
Diebold-Mariano test has about its nominal size under H0 and power under H1."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import enspp.evaluation as ev
from enspp.evaluation.bootstrap import block_indices, default_block_length, has_interval, newey_west_lag


def _ar1(rng, shape, phi):
    """AR(1) noise with unit marginal variance along the last axis."""
    e = rng.normal(size=shape)
    out = np.empty(shape)
    out[..., 0] = e[..., 0]
    for t in range(1, shape[-1]):
        out[..., t] = phi * out[..., t - 1] + np.sqrt(1 - phi**2) * e[..., t]
    return out


def test_block_indices_shapes_and_blocks(rng):
    idx = block_indices(10, block_length=3, n_resamples=5, method="moving", rng=rng)
    assert idx.shape == (5, 10) and idx.min() >= 0 and idx.max() <= 9
    assert np.all(np.diff(idx[:, :3], axis=1) == 1)  # first block is consecutive
    circ = block_indices(10, block_length=4, n_resamples=200, method="circular", rng=rng)
    assert set(np.unique(circ)) == set(range(10))
    assert default_block_length(100) == 5 and newey_west_lag(100) == 4


def test_bootstrap_coverage_near_nominal(rng):
    reps, n, truth = 200, 120, 0.2
    common = _ar1(rng, (reps, n), 0.5)
    score = 0.8 + 0.15 * (0.7 * common + 0.7 * _ar1(rng, (reps, n), 0.5))
    ref = 1.0 + 0.15 * (0.7 * common + 0.7 * _ar1(rng, (reps, n), 0.5))
    dims = ("rep", "init_time")
    out = ev.bootstrap_skill(xr.DataArray(score, dims=dims), xr.DataArray(ref, dims=dims),
                             confidence=0.9, n_resamples=400, seed=1)
    assert out["value"].dims == ("rep",)
    assert np.all(out["low"] <= out["value"]) and np.all(out["value"] <= out["high"])
    coverage = float(((out["low"] <= truth) & (truth <= out["high"])).mean())
    assert 0.8 <= coverage <= 0.97, coverage
    assert out.attrs["confidence"] == 0.9 and out.attrs["block_length"] == 5


def test_bootstrap_pairing_nan_and_attrs(rng):
    t = np.arange(30)
    ref = xr.DataArray(1.0 + 0.1 * rng.normal(size=30), dims="init_time", coords={"init_time": t})
    score = (0.5 * ref).assign_attrs(estimator="fair")
    out = ev.bootstrap_skill(score, ref, n_resamples=200, method="moving")
    # paired resampling: the ratio is exactly 0.5 in every resample
    assert out["value"].item() == pytest.approx(0.5) and out["high"].item() - out["low"].item() < 1e-12
    assert out.attrs["estimator"] == "fair"
    with_nan = score.copy()
    with_nan[3] = np.nan
    assert ev.bootstrap_skill(with_nan, ref, n_resamples=50)["value"].item() == pytest.approx(0.5)


def test_bootstrap_errors(rng):
    s = xr.DataArray(rng.random(10), dims="init_time", coords={"init_time": np.arange(10)})
    with pytest.raises(ev.BootstrapError, match="confidence"):
        ev.bootstrap_skill(s, s, confidence=90)
    with pytest.raises(ev.BootstrapError, match="has no dim"):
        ev.bootstrap_skill(s.rename(init_time="t"), s)
    with pytest.raises(ev.BootstrapError, match="not paired"):
        ev.bootstrap_skill(s, s.assign_coords(init_time=np.arange(10) + 1))
    with pytest.raises(ev.BootstrapError, match="block_length"):
        ev.bootstrap_skill(s, s, block_length=0)
    with pytest.raises(ev.BootstrapError, match="at least 2 dates"):
        ev.bootstrap_skill(s[:1], s[:1])
    with pytest.raises(ev.BootstrapError, match="unknown block bootstrap"):
        ev.bootstrap_skill(s, s, method="stationary")
    with pytest.raises(ev.BootstrapError, match="n_resamples"):
        ev.bootstrap_skill(s, s, n_resamples=0)


@pytest.mark.parametrize("n, block", [(4, 5), (5, 5), (9, 5), (12, 500), (3, 2)])
def test_fewer_than_two_blocks_give_no_interval(rng, n, block):
    """A block as long as the series makes every circular resample a rotation of it (a
    zero-width "interval"); up to two blocks the resamples barely vary: no interval then."""
    t = np.arange(n)
    ref = xr.DataArray(1.0 + 0.3 * rng.random(n), dims="init_time", coords={"init_time": t})
    score = xr.DataArray(0.7 + 0.3 * rng.random(n), dims="init_time", coords={"init_time": t})
    out = ev.bootstrap_skill(score, ref, block_length=block, n_resamples=100)
    assert not has_interval(n, block)
    assert out["value"].item() == pytest.approx(1 - score.mean().item() / ref.mean().item())
    assert np.isnan(out["low"].item()) and np.isnan(out["high"].item())
    assert out.attrs["interval"] == f"none: {n} dates (init_time) are fewer than two blocks of {block}"
    assert out.attrs["block_length"] == block  # never shrunk
    # two whole blocks: an interval of some width
    m = 2 * block if block < 100 else 10
    t = np.arange(m)
    ref = xr.DataArray(1.0 + 0.3 * rng.random(m), dims="init_time", coords={"init_time": t})
    score = xr.DataArray(0.7 + 0.3 * rng.random(m), dims="init_time", coords={"init_time": t})
    b = block if block < 100 else 5
    two = ev.bootstrap_skill(score, ref, block_length=b, n_resamples=100)
    assert has_interval(m, b) and two["low"].item() < two["value"].item() < two["high"].item()


def test_diebold_mariano_size_and_power(rng):
    reps, n = 400, 200
    dims = ("rep", "init_time")
    base = 1.0 + _ar1(rng, (reps, n), 0.6)
    d0 = 0.5 * _ar1(rng, (reps, n), 0.3)
    h0 = ev.diebold_mariano(xr.DataArray(base + d0, dims=dims), xr.DataArray(base, dims=dims))
    size = float((h0["p_value"] < 0.05).mean())
    assert 0.02 <= size <= 0.10, size
    h1 = ev.diebold_mariano(xr.DataArray(base + d0 - 0.15, dims=dims), xr.DataArray(base, dims=dims))
    power = float((h1["p_value"] < 0.05).mean())
    assert power >= 0.8, power
    assert float((h1["statistic"] < 0).mean()) > 0.95  # a scores lower: negative statistic
    assert h1.attrs["max_lag"] == newey_west_lag(n)


def test_diebold_mariano_nan_and_errors(rng):
    a = xr.DataArray(rng.random(20), dims="init_time")
    b = xr.DataArray(rng.random(20), dims="init_time")
    a_nan = a.copy()
    a_nan[5] = np.nan
    out = ev.diebold_mariano(a_nan, b)
    assert out.attrs["n_dates"] == 19 and np.isfinite(out["p_value"].item())
    with pytest.raises(ev.BootstrapError, match="at least 3"):
        ev.diebold_mariano(a[:2], b[:2])
    with pytest.raises(ev.BootstrapError, match="max_lag"):
        ev.diebold_mariano(a, b, max_lag=19)
    constant = ev.diebold_mariano(a, a)
    assert np.isnan(constant["statistic"].item())
