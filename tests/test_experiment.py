"""enspp experiment: station runs end to end (quick mode), config errors, causal features, tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import properscoring as ps
import pytest
import torch
import xarray as xr

from enspp.evaluation.experiment import (
    ExperimentTableError,
    experiment_document,
    improvement_pct,
    markdown_table,
    score_rows,
)
from enspp.flows.cli import main
from enspp.flows.experiment import ExperimentConfigError, load_experiment_config, run_experiment
from enspp.flows.experiment_point import (
    STATIC_PAST,
    STATIC_SPREAD,
    FitSettings,
    PointData,
    PointDataError,
    day_of_year_features,
    fit_point_model,
    hres_features,
    past_error_features,
    point_batch,
    point_stats,
)
from enspp.flows.experiment_station import subset_members
from enspp.models import ModelSpec, build_model
from enspp.models.base import ModelSpecError
from enspp.models.emos import LaggedEMOS

N_MEMBERS = 11


def _station_file(tmp_path: Path, rng, *, variable: str = "t2m", name: str = "testville",
                  years: tuple[int, int] = (2008, 2011), hres: bool = False) -> Path:
    """A station file in the layout of ../shared/data/station (dims time x member)."""
    time = pd.date_range(f"{years[0]}-01-02", f"{years[1]}-12-31", freq="D")
    n = len(time)
    doy = time.day_of_year.values
    if variable == "t2m":
        truth = 10 + 8 * np.sin(2 * np.pi * (doy - 100) / 365.25) + rng.normal(0, 2.0, n)
        ens = truth[:, None] + 1.5 + rng.normal(0, 2.5, (n, 1)) + rng.normal(0, 0.8, (n, N_MEMBERS))
        obs = truth
    else:
        latent = rng.normal(0, 2, n)
        ens = np.maximum(latent[:, None] + rng.normal(0, 1.5, (n, N_MEMBERS)), 0.0)
        obs = np.maximum(latent + rng.normal(0, 1.5, n), 0.0)
    labels = ["forc.CTRL"] + [f"forc.{i}" for i in range(1, N_MEMBERS)]
    order = list(range(1, N_MEMBERS)) + [0]  # control last, as in the real files
    ds = xr.Dataset({f"{variable}_ens": (("time", "member"), ens[:, order].astype("f4")),
                     f"{variable}_obs": ("time", obs.astype("f4"))},
                    coords={"time": time, "member": [labels[i] for i in order]})
    if hres:  # a sharper deterministic forecast, missing on two days as in the real file
        det = (obs + rng.normal(0, 1.0, n)).astype("f4")
        det[[5, 50]] = np.nan
        ds[f"{variable}_hres"] = ("time", det)
    path = tmp_path / f"ens_{variable}_{name}_{years[0]}-{years[1]}.nc"
    ds.to_netcdf(path)
    return path


def _config(tmp_path: Path, station: Path, **station_extra) -> Path:
    lines = ["title: test station", "kind: station", "station:", f"  path: {station}",
             "  val_start: 2010-01-01", "  test_start: 2011-01-01", "  members: [3, 5]"]
    lines += [f"  {k}: {v}" for k, v in station_extra.items()]
    lines += ["train: {max_epochs: 2, patience: 2, batch_size: 256, seeds: 2}",
              "evaluate: {n_resamples: 50}"]
    path = tmp_path / "exp.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_station_experiment_quick_end_to_end(tmp_path, rng, capsys):
    station = _station_file(tmp_path, rng)
    cfg = _config(tmp_path, station, subset="perturbed")
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quick"]) == 0
    assert "| raw_full |" in capsys.readouterr().out
    for name in ("table.md", "results.json", "index.html"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    rows = {r["system"]: r for r in res["rows"]}
    assert set(rows) == {"raw_full", "raw_subset", "emos_global", "emos_local", "emos_lagged", "mlp", "mixed"}
    assert rows["raw_subset"]["K"] == 5  # quick mode: the largest K only
    # raw CRPS is the standard estimator: equal to properscoring on the same test dates
    raw = xr.open_dataset(station)
    test = raw.time.values >= np.datetime64("2011-01-01")
    ens, obs = raw.t2m_ens.values[test], raw.t2m_obs.values[test]
    assert rows["raw_full"]["crps"] == pytest.approx(ps.crps_ensemble(obs, ens).mean(), rel=1e-6)
    assert rows["raw_subset"]["crps"] == pytest.approx(ps.crps_ensemble(obs, ens[:, :5]).mean(), rel=1e-6)
    for r in rows.values():
        assert 0 < r["crps"] < 10
    html = (out / "index.html").read_text()
    assert "mixed" in html and "raw_full" in html
    assert res["n_test"] == int(test.sum())


def test_station_experiment_full_ks_learns(tmp_path, rng):
    """Not quick: every K, and the networks beat the biased raw ensemble."""
    station = _station_file(tmp_path, rng)
    cfg = load_experiment_config(_config(tmp_path, station))
    cfg = cfg.model_copy(update={"station": cfg.station.model_copy(update={"systems": ("emos_global", "mlp")}),
                                 "train": cfg.train.model_copy(update={"max_epochs": 30, "seeds": 1})})
    res = run_experiment(cfg, out_dir=tmp_path / "o")
    ks = sorted({r["K"] for r in res["rows"] if r["system"] == "mlp"})
    assert ks == [3, 5]
    for r in res["rows"]:
        if r["system"] in ("emos_global", "mlp"):
            assert r["skill"] > 0.05, r  # a 1.5 degC bias is easy to remove
    table = (tmp_path / "o" / "table.md").read_text()
    assert table.count("| mlp |") == 2


def test_censored_precipitation_quick(tmp_path, rng):
    station = _station_file(tmp_path, rng, variable="tp24", name="rainville")
    cfg = _config(tmp_path, station, distribution="censored_logistic",
                  features="{day_of_year: true, lagged_error: false}",
                  systems="[emos_global, emos_local, mlp, mixed]")
    res = run_experiment(load_experiment_config(cfg), out_dir=tmp_path / "o", quick=True)
    rows = {r["system"]: r for r in res["rows"]}
    assert all(np.isfinite(r["crps"]) for r in rows.values())
    assert "censored_logistic" in (tmp_path / "o" / "table.md").read_text()


@pytest.mark.parametrize(("extra", "match"), [
    ("val_start: 2012-01-01", "train_start < val_start < test_start"),
    ("members: [0]", "K >= 1"),
    ("unknown_key: 1", "station.unknown_key"),
])
def test_config_errors(tmp_path, rng, extra, match):
    path = tmp_path / "bad.yaml"
    path.write_text("title: t\nkind: station\nstation:\n  path: x.nc\n  val_start: 2010-01-01\n"
                    f"  test_start: 2011-01-01\n  {extra}\n")
    if extra.startswith("val_start"):
        path.write_text(path.read_text().replace("  val_start: 2010-01-01\n", ""))
    with pytest.raises(ExperimentConfigError, match=match):
        load_experiment_config(path)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment config .* does not exist"):
        load_experiment_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\n")
    with pytest.raises(ExperimentConfigError, match="not valid YAML"):
        load_experiment_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ExperimentConfigError, match="top level must be a mapping"):
        load_experiment_config(bad)
    bad.write_text("title: t\nkind: station\n")
    with pytest.raises(ExperimentConfigError, match="needs a 'station' section"):
        load_experiment_config(bad)
    bad.write_text("title: t\nkind: station\nstation: {path: x.nc, val_start: 2010-01-01, "
                   "test_start: 2011-01-01, test_end: 2010-06-01}\n")
    with pytest.raises(ExperimentConfigError, match="before test_start"):
        load_experiment_config(bad)


def test_cli_reports_user_errors(tmp_path, rng, capsys):
    station = _station_file(tmp_path, rng)
    cfg = _config(tmp_path, station)
    cfg.write_text(cfg.read_text().replace("members: [3, 5]", "members: [3, 50]"))
    assert main(["experiment", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quick"]) == 1
    assert "the file holds 0..10" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace("members: [3, 50]", "members: [3]")
                   .replace("test_start: 2011-01-01", "test_start: 2015-01-01"))
    assert main(["experiment", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quick"]) == 1
    assert "the test period holds 0 dates" in capsys.readouterr().err


def test_lagged_emos_needs_the_past_error_features(tmp_path, rng):
    station = _station_file(tmp_path, rng)
    cfg = _config(tmp_path, station, features="{lagged_error: false}", systems="[emos_lagged]")
    with pytest.raises(PointDataError, match="emos_lagged needs features.lagged_error: true"):
        run_experiment(load_experiment_config(cfg), out_dir=tmp_path / "o", quick=True)


def test_subset_members():
    assert subset_members(51, 5, "first").tolist() == [0, 1, 2, 3, 4]
    assert subset_members(51, 5, "perturbed").tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(PointDataError, match="holds 0..50"):
        subset_members(51, 51, "perturbed")


def _point(n: int = 40, seed: int = 0, *, init_hour: int = 12, lead_hours: int = 24) -> PointData:
    r = np.random.default_rng(seed)
    init = np.datetime64(f"2010-01-01T{init_hour:02d}", "ns") + np.arange(n) * np.timedelta64(1, "D")
    return PointData("t2m", "degC", "x", r.normal(size=(n, 4)).astype("f4"), r.normal(size=n).astype("f4"),
                     init, np.timedelta64(lead_hours, "h").astype("timedelta64[ns]"))


def _with_obs(data: PointData, obs: np.ndarray) -> PointData:
    return PointData(data.variable, data.units, data.station, data.members, obs.astype("f4"), data.init_time,
                     data.lead_time)


def _past(data: PointData, **kw) -> np.ndarray:
    return past_error_features(data, np.arange(4), **{"err_scale": 1.0, "obs_mean": 0.0, "obs_scale": 1.0, **kw})


def test_past_error_features_use_nothing_after_the_init_time():
    """Changing the observation valid at time v changes no feature of a forecast initialised
    before v; the first forecast initialised at v (12 UTC +24 h: the next day's) sees it."""
    data = _point()
    base = _past(data)
    assert base.shape == (40, len(STATIC_PAST))
    for i in (3, 20, 38):
        obs = data.observation.copy()
        obs[i] += 5.0
        diff = np.abs(_past(_with_obs(data, obs)) - base).max(axis=1) > 0
        known = data.init_time >= data.valid_time[i]
        assert not diff[~known].any(), i
        assert diff[i + 1]  # init_{i+1} == valid_i: the observation at init time is known


def test_lag1_error_timing_t2m_and_precipitation():
    """12 UTC +24 h: the lag-1 error is the previous day's forecast (valid at this init time);
    00 UTC +30 h: the previous day's forecast verifies 6 h after init, so lag 1 is two days back."""
    data = _point()
    f = _past(data)
    err = data.members.mean(1).astype(np.float64) - data.observation
    assert f[0].tolist() == [0.0, 0.0, 0.0, 0.0]  # nothing known before the first forecast
    assert f[5, 0] == pytest.approx(err[4], rel=1e-5)  # lag 1: init d-2 12 UTC, valid d-1 12 UTC
    assert f[5, 1] == pytest.approx(err[3], rel=1e-5)  # lag 2
    assert f[5, 2] == pytest.approx(data.observation[4], rel=1e-5)  # the observation at init time
    w = 0.5 ** (np.arange(5)[::-1] / 5.0)  # errors 0..4, half-life 5 days, ages 4..0 days
    assert f[5, 3] == pytest.approx((w * err[:5]).sum() / w.sum(), rel=1e-5)
    rain = _past(_point(init_hour=0, lead_hours=30))
    err_r = _point(init_hour=0, lead_hours=30)
    e = err_r.members.mean(1).astype(np.float64) - err_r.observation
    assert rain[5, 0] == pytest.approx(e[3], rel=1e-5) and rain[5, 1] == pytest.approx(e[2], rel=1e-5)
    assert rain[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # forecast 0 verifies after init 1


def test_error_spread_feature_is_the_weighted_mean_magnitude():
    """``spread=True`` adds err_ewm_abs: the same weights as err_ewm over |e| (brute force),
    sqrt(2/pi) (a normal's mean |e| / std) before any error is known; the other columns
    are unchanged, and it uses nothing after the init time either."""
    data = _point()
    f = _past(data, spread=True, err_scale=2.0)
    assert f.shape == (40, len(STATIC_PAST) + len(STATIC_SPREAD))
    np.testing.assert_array_equal(f[:, :4], _past(data, err_scale=2.0))
    err = data.members.mean(1).astype(np.float64) - data.observation
    w = 0.5 ** (np.arange(5)[::-1] / 5.0)
    assert f[5, 4] == pytest.approx((w * np.abs(err[:5]) / 2.0).sum() / w.sum(), rel=1e-5)
    assert f[0, 4] == pytest.approx(np.sqrt(2 / np.pi), rel=1e-6)
    obs = data.observation.copy()
    obs[20] += 5.0
    moved = np.abs(_past(_with_obs(data, obs), spread=True, err_scale=2.0) - f).max(axis=1) > 0
    assert not moved[data.init_time < data.valid_time[20]].any() and moved[21]


def test_error_spread_setting_needs_the_past_errors():
    from enspp.flows.experiment import FeatureSettings

    assert FeatureSettings(error_spread=True).error_spread
    with pytest.raises(ValueError, match="error_spread needs features.lagged_error"):
        FeatureSettings(error_spread=True, lagged_error=False)


def test_past_error_features_gaps_and_scales():
    data = _point()
    obs = data.observation.copy()
    obs[9] = np.nan  # forecast 9's error and the observation at init 10 are missing
    gap = _with_obs(data, obs)
    err = data.members.mean(1).astype(np.float64) - obs
    f = _past(gap, err_scale=2.0, obs_mean=1.0, obs_scale=4.0)
    assert f[10, 0] == pytest.approx(err[8] / 2.0, rel=1e-5)  # latest known error, valid 1 day before init
    assert f[10, 2] == pytest.approx((obs[8] - 1.0) / 4.0, rel=1e-5)
    stale = _past(gap, max_age_days=0.5)
    assert stale[10, 0] == 0.0 and stale[10, 2] == 0.0 and stale[11, 0] != 0.0
    with pytest.raises(PointDataError, match="halflife_days, max_age_days, err_scale and obs_scale > 0"):
        _past(data, halflife_days=0.0)
    with pytest.raises(PointDataError, match="> 0"):
        _past(data, err_scale=0.0)


def _point_spec(name: str, static_names: tuple[str, ...] = ()):
    data = _point(200)
    stats = point_stats(data.members, data.observation, "t2m@24h", "t2m")
    return ModelSpec(name=name, channels=("t2m@24h",), targets=("t2m",), target_channels=(0,),
                     static_names=static_names, n_members=4, grid_shape=(1, 1), stats=stats,
                     distribution="gaussian", options={}), data


def test_lagged_emos_starts_as_emos_and_uses_the_features():
    spec, data = _point_spec("emos_lagged", STATIC_PAST)
    static = _past(data)
    model = build_model(spec)
    assert isinstance(model, LaggedEMOS)
    plain = build_model(dataclasses.replace(spec, name="emos_global", static_names=()))
    assert not isinstance(plain, LaggedEMOS)
    with pytest.raises(ModelSpecError, match="emos_lagged needs static features"):
        build_model(dataclasses.replace(spec, static_names=()))
    b = point_batch(data.members, data.observation, static, data.init_time, data.lead_time)
    out, ref = model(b), plain({**b, "static": b["static"][:, :0]})
    assert torch.allclose(out["mu"], ref["mu"]) and torch.allclose(out["sigma"], ref["sigma"])
    with torch.no_grad():
        model.weights[0, 0] = 1.0
    with torch.no_grad():
        shifted = (model(b)["mu"] - ref["mu"])[:, 0, 0, 0]
    expected = torch.as_tensor(static[:, 0]) * model.norm.target_std[0]
    assert torch.allclose(shifted, expected, atol=1e-4)
    # a registered model: the checkpoint's spec rebuilds it, weights included
    again = build_model(ModelSpec.from_dict(spec.to_dict()))
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(b)["mu"], model(b)["mu"])


def test_fit_full_batch_and_refit():
    spec, data = _point_spec("emos_global")
    b = point_batch(data.members, data.observation, np.zeros((200, 0), "f4"), data.init_time, data.lead_time)
    tr, va = {k: v[:150] for k, v in b.items()}, {k: v[150:] for k, v in b.items()}
    settings = FitSettings(max_epochs=40, patience=5, batch_size=10_000, lr=0.05)
    # EMOS: the exact fit, no epochs; the refit is the exact fit on train + validation
    once = fit_point_model(spec, tr, va, settings=settings, seed=0)
    again = fit_point_model(spec, tr, va, settings=settings, seed=0, refit=True)
    assert once.best_epoch == once.epochs == 0 and np.isfinite(once.best_val) and again.best_val == once.best_val
    assert not torch.equal(once.model.params, again.model.params)
    assert once.validation_model is once.model and once.early is None
    assert torch.equal(again.validation_model.params, once.model.params)
    # a network: its anchor is that exact EMOS fit; epoch 0 (the anchor) is a candidate
    net_spec = dataclasses.replace(spec, name="mlp", options={"hidden": [8], "anchor": "emos_global"})
    net = fit_point_model(net_spec, tr, va, settings=settings, seed=0)
    torch.testing.assert_close(net.model.anchor.params, once.model.params)
    assert 0 <= net.best_epoch <= net.epochs <= 40 and net.best_val <= once.best_val + 1e-6
    stuck = fit_point_model(net_spec, tr, va, settings=dataclasses.replace(settings, lr=1e-9), seed=0)
    assert stuck.best_epoch == 0 and stuck.best_val == pytest.approx(once.best_val, rel=1e-5)
    refit = fit_point_model(net_spec, tr, va, settings=settings, seed=0, refit=True)
    torch.testing.assert_close(refit.model.anchor.params, again.model.params)


def test_day_of_year_features():
    f = day_of_year_features(np.array(["2011-01-01", "2011-07-02"], dtype="datetime64[ns]"))
    assert f[0].tolist() == pytest.approx([0.0, 1.0])
    assert f[1, 1] == pytest.approx(-1.0, abs=1e-3)


def test_point_stats_rejects_constant_training_data():
    with pytest.raises(PointDataError, match="no spread"):
        point_stats(np.ones((10, 3)), np.arange(10.0), "t2m@24h", "t2m")


def _scores(rng, n=60):
    t = pd.date_range("2012-01-01", periods=n).values
    ref = xr.DataArray(rng.uniform(1, 2, n), dims=["init_time"], coords={"init_time": t})
    return {"raw_full": ref, "better": ref * 0.8, "same": ref.copy()}


def test_score_rows_and_markdown(rng):
    rows = score_rows(_scores(rng), reference="raw_full", n_resamples=100)
    by = {r["system"]: r for r in rows}
    assert by["raw_full"]["skill"] is None
    assert by["better"]["skill"] == pytest.approx(0.2)
    assert by["better"]["skill_low"] == pytest.approx(0.2) and by["better"]["dm_pvalue"] < 1e-6
    assert by["same"]["skill"] == pytest.approx(0.0)
    md = markdown_table(rows, [("system", "system", "str"), ("crps", "CRPS", "f3"), ("skill", "skill", "pct"),
                               ("dm_pvalue", "p", "f2")])
    lines = md.strip().splitlines()
    assert lines[0] == "| system | CRPS | skill | p |" and lines[1] == "|---|---:|---:|---:|"
    assert "| better |" in md and "+20.0%" in md and "| raw_full |" in md and "–" in lines[2]
    doc = experiment_document(title="t", variable="t2m", units="degC", estimator="e", rows=rows,
                              reference="raw_full", init_count=60, lead_hours=[24],
                              twcrps={"p95 upper": {"better": 0.1}}, init_period=("a", "b"))
    assert doc["variables"]["t2m"]["headline"]["all"][1]["skill"] == pytest.approx(0.2)


def test_table_errors(rng):
    s = _scores(rng)
    with pytest.raises(ExperimentTableError, match="reference system 'oracle'"):
        score_rows(s, reference="oracle")
    with pytest.raises(ExperimentTableError, match="has no dim 'init_time'"):
        score_rows({**s, "bad": s["raw_full"].rename(init_time="time")}, reference="raw_full")
    with pytest.raises(ExperimentTableError, match="at least one column"):
        markdown_table([], [])
    with pytest.raises(ExperimentTableError, match="reference 'x'"):
        experiment_document(title="t", variable="v", units="", estimator="", rows=[{"system": "a"}],
                            reference="x", init_count=1, lead_hours=[24])
    assert improvement_pct(0.8, 1.0) == pytest.approx(20.0)
    assert improvement_pct(None, 1.0) is None and improvement_pct(1.0, 0.0) is None


@pytest.mark.slow
def test_magdeburg_quick_matches_reference_raw_scores(shared_data, tmp_path):
    """The shipped config on the real file (quick): raw CRPS as in SOURCES.md."""
    cfg = load_experiment_config(Path(__file__).parents[1] / "configs/experiments/magdeburg_t2m.yaml")
    station = cfg.station.model_copy(update={"path": shared_data / "station/ecmwf_ens_t2m_magdeburg_2002-2014.nc"})
    res = run_experiment(cfg.model_copy(update={"station": station}), out_dir=tmp_path, quick=True)
    rows = {r["system"]: r for r in res["rows"]}
    assert rows["raw_full"]["crps"] == pytest.approx(0.893, abs=6e-4)
    assert rows["raw_subset"]["crps"] == pytest.approx(0.897, abs=6e-4)


def test_hres_features_departure_scaled_and_missing_as_zero():
    members = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]], np.float32)
    hres = np.array([4.0, np.nan, 1.0, 5.0], np.float32)
    # departures 2, nan, -1, 5; the scale is their std over the training rows 0-2 only (1.5)
    out = hres_features(hres, members, train=np.array([True, True, True, False]))
    assert out.shape == (4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [2 / 1.5, 0.0, -1 / 1.5, 5 / 1.5], rtol=1e-6)
    with pytest.raises(PointDataError, match="no spread"):
        hres_features(hres, members, train=np.array([True, True, False, False]))


