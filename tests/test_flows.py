"""The Prefect flows (ingest, train, predict, evaluate) under ``prefect_test_harness``, and the
model registry they use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_store import forecast

from enspp.data.grib_writer import write_grib
from enspp.data.ingest import new_inputs
from enspp.data.store import open_store
from enspp.flows.tasks import FlowInputError, IngestFilesError, is_transient
from enspp.models.registry import (
    RegistryError,
    current_version,
    decide,
    list_versions,
    read_decisions,
    register_if_better,
)

INITS = ["2020-01-01T00", "2020-01-01T12", "2020-01-02T00"]


_HARNESS: list = []


@pytest.fixture(scope="session")
def harness():
    """One Prefect test harness (temporary server and database) for the whole session, shared
    with test_faults.py, which imports this fixture: whichever module starts it stops it."""
    yield from shared_harness()


def shared_harness():
    from prefect.testing.utilities import prefect_test_harness

    created = not _HARNESS
    if created:
        cm = prefect_test_harness(server_startup_timeout=240)
        cm.__enter__()
        _HARNESS.append(cm)
    yield
    if created:
        _HARNESS.pop().__exit__(None, None, None)


def write_forecast_gribs(d: Path, inits: list[str]) -> list[Path]:
    """One small forecast GRIB file per init time in ``d`` (``fc<i>.grib``, seed ``i``)."""
    d.mkdir()
    out = []
    for i, init in enumerate(inits):
        out.append(d / f"fc{i}.grib")
        write_grib(out[-1], forecast([init], seed=i), kind="forecast")
    return out


@pytest.fixture
def gribs(tmp_path) -> list[Path]:
    return write_forecast_gribs(tmp_path / "in", INITS)


# ------------------------------------------------------------------ pure helpers
def test_is_transient():
    from enspp.data.lock import StoreLockedError

    assert is_transient(FileNotFoundError("x")) and is_transient(OSError("disk"))
    assert is_transient(StoreLockedError("busy"))
    assert not is_transient(ValueError("corrupt")) and not is_transient(None)
    assert not is_transient(IsADirectoryError("dir"))
    assert not is_transient(IngestFilesError([("a.grib", "bad")], store="s"))


def test_new_inputs_skip_what_the_store_holds(tmp_path, gribs):
    from enspp.data.ingest import ingest

    store = tmp_path / "s.zarr"
    new, done = new_inputs([str(gribs[0].parent)], store)
    assert (new, done) == ([str(p) for p in gribs], [])
    ingest(gribs[:2], store, progress=False)
    new, done = new_inputs([str(gribs[0].parent / "*.grib"), str(tmp_path / "gone.grib")], store)
    assert done == [str(p) for p in gribs[:2]]
    assert new == [str(gribs[2]), str(tmp_path / "gone.grib")]  # missing kept: its task fails


def test_ingest_errors_keep_their_files_through_pickling():
    """A task runner in other processes (dask) pickles a task's error: the refused files and
    their problems must survive, not fail to rebuild for want of ``store=``."""
    import pickle

    from enspp.data.ingest import IngestError

    for cls in (IngestFilesError, IngestError):
        err = cls([("a.grib", "a.grib: not GRIB"), ("b.grib", "truncated")], store="s.zarr")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and back.failures == err.failures and str(back) == str(err)


def test_a_missing_file_beside_refused_ones_tells_what_became_of_them(tmp_path, gribs,
                                                                      monkeypatch):
    """A task with a missing file and a corrupt one: the message (retried: the missing file
    may still be arriving) says which of the others landed and which were refused, instead
    of claiming they were all ingested."""
    import logging

    import enspp.flows.tasks as tasks

    monkeypatch.setattr(tasks, "get_run_logger", lambda: logging.getLogger("test"))
    bad = tmp_path / "bad.grib"
    bad.write_bytes(b"GRIB not really")
    files = [str(gribs[0]), str(bad), str(tmp_path / "late.grib")]
    with pytest.raises(FileNotFoundError) as e:
        tasks.ingest_files.fn(files, str(tmp_path / "s.zarr"), kind="forecast")
    text = str(e.value)
    assert "1 input file(s) not found" in text and "late.grib" in text
    assert "of the other 2, 1 landed and 1 were refused: " in text and "bad.grib" in text
    assert "were ingested" not in text


# ------------------------------------------------------------------ ingest flow
def test_ingest_flow_lands_good_files_and_fails_naming_bad_ones(harness, tmp_path, gribs):
    from enspp.flows.ops import ingest_flow

    bad = gribs[0].parent / "corrupt.grib"
    bad.write_bytes(gribs[0].read_bytes()[:200])
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data: {incoming: {forecast: [in, missing.grib]}, files_per_task: 1}\n")
    state = ingest_flow(str(cfg), return_state=True)
    assert state.is_failed()
    msg = state.message
    assert "corrupt.grib: " in msg and "missing.grib: no such file" in msg
    assert "2 of 5 new files failed, the other 3 landed" in msg
    assert not any(f"{g.name}" in msg for g in gribs)  # the files that landed are not named
    store = tmp_path / "stores" / "forecast.zarr"
    assert open_store(store).sizes["init_time"] == 3
    # a re-run with the good files only: nothing new, nothing to do
    cfg.write_text("data: {incoming: {forecast: ['in/fc*.grib']}}\n")
    assert ingest_flow(str(cfg)) == {"forecast": {"new": 0, "already_ingested": 3}}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = {a.data for a in client.read_artifacts() if a.key == "enspp-ingest"}
    assert f"- forecast: 0 new file(s) ingested, 3 already in {store}" in "".join(runs)


def test_ingest_flow_samples_points_after_the_grid(harness, tmp_path, gribs):
    """data.points: the files land in the grid stores, then the pipeline's station stores are
    the grid at the seeded points (written once; a second run adds nothing)."""
    from enspp.data.points import random_points
    from enspp.flows.ops import ingest_flow

    an = tmp_path / "an"
    an.mkdir()
    analysis = forecast(["2020-01-01T00", "2020-01-01T12"], members=1, leads=(0,)).isel(
        lead_time=0, member=0, drop=True).rename(init_time="time")
    write_grib(an / "an.grib", analysis, kind="analysis")
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data: {incoming: {forecast: [in], analysis: [an]}, files_per_task: 3,\n"
                   "       points: {n: 5, seed: 1, grid: {forecast: grid/fc.zarr, analysis: grid/an.zarr}}}\n"
                   "pipeline: {stores: {forecast: pts/fc.zarr, analysis: pts/an.zarr}}\n")
    assert ingest_flow(str(cfg)) == {"forecast": {"new": 3, "already_ingested": 0},
                                     "analysis": {"new": 1, "already_ingested": 0}}
    grid, pts = open_store(tmp_path / "grid/fc.zarr"), open_store(tmp_path / "pts/fc.zarr")
    rows, cols = random_points((grid.sizes["latitude"], grid.sizes["longitude"]), n=5, seed=1)
    assert pts.sizes["station"] == 5 and open_store(tmp_path / "pts/an.zarr").sizes["station"] == 5
    np.testing.assert_array_equal(pts["t2m"].isel(station=2).values,
                                  grid["t2m"].isel(latitude=rows[2], longitude=cols[2]).values)
    assert ingest_flow(str(cfg))["forecast"] == {"new": 0, "already_ingested": 3}


def test_ingest_flow_with_paths_and_input_errors(harness, tmp_path, gribs):
    from enspp.flows.ops import ingest_flow

    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("")
    with pytest.raises(FlowInputError, match="nothing to ingest"):
        ingest_flow.fn(str(cfg))
    with pytest.raises(FlowInputError, match="kind must be 'forecast' or 'analysis'"):
        ingest_flow.fn(str(cfg), paths=[str(gribs[0])])
    out = ingest_flow(str(cfg), paths=[str(p) for p in gribs[:2]], kind="forecast")
    assert out == {"forecast": {"new": 2, "already_ingested": 0}}


def test_flows_need_a_config(monkeypatch):
    from enspp.flows.runtime import resolve_config

    monkeypatch.delenv("ENSPP_CONFIG", raising=False)
    with pytest.raises(ValueError, match="no config: pass config_path or set ENSPP_CONFIG"):
        resolve_config(None)


# ------------------------------------------------------------------ train / predict / evaluate
FLOW_CONFIG = """
pipeline:
  stores: {forecast: stores/forecast.zarr, analysis: stores/analysis.zarr,
           static: stores/static.nc, statistics: cache/statistics.nc}
  members: {k: 5}
  split: {train: {start: 2019-01-01, end: 2019-01-18}, val: {start: 2019-01-19, end: 2019-01-24},
          test: {start: 2019-01-25, end: 2019-01-31}}
  batches: {batch_size: 8}
