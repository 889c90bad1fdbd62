"""CRPS kernels against properscoring and brute force; tw-CRPS against an integral of
threshold-weighted Brier scores; EFI/EECRPS, diagnostics, skill scores and the registry."""

from __future__ import annotations

import numpy as np
import properscoring as ps
import pytest
import xarray as xr
from scipy import integrate, stats

import enspp.evaluation as ev
from enspp.evaluation import kernels

DIMS = ("point", "member")


def _ens(rng, n, m, dtype=np.float64):
    x = rng.normal(size=(n, m)).astype(dtype)
    y = rng.normal(size=n).astype(dtype)
    return xr.DataArray(x, dims=DIMS), xr.DataArray(y, dims="point")


@pytest.mark.parametrize("m", [1, 2, 3, 5, 50])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crps_standard_equals_properscoring_and_pairwise(rng, m, dtype):
    f, o = _ens(rng, 400, m, dtype)
    ours = ev.crps_ensemble(f, o, estimator="standard")
    assert ours.dtype == np.float64 and ours.attrs["estimator"] == "standard"
    ref = ps.crps_ensemble(o.values, f.values)
    np.testing.assert_allclose(ours.values, ref, rtol=1e-12, atol=1e-12)
    brute = kernels.crps_ensemble_pairwise(f.values, o.values, estimator="standard")
    np.testing.assert_allclose(ours.values, brute, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 70])
def test_crps_fair_equals_pairwise(rng, m):
    f, o = _ens(rng, 300, m, np.float32)
    ours = ev.crps_ensemble(f, o, estimator="fair").values
    brute = kernels.crps_ensemble_pairwise(f.values, o.values, estimator="fair")
    np.testing.assert_allclose(ours, brute, rtol=1e-10, atol=1e-12)


def test_single_member_is_absolute_error(rng):
    f, o = _ens(rng, 50, 1)
    for est in ("fair", "standard"):
        np.testing.assert_allclose(ev.crps_ensemble(f, o, estimator=est).values,
                                   np.abs(f.values[:, 0] - o.values), rtol=1e-14)


def test_fair_below_standard_by_known_amount(rng):
    m = 7
    f, o = _ens(rng, 200, m)
    std = ev.crps_ensemble(f, o, estimator="standard").values
    fair = ev.crps_ensemble(f, o, estimator="fair").values
    x = f.values
    pair = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
    np.testing.assert_allclose(std - fair, pair / (2 * m * m * (m - 1)), rtol=1e-10)
    assert np.all(fair < std)


def test_fair_is_unbiased_for_the_distribution_crps(rng):
    # members and obs from N(0,1): E[fair CRPS] = CRPS(N(0,1), y) averaged = 1/sqrt(pi)
    f, o = _ens(rng, 40000, 4)
    fair = ev.crps_ensemble(f, o, estimator="fair").mean().item()
    std = ev.crps_ensemble(f, o, estimator="standard").mean().item()
    truth = 1 / np.sqrt(np.pi)
    assert abs(fair - truth) < 0.01 and std - truth > 0.05


def test_nan_policy(rng):
    f, o = _ens(rng, 6, 5)
    x = f.values.copy()
    x[1, 2] = np.nan
    x[2, :] = np.nan
    y = o.values.copy()
    y[3] = np.nan
    out = ev.crps_ensemble(xr.DataArray(x, dims=DIMS), xr.DataArray(y, dims="point"),
                           estimator="standard").values
    np.testing.assert_allclose(out[1], ps.crps_ensemble(y[1], np.delete(x[1], 2)), rtol=1e-12)
    assert np.isnan(out[2]) and np.isnan(out[3]) and np.isfinite(out[[0, 4, 5]]).all()
    mean = ev.crps_ensemble(xr.DataArray(x, dims=DIMS), xr.DataArray(y, dims="point"),
                            estimator="standard", reduce_dims=["point"]).item()
    assert mean == pytest.approx(np.nanmean(out))


def test_dask_equals_numpy_and_stays_lazy(rng):
    x = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    y = rng.normal(size=(3, 4, 6))
    f = xr.DataArray(x, dims=("init_time", "member", "latitude", "longitude"))
    o = xr.DataArray(y, dims=("init_time", "latitude", "longitude"))
    eager = ev.crps_ensemble(f, o, reduce_dims=["init_time"])
    lazy = ev.crps_ensemble(f.chunk({"init_time": 1, "member": 2}), o.chunk({"init_time": 1}),
                            reduce_dims=["init_time"])
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, eager.values, rtol=1e-14)


