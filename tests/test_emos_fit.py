"""The exact EMOS fit (``models.emos.fit_emos``) against independent reference optimisers.

References: scipy's Nelder-Mead / L-BFGS-B on EMOS written here in numpy with its own
parametrisation (``mu = a + b m``, ``sigma^2 = c + d s^2``, ``c, d >= 0``) and the closed-form
CRPS of scipy.stats (Gaussian) or the evaluation package's censored-logistic kernel.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from enspp.data.station import StationOptions, open_station
from enspp.models import ModelSpec, build_model
from enspp.models.emos import EMOSFitError, _derivatives, _prepare, _Rows, emos_chunk, fit_emos
from enspp.models.losses import distribution_crps

MAGDEBURG = Path("../shared/data/station/ecmwf_ens_t2m_magdeburg_2002-2014.nc")
FRANKFURT = Path("../shared/data/station/ecmwf_ens_tp24_frankfurt_2007-2016.nc")
#: the two files' conventions (data.station), as the experiment files state them
MAGDEBURG_OPTIONS = StationOptions(variable="t2m", units="degC", time="valid", hour=12, lead_time=24,
                                   control="forc.CTRL", station={"id": "10361", "latitude": 52.1,
                                                                 "longitude": 11.6, "elevation": 76})
FRANKFURT_OPTIONS = StationOptions(variable="tp24", units="mm", time="init", hour=0, lead_time=30,
                                   control="CTR", station={"id": "10637", "latitude": 50.05,
                                                           "longitude": 8.6, "elevation": 100})


def _station_arrays(path: Path, options: StationOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(members [N, M] with member 0 the control, observations [N], valid times [N])`` of a
    one-station file, read by ``data.station``."""
    d = open_station(path, options)
    v = options.variable
    fc = d.forecast[v]
    valid = fc["init_time"].values + fc["lead_time"].values[0]
    obs = d.observations[v].isel(station=0).reindex(time=valid).values
    return fc.values[:, 0, :, 0], obs, valid


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def point_spec(name: str, members: np.ndarray, obs: np.ndarray, *, n_stations: int = 1,
               distribution: str = "gaussian", static_names: tuple[str, ...] = (), options=None) -> ModelSpec:
    st = {"channel_mean": np.array([np.nanmean(members)], np.float32),
          "channel_std": np.array([np.nanstd(members)], np.float32),
          "target_mean": np.array([np.nanmean(obs)], np.float32),
          "target_std": np.array([np.nanstd(obs)], np.float32)}
    return ModelSpec(name=name, channels=("x",), targets=("y",), target_channels=(0,),
                     static_names=static_names, n_members=members.shape[1], grid_shape=(n_stations, 1),
                     stats=st, distribution=distribution, options=options or {})


