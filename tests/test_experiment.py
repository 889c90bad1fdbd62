"""enspp experiment: an enspp.yaml swept over what varies, every point through ingest, train,
the registry, predict and evaluate; the table from the evaluations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import properscoring
import pytest
import torch
import xarray as xr
import yaml
import zarr

from enspp.data.output_dir import OutputDirError, write_manifest
from enspp.evaluation.report import read_scores
from enspp.flows.cli import main
from enspp.flows.experiment import ExperimentConfigError, load_experiment, run_experiment
from enspp.models.product import open_product
from enspp.models.registry import current_version

N_MEMBERS = 11
ROOT = Path(__file__).parents[1]


def _station_file(path: Path, *, seed: int = 0, years: tuple[int, int] = (2008, 2010)) -> Path:
    """A station file in the layout of ../shared/data/station (rows = verifying dates,
    members as text labels, the control last), a biased and under-dispersed ensemble."""
    rng = np.random.default_rng(seed)
    time = pd.date_range(f"{years[0]}-01-02", f"{years[1]}-12-31", freq="D")
    n = len(time)
    doy = time.day_of_year.values
    truth = 10 + 8 * np.sin(2 * np.pi * (doy - 100) / 365.25) + rng.normal(0, 2.0, n)
    ens = truth[:, None] + 1.5 + rng.normal(0, 2.5, (n, 1)) + rng.normal(0, 0.8, (n, N_MEMBERS))
    labels = ["forc.CTRL"] + [f"forc.{i}" for i in range(1, N_MEMBERS)]
    order = list(range(1, N_MEMBERS)) + [0]
    ds = xr.Dataset({"t2m_ens": (("time", "member"), ens[:, order].astype("f4"), {"units": "degC"}),
                     "t2m_obs": ("time", truth.astype("f4"), {"units": "degC"})},
                    coords={"time": time, "member": [labels[i] for i in order]})
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path)
    return path


def _experiment(folder: Path, *, sweep: dict | None = None, **sections) -> Path:
    """An experiment file in ``folder`` whose work directory is ``folder/work`` and whose
    station file lies in ``folder/data`` (paths relative, as committed files write them)."""
    _station_file(folder / "data" / "testville.nc")
    raw = {
        "data": {"workdir": "work",
                 "station": {"variable": "t2m", "units": "degC", "time": "valid", "hour": 12,
                             "lead_time": 24, "control": "forc.CTRL",
                             "station": {"id": "T1", "name": "Testville", "latitude": 50.0,
                                         "longitude": 10.0, "elevation": 100}},
                 "incoming": {"forecast": ["../../data/testville.nc"], "analysis": ["../../data/testville.nc"]}},
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr", "analysis": "stores/analysis.zarr"},
                     "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                                  "static": ["sin_doy", "cos_doy"], "past_error": {"spread": True}},
                     "members": {"k": 5},
                     "split": {"train": [2008, 2008], "val": [2009, 2009], "test": [2010, 2010]},
                     "batches": {"batch_size": 100000, "preload": True}, "nan_policy": "mask"},
        "model": {"name": "mixed"},
        "train": {"max_epochs": 3, "early_stopping_patience": 2, "learning_rate": 0.01, "seeds": 2,
                  "refit": True},
        "predict": {"n_members": 4},
        "evaluate": {"title": "Testville", "systems": [{"name": "raw_full", "path": "stores/forecast.zarr"}],
                     "variables": ["t2m"], "split": "test", "crps_estimator": "standard",
                     "missing": "skip", "metrics": ["crps", "rmse"], "bootstrap": {"n": 20}},
        "sweep": sweep if sweep is not None else {
            "pipeline.members.k": [3, 5],
            "systems": {"emos_global": {"model.name": "emos_global"},
                        "mlp": {"model.name": "mlp", "model.options": {"hidden": [8]}}}},
    }
    for name, section in sections.items():
        raw[name] = section
    path = folder / "configs" / "exp.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_points_are_validated_configs(tmp_path):
    path = _experiment(tmp_path)
    exp = load_experiment(path)
    assert list(exp.groups) == ["k=3", "k=5"]
    assert [(p.group, p.system) for p in exp.points] == [
        ("k=3", "emos_global"), ("k=3", "mlp"), ("k=5", "emos_global"), ("k=5", "mlp")]
    p = exp.points[1]
    assert p.config.pipeline.members.k == 3 and p.config.model.name == "mlp"
    assert p.config.model.options == {"hidden": [8]} and p.slug == "k3-mlp"
    # paths resolve from the file's folder (data.workdir relative to it), not the CWD
    assert p.config.workdir.root == (tmp_path / "configs" / "work").resolve()
    assert p.config.pipeline.stores.forecast == p.config.workdir.root / "stores/forecast.zarr"
    quick = load_experiment(path, quick=True)
    assert [(p.group, p.system) for p in quick.points] == [("k=3", "emos_global"), ("k=3", "mlp")]
    assert quick.points[1].config.train.max_epochs == 3 and quick.points[1].config.train.seeds == 1
    assert quick.points[1].config.evaluate.bootstrap.n == 50


@pytest.mark.parametrize("sweep, match", [
    ({"train.lr": [0.1]}, r"train\.lr: unknown key"),
    ({"pipeline.members.k": 5}, r"sweep\.pipeline\.members\.k: must be a non-empty list"),
    ({"pipeline.members.k": [5, 5]}, "duplicate values"),
    ({"k": [5]}, "not a dotted key"),
    ({"systems": {"a b": {"model.name": "mlp"}}}, "label 'a b'"),
    ({"systems": {"x": {"model.name": "forest"}}}, "unknown model 'forest'"),
    ({"systems": []}, "non-empty mapping"),
    # a point whose model would refuse its options fails at load, before any point trains
    ({"systems": {"ok": {"model.name": "mlp"},
                  "tail": {"model.name": "mlp", "model.distribution": "censored_logistic",
                           "model.options": {"tail_weight": 0.2}}}},
     r"\(model.name=mlp model.distribution=censored_logistic model.options=.*\): model: options: "
     "option tail_weight needs the gaussian distribution"),
])
def test_sweep_errors_name_the_key(tmp_path, sweep, match):
    with pytest.raises(ExperimentConfigError, match=match):
        load_experiment(_experiment(tmp_path, sweep=sweep))


def test_a_point_may_override_a_mapping_holding_dates(tmp_path):
    """A system overriding the split with YAML dates (loaded as ``datetime.date``) is a point
    like any other, its label printable."""
    import datetime as dt

    recent = {"train": {"start": dt.date(2008, 3, 1), "end": dt.date(2008, 12, 31)}, "val": [2009, 2009],
              "test": [2010, 2010]}
    exp = load_experiment(_experiment(tmp_path, sweep={
        "systems": {"recent": {"model.name": "emos_global", "pipeline.split": recent}},
        "pipeline.split": [recent]}))
    (p,) = exp.points
    assert p.config.pipeline.split.train.start == dt.date(2008, 3, 1)
    assert "2008-03-01" in p.group and p.system == "recent"


def test_the_old_dialect_is_refused(tmp_path):
    path = _experiment(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["train"] = {"lr": 0.01, "patience": 5}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ExperimentConfigError, match=r"train\.lr: unknown key"):
        load_experiment(path)
    raw = yaml.safe_load(_experiment(tmp_path / "b").read_text())
    raw["kind"] = "station"
    (tmp_path / "b" / "configs" / "exp.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ExperimentConfigError, match="kind: an experiment file is an enspp.yaml with a sweep block"):
        load_experiment(tmp_path / "b" / "configs" / "exp.yaml")


def test_sweep_runs_every_point_through_the_service_path(tmp_path, monkeypatch, capsys):
    """Ingest, train, register, predict, evaluate per point; the table holds the evaluations'
    numbers; a checkpoint predicts with ``enspp predict`` exactly the product the sweep
    scored; the CWD does not matter."""
    import enspp.models.predict as predict_module

    path = _experiment(tmp_path / "proj")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outs, real_predict = [], predict_module.predict
    monkeypatch.setattr(predict_module, "predict",
                        lambda *a, **kw: outs.append(str(kw["out"])) or real_predict(*a, **kw))
    assert main(["experiment", "--config", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    res = json.loads((out / "results.json").read_text())
    assert (out / "index.html").is_file() and (out / "table.md").is_file()
    assert not list(elsewhere.iterdir())  # nothing written relative to the CWD
    work = tmp_path / "proj" / "configs" / "work"
    assert len(res["runs"]) == 4 and all(Path(r["checkpoint"]).is_file() for r in res["runs"])
    assert {Path(r["run"]).name for r in res["runs"]} == {
        "exp-k3-emos_global", "exp-k3-mlp", "exp-k5-emos_global", "exp-k5-mlp"}
    # the table's rows are the evaluations' headline numbers
    for group, slug in (("k=3", "k3"), ("k=5", "k5")):
        doc = read_scores(out / "evaluations" / slug)
        head = {r["system"]: r for r in doc["variables"]["t2m"]["headline"]["global"]}
        assert set(head) == {"raw_full", "raw_subset", "emos_global", "mlp"}
        rows = {r["system"]: r for r in res["rows"] if r["group"] == group}
        for system, r in head.items():
            assert rows[system]["crps"] == pytest.approx(r["crps"])
        # post-processing the biased ensemble beats it
        assert head["emos_global"]["crps"] < 0.8 * head["raw_full"]["crps"]
    assert "emos_global" in printed and "raw_subset" in printed
    # the registry holds the best point on validation as its current version, every point
    # scored as the train flow scores it: validation CRPS in degC of its validation product
    best = min(res["runs"], key=lambda r: r["registry_score"])
    current = current_version(work / "registry")
    assert current.score == pytest.approx(best["registry_score"]) and current.version == best["version"]
    # each version's validation product predicted once, however often it was scored
    cached = sorted((work / "cache" / "validation").glob("*.zarr"))
    assert len(cached) == len({r["version"] for r in res["runs"]}) == 4
    assert sorted(o for o in outs if "validation" in o) == [str(c) for c in cached]
    assert {r["registry_metric"] for r in res["runs"]} == {"validation t2m CRPS (closed-form gaussian CRPS)"}
    truth = xr.open_zarr(work / "stores/analysis.zarr")["t2m"]
    for r in res["runs"]:
        val = open_product(r["validation_product"])
        assert r["version"] in Path(r["validation_product"]).name
        assert str(val.init_time.values[0])[:4] == "2009" and str(val.init_time.values[-1])[:4] == "2009"
        valid = (val.init_time + val.lead_time).squeeze("lead_time", drop=True)
        obs = truth.sel(time=valid).squeeze(drop=True).values
        mu = val["t2m_mean"].squeeze(drop=True).values
        sd = val["t2m_std"].squeeze(drop=True).values
        ok = np.isfinite(obs)
        assert r["registry_score"] == pytest.approx(
            float(properscoring.crps_gaussian(obs[ok], mu[ok], sd[ok]).mean()), rel=1e-4)
    # enspp predict on a sweep's checkpoint writes the product the sweep evaluated
    run = next(r for r in res["runs"] if r["system"] == "mlp" and r["group"] == "k=5")
    product = tmp_path / "again.zarr"
    assert main(["predict", "--checkpoint", run["checkpoint"], "--store",
                 str(work / "stores/forecast.zarr"), "--out", str(product)]) == 0
    mine = open_product(product)
    theirs = open_product(run["product"])
    common = np.intersect1d(mine.init_time.values, theirs.init_time.values)
    assert common.size == theirs.sizes["init_time"] > 300
    np.testing.assert_allclose(mine["t2m_mean"].sel(init_time=common).values,
                               theirs["t2m_mean"].values, rtol=1e-6)


def test_a_failed_run_leaves_no_out_directory(tmp_path, monkeypatch):
    path = _experiment(tmp_path, sweep={"systems": {"emos_global": {"model.name": "emos_global"}}})
    exp = load_experiment(path)
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation died")

    monkeypatch.setattr("enspp.flows.experiment.evaluate_group", broken)
    with pytest.raises(RuntimeError, match="evaluation died"):
        run_experiment(exp, out_dir=out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # an earlier result stays as it was
    out.mkdir()
    (out / "table.md").write_text("earlier")
    (out / "results.json").write_text(json.dumps({"title": "t", "config": "c", "axes": [],
                                                  "rows": [], "runs": []}))
    write_manifest(out, kind="experiment")
    with pytest.raises(RuntimeError):
        run_experiment(exp, out_dir=out)
    assert (out / "table.md").read_text() == "earlier"


def test_an_out_directory_that_is_not_results_is_refused_untouched(tmp_path, monkeypatch):
    """The results replace their directory: one holding anything an earlier run did not
    write (a typo'd --out, another tool's run with its own results.json, notes added to
    earlier results) is refused before any point runs, and left as it was; the working
    directory too."""
    path = _experiment(tmp_path, sweep={"systems": {"emos_global": {"model.name": "emos_global"}}})
    exp = load_experiment(path)
    ran = []
    monkeypatch.setattr("enspp.flows.experiment.run_point", lambda *a, **k: ran.append(a))
    out = tmp_path / "papers"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputDirError, match=r"experiment output .*papers: the directory holds "
                                             r"files and is not an enspp experiment output "
                                             r"\(thesis.tex\)"):
        run_experiment(exp, out_dir=out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and not ran
    other = tmp_path / "mltool_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "results.json").write_text('{"accuracy": 0.9}')
    (other / "table.md").write_text("| a |")
    (other / "checkpoints" / "best.ckpt").write_bytes(b"precious")
    with pytest.raises(OutputDirError, match="is not an enspp experiment output"):
        run_experiment(exp, out_dir=other)
    assert (other / "checkpoints" / "best.ckpt").read_bytes() == b"precious" and not ran
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "table.md").write_text("earlier")
    write_manifest(earlier, kind="experiment")
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"holds files the experiment output did not write "
                                             r"\(notes.txt\)"):
        run_experiment(exp, out_dir=earlier)
    assert (earlier / "notes.txt").read_text() == "mine" and not ran
    monkeypatch.chdir(out)
    with pytest.raises(OutputDirError, match="working directory cannot be replaced"):
        run_experiment(exp, out_dir=".")
    assert (out / "thesis.tex").read_text() == "precious" and not ran


@pytest.mark.slow
def test_magdeburg_sweep_reproduces_the_committed_table(shared_data, tmp_path):
    """The committed Magdeburg file, narrowed by its own sweep syntax to global EMOS at K = 25
    (an exact fit: deterministic), reproduces the published raw and EMOS scores."""
    raw = yaml.safe_load((ROOT / "configs/experiments/magdeburg_t2m.yaml").read_text())
    raw["data"]["workdir"] = str(tmp_path / "work")
    station = shared_data / "station/ecmwf_ens_t2m_magdeburg_2002-2014.nc"
    raw["data"]["incoming"] = {"forecast": [str(station)], "analysis": [str(station)]}
    raw["sweep"] = {"pipeline.members.k": [25],
                    "systems": {"emos_global": raw["sweep"]["systems"]["emos_global"]}}
    raw["evaluate"]["bootstrap"]["n"] = 50
    raw["evaluate"]["metrics"] = ["crps"]
    # the case catalogue is named relative to the work directory, moved here
    raw["evaluate"]["cases"] = [str(ROOT / "configs/cases/magdeburg_t2m.yaml")]
    path = tmp_path / "magdeburg.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = run_experiment(load_experiment(path), out_dir=tmp_path / "out")
    rows = {r["system"]: r for r in res["rows"]}
    # docs/results.md, Magdeburg table (K = 25; 804 test dates)
    assert rows["raw_full"]["crps"] == pytest.approx(0.894, abs=6e-4)
    assert rows["raw_subset"]["crps"] == pytest.approx(0.898, abs=6e-4)
    assert rows["emos_global"]["crps"] == pytest.approx(0.755, abs=6e-4)
    # its checkpoint is an ordinary model: registered, and `enspp predict` serves it
    run = res["runs"][0]
    assert current_version(tmp_path / "work" / "registry").version == run["version"]


def test_the_magdeburg_variants_file_varies_one_setting_each():
    from enspp.flows.experiment import load_any

    exp = load_any(ROOT / "configs/experiments/magdeburg_t2m_variants.yaml")
    base = load_any(ROOT / "configs/experiments/magdeburg_t2m.yaml")
    committed = next(p for p in base.points if p.system == "mixed" and p.group == "k=25").config
    k25 = {p.system: p.config for p in exp.points if p.group == "k=25"}
    assert set(k25) == {"mixed", "mixed_w32", "mixed_hl2", "mixed_recent"}
    # the same fit and product (what a point is matched by; the evaluation may add cases)
    from enspp.flows.experiment import POINT_SECTIONS

    sections = set(POINT_SECTIONS)
    assert k25["mixed"].model_dump(include=sections) == committed.model_dump(include=sections)
    assert k25["mixed"].model.options["encoder_hidden"] == [64]
    assert k25["mixed_w32"].model.options["encoder_hidden"] == [32]
    assert k25["mixed_hl2"].model.options == k25["mixed_w32"].model.options
    assert k25["mixed_hl2"].pipeline.features.past_error.halflife_days == 2
    assert str(k25["mixed_recent"].pipeline.split.train.start) == "2006-01-01"


@pytest.mark.parametrize("name", ["magdeburg_t2m", "magdeburg_t2m_biased", "frankfurt_tp24"])
def test_committed_experiment_files_load(name):
    from enspp.flows.experiment import Experiment, load_any

    exp = load_any(ROOT / "configs/experiments" / f"{name}.yaml")
    assert isinstance(exp, Experiment) and list(exp.groups) == ["k=25", "k=10", "k=5"]
    mixed = next(p for p in exp.points if p.system == "mixed")
    assert mixed.config.train.seeds == 10
    if name.startswith("frankfurt"):  # the former setting beside it, and the MLP's
        seeds = {p.system: p.config.train.seeds for p in exp.points}
        assert seeds["mixed_s3"] == seeds["mlp"] == 3
        # the networks train on fresh member draws (chosen on validation), beside the fixed
        draw = {p.system: p.config.pipeline.members.train_draw for p in exp.points}
        assert draw["mixed"] == draw["mlp"] == "random"
        assert draw["mixed_fixed"] == draw["mlp_fixed"] == draw["emos_local"] == "fixed"
    assert mixed.config.train.refit and mixed.config.pipeline.batches.preload
    # the seasonal EMOS baseline (day-of-year terms) sits beside the static one
    if name != "magdeburg_t2m_biased":
        doy = [p for p in exp.points if p.system == "emos_doy"]
        assert len(doy) == 3 and all(p.config.model.name == "emos_global"
                                     and p.config.model.options["season"] == "doy" for p in doy)
    # the HRES forecast as a predictor: only in its own entries, read from the same file
    if name != "magdeburg_t2m_biased":
        hres = {p.system for p in exp.points if p.config.pipeline.features.hres}
        assert hres == {"emos_hres", "mixed_hres"}
        assert next(p for p in exp.points if p.system == "emos_hres").config.model.name == "emos_lagged"
        assert mixed.config.data.incoming.deterministic == mixed.config.data.incoming.forecast
        assert mixed.config.pipeline.stores.deterministic is not None
    # the station file is found from the file's folder, whatever the current directory
    assert all(Path(f).resolve().is_relative_to(ROOT.parent / "shared")
               for f in mixed.config.data.incoming.forecast)


def test_the_rolling_refit_file_predicts_each_test_year_with_the_years_before_it():
    """magdeburg_t2m_rolling.yaml: the committed network and local EMOS, each test year
    (2012, 2013, 2014) predicted by a fit whose training, validation and refit years all
    precede it; otherwise the settings of magdeburg_t2m.yaml."""
    from enspp.flows.experiment import load_any

    base = load_any(ROOT / "configs/experiments/magdeburg_t2m.yaml")
    exp = load_any(ROOT / "configs/experiments/magdeburg_t2m_rolling.yaml")
    mixed = next(p for p in base.points if p.system == "mixed" and p.group == "k=25").config
    years = {}
    for p in exp.points:
        split = p.config.pipeline.split
        test = (split.test.start.year, split.test.end.year)
        years.setdefault(p.system.split("_y")[0], []).append(test)
        assert split.val.end.year + 1 == split.test.start.year and split.train.start.year == 2002
        if p.system.startswith("mixed"):
            assert p.config.model == mixed.model and p.config.train == mixed.train
            assert p.config.pipeline.features == mixed.pipeline.features
    assert years == {"mixed": [(2012, 2014), (2013, 2013), (2014, 2014)],
                     "emos_local": [(2012, 2014), (2013, 2013), (2014, 2014)]}


def test_a_point_killed_mid_fit_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A point whose fit was killed after two epochs continues from its ``last.ckpt`` when the
    experiment runs again with the same config, and ends with the weights of a fit never
    stopped; a changed config starts the point again from scratch."""
    from enspp.models.progress import TrainProgress

    sweep = {"systems": {"mlp": {"model.name": "mlp", "model.options": {"hidden": [8]}}}}
    train = {"max_epochs": 4, "early_stopping_patience": None, "learning_rate": 0.01}
    whole = run_experiment(load_experiment(_experiment(tmp_path / "a", sweep=sweep, train=train)),
                           out_dir=tmp_path / "a" / "out")
    path = _experiment(tmp_path / "b", sweep=sweep, train=train)

    class Killed(Exception):
        pass

    class KilledAtEpoch2(TrainProgress):
        def on_train_epoch_start(self, trainer, *args):
            if trainer.current_epoch == 2:
                raise Killed
            super().on_train_epoch_start(trainer, *args)

    with monkeypatch.context() as m:
        m.setattr("enspp.models.train.TrainProgress", KilledAtEpoch2)
        with pytest.raises(Killed):
            run_experiment(load_experiment(path), out_dir=tmp_path / "b" / "out")
    run_dir = tmp_path / "b" / "configs" / "work" / "runs" / "exp-mlp"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    said = []
    resumed = run_experiment(load_experiment(path), out_dir=tmp_path / "b" / "out", progress=said.append)
    assert any("resuming" in line for line in said)
    a = torch.load(whole["runs"][0]["checkpoint"], weights_only=True)
    b = torch.load(resumed["runs"][0]["checkpoint"], weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert (run_dir / "logs" / "csv" / "version_1").is_dir()  # the same run, continued
    # a point stopped with another config is not resumed but trained again
    path.write_text(path.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    with monkeypatch.context() as m:
        m.setattr("enspp.models.train.TrainProgress", KilledAtEpoch2)
        with pytest.raises(Killed):
            run_experiment(load_experiment(path), out_dir=tmp_path / "b" / "out")
    path.write_text(path.read_text().replace("learning_rate: 0.02", "learning_rate: 0.03"))
    said.clear()
    run_experiment(load_experiment(path), out_dir=tmp_path / "b" / "out", progress=said.append)
    assert not any("resuming" in line for line in said)
    assert not (run_dir / "logs" / "csv" / "version_1").exists()


def test_validation_init_times_without_inputs_are_left_out_alike(tmp_path, monkeypatch):
    """Two validation dates whose perturbed members are missing (the control is there, so
    the init times are in the store, their K members' fields absent): every
    point's validation product records them as skipped, the registry compares candidate and
    current on the init times both hold, and the cached current product is not predicted
    again for them (predicting only those would skip them all: an error)."""
    import enspp.models.predict as predict_module

    path = _experiment(tmp_path / "proj", sweep={
        "systems": {"emos_global": {"model.name": "emos_global"},
                    "emos_local": {"model.name": "emos_local"}}})
    station = tmp_path / "proj" / "data" / "testville.nc"
    ds = xr.load_dataset(station)
    gaps = np.array(["2009-05-10", "2009-08-20"], dtype="datetime64[ns]")
    perturbed = [m for m in ds.member.values if m != "forc.CTRL"]
    ds["t2m_ens"].loc[{"time": gaps, "member": perturbed}] = np.nan
    ds.to_netcdf(station)
    calls, real_predict = [], predict_module.predict
    monkeypatch.setattr(predict_module, "predict",
                        lambda *a, **kw: calls.append((str(kw["out"]), kw.get("init_times")))
                        or real_predict(*a, **kw))
    assert main(["experiment", "--config", str(path), "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    inits = gaps + np.timedelta64(12 - 24, "h")  # the forecasts verifying there at 12 UTC
    for r in res["runs"]:
        val = open_product(r["validation_product"])
        assert val.attrs["enspp_skipped"] == [str(t) for t in inits]
        assert not np.isin(inits, val.init_time.values).any()
        assert val.sizes["init_time"] == 365 - 2
    validation = [c for c in calls if f"cache{os.sep}validation" in c[0]]
    assert len(validation) == len({r["version"] for r in res["runs"]}) == 2
    best = min(res["runs"], key=lambda r: r["registry_score"])
    assert current_version(tmp_path / "proj" / "configs" / "work" / "registry").version == best["version"]
    # a validation product written before skipped init times were recorded: completing it
    # predicts only those two, which are skipped again and now recorded, not an error
    from enspp.flows.steps import validation_candidates, validation_product
    from enspp.flows.tasks import predict_init_times

    run = res["runs"][0]
    group = zarr.open_group(run["validation_product"], mode="r+")
    del group.attrs["enspp_skipped"]
    zarr.consolidate_metadata(run["validation_product"])
    config = load_experiment(path).points[0].config
    calls.clear()
    ckpt, version = validation_candidates(tmp_path / "proj" / "configs" / "work" / "registry",
                                          run["checkpoint"])["candidate"]
    validation_product(config, ckpt, version, Path(run["validation_product"]),
                       predict=predict_init_times.fn)
    assert [len(c[1]) for c in calls] == [2]
    assert open_product(run["validation_product"]).attrs["enspp_skipped"] == [str(t) for t in inits]


def test_a_point_whose_registration_failed_keeps_its_fit(tmp_path, monkeypatch):
    """A point trained to the end whose registration failed is not trained again when the
    experiment runs again with the same config: it goes on from its fit."""
    import enspp.flows.experiment as E
    import enspp.models.train as T

    sweep = {"systems": {"mlp": {"model.name": "mlp", "model.options": {"hidden": [8]}}}}
    path = _experiment(tmp_path, sweep=sweep)
    fits, real_train = [], T.train
    monkeypatch.setattr(T, "train", lambda *a, **kw: fits.append(1) or real_train(*a, **kw))

    def fails(*args, **kwargs):
        raise RuntimeError("registry unreachable")

    with monkeypatch.context() as m:
        m.setattr(E, "_register", fails)
        with pytest.raises(RuntimeError, match="registry unreachable"):
            run_experiment(load_experiment(path), out_dir=tmp_path / "out")
    assert len(fits) == 1
    said = []
    res = run_experiment(load_experiment(path), out_dir=tmp_path / "out", progress=said.append)
    assert len(fits) == 1 and any("reusing the fit" in line for line in said)
    assert res["runs"][0]["registered"] and Path(res["runs"][0]["product"]).is_dir()
    # a changed config trains again
    changed = _experiment(tmp_path, sweep=sweep, train={"max_epochs": 2, "seeds": 1})
    run_experiment(load_experiment(changed), out_dir=tmp_path / "out2")
    assert len(fits) == 2


def test_a_change_to_the_evaluation_alone_neither_trains_nor_predicts_again(tmp_path, monkeypatch):
    """A point's files are matched by the sections its fit (data, pipeline, model, train)
    and its product (those and predict) depend on: a run with other evaluate metrics reuses
    every point whole, other predict options predict again from the same fit, and a point
    recorded under the former whole-config hash is reused too."""
    import enspp.flows.experiment as E
    import enspp.models.predict as P
    import enspp.models.train as T

    sweep = {"systems": {"emos_global": {"model.name": "emos_global"}}}
    path = _experiment(tmp_path, sweep=sweep)
    fits, predicts = [], []
    real_train, real_predict = T.train, P.predict
    monkeypatch.setattr(T, "train", lambda *a, **kw: fits.append(1) or real_train(*a, **kw))
    monkeypatch.setattr(P, "predict", lambda *a, **kw: predicts.append(str(kw["out"]))
                        or real_predict(*a, **kw))
    first = run_experiment(load_experiment(path), out_dir=tmp_path / "out")
    n_predicts = len(predicts)
    assert len(fits) == 1 and n_predicts >= 1
    raw = yaml.safe_load(path.read_text())
    raw["evaluate"]["metrics"] = ["crps", "rmse", "spread_skill"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    said = []
    again = run_experiment(load_experiment(path), out_dir=tmp_path / "out2", progress=said.append)
    assert len(fits) == 1 and len(predicts) == n_predicts
    assert any("reusing" in line and "(same config)" in line for line in said)
    assert again["runs"][0]["product"] == first["runs"][0]["product"]
    # a point file of the former key (the whole config's hash) is reused as well
    point = load_experiment(path).points[0]
    run_dir = point.config.workdir.runs / f"{load_experiment(path).name}-{point.slug}"
    info = json.loads((run_dir / E.POINT_FILE).read_text())
    info["config_sha256"] = E.point_keys(point.config).legacy
    (run_dir / E.POINT_FILE).write_text(json.dumps(info))
    run_experiment(load_experiment(path), out_dir=tmp_path / "out3")
    assert len(fits) == 1 and len(predicts) == n_predicts
    # other predict options: the same fit, predicted again
    raw["predict"]["n_members"] = 6
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    said.clear()
    run_experiment(load_experiment(path), out_dir=tmp_path / "out4", progress=said.append)
    assert len(fits) == 1 and len(predicts) > n_predicts
    assert any("reusing the fit" in line for line in said)


def test_points_testing_on_different_periods_are_evaluated_apart(tmp_path):
    """A point overriding the split (a rolling refit's later year) is evaluated over its own
    test period, beside the group's others over theirs, not refused for sharing no init time."""
    split = {"train": [2008, 2008], "val": [2009, 2009], "test": [2010, 2010]}
    later = {"train": {"start": "2008-01-01", "end": "2009-06-30"},
             "val": {"start": "2009-07-01", "end": "2009-12-31"},
             "test": {"start": "2010-07-01", "end": "2010-12-31"}}
    path = _experiment(tmp_path, sweep={"systems": {
        "emos_global": {"model.name": "emos_global", "pipeline.split": split},
        "emos_global_late": {"model.name": "emos_global", "pipeline.split": later}}})
    res = run_experiment(load_experiment(path), out_dir=tmp_path / "out")
    groups = {r["system"]: r["group"] for r in res["rows"] if r["system"].startswith("emos")}
    assert groups == {"emos_global": "all · test 2010-01-01..2010-12-30",
                      "emos_global_late": "all · test 2010-07-01..2010-12-30"}
    raws = [r for r in res["rows"] if r["system"] == "raw_full"]
    assert len(raws) == 2 and raws[0]["crps"] != raws[1]["crps"]  # scored over each period
    # two reports (and the lock files of their writers beside them)
    assert len([p for p in (tmp_path / "out" / "evaluations").iterdir()
                if not p.name.endswith(".lock")]) == 2