def test_weights_and_attrs(rng):
    f, o = _ens(rng, 10, 3)
    o.attrs["units"] = "K"
    w = xr.DataArray(np.r_[np.zeros(5), np.ones(5)], dims="point")
    s = ev.crps_ensemble(f, o, reduce_dims=["point"], weights=w)
    pointwise = ev.crps_ensemble(f, o).values
    assert s.item() == pytest.approx(pointwise[5:].mean())
    assert s.attrs["units"] == "K" and "fair" in s.attrs["long_name"]


def test_crps_ensemble_errors(rng):
    f, o = _ens(rng, 4, 3)
    with pytest.raises(ValueError, match="unknown CRPS estimator"):
        ev.crps_ensemble(f, o, estimator="biased")
    with pytest.raises(ev.MetricInputError, match="no member dim"):
        ev.crps_ensemble(f.rename(member="number"), o)
    with pytest.raises(ev.MetricInputError, match="has the member dim"):
        ev.crps_ensemble(f, f)
    shifted = o.assign_coords(point=np.arange(4) + 1)
    with pytest.raises(ev.MetricInputError, match="not aligned"):
        ev.crps_ensemble(f.assign_coords(point=np.arange(4)), shifted)
    with pytest.raises(ev.AggregationError, match="not dims"):
        ev.crps_ensemble(f, o, reduce_dims=["latitude"])


def test_kernel_edge_cases():
    assert kernels.crps_ensemble_kernel(np.zeros((0, 3)), np.zeros(0)).shape == (0,)
    assert np.isnan(kernels.crps_ensemble_kernel(np.zeros((2, 0)), np.zeros(2))).all()
    ints = kernels.crps_ensemble_kernel(np.array([[1, 2, 3]]), np.array([2]), estimator="standard")
    assert ints[0] == pytest.approx(ps.crps_ensemble(2.0, [1.0, 2.0, 3.0]))
    mixed = kernels.crps_ensemble_kernel(np.ones((2, 3), np.float32), np.zeros(2), estimator="fair")
    np.testing.assert_allclose(mixed, 1.0)



@pytest.mark.parametrize("parallel", [True, False])
def test_kernel_across_sort_blocks_with_nan_members_and_observations(rng, parallel):
    """More rows than one sort block (numpy sorts blocks of rows, NaNs last): every row
    equals the brute-force CRPS of its valid members; NaN observations, and rows without a
    valid member, give NaN."""
    n, m = kernels._SORT_BLOCK + 123, 9
    x = rng.normal(size=(n, m)).astype(np.float32)
    y = rng.normal(size=n)
    x[rng.random((n, m)) < 0.1] = np.nan
    x[5] = np.nan
    y[7] = np.nan
    for est in ("fair", "standard"):
        ours = kernels.crps_ensemble_kernel(x, y, estimator=est, parallel=parallel)
        ref = np.full(n, np.nan)
        for valid in range(1, m + 1):  # rows grouped by their number of valid members
            rows = np.flatnonzero((np.isfinite(x).sum(axis=1) == valid) & np.isfinite(y))
            xs = np.sort(x[rows], axis=1)[:, :valid]  # NaNs sort last
            ref[rows] = kernels.crps_ensemble_pairwise(xs, y[rows], estimator=est)
        assert np.isnan(ours[5]) and np.isnan(ours[7])
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)

# ----------------------------------------------------------------- parametric CRPS
def test_crps_gaussian_equals_properscoring(rng):
    mu, sig, y = rng.normal(size=100), rng.uniform(0.2, 3, 100), rng.normal(size=100)
    da = lambda a: xr.DataArray(a.astype(np.float32), dims="p")  # noqa: E731
    ours = ev.crps_gaussian(da(mu), da(sig), da(y))
    ref = ps.crps_gaussian(y.astype(np.float32), mu.astype(np.float32), sig.astype(np.float32))
    np.testing.assert_allclose(ours.values, ref, rtol=1e-6)
    assert ours.attrs["estimator"] == "gaussian"
    assert np.isnan(ev.crps_gaussian(da(mu[:2]), da(np.array([0.0, -1.0])), da(y[:2])).values).all()


def _crps_numeric(cdf, y, lo=-40.0, hi=40.0):
    left = integrate.quad(lambda z: cdf(z) ** 2, lo, y, limit=200)[0]
    right = integrate.quad(lambda z: (1 - cdf(z)) ** 2, y, hi, limit=200)[0]
    return left + right


