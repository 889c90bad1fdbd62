"""enspp experiment: station runs end to end (quick mode), config errors, causal features, tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import properscoring as ps
import pytest
import xarray as xr

from evaluation.experiment import (
    ExperimentTableError,
    experiment_document,
    improvement_pct,
    markdown_table,
    score_rows,
)
from flows.cli import main
from flows.experiment import ExperimentConfigError, load_experiment_config, run_experiment
from flows.experiment_point import (
    PointData,
    PointDataError,
    day_of_year_features,
    lagged_error_features,
    point_stats,
)
from flows.experiment_station import subset_members

N_MEMBERS = 11


def _station_file(tmp_path: Path, rng, *, variable: str = "t2m", name: str = "testville",
                  years: tuple[int, int] = (2008, 2011)) -> Path:
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
    assert set(rows) == {"raw_full", "raw_subset", "emos_global", "emos_local", "mlp", "mixed"}
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
                  features="{day_of_year: true, lagged_error: false}")
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
    with pytest.raises(FileNotFoundError, match="experiment config not found"):
        load_experiment_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\n")
    with pytest.raises(ExperimentConfigError, match="not valid YAML"):
        load_experiment_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ExperimentConfigError, match="mapping at the top level"):
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


def test_subset_members():
    assert subset_members(51, 5, "first").tolist() == [0, 1, 2, 3, 4]
    assert subset_members(51, 5, "perturbed").tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(PointDataError, match="holds 0..50"):
        subset_members(51, 51, "perturbed")


def _point(n: int = 40, seed: int = 0) -> PointData:
    r = np.random.default_rng(seed)
    init = np.datetime64("2010-01-01T12", "ns") + np.arange(n) * np.timedelta64(1, "D")
    return PointData("t2m", "degC", "x", r.normal(size=(n, 4)).astype("f4"), r.normal(size=n).astype("f4"),
                     init, np.timedelta64(24, "h").astype("timedelta64[ns]"))


def test_lagged_error_is_causal():
    """Changing the observation of date i changes no feature of a forecast initialised less
    than lag_hours after that observation's valid time."""
    data = _point()
    base = lagged_error_features(data, np.arange(4), scale=1.0, lag_hours=24)
    i = 20
    obs = data.observation.copy()
    obs[i] += 5.0
    changed = PointData(data.variable, data.units, data.station, data.members, obs, data.init_time,
                        data.lead_time)
    new = lagged_error_features(changed, np.arange(4), scale=1.0, lag_hours=24)
    diff = np.abs(new - base).max(axis=1) > 0
    # row j sees obs valid <= init_j - 24 h = valid_{j-2}: rows <= i+1 must be unchanged
    assert not diff[: i + 2].any()
    assert diff[i + 2]  # the first forecast allowed to know it
    assert base[0].tolist() == [0.0, 0.0] and base[1].tolist() == [0.0, 0.0]
    err = data.members.mean(1) - data.observation
    assert base[5, 0] == pytest.approx(err[3], rel=1e-5)
    assert base[10, 1] == pytest.approx(err[2:9].mean(), rel=1e-5)  # valid in (cut-7d, cut]


def test_lagged_error_rejects_non_causal_lag():
    with pytest.raises(PointDataError, match="strictly before the init time"):
        lagged_error_features(_point(), np.arange(4), scale=1.0, lag_hours=0)


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