model: {name: mixed, options: {embed_dim: 4, encoder_hidden: [4], width: 4, depth: 1}}
train: {max_epochs: 2, progress_bar: false, early_stopping_patience: null, learning_rate: 0.01}
predict: {n_members: 4}
evaluate: {systems: [{name: raw_full, path: stores/forecast.zarr}], truth: stores/analysis.zarr,
           split: test, metrics: [crps, rmse], bootstrap: {n: 10}}
"""


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from enspp.pipeline.synthetic import write_stores

    wd = tmp_path_factory.mktemp("flows")
    write_stores(wd / "stores", n_init=30, lead_hours=(24, 48), n_members=6, ny=16, nx=24,
                 start="2019-01-01")
    (wd / "enspp.yaml").write_text(FLOW_CONFIG)
    return wd


def test_train_predict_evaluate_flows(harness, small_world):
    from prefect.client.orchestration import get_client

    from enspp.flows.ops import evaluate_flow, predict_flow, train_flow

    cfg = str(small_world / "enspp.yaml")
    registry = small_world / "registry"
    state = predict_flow(cfg, return_state=True)
    assert state.is_failed() and "no current model in registry" in state.message

    first = train_flow(cfg)
    assert first["registered"] and first["reason"].startswith("no current version")
    assert current_version(registry).version == first["version"]
    # the validation product in the work directory's cache, shared with the experiments
    cached = list((small_world / "cache" / "validation").glob(f"{first['version']}-*.zarr"))
    assert len(cached) == 1 and (cached[0] / "zarr.json").is_file()
    stamp = (cached[0] / "zarr.json").stat().st_mtime_ns
    second = train_flow(cfg, min_improvement=1e9)  # cannot beat the current model by that much
    assert not second["registered"] and current_version(registry).version == first["version"]
    # the current version was scored again without predicting its validation product again
    assert (cached[0] / "zarr.json").stat().st_mtime_ns == stamp
    log = read_decisions(registry)
    assert [d["registered"] for d in log] == [True, False] and "does not beat" in log[1]["reason"] \
        or "same checkpoint" in log[1]["reason"]

    product = Path(predict_flow(cfg))  # the latest init time
    from enspp.models.product import open_product

    ds = open_product(product)
    assert [str(t)[:10] for t in ds.init_time.values] == ["2019-01-30"]
    missing = predict_flow(cfg, init_times=["2018-06-01T00"], return_state=True)
    assert missing.is_failed() and "have not arrived" in missing.message
    predict_flow(cfg, split="test", init_times_per_task=3)
    assert open_product(product).sizes["init_time"] == 6  # 2019-01-25..30

    out = evaluate_flow(cfg)
    systems = {r["system"] for r in out["rows"]}
    assert {"raw_full", "raw_subset", "mixed"} <= systems
    assert Path(out["index"]).is_file()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    keys = {a.key for a in artifacts}
    assert {"enspp-headline", "enspp-dashboard", "enspp-train", "enspp-predict"} <= keys
    # what each run did, in the UI beside the run (flow results are not persisted)
    trains = [a.data for a in artifacts if a.key == "enspp-train"]
    assert any(f"train: {first['version']} registered" in m and "run directory: " in m
               for m in trains)
    assert any("not registered" in m and f"current model now: {first['version']}" in m
               for m in trains)
    predicts = [a.data for a in artifacts if a.key == "enspp-predict"]
    assert any("- 5 init time(s) post-processed (2019-01-25" in m
               and "- 1 already in the product" in m for m in predicts)


def test_init_times_computed_from_replaced_inputs_are_predicted_again(harness, tmp_path, caplog):
    """After the forecast store is rebuilt with one init time's fields from other bytes, the
    predict flow and a cached validation product predict exactly that init time again (and
    nothing else); the product then equals one predicted from the new store."""
    import shutil

    from predict_data import make_checkpoint, pipeline_config
    from test_predict import _rebuild_per_init

    from enspp.flows.ops import predict_flow
    from enspp.flows.runtime import resolve_config
    from enspp.flows.steps import validation_product
    from enspp.flows.tasks import predict_init_times
    from enspp.models.predict import predict
    from enspp.models.product import open_product
    from enspp.pipeline.synthetic import write_stores

    paths = write_stores(tmp_path / "stores", n_init=30, lead_hours=(24, 48), n_members=6,
                         ny=16, nx=24, start="2019-01-01")
    original = open_store(paths.forecast).load()
    _rebuild_per_init(paths.forecast, original)  # one source per init time
    (tmp_path / "enspp.yaml").write_text(FLOW_CONFIG)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", pipeline_config(paths), perturb=0.05)
    config = resolve_config(str(tmp_path / "enspp.yaml"))
    calls = []

    def counted(*args, **kw):
        calls.append([str(t)[:10] for t in args[3]])
        return predict_init_times.fn(*args, **kw)

    val = tmp_path / "cache" / "val.zarr"
    validation_product(config, str(ckpt), "v1", val, predict=counted)
    product = Path(predict_flow(str(tmp_path / "enspp.yaml"), split="val", checkpoint=str(ckpt)))
    assert len(calls) == 1 and len(calls[0]) == 6  # 2019-01-19..24
    changed = original.copy(deep=True)
    when = np.datetime64("2019-01-21", "ns")
    changed["t2m"].loc[{"init_time": when}] += 3.0
    _rebuild_per_init(paths.forecast, changed)
    caplog.clear()
    predict_flow(str(tmp_path / "enspp.yaml"), split="val", checkpoint=str(ckpt))
    assert "1 init time(s) to post-process (1 computed from inputs since replaced)" in caplog.text
    validation_product(config, str(ckpt), "v1", val, predict=counted)
    assert calls[1:] == [["2019-01-21"]]
    fresh = predict(ckpt, paths.forecast, out=tmp_path / "fresh.zarr",
                    init_times=open_product(val).init_time.values, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
                    n_members=4)
    for done in (val, product):
        np.testing.assert_array_equal(open_product(done)["t2m_mean"].values,
                                      open_product(fresh)["t2m_mean"].values)
    shutil.rmtree(tmp_path / "stores")


def test_a_scheduled_predict_catches_up_the_init_times_its_product_lacks(harness, tmp_path,
                                                                         caplog):
    """The predict flow without init times (the scheduled run) post-processes the latest init
    time and every earlier one since the product's first that the product lacks (runs missed
    or ingested late), not the latest alone; init times before the product's first are left
    alone, and a run with nothing new does nothing."""
    from predict_data import make_checkpoint, pipeline_config

    from enspp.flows.ops import predict_flow
    from enspp.models.product import open_product
    from enspp.pipeline.synthetic import write_stores

    paths = write_stores(tmp_path / "stores", n_init=30, lead_hours=(24, 48), n_members=6,
                         ny=16, nx=24, start="2019-01-01")
    (tmp_path / "enspp.yaml").write_text(FLOW_CONFIG)
    ckpt = str(make_checkpoint(tmp_path / "m.ckpt", pipeline_config(paths)))
    cfg = str(tmp_path / "enspp.yaml")
    product = Path(predict_flow(cfg, init_times=["2019-01-20T00"], checkpoint=ckpt))
    predict_flow(cfg, init_times=["2019-01-25T00"], checkpoint=ckpt)
    caplog.clear()
    predict_flow(cfg, checkpoint=ckpt)  # scheduled: 21..24 missed, 26..30 new
    assert "9 init time(s) to post-process, 0 already in" in caplog.text
    days = sorted(str(t)[:10] for t in open_product(product).init_time.values)
    assert days == [f"2019-01-{d:02d}" for d in range(20, 31)]
    caplog.clear()
    predict_flow(cfg, checkpoint=ckpt)
    assert "0 init time(s) to post-process" in caplog.text


# ------------------------------------------------------------------ registry
def test_decide():
    assert decide(1.0, None) == (True, "no current version; candidate val CRPS 1")
    ok, why = decide(0.9, 1.0)
    assert ok and "beats current 1" in why
    ok, why = decide(0.99, 1.0, min_improvement=0.05)
    assert not ok and "does not beat current 1 by more than 0.05" in why
    assert decide(float("nan"), 1.0)[0] is False
    assert decide(1.0, float("nan"))[0] is True


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    from predict_data import make_checkpoint, make_stores, pipeline_config

    d = tmp_path_factory.mktemp("ckpt")
    pipe = pipeline_config(make_stores(d / "stores"))
    return (make_checkpoint(d / "a.ckpt", pipe, perturb=0.1, seed=1),
            make_checkpoint(d / "b.ckpt", pipe, perturb=0.1, seed=2))


def test_registry_registers_only_better_and_logs_why(tmp_path, checkpoints):
    a, b = checkpoints
    reg = tmp_path / "registry"
    assert current_version(reg) is None and list_versions(reg) == [] and read_decisions(reg) == []
    d1 = register_if_better(reg, a, score=1.0, metric="val t2m CRPS (gaussian)")
    assert d1.registered and current_version(reg).version == d1.version
    d2 = register_if_better(reg, b, score=1.2, metric="val t2m CRPS (gaussian)")
    assert not d2.registered and current_version(reg).version == d1.version
    d3 = register_if_better(reg, b, score=0.8, metric="val t2m CRPS (gaussian)")
    assert d3.registered and current_version(reg).version == d3.version
    assert [v.version for v in list_versions(reg)] == [d1.version, d3.version]
    d4 = register_if_better(reg, b, score=0.1, metric="val t2m CRPS (gaussian)")
    assert not d4.registered and "same checkpoint" in d4.reason
    log = read_decisions(reg)
    assert [x["registered"] for x in log] == [True, False, True, False]
    assert "does not beat current 1" in log[1]["reason"]
    # the current model rescored on new validation data
    d5 = register_if_better(reg, a, score=0.7, current_score=0.6, metric="val t2m CRPS (gaussian)")
    assert not d5.registered and "current 0.6" in d5.reason
    assert current_version(reg).checkpoint.read_bytes() == Path(b).read_bytes()


def test_registry_refuses_a_comparison_with_a_version_no_longer_current(tmp_path, checkpoints,
                                                                         monkeypatch):
    """Two trainings at once: each scored against the current version R outside the registry
    lock; one registers first.  The other, whose score was compared with R's, is not
    registered against the new current version: the decision says so and names it."""
    import enspp.models.registry as registry_mod

    a, b = checkpoints
    reg = tmp_path / "registry"
    m = "val t2m CRPS (gaussian)"
    r = register_if_better(reg, a, score=0.8, metric=m)  # R, current when both were scored
    # the other training (G) registers between this one's scoring and its registration
    real = registry_mod.current_version
    state = {}

    def current_changed(root):
        if not state:  # once: G registered while this candidate was scored
            state["g"] = True
            registry_mod._store_version(reg, "mixed-gggggggggggg", Path(b), {
                "version": "mixed-gggggggggggg", "score": 0.5, "metric": m, "sha256": "x",
                "source": "G", "registered": "now", "details": {}})
            (reg / "current").write_text("mixed-gggggggggggg\n")
        return real(root)

    monkeypatch.setattr(registry_mod, "current_version", current_changed)
    d = register_if_better(reg, b, score=0.6, current_score=0.8, scored_current=r.version,
                           metric=m)
    assert not d.registered and d.current == "mixed-gggggggggggg" and d.current_score is None
    assert d.reason == (f"current changed from {r.version} to mixed-gggggggggggg while this "
                        f"candidate was trained; not registered: re-run the train flow")
    assert real(reg).version == "mixed-gggggggggggg"
    assert read_decisions(reg)[-1]["reason"] == d.reason
    monkeypatch.setattr(registry_mod, "current_version", real)
    # an empty registry when scored, then another registration: refused likewise
    reg2 = tmp_path / "registry2"
    register_if_better(reg2, a, score=0.8, metric=m)
    d2 = register_if_better(reg2, b, score=0.1, scored_current=None, metric=m)
    assert not d2.registered and "current changed from (none) to" in d2.reason
    # unchanged: the single-training path decides as before
    d3 = register_if_better(reg2, b, score=0.7, current_score=0.9, scored_current=r.version,
                            metric=m)
    assert d3.registered and "beats current 0.9" in d3.reason
    d4 = register_if_better(reg2, a, score=0.1, scored_current=d3.version, metric=m)
    assert d4.registered


def test_registry_errors(tmp_path, checkpoints):
    a, b = checkpoints
    reg = tmp_path / "registry"
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        register_if_better(reg, tmp_path / "nope.ckpt", score=1.0, metric="m")
    register_if_better(reg, a, score=1.0, metric="metric A")
    with pytest.raises(RegistryError, match="was scored with 'metric A', the candidate with 'metric B'"):
        register_if_better(reg, b, score=0.5, metric="metric B")
    (reg / "current").write_text("\n")
    with pytest.raises(RegistryError, match="current is empty"):
        current_version(reg)
    (reg / "current").write_text("ghost-123\n")
    with pytest.raises(RegistryError, match="version 'ghost-123' is missing"):
        current_version(reg)
    v = list_versions(reg)[0]
    meta = v.checkpoint.parent / "version.json"
    meta.write_text(json.dumps({"version": v.version}))
    with pytest.raises(RegistryError, match="malformed version record"):
        list_versions(reg)
    (reg / "decisions.jsonl").write_text("{not json\n")
    with pytest.raises(RegistryError, match=r"decisions.jsonl:1: not a JSON line"):
        read_decisions(reg)


def test_headline_table_format():
    from enspp.flows.steps import format_table, headline_rows

    doc = {"variables": {"t2m": {"units": "K", "estimator": "fair ensemble CRPS",
                                 "headline": {"global": [
                                     {"system": "raw_full", "crps": 1.0, "skill": 0.0,
                                      "spread_skill": 0.7},
                                     {"system": "mixed", "crps": 0.8, "skill": 0.2,
                                      "spread_skill": 1.0}]}}}}
    rows = headline_rows(doc)
    assert [r["system"] for r in rows] == ["mixed", "raw_full"]
    text = format_table(rows)
    assert "+20.0 %" in text and "CRPS estimators: fair ensemble CRPS" in text
    assert np.isclose(rows[0]["crps"], 0.8)
    assert format_table([]) == "(no scores)"


# ------------------------------------------------------------------ demo
def test_demo_synth_step_refuses_another_world(tmp_path):
    import yaml

    from enspp.flows.config import config_from_mapping, default_demo_config
    from enspp.flows.demo import synth_world

    cfg = default_demo_config(tmp_path)
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "synth.yaml").write_text(yaml.safe_dump({"synth": {"seed": 7}}))
    with pytest.raises(FlowInputError, match="holds another synthetic world"):
        synth_world.fn(cfg)
    same = cfg.data.synth.model_dump(mode="json")
    (tmp_path / "synth" / "synth.yaml").write_text(yaml.safe_dump({"synth": same}))
    # a synth.yaml alone (nothing else the generator writes) is no world: refused, kept
    before = (tmp_path / "synth" / "synth.yaml").read_bytes()
    with pytest.raises(FlowInputError, match="holds no synthetic world"):
        synth_world.fn(cfg)
    assert [p.name for p in (tmp_path / "synth").iterdir()] == ["synth.yaml"]
    assert (tmp_path / "synth" / "synth.yaml").read_bytes() == before
    (tmp_path / "synth" / ".complete").touch()  # the generator's completion marker
    assert synth_world.fn(cfg) == str(tmp_path / "synth")  # already there: reused
    no_synth = config_from_mapping({"data": {"workdir": str(tmp_path)}})
    with pytest.raises(FlowInputError, match="data.synth is not set"):
        synth_world.fn(no_synth)


# ------------------------------------------------------------------ refresh-statistics
@pytest.fixture(scope="module")
def stat_stores(tmp_path_factory):
    from enspp.pipeline.synthetic import write_stores

    return write_stores(tmp_path_factory.mktemp("stat_stores"), n_init=20, lead_hours=(0, 48),
                        n_members=5, ny=6, nx=8)


def _stats_config(stores, statistics, *, input_lead_times=(0,)):
    from types import SimpleNamespace

    from enspp.pipeline import PipelineConfig

    pipeline = PipelineConfig.from_dict({
        "stores": {"forecast": str(stores.forecast), "analysis": str(stores.analysis),
                   "statistics": str(statistics)},
        "features": {"variables": ["t2m"], "targets": ["t2m"],
                     "input_lead_times": list(input_lead_times)},
        "members": {"k": 3}, "batches": {"patch_size": 4, "batch_size": 2}})
    return SimpleNamespace(pipeline=pipeline, workdir=SimpleNamespace(root=Path(statistics).parent))


def test_refresh_statistics_refuses_a_file_that_is_not_enspp_statistics(stat_stores, tmp_path):
    """The train flow's refresh recomputes stale statistics, but a file at the statistics path
    that enspp did not write (a typo naming the user's NetCDF) is refused in one line, kept."""
    import xarray as xr

    from enspp.flows.steps import refresh_statistics

    path = tmp_path / "my_climatology.nc"
    xr.Dataset({"t2m_clim": ("x", np.arange(5.0))}, attrs={"title": "mine"}).to_netcdf(path)
    before = path.read_bytes()
    with pytest.raises(FlowInputError, match="not an enspp statistics file") as e:
        refresh_statistics.fn(_stats_config(stat_stores, path))
    assert str(path) in str(e.value) and "nothing was changed" in str(e.value)
    assert "\n" not in str(e.value) and path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_refresh_statistics_replaces_stale_enspp_statistics(stat_stores, tmp_path, monkeypatch,
                                                            suffix):
    """enspp's own statistics computed from other data (another split of channels) are stale:
    the refresh removes and recomputes them (a file or a Zarr store alike)."""
    import logging

    import enspp.flows.steps as steps
    from enspp.pipeline import EnsembleDataModule
    from enspp.pipeline.stats import NormStats

    monkeypatch.setattr(steps, "get_run_logger", lambda: logging.getLogger("test"))
    path = tmp_path / f"stats{suffix}"
    old = _stats_config(stat_stores, path, input_lead_times=())
    EnsembleDataModule(old.pipeline).setup("fit")  # writes statistics of the other channels
    old_hash = NormStats.from_file(path).hash
    cfg = _stats_config(stat_stores, path)
    new_hash = steps.refresh_statistics.fn(cfg)
    assert new_hash != old_hash and NormStats.from_file(path).hash == new_hash
    assert steps.refresh_statistics.fn(cfg) == new_hash  # now current: kept