@pytest.mark.parametrize("family", ["gaussian", "logistic"])
@pytest.mark.parametrize("y", [0.0, 0.3, 2.5, -0.5])
def test_censored_crps_against_integral(family, y):
    loc, scale, lower = 0.4, 1.3, 0.0
    dist = stats.norm if family == "gaussian" else stats.logistic
    cdf = lambda z: 0.0 if z < lower else dist.cdf(z, loc, scale)  # noqa: E731
    num = _crps_numeric(cdf, y)
    ours = ev.crps_censored(xr.DataArray(loc), xr.DataArray(scale), xr.DataArray(y),
                            family=family, lower=lower).item()
    assert ours == pytest.approx(num, rel=1e-6, abs=1e-8)


def test_censored_without_bound_is_uncensored(rng):
    mu, sig, y = rng.normal(size=20), rng.uniform(0.5, 2, 20), rng.normal(size=20)
    g = kernels.crps_censored_kernel(mu, sig, y, -np.inf, family="gaussian")
    np.testing.assert_allclose(g, ps.crps_gaussian(y, mu, sig), rtol=1e-12)
    lg = kernels.crps_censored_kernel(mu, sig, y, -np.inf, family="logistic")
    z = (y - mu) / sig
    np.testing.assert_allclose(lg, sig * (z - 2 * np.log(stats.logistic.cdf(z)) - 1), rtol=1e-10)
    with pytest.raises(ValueError, match="unknown distribution family"):
        kernels.crps_censored_kernel(mu, sig, y, 0.0, family="gamma")
    with pytest.raises(ev.MetricInputError, match="unknown censored family"):
        ev.crps_censored(xr.DataArray(mu), xr.DataArray(sig), xr.DataArray(y), family="gamma")


# ----------------------------------------------------------------- threshold-weighted CRPS
def _tw_brier_integral(members, y, t, tail):
    """int w(z) (F_ens(z) - 1{y <= z})^2 dz on a fine grid (w = 1{z>t} or 1{z<t})."""
    z = np.linspace(-8, 8, 160001)
    f = (members[:, None] <= z[None, :]).mean(0)
    bs = (f - (y <= z)) ** 2
    w = z > t if tail == "upper" else z < t
    return np.trapezoid(bs * w, z)


@pytest.mark.parametrize("tail", ["upper", "lower"])
def test_twcrps_against_integral_of_threshold_weighted_brier(rng, tail):
    f, o = _ens(rng, 6, 5)
    thr = xr.DataArray(rng.normal(scale=0.7, size=6), dims="point")  # a threshold field
    ours = ev.twcrps(f, o, threshold=thr, tail=tail, estimator="standard").values
    num = [_tw_brier_integral(f.values[i], o.values[i], thr.values[i], tail) for i in range(6)]
    np.testing.assert_allclose(ours, num, atol=2e-4)


def test_twcrps_limits_and_fair(rng):
    f, o = _ens(rng, 50, 5)
    full = ev.crps_ensemble(f, o, estimator="fair").values
    np.testing.assert_allclose(ev.twcrps(f, o, threshold=-1e9).values, full, rtol=1e-10)
    np.testing.assert_allclose(ev.twcrps(f, o, threshold=1e9).values, 0.0, atol=1e-6)
    s = ev.twcrps(f, o, threshold=0.5, tail="upper", reduce_dims=["point"])
    assert s.attrs["tail"] == "upper" and s.attrs["estimator"] == "fair" and s.attrs["threshold"] == 0.5


@pytest.mark.parametrize("tail", ["upper", "lower"])
def test_twcrps_gaussian_against_integral(tail):
    mu, sig, t = 0.3, 1.2, 0.8
    for y in (-1.0, 0.5, 2.0):
        w = (lambda z: z > t) if tail == "upper" else (lambda z: z < t)
        lo, hi = (t, 40.0) if tail == "upper" else (-40.0, t)
        num = integrate.quad(lambda z, w=w, y=y: w(z) * (stats.norm.cdf(z, mu, sig) - (y <= z)) ** 2,
                             lo, hi, points=[y], limit=200)[0]
        ours = ev.twcrps_gaussian(xr.DataArray(mu), xr.DataArray(sig), xr.DataArray(y),
                                  threshold=t, tail=tail).item()
        assert ours == pytest.approx(num, rel=1e-6, abs=1e-9)


def test_twcrps_errors(rng):
    f, o = _ens(rng, 4, 3)
    with pytest.raises(ev.MetricInputError, match="unknown tail"):
        ev.twcrps(f, o, threshold=0.0, tail="both")
    with pytest.raises(ev.MetricInputError, match="unknown tail"):
        ev.twcrps_gaussian(o, o * 0 + 1, o, threshold=0.0, tail="middle")
    with pytest.raises(ev.MetricInputError, match="one value per point"):
        ev.twcrps(f, o, threshold=f)


