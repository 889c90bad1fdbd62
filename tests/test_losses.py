"""CRPS kernels vs properscoring, brute-force pairwise references and numerical integration."""

from __future__ import annotations

import numpy as np
import properscoring as ps
import pytest
import torch
from scipy import integrate

from enspp.models.losses import (
    LossError,
    crps_censored_logistic,
    crps_ensemble,
    crps_gaussian,
    distribution_crps,
    reduce_crps,
)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def pairwise_crps(x: np.ndarray, y: np.ndarray, estimator: str) -> np.ndarray:
    """Brute-force O(M^2) ensemble CRPS; x: [N, M], y: [N] (float64)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    m = x.shape[1]
    skill = np.abs(x - y[:, None]).mean(axis=1)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
    if m == 1:
        return skill
    denom = 2 * m * m if estimator == "standard" else 2 * m * (m - 1)
    return skill - pairs / denom


def test_crps_gaussian_matches_properscoring(rng: np.random.Generator) -> None:
    mu = rng.normal(0, 3, 500).astype(np.float32)
    sigma = rng.uniform(0.05, 4, 500).astype(np.float32)
    y = rng.normal(0, 3, 500).astype(np.float32)
    got = crps_gaussian(_t(mu), _t(sigma), _t(y))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ps.crps_gaussian(y, mu, sigma), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 17])
def test_crps_ensemble_matches_references(rng: np.random.Generator, m: int) -> None:
    x = rng.normal(0, 2, (300, m)).astype(np.float32)
    y = rng.normal(0, 2, 300).astype(np.float32)
    standard = crps_ensemble(_t(x), _t(y), member_dim=1, estimator="standard").numpy()
    fair = crps_ensemble(_t(x), _t(y), member_dim=1, estimator="fair").numpy()
    np.testing.assert_allclose(standard, ps.crps_ensemble(y, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(standard, pairwise_crps(x, y, "standard"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fair, pairwise_crps(x, y, "fair"), rtol=1e-5, atol=1e-5)
    if m == 1:
        np.testing.assert_allclose(fair, np.abs(x[:, 0] - y), rtol=1e-6)
        np.testing.assert_allclose(standard, np.abs(x[:, 0] - y), rtol=1e-6)


def test_crps_ensemble_member_dim_and_grad(rng: np.random.Generator) -> None:
    x = _t(rng.normal(size=(2, 3, 4, 6))).requires_grad_(True)  # members last
    y = _t(rng.normal(size=(2, 3, 4)))
    last = crps_ensemble(x, y, member_dim=-1, estimator="fair")
    first = crps_ensemble(x.movedim(-1, 0), y, member_dim=0, estimator="fair")
    torch.testing.assert_close(last, first)
    last.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_fair_crps_is_unbiased_for_the_sampled_distribution(rng: np.random.Generator) -> None:
    """Mean fair CRPS of 3-member draws from N(0,1) equals the closed-form CRPS of N(0,1)."""
    n = 200_000
    y = rng.normal(size=n)
    x = rng.normal(size=(n, 3))
    fair = crps_ensemble(_t(x), _t(y), estimator="fair").double().mean().item()
    exact = crps_gaussian(torch.zeros(n), torch.ones(n), _t(y)).double().mean().item()
    assert abs(fair - exact) < 0.01


def test_crps_ensemble_errors() -> None:
    with pytest.raises(LossError, match="unknown ensemble CRPS estimator 'crude'"):
        crps_ensemble(torch.zeros(2, 3), torch.zeros(2), estimator="crude")  # type: ignore[arg-type]
    with pytest.raises(LossError, match="expected target dims"):
        crps_ensemble(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(LossError, match="M = 0"):
        crps_ensemble(torch.zeros(2, 0), torch.zeros(2))


def _censored_logistic_crps_numeric(y: float, loc: float, scale: float, lower: float = 0.0) -> float:
    def cdf(x: float) -> float:
        return 0.0 if x < lower else 1.0 / (1.0 + np.exp(-(x - loc) / scale))

    lo, hi = min(y, lower) - 1.0, max(y, loc) + 60 * scale
    breaks = sorted({lower, y})
    edges = [lo, *breaks, hi]
    return sum(
        integrate.quad(lambda x: (cdf(x) - float(x >= y)) ** 2, a, b, limit=200)[0]
        for a, b in zip(edges, edges[1:])
    )


@pytest.mark.parametrize(
    "y,loc,scale",
    [(0.0, 1.0, 0.5), (0.0, -2.0, 1.0), (3.2, 1.0, 0.7), (0.4, -0.5, 2.0), (-0.3, 0.5, 1.0), (10.0, 8.0, 3.0)],
)
def test_crps_censored_logistic_matches_integration(y: float, loc: float, scale: float) -> None:
    got = crps_censored_logistic(torch.tensor([loc]), torch.tensor([scale]), torch.tensor([y])).item()
    assert got == pytest.approx(_censored_logistic_crps_numeric(y, loc, scale), rel=1e-4, abs=1e-6)


def test_crps_censored_logistic_far_lower_is_logistic() -> None:
    y, loc, scale = torch.tensor([0.3]), torch.tensor([0.1]), torch.tensor([1.3])
    z = (y - loc) / scale
    logistic = scale * (z - 2 * torch.log(torch.sigmoid(z)) - 1)
    torch.testing.assert_close(crps_censored_logistic(loc, scale, y, lower=-1e4), logistic)


def test_losses_run_in_float32_under_autocast(rng: np.random.Generator) -> None:
    x = _t(rng.normal(size=(64, 5)))
    y = _t(rng.normal(size=64))
    ref = crps_ensemble(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crps_ensemble(x.bfloat16(), y)
        gauss = crps_gaussian(torch.zeros(64, dtype=torch.bfloat16), torch.ones(64), y)
    assert got.dtype == torch.float32 and gauss.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0.05)


def test_reduce_crps_masks_nan_and_normalises(rng: np.random.Generator) -> None:
    mu = torch.zeros(4, 2, 3, 3, requires_grad=True)
    sigma = torch.ones(4, 2, 3, 3)
    target = _t(rng.normal(size=(4, 2, 3, 3)))
    target[0, 0, 0, 0] = float("nan")
    target[:, 1, 2] = float("nan")
    scale = torch.tensor([2.0, 5.0])
    loss = reduce_crps(lambda y: crps_gaussian(mu, sigma, y), target, target_scale=scale)
    pointwise = crps_gaussian(mu, sigma, torch.nan_to_num(target)) / scale[None, :, None, None]
    valid = torch.isfinite(target)
    torch.testing.assert_close(loss, pointwise[valid].mean())
    loss.backward()
    assert torch.isfinite(mu.grad).all()
    assert (mu.grad[~valid] == 0).all()


def test_reduce_crps_all_nan_and_bad_scale() -> None:
    mu = torch.zeros(2, 1, 2, 2, requires_grad=True)
    target = torch.full((2, 1, 2, 2), float("nan"))
    loss = reduce_crps(lambda y: crps_gaussian(mu, torch.ones_like(mu), y), target, target_scale=torch.ones(1))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(LossError, match="target_scale has shape"):
        reduce_crps(lambda y: y, target, target_scale=torch.ones(3))


def test_distribution_crps_dispatch_and_errors() -> None:
    y = torch.tensor([0.0, 1.0])
    out = {"mu": torch.zeros(2), "sigma": torch.ones(2), "loc": torch.zeros(2), "scale": torch.ones(2)}
    torch.testing.assert_close(distribution_crps(out, y, distribution="gaussian"), crps_gaussian(out["mu"], out["sigma"], y))
    torch.testing.assert_close(
        distribution_crps(out, y, distribution="censored_logistic"), crps_censored_logistic(out["loc"], out["scale"], y)
    )
    with pytest.raises(LossError, match="lacks \\['loc', 'scale'\\]"):
        distribution_crps({"mu": y, "sigma": y}, y, distribution="censored_logistic")
    with pytest.raises(LossError, match="unknown distribution 'gamma'"):
        distribution_crps(out, y, distribution="gamma")


@pytest.mark.parametrize("loc,scale", [(-3.0, 1.0), (0.0, 1.0), (0.3, 2.0), (5.0, 0.5), (-0.2, 0.1), (40.0, 1.0)])
def test_censored_logistic_moments_match_integration(loc: float, scale: float) -> None:
    from enspp.models.distributions import censored_logistic_moments

    def pdf(x: float) -> float:
        e = np.exp(-(x - loc) / scale)
        return e / (scale * (1 + e) ** 2)

    m1 = integrate.quad(lambda x: x * pdf(x), 0, np.inf)[0]
    m2 = integrate.quad(lambda x: x * x * pdf(x), 0, np.inf)[0]
    mean, std = censored_logistic_moments(torch.tensor([loc]), torch.tensor([scale]))
    assert mean.item() == pytest.approx(m1, rel=1e-6, abs=1e-9)
    assert std.item() == pytest.approx(np.sqrt(m2 - m1 * m1), rel=1e-6)


def test_twcrps_gaussian_matches_the_evaluation_kernel_and_limits() -> None:
    """The torch twCRPS equals evaluation.twcrps_gaussian (an independent numpy
    implementation) for both tails; a threshold far below (upper tail) is the plain CRPS."""
    import numpy as np
    import xarray as xr

    from enspp.evaluation import twcrps_gaussian as ref
    from enspp.models.losses import crps_gaussian, twcrps_gaussian

    r = np.random.default_rng(0)
    mu, sigma, y, t = r.normal(0, 2, 200), r.uniform(0.3, 2, 200), r.normal(0, 2, 200), r.normal(0, 1.5, 200)
    for tail in ("upper", "lower"):
        got = twcrps_gaussian(*(torch.as_tensor(v) for v in (mu, sigma, y, t)), tail=tail).numpy()
        da = lambda v: xr.DataArray(v, dims=["x"])  # noqa: E731
        want = ref(da(mu), da(sigma), da(y), threshold=da(t), tail=tail).values
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    far = twcrps_gaussian(*(torch.as_tensor(v) for v in (mu, sigma, y)), torch.full((200,), -1e3, dtype=torch.float64))
    torch.testing.assert_close(far, crps_gaussian(*(torch.as_tensor(v) for v in (mu, sigma, y))))
    with pytest.raises(LossError, match="tail must be"):
        twcrps_gaussian(*(torch.as_tensor(v) for v in (mu, sigma, y, t)), tail="both")