def point_batch(members: np.ndarray, obs: np.ndarray, *, station: np.ndarray | None = None,
                static: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    n = members.shape[0]
    b = {"inputs": torch.as_tensor(members, dtype=torch.float32)[:, :, None, None, None],
         "target": torch.as_tensor(obs, dtype=torch.float32)[:, None, None, None],
         "y0": torch.zeros(n, dtype=torch.long),
         "x0": torch.as_tensor(station if station is not None else np.zeros(n), dtype=torch.long)}
    if static is not None:
        b["static"] = torch.as_tensor(static, dtype=torch.float32)[:, :, None, None]
    return b


# ---- the independent reference -------------------------------------------------------------
def crps_normal(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = (y - mu) / sigma
    return sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


def crps_clogistic(loc: np.ndarray, scale: np.ndarray, y: np.ndarray) -> np.ndarray:
    from enspp.evaluation.kernels import crps_censored_kernel

    return crps_censored_kernel(loc, scale, y, family="logistic", lower=0.0)


def reference_fit(m: np.ndarray, s: np.ndarray, y: np.ndarray, *, distribution: str = "gaussian") -> float:
    """Minimum mean CRPS of ``N(a + b m, c + d s^2)`` (or the zero-censored logistic with that
    mean and std) by Nelder-Mead from two starts, polished by L-BFGS-B."""
    m, s, y = (np.asarray(v, np.float64) for v in (m, s, y))
    k = 1.0 if distribution == "gaussian" else math.sqrt(3) / math.pi
    crps = crps_normal if distribution == "gaussian" else crps_clogistic

    def f(p: np.ndarray) -> float:
        a, b, lc, ld = p
        sd = np.sqrt(np.exp(lc) + np.exp(ld) * s * s)
        return float(np.mean(crps(a + b * m, k * sd, y)))

    v = np.var(y)
    best = None
    for x0 in ([0.0, 1.0, math.log(v), 0.0], [float(np.mean(y)), 0.0, math.log(v), -5.0]):
        r = optimize.minimize(f, x0, method="Nelder-Mead",
                              options={"maxiter": 8000, "maxfev": 8000, "xatol": 1e-8, "fatol": 1e-12})
        r = optimize.minimize(f, r.x, method="L-BFGS-B")
        best = r.fun if best is None else min(best, r.fun)
    return float(best)


def fitted_crps(model, batch: dict[str, torch.Tensor]) -> float:
    """Mean CRPS of the fitted model in the target's units (numpy reference kernels)."""
    with torch.no_grad():
        out = model(batch)
    y = batch["target"].double().numpy().ravel()
    if model.distribution == "gaussian":
        return float(np.mean(crps_normal(out["mu"].double().numpy().ravel(), out["sigma"].double().numpy().ravel(), y)))
    return float(np.mean(crps_clogistic(out["loc"].double().numpy().ravel(), out["scale"].double().numpy().ravel(), y)))


def biased_members(seed: int, n: int = 600, k: int = 10, *, bias: float = 8.0, spread: float = 0.3):
    r = np.random.default_rng(seed)
    z = 10 + 5 * r.standard_normal(n)
    sd = np.exp(0.4 * r.standard_normal(n))  # a spread that tells something
    y = z + sd * r.standard_normal(n)
    members = z[:, None] + bias + spread * sd[:, None] * r.standard_normal((n, k))
    return members.astype(np.float32), y.astype(np.float32)


# ---- tests ---------------------------------------------------------------------------------
def test_fit_reaches_the_reference_minimum_with_a_large_bias_and_collapsed_spread() -> None:
    members, y = biased_members(0)
    spec = point_spec("emos_global", members, y)
    model = build_model(spec)
    batch = point_batch(members, y)
    result = fit_emos(model, [emos_chunk(model, batch)])
    ref = reference_fit(members.mean(1), members.std(1, ddof=1), y)
    got = fitted_crps(model, batch)
    assert result.converged and result.iterations < 60
    assert got <= ref * (1 + 1e-4), (got, ref)
    # the model's own loss is the normalised mean CRPS
    assert result.loss == pytest.approx(got / float(spec.stats["target_std"][0]), rel=1e-5)


def test_censored_logistic_fit_reaches_the_reference_minimum() -> None:
    r = np.random.default_rng(1)
    n = 500
    z = r.gamma(0.8, 2.0, n) - 0.8
    members = np.maximum(z[:, None] * 0.7 + 0.5 + 0.6 * r.standard_normal((n, 8)), 0).astype(np.float32)
    y = np.maximum(z + 0.8 * r.logistic(size=n), 0).astype(np.float32)
    spec = point_spec("emos_global", members, y, distribution="censored_logistic")
    model = build_model(spec)
    batch = point_batch(members, y)
    fit_emos(model, [emos_chunk(model, batch)])
    ref = reference_fit(members.mean(1), members.std(1, ddof=1), y, distribution="censored_logistic")
    assert fitted_crps(model, batch) <= ref * (1 + 1e-4), (fitted_crps(model, batch), ref)


def test_local_fit_is_the_per_station_minimum_and_chunks_do_not_matter() -> None:
    """Three stations with their own bias and spread error, in shuffled chunks: the local fit
    equals each station's own reference fit; a station without data keeps its init."""
    parts = [biased_members(10 + i, n=300, bias=b, spread=sp) for i, (b, sp) in enumerate([(8, 0.3), (-2, 1.5), (0.5, 1)])]
    members = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    station = np.repeat(np.arange(3), 300)
    order = np.random.default_rng(2).permutation(len(y))
    spec = point_spec("emos_local", members, y, n_stations=4)
    model = build_model(spec)
    init = model.params.detach().clone()
    batch = point_batch(members[order], y[order], station=station[order])
    chunks = [emos_chunk(model, {k: v[i] for k, v in batch.items()}) for i in torch.arange(len(y)).split(250)]
    fit_emos(model, chunks)
    for st in range(3):
        sel = station == st
        ref = reference_fit(members[sel].mean(1), members[sel].std(1, ddof=1), y[sel])
        got = fitted_crps(model, point_batch(members[sel], y[sel], station=station[sel]))
        assert got <= ref * (1 + 1e-4), (st, got, ref)
    torch.testing.assert_close(model.params[:, :, 3], init[:, :, 3])


def test_nan_targets_are_ignored() -> None:
    members, y = biased_members(3, n=300)
    spec = point_spec("emos_global", members, y)
    clean, holed = build_model(spec), build_model(spec)
    fit_emos(clean, [emos_chunk(clean, point_batch(members, y))])
    y_nan = np.concatenate([y, np.full(50, np.nan, np.float32)])
    m_nan = np.concatenate([members, members[:50] + 100.0])
    fit_emos(holed, [emos_chunk(holed, point_batch(m_nan, y_nan))])
    torch.testing.assert_close(holed.params, clean.params, rtol=1e-4, atol=1e-5)
    with pytest.raises(EMOSFitError, match="no valid"):
        fit_emos(build_model(spec), [emos_chunk(clean, point_batch(members[:5], np.full(5, np.nan, np.float32)))])
    with pytest.raises(EMOSFitError, match="no training data"):
        fit_emos(build_model(spec), [])
    with pytest.raises(EMOSFitError, match="fits an EMOS model"):
        fit_emos(build_model(point_spec("mlp", members, y)), [])
    with pytest.raises(EMOSFitError, match=r"lacks \['s'"):
        fit_emos(build_model(spec), [{"m": torch.zeros(2, 1, 1, 1)}])


@pytest.mark.parametrize("case", ["global", "local", "lagged", "season", "censored"])
def test_analytic_derivatives_equal_autograd(case: str) -> None:
    """The per-group gradient and Hessian of :func:`_derivatives` equal torch's autograd
    Hessian of the summed CRPS, for every parametrisation."""
    r = np.random.default_rng(4)
    n = 120
    members = (3 + r.standard_normal((n, 6)) * r.uniform(0.5, 2, (n, 1))).astype(np.float32)
    y = (members.mean(1) + r.standard_normal(n)).astype(np.float32)
    static = None
    names: tuple[str, ...] = ()
    options = {}
    name = {"global": "emos_global", "local": "emos_local", "lagged": "emos_lagged",
            "season": "emos_local", "censored": "emos_global"}[case]
    dist = "censored_logistic" if case == "censored" else "gaussian"
    if case == "censored":
        members, y = np.maximum(members - 3, 0), np.maximum(y - 3, 0)
    if case in ("lagged", "season"):
        doy = r.uniform(0, 2 * np.pi, n)
        static = np.stack([np.sin(doy), np.cos(doy), r.standard_normal(n)], 1).astype(np.float32)
        names = ("sin_doy", "cos_doy", "err")
        options = {"season": "doy"} if case == "season" else {}
    spec = point_spec(name, members, y, n_stations=3, distribution=dist, static_names=names, options=options)
    model = build_model(spec).double()
    with torch.no_grad():  # a non-trivial point
        for p in model.fit_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=p.dtype))
    batch = point_batch(members, y, station=np.arange(n) % 3, static=static)
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    chunk = emos_chunk(model, batch)
    theta0 = model.group_matrix([p.detach() for p in model.fit_parameters()]).clone()
    grad, hess = _derivatives(_Rows(model), theta0, [_prepare(model, chunk)])
    names = [n_ for n_, p in model.named_parameters() if any(p is q for q in model.fit_parameters())]

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        """The summed normalised CRPS of the model's own forward pass."""
        n_p = model.params.shape[0]
        tensors = [theta[:, :n_p].transpose(0, 1).reshape(model.params.shape)]
        if len(names) == 2:
            tensors.append(theta[:, n_p:])
        out = torch.func.functional_call(model, dict(zip(names, tensors)), (batch,))
        return (distribution_crps(out, chunk["target"], distribution=dist) / model.norm.target_std[0]).sum()

    g_auto = torch.autograd.functional.jacobian(loss_of, theta0)
    h_auto = torch.autograd.functional.hessian(loss_of, theta0)
    torch.testing.assert_close(grad, g_auto, rtol=1e-8, atol=1e-10)
    blocks = torch.stack([h_auto[g, :, g, :] for g in range(theta0.shape[0])])
    torch.testing.assert_close(hess, blocks, rtol=1e-7, atol=1e-9)
    # and the groups are independent: nothing off the diagonal blocks
    off = h_auto.clone()
    for g in range(theta0.shape[0]):
        off[g, :, g, :] = 0
    assert float(off.abs().max()) == 0.0


