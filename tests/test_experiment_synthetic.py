"""``enspp experiment`` with ``kind: synthetic``: the --quick run end to end on a tiny world,
and every error branch of flows.experiment_synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from enspp.data.synth import SynthConfig
from enspp.data.synth.writer import COMPLETE_MARKER
from enspp.flows.experiment import ExperimentConfigError
from enspp.flows.experiment_synthetic import (
    SYSTEM_NAMES,
    SyntheticExperimentError,
    SyntheticSection,
    ensure_world,
    evaluate_config,
    inits_in_years,
    predict_test,
    quick_section,
    target_checks,
)
from enspp.flows.experiment_synthetic import load_synthetic_config as load_experiment_config

#: the test world: 8x16, three years of weekly inits, 4 perturbed members, t2m only
TINY = {"grid": [8, 16], "years": [2012, 2014], "init_weekdays": [0], "n_perturbed": 4,
        "variables": ["t2m"], "events_per_year": 2}


def _write(tmp_path: Path, synthetic: dict, **top) -> Path:
    doc = {"title": "tiny synthetic", "kind": "synthetic", "synthetic": synthetic, **top}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_quick_run_end_to_end(tmp_path):
    from enspp.flows.cli import main

    cfg = _write(tmp_path, {"world": TINY, "quick_world": TINY, "members": [2, 3], "variables": ["t2m"],
                            "targets": ["t2m"], "systems": ["emos_local", "mixed"],
                            "model_options": {"mixed": {"embed_dim": 4, "encoder_hidden": [8], "width": 8,
                                                        "depth": 1}}},
                 evaluate={"n_resamples": 10})
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quick"]) == 0
    result = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert (out / "index.html").is_file() and (out / "K3").is_dir()
    crps = {r["system"]: r["crps"] for r in result["rows"]}
    assert {"raw_full", "raw_subset", "emos", "mixed", "oracle"} <= set(crps)
    assert crps["oracle"] < crps["raw_full"]
    assert "| t2m | oracle |" in table and "twCRPS upper 5%" in table
    assert all(r["tw_upper"] is not None and r["tw_lower"] is not None for r in result["rows"])
    # quick: K=3 (the largest K <= min(5, the 4 perturbed members)), one epoch
    assert {r["K"] for r in result["rows"] if r["system"] == "mixed"} == {3}


def test_config_errors(tmp_path):
    with pytest.raises(ExperimentConfigError, match=r"members must be K in 1..4"):
        load_experiment_config(_write(tmp_path, {"world": TINY, "members": [5], "targets": ["t2m"],
                                                 "variables": ["t2m"]}))
    with pytest.raises(ExperimentConfigError, match="needs a 'synthetic' section"):
        load_experiment_config(_write(tmp_path, None))
    with pytest.raises(ValueError, match="lead_time 72"):
        SyntheticSection(world=SynthConfig(**TINY), lead_time=72, members=(2,), targets=("t2m",))
    with pytest.raises(ValueError, match=r"targets \['z500'\]"):
        SyntheticSection(world=SynthConfig(**TINY), members=(2,), targets=("z500",))
    with pytest.raises(ValueError, match="at least three years"):
        SyntheticSection(world=SynthConfig(**{**TINY, "years": [2012, 2013]}), members=(2,), targets=("t2m",))


def test_splits_and_quick_section():
    sec = SyntheticSection(members=(2, 3, 5, 10))
    assert sec.splits() == {"train": (2012, 2017), "val": (2018, 2018), "test": (2019, 2019)}
    q = quick_section(sec)
    assert q.members == (5,) and q.world == sec.quick_world and q.splits()["test"] == (2014, 2014)


def test_existing_other_world_is_refused(tmp_path):
    root = tmp_path / "synth"
    root.mkdir()
    (root / "synth.yaml").write_text(yaml.safe_dump({"synth": {**TINY, "seed": 7}}))
    (root / COMPLETE_MARKER).touch()  # a whole world of that config
    assert ensure_world(root, SynthConfig(**{**TINY, "seed": 7})) == root  # the same world: reused
    assert sorted(p.name for p in root.iterdir()) == [COMPLETE_MARKER, "synth.yaml"]  # not regenerated
    with pytest.raises(SyntheticExperimentError, match="holds another synthetic world"):
        ensure_world(root, SynthConfig(**TINY))


def test_no_inits_in_test_years(tmp_path, monkeypatch):
    import xarray as xr

    import enspp.data.store

    ds = xr.Dataset(coords={"init_time": np.array(["2012-01-02"], "datetime64[ns]")})
    monkeypatch.setattr(enspp.data.store, "open_store", lambda path: ds)
    with pytest.raises(SyntheticExperimentError, match="no init time in the test years 2019-2019"):
        inits_in_years(tmp_path / "fc.zarr", (2019, 2019))


def test_target_checks():
    def row(system, k, crps, ev, per_event=None):
        return {"variable": "t2m", "system": system, "K": k, "crps": crps, "events_crps": ev,
                "events_improvement": per_event}

    rows = [row("raw_full", 10, 1.0, 2.0), row("oracle", 10, 0.7, 1.0), row("emos", 5, 0.85, 1.8),
            row("mixed", 5, 0.78, 1.5, 12.5)]
    got = {c["target"]: (round(c["value"], 1), c["met"]) for c in target_checks(rows, k=5)}
    assert got == {"CRPS vs raw_full (>= 20% better)": (22.0, True),
                   "CRPS vs emos (>= 5% better)": (8.2, True),
                   "CRPS vs oracle (within 15%)": (11.4, True),
                   "extreme events, pooled CRPS, vs raw_full (>= 20% better)": (25.0, True),
                   "extreme events, mean of per-event gains vs raw_full (no target)": (12.5, None)}
    rows[-1] = row("mixed", 5, 0.78, 1.9)  # pooled gain 5 %: missed; no per-event figure
    got = {c["target"]: (c["value"], c["met"]) for c in target_checks(rows, k=5)}
    assert got["extreme events, pooled CRPS, vs raw_full (>= 20% better)"][1] is False
    assert got["extreme events, mean of per-event gains vs raw_full (no target)"] == (None, None)


def test_predict_test_is_the_gaussian_product_of_the_test_split(tmp_path):
    """predict_test = models.predict.predict's moments on whole fields: the values the test
    loader gives (its former implementation), rewritten afresh for another checkpoint."""
    from predict_data import loader_moments, make_checkpoint, make_stores, pipeline_config

    from enspp.models.checkpoint import file_sha256
    from enspp.models.product import open_product

    pipe = pipeline_config(make_stores(tmp_path / "stores", n_init=40),
                           batches={"patch_size": 8, "batch_size": 3})
    out = tmp_path / "products" / "mixed-K5.zarr"
    for seed in (0, 1):
        ckpt = make_checkpoint(tmp_path / f"{seed}.ckpt", pipe, perturb=0.05, seed=seed)
        reference = loader_moments(ckpt, pipe)
        got = open_product(predict_test(ckpt, pipe, out=out)).load()
        assert reference.sizes["init_time"] == 4 and got.sizes == reference.sizes
        assert set(got.data_vars) == {"t2m_mean", "t2m_std"} and set(got.coords) == set(reference.coords)
        for name, coord in reference.coords.items():
            np.testing.assert_array_equal(got[name].values, coord.values)
        for v in reference.data_vars:
            assert got[v].dims == reference[v].dims and got[v].dtype == np.float32
            np.testing.assert_allclose(got[v].values, reference[v].values, rtol=1e-6)
        assert got.attrs["checkpoint_sha256"] == file_sha256(ckpt) and got.attrs["distribution"] == "gaussian"
        assert float(got["t2m_std"].min()) > 0.1


def test_system_names_in_the_evaluation(tmp_path):
    sec = SyntheticSection(world=SynthConfig(**TINY), members=(2,), targets=("t2m",), variables=("t2m",))
    cfg = evaluate_config(sec, title="t", k=2, synth=tmp_path, n_boot=10, confidence=0.9, seed=0,
                          stores={"forecast": tmp_path / "fc.zarr", "analysis": tmp_path / "an.zarr"},
                          products={s: tmp_path / f"{s}.zarr" for s in SYSTEM_NAMES},
                          tail="upper", percentile=0.95, cases=False)
    assert [(s.name, s.key) for s in cfg.systems] == [
        ("raw_full", "raw_full"), ("raw_subset", "raw_subset"), ("emos", "emos"), ("emos", "emos_global"),
        ("mlp", "mlp"), ("unet", "unet"), ("mixed", "mixed"), ("oracle", "oracle")]


def test_shipped_config_builds_every_network():
    """configs/experiments/synthetic.yaml: its model options are valid for each system (so a
    typo there fails here, not after an hour of training) and every network shares the head."""
    from enspp.models import ModelSpec, build_model

    cfg = load_experiment_config(Path(__file__).parents[1] / "configs/experiments/synthetic.yaml")
    sec = cfg.synthetic
    assert sec.members == (2, 3, 5, 10) and set(sec.systems) == {"emos_local", "mlp", "unet", "mixed"}
    channels = tuple(f"{v}@{h}h" for h in (sec.lead_time, *sec.input_lead_times) for v in sec.variables)
    n = len(channels)
    stats = {"channel_mean": np.zeros(n, np.float32), "channel_std": np.ones(n, np.float32),
             "target_mean": np.zeros(3, np.float32), "target_std": np.ones(3, np.float32)}
    for name in sec.systems:
        options = dict(sec.model_options.get(name, {}))
        model = build_model(ModelSpec(name=name, channels=channels, targets=tuple(sec.targets),
                                      target_channels=(0, 1, 2), static_names=("lsm",), n_members=5,
                                      grid_shape=(8, 16), stats=stats, options=options))
        if name != "emos_local":
            assert model.options["mean_shift"] == "ensemble+local", name


def test_pooled_stations_run_end_to_end(tmp_path):
    """The world sampled at N grid points as stations: the station stores hold the grid's
    values at those points; EMOS (global, local) and mixed run on them through the service
    path and are scored without the oracle."""
    from enspp.data.store import open_store
    from enspp.flows.cli import main
    from enspp.flows.experiment_synthetic import station_points

    section = {"world": TINY, "quick_world": TINY, "members": [3], "variables": ["t2m"], "targets": ["t2m"],
               "systems": ["emos_global", "emos_local", "mixed"], "stations": 12, "station_seed": 3,
               "model_options": {"mixed": {"embed_dim": 4, "encoder_hidden": [8], "point_hidden": [8]}}}
    cfg = _write(tmp_path, section, evaluate={"n_resamples": 10})
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quick"]) == 0
    result = json.loads((out / "results.json").read_text())
    crps = {r["system"]: r["crps"] for r in result["rows"]}
    assert {"raw_full", "raw_subset", "emos", "emos_global", "mixed"} == set(crps)
    assert crps["emos"] < crps["raw_full"] and crps["mixed"] <= crps["emos"] * (1 + 1e-6)
    work = out / "work" / "stores"
    grid = open_store(work / "forecast.zarr")["t2m"]
    pts = open_store(work / "stations-12-s3" / "forecast.zarr")
    iy, ix = station_points(SyntheticSection(world=SynthConfig(**TINY), members=(3,), targets=("t2m",),
                                             variables=("t2m",), stations=12, station_seed=3, systems=("mixed",)))
    assert pts.sizes["station"] == 12 and len(set(zip(iy.tolist(), ix.tolist()))) == 12
    np.testing.assert_array_equal(pts["latitude"].values, grid["latitude"].values[iy])
    np.testing.assert_array_equal(pts["t2m"].isel(init_time=0).values,
                                  grid.isel(init_time=0).values[..., iy, ix])
    with pytest.raises(ValueError, match="unet needs a grid"):
        SyntheticSection(world=SynthConfig(**TINY), members=(2,), targets=("t2m",), variables=("t2m",),
                         stations=4, systems=("unet",))
    with pytest.raises(ValueError, match="more than the world's 128 grid points"):
        SyntheticSection(world=SynthConfig(**TINY), members=(2,), targets=("t2m",), variables=("t2m",),
                         stations=200)