def test_station_experiment_with_hres_predictor(tmp_path, rng):
    station = _station_file(tmp_path, rng, hres=True)
    cfg = _config(tmp_path, station, systems="[emos_global, mixed]",
                  features="{day_of_year: true, lagged_error: true, hres: true}")
    res = run_experiment(load_experiment_config(cfg), out_dir=tmp_path / "o", quick=True)
    rows = {r["system"]: r for r in res["rows"]}
    mixed, emos = rows["mixed"], rows["emos_global"]
    assert np.isfinite(mixed["crps"]) and np.isfinite(mixed["val_crps"]) and mixed["val_crps"] > 0
    assert np.isfinite(emos["val_crps"]) and rows["raw_full"]["val_crps"] is None
    assert "val CRPS (degC)" in (tmp_path / "o" / "table.md").read_text()
    # the feature reaches the networks (and only them) as hres_dev, computed on the subset
    from enspp.flows.experiment_point import load_station
    from enspp.flows.experiment_station import _static, _static_columns

    data = load_station(station, hres=True)
    sel, train = np.arange(1, 4), data.valid_time < np.datetime64("2010-01-01")
    static, names = _static(data, sel, load_experiment_config(cfg).station.features, train)
    col = names.index("hres_dev")
    np.testing.assert_array_equal(static[:, col], hres_features(data.hres, data.members[:, sel],
                                                                train=train)[:, 0])
    assert col in _static_columns("mixed", names) and col not in _static_columns("emos_global", names)
    assert np.corrcoef(static[:, col], data.observation - data.members[:, sel].mean(1))[0, 1] > 0.5
    # a file without the deterministic forecast: the error names the file and the variable
    plain = _station_file(tmp_path, rng, name="plainville")
    cfg = _config(tmp_path, plain, features="{hres: true}")
    with pytest.raises(ValueError, match=r"plainville.*no deterministic forecast 't2m_hres'"):
        run_experiment(load_experiment_config(cfg), out_dir=tmp_path / "o2", quick=True)


def test_train_settings_without_effect_for_the_kind_are_refused(tmp_path, rng):
    station = _station_file(tmp_path, rng)
    cfg = _config(tmp_path, station)
    text = cfg.read_text().replace("train: {", "train: {lr_schedule: cosine, ")
    cfg.write_text(text)
    with pytest.raises(ExperimentConfigError, match="train.lr_schedule has no effect on a station"):
        load_experiment_config(cfg)
    synth = tmp_path / "synth.yaml"
    synth.write_text("title: t\nkind: synthetic\nsynthetic: {}\ntrain: {seeds: 5, refit: true}\n")
    with pytest.raises(ExperimentConfigError, match="train.refit, train.seeds has no effect on a synthetic"):
        load_experiment_config(synth)