def test_season_fit_learns_a_seasonal_bias() -> None:
    """A bias that follows the season: the day-of-year EMOS fits it, the plain one cannot."""
    r = np.random.default_rng(6)
    n = 1500
    doy = r.uniform(0, 2 * np.pi, n)
    z = r.standard_normal(n) * 3
    y = z + r.standard_normal(n)
    members = (z + 2.0 * np.sin(doy))[:, None] + r.standard_normal((n, 10))
    static = np.stack([np.sin(doy), np.cos(doy)], 1).astype(np.float32)
    members, y = members.astype(np.float32), y.astype(np.float32)
    batch = point_batch(members, y, static=static)
    losses = {}
    for season in ("none", "doy"):
        model = build_model(point_spec("emos_global", members, y, static_names=("sin_doy", "cos_doy"),
                                       options={"season": season}))
        losses[season] = fit_emos(model, [emos_chunk(model, batch)]).loss
        if season == "doy":
            assert float(model.params.detach()[4, 0, 0, 0]) * float(model.norm.target_std[0]) == pytest.approx(-2.0, abs=0.15)
    assert losses["doy"] < 0.85 * losses["none"], losses


@pytest.mark.skipif(not MAGDEBURG.is_file(), reason="station file not present")
@pytest.mark.parametrize("variant", ["as_is", "biased"])
def test_magdeburg_global_emos_is_the_reference_minimum(variant: str) -> None:
    """The real station file (training years 2002-2010, 25 members), as is and with +8 degC on
    every member and the spread shrunk to 30 %: within 0.5 % of the reference fit (in fact
    within 0.01 %)."""
    members, y, valid = _station_arrays(MAGDEBURG, MAGDEBURG_OPTIONS)
    train = (valid < np.datetime64("2011-01-01")) & np.isfinite(y) & np.isfinite(members).all(axis=1)
    members = members[train][:, 1:26].astype(np.float64)
    if variant == "biased":
        mean = members.mean(1, keepdims=True)
        members = mean + 8.0 + 0.3 * (members - mean)
    members = members.astype(np.float32)
    y = y[train]
    model = build_model(point_spec("emos_global", members, y))
    batch = point_batch(members, y)
    result = fit_emos(model, [emos_chunk(model, batch)])
    ref = reference_fit(members.mean(1), members.std(1, ddof=1), y)
    got = fitted_crps(model, batch)
    assert result.converged
    assert got <= ref * (1 + 1e-4), (got, ref)


