"""What ``enspp demo`` writes for the user: the config that reproduces what it showed."""

from __future__ import annotations

import pytest

from enspp.evaluation.config import EvaluateConfig
from enspp.flows.config import default_demo_config, load_config


def _evaluate_section(wd) -> EvaluateConfig:
    return EvaluateConfig(
        title="demo", truth=wd / "stores" / "analysis.zarr", variables=["t2m"], split="test",
        lead_times=[48], cases=[wd / "synth" / "events.yaml"],
        systems=[{"name": "raw_full", "path": wd / "stores" / "forecast.zarr"},
                 {"name": "raw_subset", "path": wd / "stores" / "forecast.zarr",
                  "members": [1, 2, 3, 4, 5]},
                 {"name": "mixed", "path": wd / "stores" / "products" / "mixed-abc.zarr",
                  "type": "gaussian"},
                 {"name": "custom", "label": "elsewhere", "path": "/somewhere/else.zarr",
                  "type": "gaussian"}])


def test_demo_config_holds_the_evaluated_systems_relative_to_the_work_directory(tmp_path):
    from enspp.flows.demo import write_config

    wd = tmp_path / "work"
    config = default_demo_config(wd)
    ev = _evaluate_section(wd.resolve())
    path = write_config(config, wd / "enspp.yaml", evaluate=ev,
                        checkpoint="registry/versions/mixed-abc/model.ckpt")
    text = path.read_text()
    assert text.startswith("# enspp.yaml written by `enspp demo`")
    assert "enspp evaluate --config enspp.yaml" in text
    assert "--checkpoint registry/versions/mixed-abc/model.ckpt" in text
    assert str(wd) not in text  # relocatable: nothing absolute inside the work directory
    assert "/somewhere/else.zarr" in text  # outside it: kept absolute

    # moved elsewhere, it still names the same files, relative to its new place
    moved = tmp_path / "moved"
    wd.rename(moved)
    loaded = load_config(moved / "enspp.yaml")
    assert loaded.workdir.root == moved.resolve()
    got = loaded.evaluate.resolve_paths(loaded.workdir.root)
    want = _evaluate_section(moved.resolve())
    assert [(s.key, s.path, s.members, s.type) for s in got.systems] == \
        [(s.key, s.path, s.members, s.type) for s in want.systems]
    assert got.truth == want.truth and got.cases == want.cases
    assert got.lead_times == [48] and got.split == "test"
    assert set(got.splits) == {"train", "val", "test"}  # re-derived from the pipeline's split
    # the same config, its paths now inside the moved directory
    assert loaded.data.incoming == default_demo_config(moved).data.incoming
    for section in ("pipeline", "model", "train", "predict"):
        assert getattr(loaded, section) == getattr(default_demo_config(moved), section), section


def test_demo_config_before_the_evaluation_is_loadable(tmp_path):
    from enspp.flows.demo import write_config

    config = default_demo_config(tmp_path)
    path = write_config(config, tmp_path / "enspp.yaml")
    loaded = load_config(path)
    assert loaded.model == config.model and loaded.data.synth == config.data.synth
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, then renamed


def test_demo_config_outside_the_work_directory_keeps_it_absolute(tmp_path):
    from enspp.flows.demo import write_config

    wd = tmp_path / "work"
    config = default_demo_config(wd)
    path = write_config(config, tmp_path / "elsewhere" / "enspp.yaml")
    assert load_config(path).workdir.root == wd.resolve()


def _headline(doc: dict) -> dict:
    return {(v, r["system"]): r["crps"] for v, e in doc["variables"].items()
            for r in e["headline"]["global"]}


