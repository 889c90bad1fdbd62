"""The synthetic experiments as enspp.yaml sweeps: ``data.synth`` generates the world through
the sweep runner, ``data.points`` samples it at grid points as station stores (the pooled
stations study), ``--only`` runs a slice, a several-variable table has a variable column, and
the committed files build every network they name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from enspp.data.points import PointsError, random_points, sample_grid, sample_stores
from enspp.data.store import open_store
from enspp.flows.cli import main
from enspp.flows.experiment import Experiment, ExperimentConfigError, _table, load_experiment

ROOT = Path(__file__).parents[1]
#: the test world: 8x16, three years of weekly inits, 4 perturbed members, t2m only
TINY = {"grid": [8, 16], "years": [2012, 2014], "init_weekdays": [0], "n_perturbed": 4,
        "variables": ["t2m"], "events_per_year": 2}
SMALL_MIXED = {"embed_dim": 4, "encoder_hidden": [8], "width": 8, "depth": 1}


def _synthetic(folder: Path, *, sweep: dict, points: dict | None = None, **over) -> Path:
    """An experiment file over the tiny world in ``folder/configs`` (work directory
    ``folder/work``), shaped like ``configs/experiments/synthetic.yaml``."""
    stores = {"forecast": "stores/forecast.zarr", "analysis": "stores/analysis.zarr", "static": "synth/static.nc"}
    data = {"workdir": "../work", "synth": TINY, "files_per_task": 64,
            "incoming": {"forecast": ["synth/forecast"], "analysis": ["synth/analysis"]}}
    systems = [{"name": "raw_full", "path": "stores/forecast.zarr", "members": [1, 2, 3, 4]},
               {"name": "oracle", "path": "synth/oracle.zarr", "type": "gaussian"}]
    cases = ["synth/events.yaml"]
    batches = {"patch_size": 8, "batch_size": 4, "samples_per_epoch": 16}
    if points is not None:
        data["points"] = {**points, "grid": stores}
        stores = {"forecast": "stores/pts/forecast.zarr", "analysis": "stores/pts/analysis.zarr",
                  "static": "stores/pts/static.nc"}
        systems, cases = [{"name": "raw_full", "path": stores["forecast"], "members": [1, 2, 3, 4]}], []
        batches = {"batch_size": 100000, "preload": True}
    raw = {
        "data": data,
        "pipeline": {"stores": stores,
                     "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 48,
                                  "input_lead_times": [24]},
                     "members": {"k": 3, "strategy": "first"},
                     "split": {"train": [2012, 2012], "val": [2013, 2013], "test": [2014, 2014]},
                     "batches": batches},
        "model": {"name": "mixed", "options": SMALL_MIXED},
        "train": {"max_epochs": 2, "early_stopping_patience": 2, "learning_rate": 0.003},
        "predict": {"n_members": 4},
        "evaluate": {"title": "tiny synthetic", "systems": systems, "variables": ["t2m"], "split": "test",
                     "crps_estimator": "standard", "metrics": ["crps", "spread_skill", "twcrps"],
                     "twcrps": {"percentiles": [0.9], "climatology": {"start": "2012-01-01", "end": "2012-12-31"}},
                     "bootstrap": {"n": 10}, "cases": cases},
        "sweep": sweep,
        **over,
    }
    path = folder / "configs" / "exp.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_sweep_runner_generates_the_world_and_scores_the_oracle(tmp_path, capsys):
    """data.synth: the world generated once into <workdir>/synth, ingested, every point
    trained, registered, predicted and scored with the oracle and the case studies; a slice of
    the sweep with --only; a second run reuses the world and the points."""
    path = _synthetic(tmp_path, sweep={"pipeline.members.k": [2, 3],
                                       "systems": {"emos_local": {"model.name": "emos_local", "model.options": {}},
                                                   "mixed": {"model.name": "mixed"}}})
    out = tmp_path / "out"
    args = ["experiment", "--config", str(path), "--out", str(out), "--only", "pipeline.members.k=3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    work = tmp_path / "work"
    assert (work / "synth" / "synth.yaml").is_file() and "synthetic world generated" in printed
    res = json.loads((out / "results.json").read_text())
    assert {r["group"] for r in res["runs"]} == {"k=3"}  # --only: K = 3 alone
    crps = {r["system"]: r["crps"] for r in res["rows"]}
    assert set(crps) == {"raw_full", "raw_subset", "oracle", "emos_local", "mixed"}
    assert crps["oracle"] < crps["raw_full"] and crps["emos_local"] < crps["raw_subset"]
    doc = json.loads((out / "evaluations" / "k3" / "scores.json").read_text())
    assert doc["cases"], "the world's events are scored as case studies"
    # the same call again: the world is there, the points are reused, the table is the same
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "synthetic world already" in printed and printed.count("reusing") == 2
    again = json.loads((out / "results.json").read_text())
    assert {r["system"]: r["crps"] for r in again["rows"]} == crps


def test_another_world_in_the_work_directory_is_refused(tmp_path):
    from enspp.data.synth import SynthConfig, ensure_world

    ensure_world(tmp_path / "work" / "synth", SynthConfig(**{**TINY, "seed": 7}))
    path = _synthetic(tmp_path, sweep={"systems": {"emos_local": {"model.name": "emos_local", "model.options": {}}}})
    with pytest.raises(ExperimentConfigError, match=r"data.synth: .* holds another synthetic world"):
        main(["experiment", "--config", str(path), "--out", str(tmp_path / "out"), "--debug"])
    assert not (tmp_path / "out").exists()


def test_only_names_existing_axes_and_values(tmp_path):
    path = _synthetic(tmp_path, sweep={"pipeline.members.k": [2, 3],
                                       "systems": {"emos_local": {"model.name": "emos_local", "model.options": {}},
                                                   "mixed": {"model.name": "mixed"}}})
    exp = load_experiment(path, only={"systems": ["mixed"], "pipeline.members.k": ["2"]})
    assert [(p.system, p.group) for p in exp.points] == [("mixed", "k=2")]
    with pytest.raises(ExperimentConfigError, match="--only train.seed: not an axis"):
        load_experiment(path, only={"train.seed": ["1"]})
    with pytest.raises(ExperimentConfigError, match="--only pipeline.members.k: 7 not among"):
        load_experiment(path, only={"pipeline.members.k": ["7"]})
    with pytest.raises(ExperimentConfigError, match="--only systems: unet not among"):
        load_experiment(path, only={"systems": ["unet"]})
    from enspp.flows.commands.experiment import parse_only

    assert parse_only(["systems=a,b", "pipeline.members.k=5"]) == {"systems": ["a", "b"],
                                                                   "pipeline.members.k": ["5"]}
    with pytest.raises(ExperimentConfigError, match="expected AXIS=VALUE"):
        parse_only(["systems"])


def _grid_stores(folder: Path) -> dict[str, Path]:
    from enspp.data.store_writer import append

    rng = np.random.default_rng(0)
    lat, lon = np.linspace(60, 30, 6), np.arange(0, 360, 36.0)
    inits = np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[ns]")
    fc = xr.Dataset({"t2m": (("init_time", "lead_time", "member", "latitude", "longitude"),
                             (280 + rng.normal(0, 3, (2, 1, 3, 6, 10))).astype("f4"), {"units": "K"})},
                    coords={"init_time": inits, "lead_time": np.array([24], "timedelta64[h]").astype("timedelta64[ns]"),
                            "member": [0, 1, 2], "latitude": lat, "longitude": lon})
    an = xr.Dataset({"t2m": (("time", "latitude", "longitude"),
                             (280 + rng.normal(0, 3, (3, 6, 10))).astype("f4"), {"units": "K"})},
                    coords={"time": np.array(["2020-01-02", "2020-01-03", "2020-01-04"], dtype="datetime64[ns]"),
                            "latitude": lat, "longitude": lon})
    stores = {"forecast": folder / "fc.zarr", "analysis": folder / "an.zarr", "static": folder / "static.nc"}
    append(stores["forecast"], fc, kind="forecast")
    append(stores["analysis"], an, kind="analysis")
    xr.Dataset({"lsm": (("latitude", "longitude"), rng.random((6, 10)).astype("f4"))},
               coords={"latitude": lat, "longitude": lon}).to_netcdf(stores["static"])
    return stores


def test_points_are_the_grid_values_at_distinct_seeded_points(tmp_path):
    grid = _grid_stores(tmp_path / "grid")
    rows, cols = random_points((6, 10), n=7, seed=3)
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 7
    again = random_points((6, 10), n=7, seed=3)
    np.testing.assert_array_equal(rows, again[0]) and np.testing.assert_array_equal(cols, again[1])
    out = {k: tmp_path / "pts" / v.name for k, v in grid.items()}
    written = sample_stores(grid, out, n=7, seed=3)
    assert set(written) == {"forecast", "analysis", "static"}
    fc_grid, fc_pts = open_store(grid["forecast"]).load(), open_store(out["forecast"]).load()
    an_grid, an_pts = open_store(grid["analysis"]).load(), open_store(out["analysis"]).load()
    assert list(fc_pts["station"].values) == [f"P{i:04d}" for i in range(7)]
    for i, (r, c) in enumerate(zip(rows, cols)):
        np.testing.assert_array_equal(fc_pts["t2m"].isel(station=i).values,
                                      fc_grid["t2m"].isel(latitude=r, longitude=c).values)
        np.testing.assert_array_equal(an_pts["t2m"].isel(station=i).values,
                                      an_grid["t2m"].isel(latitude=r, longitude=c).values)
        assert float(fc_pts["latitude"][i]) == float(fc_grid["latitude"][r])
        assert float(fc_pts["longitude"][i]) == float(fc_grid["longitude"][c])
    with xr.open_dataset(out["static"]) as st, xr.open_dataset(grid["static"]) as g:
        np.testing.assert_array_equal(st["lsm"].values, g["lsm"].values[rows, cols])
    # written once: an existing output is kept as it is
    before = (out["forecast"] / "zarr.json").read_bytes()
    sample_stores(grid, out, n=7, seed=4)
    assert (out["forecast"] / "zarr.json").read_bytes() == before
    with pytest.raises(PointsError, match="n = 61 must be between 1 and the grid's 60 points"):
        random_points((6, 10), n=61)
    with pytest.raises(PointsError, match="does not exist"):
        sample_stores({**grid, "analysis": tmp_path / "nope.zarr"}, {**out, "analysis": tmp_path / "x.zarr"}, n=2)
    assert sample_grid(fc_grid, rows[:2], cols[:2]).sizes["station"] == 2


def test_pooled_stations_sweep_end_to_end(tmp_path):
    """data.points: the world ingested into the grid stores, sampled at 12 points into the
    pipeline's station stores; global and local EMOS and mixed trained on them and scored."""
    sweep = {"systems": {"emos_global": {"model.name": "emos_global", "model.options": {}},
                         "emos_local": {"model.name": "emos_local", "model.options": {}},
                         "mixed": {"model.name": "mixed", "model.options": {"embed_dim": 4, "encoder_hidden": [8],
                                                                             "point_hidden": [8]}}}}
    path = _synthetic(tmp_path, sweep=sweep, points={"n": 12, "seed": 3})
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(path), "--out", str(out)]) == 0
    work = tmp_path / "work"
    pts = open_store(work / "stores/pts/forecast.zarr")
    grid = open_store(work / "stores/forecast.zarr")
    assert pts.sizes["station"] == 12
    rows, cols = random_points((grid.sizes["latitude"], grid.sizes["longitude"]), n=12, seed=3)
    np.testing.assert_array_equal(pts["t2m"].isel(init_time=0, station=5).values,
                                  grid["t2m"].isel(init_time=0, latitude=rows[5], longitude=cols[5]).values)
    res = json.loads((out / "results.json").read_text())
    crps = {r["system"]: r["crps"] for r in res["rows"]}
    assert set(crps) == {"raw_full", "raw_subset", "emos_global", "emos_local", "mixed"}
    assert crps["emos_local"] < crps["raw_subset"]