@pytest.mark.skipif(not FRANKFURT.is_file(), reason="station file not present")
def test_frankfurt_censored_emos_is_the_reference_minimum() -> None:
    members, y, valid = _station_arrays(FRANKFURT, FRANKFURT_OPTIONS)
    train = (valid < np.datetime64("2011-01-01")) & np.isfinite(y) & np.isfinite(members).all(axis=1)
    members, y = members[train][:, :5], y[train]
    model = build_model(point_spec("emos_global", members, y, distribution="censored_logistic"))
    batch = point_batch(members, y)
    fit_emos(model, [emos_chunk(model, batch)])
    ref = reference_fit(members.mean(1), members.std(1, ddof=1), y, distribution="censored_logistic")
    assert fitted_crps(model, batch) <= ref * (1 + 1e-4), (fitted_crps(model, batch), ref)


def _many_stations(n_stations: int = 600, per: int = 40, seed: int = 8):
    """Stations with their own bias, spread error and seasonal bias, in shuffled order."""
    r = np.random.default_rng(seed)
    n = n_stations * per
    station = np.repeat(np.arange(n_stations), per)
    doy = r.uniform(0, 2 * np.pi, n)
    z = 10 + 5 * r.standard_normal(n)
    y = z + r.standard_normal(n)
    bias = r.normal(0, 3, n_stations)[station] + np.sin(doy)
    members = (z + bias)[:, None] + r.uniform(0.3, 2, n_stations)[station][:, None] * r.standard_normal((n, 8))
    static = np.stack([np.sin(doy), np.cos(doy)], 1).astype(np.float32)
    order = r.permutation(n)
    return members[order].astype(np.float32), y[order].astype(np.float32), station[order], static[order]