@pytest.mark.slow
def test_enspp_demo_fast_end_to_end_reproducible_and_idempotent(tmp_path, capsys):
    import numpy as np
    import torch
    from prefect.logging.configuration import setup_logging

    from enspp.evaluation.report import read_scores
    from enspp.flows.cli import main
    from enspp.models.product import open_product
    from enspp.models.registry import current_version

    # Prefect's console handlers write to the streams of the moment Prefect was imported; a
    # module collected before this one (test_deploy) imported it under other streams, where
    # the demo's flow prints would go: set them up again on this test's captured streams
    setup_logging(incremental=False)
    wd = tmp_path / "work"
    assert main(["demo", "--workdir", str(wd), "--fast"]) == 0
    out = capsys.readouterr().out
    assert "dashboard: " in out and (wd / "reports" / "demo" / "index.html").is_file()
    assert "mixed" in out and "raw_full" in out
    shown = _headline(read_scores(wd / "reports" / "demo"))
    assert {s for _, s in shown} >= {"raw_full", "raw_subset", "mixed", "emos", "oracle"}

    # the service's starting point is valid against the demo's stores
    assert main(["validate", str(wd / "service.yaml")]) == 0

    # enspp evaluate with the written config scores exactly what the demo showed
    cfg = wd / "enspp.yaml"
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "again")]) == 0
    assert _headline(read_scores(tmp_path / "again")) == shown

    # enspp predict with it writes the demo's product again
    current = current_version(wd / "registry")
    product = wd / "stores" / "products" / f"{current.version}.zarr"
    inits = [str(t)[:19] for t in open_product(product).init_time.values[:2]]
    again = tmp_path / "again.zarr"
    assert main(["predict", "--config", str(cfg), "--checkpoint", str(current.checkpoint),
                 "--store", str(wd / "stores" / "forecast.zarr"), "--out", str(again),
                 "--init-time", *inits]) == 0
    a, b = open_product(again), open_product(product).sel(init_time=open_product(again).init_time)
    for name in ("t2m_mean", "t2m_std", "t2m"):
        np.testing.assert_array_equal(a[name].values, b[name].values)

    # enspp train with it trains the same model (same weights as the registered one)
    capsys.readouterr()
    assert main(["train", "--config", str(cfg)]) == 0
    best = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("best checkpoint: ")).removeprefix("best checkpoint: ")
    new = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    old = torch.load(current.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert new.keys() == old.keys()
    for k in old:
        torch.testing.assert_close(new[k], old[k], rtol=0, atol=0, msg=k)

    versions = list((wd / "registry" / "versions").iterdir())
    assert main(["demo", "--workdir", str(wd), "--fast"]) == 0  # re-run: reuses everything
    again_out = "".join(capsys.readouterr())
    assert "already" in again_out and list((wd / "registry" / "versions").iterdir()) == versions
    assert _headline(read_scores(wd / "reports" / "demo")) == shown


def test_service_config_follows_the_data(tmp_path):
    """``service.yaml``: what a scheduled service starts from -- no fixed years in the
    split, a nightly report of the last days, only the raw ensemble named (the evaluate
    flow adds the current model's product)."""
    from enspp.flows.demo import SERVICE_RECENT_DAYS, write_config, write_service_config
    from enspp.flows.ops import evaluation_config

    config = default_demo_config(tmp_path)
    write_config(config, tmp_path / "enspp.yaml")
    path = write_service_config(config, tmp_path / "service.yaml")
    text = path.read_text()
    assert text.startswith("# service.yaml written by `enspp demo`")
    loaded = load_config(path)
    assert loaded.pipeline.split.train is None and not loaded.pipeline.split.explicit
    assert loaded.pipeline.split.fractions == config.pipeline.split.fractions
    ev = loaded.evaluate
    assert ev.recent_days == SERVICE_RECENT_DAYS and ev.split is None and ev.period is None
    assert [s.key for s in ev.systems] == ["raw_full"]
    assert "stores/products" not in text and str(tmp_path) not in text  # nothing pinned
    assert "splits" not in text  # derived from the pipeline's split (an empty one said nothing)
    # everything else is the demo's
    assert loaded.model == config.model and loaded.data.synth == config.data.synth
    assert loaded.pipeline.features == config.pipeline.features
    assert [c.name for c in ev.cases] == ["events.yaml"]
    completed = evaluation_config(loaded)
    assert completed.recent_days == SERVICE_RECENT_DAYS