def test_a_table_of_several_variables_names_each_variable_and_its_units():
    exp = Experiment(path=Path("x.yaml"), name="x", title="X", axes={}, points=[])
    head = [{"system": "raw_full", "crps": 2.0, "skill": 0.0}, {"system": "mixed", "crps": 1.5, "skill": 0.25}]
    docs = {"all": {"variables": {"z500": {"units": "m2 s-2", "estimator": "standard", "headline": {"global": head}},
                                  "t2m": {"units": "K", "estimator": "standard", "headline": {"global": head}}}}}
    runs = [{"group": "all", "system": "mixed", "val_score": 0.1, "train_seconds": 1.04, "predict_seconds": 2.0}]
    table, rows = _table(exp, docs, runs)
    assert "| variable |" in table and "| z500 (m2 s-2) |" in table and "| t2m (K) |" in table
    assert "| 3.0 |" in table  # seconds rounded
    one = {"all": {"variables": {"t2m": docs["all"]["variables"]["t2m"]}}}
    assert "CRPS (K)" in _table(exp, one, runs)[0]


@pytest.mark.parametrize("name", ["synthetic", "pooled_stations"])
def test_committed_synthetic_files_build_every_network(name):
    """Every point of the committed files is a valid config whose model builds (a typo in an
    option fails here, not after an hour of training); the networks of synthetic.yaml share
    the local mean-shift head."""
    from enspp.models import ModelSpec, build_model
    from enspp.pipeline.features import STATIC_NAMES

    exp = load_experiment(ROOT / "configs/experiments" / f"{name}.yaml")
    if name == "synthetic":
        assert list(exp.groups) == ["k=2", "k=3", "k=5", "k=10"]
        assert {p.system for p in exp.points} == {"emos_local", "mlp", "unet", "mixed",
                                                  "unet_w16", "mixed_w16", "mixed_w32_e16", "unet_clip", "mixed_clip",
                                                  "mixed_lr1e3", "unet_draw", "mixed_draw",
                                                  "emos_local_n50", "emos_local_n150"}
        clip = {p.system: p.config.train.gradient_clip_val for p in exp.points}
        assert clip["unet_clip"] == clip["mixed_clip"] == 1.0 and clip["unet"] is None
        lr = {p.system: p.config.train.learning_rate for p in exp.points}
        assert lr["mixed_lr1e3"] == 0.001 and lr["mixed"] == 0.003
        draw = {p.system: p.config.pipeline.members.train_draw for p in exp.points}
        assert draw["unet_draw"] == draw["mixed_draw"] == "random" and draw["mixed"] == "fixed"
        fit = {p.system: p.config.pipeline.batches.exact_fit_init_times for p in exp.points}
        assert fit["emos_local_n50"] == 50 and fit["emos_local_n150"] == 150 and fit["mixed"] is None
    else:
        assert {p.system for p in exp.points} == {"emos_global", "emos_local", "emos_doy",
                                                  "emos_local_doy", "mlp", "mixed", "mixed_doy",
                                                  "mlp_s5", "mixed_s5", "mlp_draw", "mixed_draw"}
        assert exp.points[0].config.data.points.n == 500
        draw = {p.system: p.config.pipeline.members.train_draw for p in exp.points}
        assert draw["mlp_draw"] == draw["mixed_draw"] == "random" and draw["mixed"] == "fixed"
        seeds = {p.system: p.config.train.seeds for p in exp.points}
        assert seeds["mlp_s5"] == seeds["mixed_s5"] == 5 and seeds["mixed"] == 1
    for p in exp.points:
        cfg = p.config
        feats = cfg.pipeline.features
        leads = (feats.target_lead_time, *feats.input_lead_times)
        channels = tuple(f"{v}@{h}h" for h in leads for v in feats.variables)
        n, nt = len(channels), len(feats.targets)
        stats = {"channel_mean": np.zeros(n, np.float32), "channel_std": np.ones(n, np.float32),
                 "target_mean": np.zeros(nt, np.float32), "target_std": np.ones(nt, np.float32)}
        spec = ModelSpec(name=cfg.model.name, channels=channels, targets=tuple(feats.targets),
                         target_channels=tuple(channels.index(f"{t}@{feats.target_lead_time}h")
                                               for t in feats.targets),
                         static_names=STATIC_NAMES, n_members=cfg.pipeline.members.k,
                         grid_shape=(500, 1) if name == "pooled_stations" else (8, 16), stats=stats,
                         options=dict(cfg.model.options))
        model = build_model(spec)
        if name == "synthetic" and not p.system.startswith("emos"):
            assert model.options["mean_shift"] == "ensemble+local", p.system
    if name == "synthetic":
        # the width chosen on validation (32) for the U-Net and mixed, run 6's width 16 beside
        width = {p.system: p.config.model.options.get("width") for p in exp.points
                 if p.config.pipeline.members.k == 5}
        assert width["unet"] == width["mixed"] == width["mixed_w32_e16"] == 32
        assert width["unet_w16"] == width["mixed_w16"] == 16