def test_climatological_quantile(rng):
    a = xr.DataArray(rng.normal(size=(200, 3)), dims=("time", "station"), attrs={"units": "K"})
    q90 = ev.climatological_quantile(a, 0.9)
    assert q90.dims == ("station",) and q90.attrs["units"] == "K"
    np.testing.assert_allclose(q90.values, np.quantile(a.values, 0.9, axis=0))
    qs = ev.climatological_quantile(a.chunk({"time": 50}), [0.1, 0.9])
    assert qs.dims[0] == "quantile" and qs.sizes["quantile"] == 2
    with pytest.raises(ev.MetricInputError, match="no dims"):
        ev.climatological_quantile(a, 0.9, dim="init_time")
    with pytest.raises(ev.MetricInputError, match=r"lie in \(0, 1\)"):
        ev.climatological_quantile(a, 90)


# ----------------------------------------------------------------- EFI / EECRPS
_LEVELS = np.linspace(0.01, 0.99, 99)


def _climate(levels=_LEVELS):
    return xr.DataArray(stats.norm.ppf(levels), dims="quantile", coords={"quantile": levels})


def test_efi_extremes_and_neutral(rng):
    clim = _climate()
    hot = xr.DataArray(np.full((1, 10), 5.0), dims=DIMS)
    cold = xr.DataArray(np.full((1, 10), -5.0), dims=DIMS)
    neutral = xr.DataArray(stats.norm.ppf((np.arange(2000) + 0.5) / 2000)[None, :], dims=DIMS)
    assert ev.efi(hot, clim).item() == pytest.approx(1.0, abs=0.01)
    assert ev.efi(cold, clim).item() == pytest.approx(-1.0, abs=0.01)
    assert abs(ev.efi(neutral, clim).item()) < 0.01
    shifted = xr.DataArray(rng.normal(1.0, 1.0, size=(1, 500)), dims=DIMS)
    assert 0.3 < ev.efi(shifted, clim).item() < 0.9


def test_eecrps_is_abs_efi_times_crps(rng):
    f, o = _ens(rng, 30, 8)
    clim = _climate(np.linspace(0.05, 0.95, 19))
    e = ev.efi(f, clim)
    expected = np.abs(e.values) * ev.crps_ensemble(f, o).values
    out = ev.eecrps(f, o, clim)
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)
    assert "ENS-10" in out.attrs["reference"] and out.attrs["estimator"] == "fair"


def test_efi_errors(rng):
    f, _ = _ens(rng, 3, 4)
    with pytest.raises(ev.MetricInputError, match="no 'quantile' dim"):
        ev.efi(f, xr.DataArray(np.zeros(3), dims="q"))
    with pytest.raises(ev.MetricInputError, match="no member dim"):
        ev.efi(f.rename(member="m"), _climate())
    bad = xr.DataArray([0.0, 1.0], dims="quantile", coords={"quantile": [0.5, 0.2]})
    with pytest.raises(ev.MetricInputError, match="increase strictly"):
        ev.efi(f, bad)


# ----------------------------------------------------------------- diagnostics
def test_mean_errors_against_numpy(rng):
    f, o = _ens(rng, 100, 5)
    mean = f.values.mean(1)
    r = dict(reduce_dims=["point"])
    assert ev.ensemble_mean_error(f, o, kind="bias", **r).item() == pytest.approx((mean - o.values).mean())
    assert ev.ensemble_mean_error(f, o, kind="mae", **r).item() == pytest.approx(np.abs(mean - o.values).mean())
    assert ev.ensemble_mean_error(f, o, kind="rmse", **r).item() == pytest.approx(
        np.sqrt(((mean - o.values) ** 2).mean()))
    det = ev.ensemble_mean_error(f.mean("member"), o, kind="mae", **r).item()
    assert det == pytest.approx(np.abs(mean - o.values).mean())
    with pytest.raises(ev.MetricInputError, match="unknown ensemble-mean error"):
        ev.ensemble_mean_error(f, o, kind="mse")
    with pytest.raises(ev.MetricInputError, match="give reduce_dims"):
        ev.ensemble_mean_error(f, o, kind="rmse")


def test_calibrated_ensemble_diagnostics(rng):
    # obs and members exchangeable: spread/skill ~ 1, flat rank histogram
    n, m = 20000, 6
    centre = rng.normal(size=n)
    x = centre[:, None] + rng.normal(size=(n, m))
    y = centre + rng.normal(size=n)
    f, o = xr.DataArray(x, dims=DIMS), xr.DataArray(y, dims="point")
    ssr = ev.spread_skill_ratio(f, o, reduce_dims=["point"]).item()
    assert ssr == pytest.approx(1.0, abs=0.03)
    hist = ev.rank_histogram(f, o, reduce_dims=["point"])
    assert hist.sum().item() == n and hist.sizes["rank"] == m + 1
    assert np.all(np.abs(hist.values / n - 1 / (m + 1)) < 0.015)
    under = ev.spread_skill_ratio(f * 0.5 + 0.5 * centre[:, None], o, reduce_dims=["point"]).item()
    assert under < 0.8