def test_cases_beyond_memory_are_spilled_and_the_fit_is_the_same(tmp_path, monkeypatch) -> None:
    """Past its memory the fit writes the compact cases to files by ranges of groups and fits
    the ranges one after another: the same parameters as the fit in memory, the files'
    size is CASE_BYTES (+8 per static feature) per case, and the folder is gone afterwards."""
    from enspp.models.emos import CASE_BYTES

    members, y, station, static = _many_stations()
    spec = point_spec("emos_local", members, y, n_stations=600, static_names=("sin_doy", "cos_doy"),
                      options={"season": "doy"})
    batch = point_batch(members, y, station=station, static=static)
    parts = torch.arange(len(y)).split(5000)

    def chunks(model):
        return (emos_chunk(model, {k: v[i] for k, v in batch.items()}) for i in parts)

    held, spilled = build_model(spec), build_model(spec)
    a = fit_emos(held, chunks(held))
    b = fit_emos(spilled, chunks(spilled), memory=200_000, spill_dir=tmp_path)
    assert a.ranges == 1 and a.spilled_bytes == 0 and a.cases == len(y)
    assert b.ranges > 5 and b.spilled_bytes == len(y) * (CASE_BYTES + 2 * 8)
    assert a.converged and b.converged
    # every station's 40 cases for its 8 parameters (4 + 4 seasonal), in memory or by ranges
    assert (a.min_group_cases, a.parameters) == (b.min_group_cases, b.parameters) == (40, 8)
    torch.testing.assert_close(spilled.params, held.params, rtol=1e-9, atol=1e-12)
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    # the Newton systems solved a block of groups at a time: the same fit
    import enspp.models.emos as emos

    blocked = build_model(spec)
    monkeypatch.setattr(emos, "GROUP_BLOCK", 64)  # 600 stations: 10 blocks
    fit_emos(blocked, chunks(blocked))
    torch.testing.assert_close(blocked.params, held.params, rtol=1e-9, atol=1e-12)
    assert b.start_loss == pytest.approx(a.start_loss, rel=1e-12)
    assert list(tmp_path.iterdir()) == []
    # the fit is each station's own: station 7 alone, in memory
    sel = station == 7
    alone = build_model(spec)
    fit_emos(alone, [emos_chunk(alone, point_batch(members[sel], y[sel], station=station[sel],
                                                   static=static[sel]))])
    torch.testing.assert_close(spilled.params[:, :, 7], alone.params[:, :, 7], rtol=1e-7, atol=1e-9)


def test_one_group_cannot_be_split_so_it_stays_in_memory(tmp_path) -> None:
    """A global EMOS is one group per target: a memory below its cases changes nothing."""
    members, y = biased_members(12, n=400)
    spec = point_spec("emos_global", members, y)
    a, b = build_model(spec), build_model(spec)
    fit_emos(a, [emos_chunk(a, point_batch(members, y))])
    r = fit_emos(b, [emos_chunk(b, point_batch(members, y))], memory=1000, spill_dir=tmp_path)
    assert r.ranges == 1 and r.spilled_bytes == 0
    torch.testing.assert_close(b.params, a.params, rtol=0, atol=0)
    assert list(tmp_path.iterdir()) == []


def test_the_spill_folder_is_removed_when_the_fit_is_interrupted(tmp_path) -> None:
    members, y, station, static = _many_stations(n_stations=300, per=20)
    spec = point_spec("emos_local", members, y, n_stations=300)
    model = build_model(spec)
    batch = point_batch(members, y, station=station)
    seen = []

    def chunks():
        for i in torch.arange(len(y)).split(1000):
            yield emos_chunk(model, {k: v[i] for k, v in batch.items()})
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise KeyboardInterrupt

    init = model.params.detach().clone()
    with pytest.raises(KeyboardInterrupt):
        fit_emos(model, chunks(), memory=10_000, spill_dir=tmp_path)
    assert any(seen), "the cases were never spilled"
    assert list(tmp_path.iterdir()) == []
    torch.testing.assert_close(model.params, init, rtol=0, atol=0)


def test_a_fit_from_too_few_cases_per_group_says_it_overfits() -> None:
    """A local fit's smallest group is reported; fewer than 5 cases per parameter make the
    training log say the fit overfits (2 cases per station for 4 parameters)."""
    from enspp.models.train import _fit_words

    members, y, station, _ = _many_stations(n_stations=50, per=40)
    words = {}
    for per in (2, 40):
        sel = np.concatenate([np.flatnonzero(station == i)[:per] for i in range(50)])
        model = build_model(point_spec("emos_local", members, y, n_stations=50))
        r = fit_emos(model, [emos_chunk(model, point_batch(members[sel], y[sel], station=station[sel]))])
        assert (r.min_group_cases, r.parameters, r.cases) == (per, 4, 50 * per)
        words[per] = _fit_words(r)
    assert "a group has only 2 cases for its 4 parameters: it overfits" in words[2]
    from enspp.flows.preflight import LOCAL_CASES_PER_PARAMETER
    from enspp.models.emos import OVERFIT_CASES_PER_PARAMETER

    assert LOCAL_CASES_PER_PARAMETER == OVERFIT_CASES_PER_PARAMETER  # validate says it first
    assert "overfits" not in words[40]