def test_rank_histogram_ties_and_nan():
    x = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0], [np.nan, 1.0, 2.0]])
    y = np.array([1.0, 5.0, 0.0])
    f, o = xr.DataArray(x, dims=DIMS), xr.DataArray(y, dims="point")
    hist = ev.rank_histogram(f, o, reduce_dims=["point"], seed=3)
    assert hist.sum().item() == 2 and hist.sel(rank=3).item() >= 1
    counts = sum(ev.rank_histogram(f[:1], o[:1], reduce_dims=["point"], seed=s).values for s in range(400))
    assert np.all(counts > 60)  # a full tie spreads over all 4 ranks


def test_pit_histogram(rng):
    y = rng.normal(size=5000)
    mu = xr.DataArray(np.zeros(5000), dims="p")
    h = ev.pit_histogram(mu, mu + 1, xr.DataArray(y, dims="p"), n_bins=5, reduce_dims=["p"])
    assert h.sum().item() == 5000 and np.all(np.abs(h.values - 1000) < 120)
    np.testing.assert_allclose(h["pit_bin"].values, [0.1, 0.3, 0.5, 0.7, 0.9])
    with pytest.raises(ev.MetricInputError, match="n_bins"):
        ev.pit_histogram(mu, mu + 1, mu, n_bins=0, reduce_dims=["p"])
    with pytest.raises(ev.MetricInputError, match="reduce_dims"):
        ev.pit_histogram(mu, mu + 1, mu, reduce_dims=["q"])


def test_diagnostics_errors(rng):
    f, o = _ens(rng, 5, 1)
    with pytest.raises(ev.MetricInputError, match="at least 2 members"):
        ev.spread_skill_ratio(f, o, reduce_dims=["point"])
    with pytest.raises(ev.MetricInputError, match="give reduce_dims"):
        ev.rank_histogram(f, o, reduce_dims=None)


# ----------------------------------------------------------------- skill and registry
def test_skill_scores_against_named_references():
    scores = {"raw_full": xr.DataArray([2.0, 4.0], dims="lead_time", attrs={"estimator": "fair"}),
              "emos": xr.DataArray([1.0, 3.0], dims="lead_time", attrs={"estimator": "fair"})}
    sk = ev.skill_scores(scores, reference="raw_full")
    np.testing.assert_allclose(sk["emos"].values, [0.5, 0.25])
    np.testing.assert_allclose(sk["raw_full"].values, 0.0)
    assert sk["emos"].attrs["reference_system"] == "raw_full" and sk["emos"].attrs["estimator"] == "fair"
    assert np.isnan(ev.skill_score(xr.DataArray(1.0), xr.DataArray(0.0)).item())
    with pytest.raises(ev.MissingReferenceError, match="was not evaluated"):
        ev.skill_scores(scores, reference="climatology")
    with pytest.raises(ev.MissingReferenceError, match="unknown reference"):
        ev.skill_scores(scores, reference="persistence")
    with pytest.raises(ev.MetricInputError, match="not aligned"):
        ev.skill_score(scores["emos"].assign_coords(lead_time=[0, 1]),
                       scores["raw_full"].assign_coords(lead_time=[1, 2]))


def test_registry(rng):
    f, o = _ens(rng, 20, 4)
    assert set(ev.REFERENCES) <= set(ev.SYSTEMS) | {"raw_subset"}
    std = ev.get_metric("crps_standard")
    assert std.estimator == "standard" and std.orientation == "negative"
    np.testing.assert_allclose(std.func(f, o).values, ps.crps_ensemble(o.values, f.values))
    for name, info in ev.METRICS.items():
        assert info.name == name and callable(info.func) and info.description
    with pytest.raises(ev.MetricInputError, match="unknown metric"):
        ev.get_metric("brier")
    from enspp.evaluation.registry import is_better

    assert is_better("crps_fair", 1.0, 2.0) and is_better("spread_skill_ratio", 0.95, 1.2)
    assert is_better("bias", -0.1, 0.3) and not is_better("rmse", 3.0, 2.0)
    with pytest.raises(ev.MetricInputError, match="histogram"):
        is_better("rank_histogram", 1.0, 2.0)
