"""Where commands write and what they refuse: ``enspp train`` writes ``runs/`` under
``data.workdir``; ``enspp evaluate`` without ``evaluate.truth`` fails with one line."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_data import config_dict, make_world  # noqa: E402
from predict_data import SMALL_MIXED, K, make_stores  # noqa: E402

from enspp.flows.cli import main  # noqa: E402


def test_train_writes_runs_under_the_configured_workdir(tmp_path, capsys):
    make_stores(tmp_path / "work" / "stores")
    conf = tmp_path / "conf"
    conf.mkdir()
    cfg = conf / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"workdir": "../work"},
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr",
                                "analysis": "stores/analysis.zarr", "static": "stores/static.nc",
                                "statistics": "stores/stats.nc"},
                     "members": {"k": K}, "batches": {"batch_size": 4, "patch_size": 12}},
        "model": {"name": "mixed", "options": SMALL_MIXED},
        "train": {"max_epochs": 1, "progress_bar": False, "run_id": "wd"}}))
    assert main(["train", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    run_dir = (tmp_path / "work" / "runs" / "wd").resolve()
    assert f"run: {run_dir}" in out, out
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert not (conf / "runs").exists()  # nothing beside the config file


def test_evaluate_without_truth_fails_with_one_line(tmp_path, capsys):
    w = make_world(tmp_path / "w", n_init=4)
    section = config_dict(w, cases=[])
    del section["truth"]
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": section}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"enspp evaluate: error: {cfg}: evaluate.truth: not set; name the analysis "
                   "store to score against (e.g. truth: stores/analysis.zarr)")
    assert not (tmp_path / "rep").exists()


def test_evaluate_paths_are_relative_to_the_workdir(tmp_path, capsys):
    """Relative paths of the evaluate section resolve against ``data.workdir`` (as in the
    flows), not against the config file's directory."""
    w = make_world(tmp_path / "work", n_init=4)
    section = config_dict(w, cases=[], regions=["global"], bootstrap={"n": 20})
    section["truth"] = "analysis.zarr"
    for s in section["systems"]:
        s["path"] = Path(s["path"]).name
    conf = tmp_path / "conf"
    conf.mkdir()
    cfg = conf / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"workdir": "../work"}, "evaluate": section}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "skill vs raw_full" in out and "raw ensemble, all 10 (control + 9 perturbed)" in out


def test_synth_reads_the_world_of_an_enspp_yaml(tmp_path):
    """``enspp synth --config enspp.yaml`` (to extend the demo's world, e.g. for a service
    test) takes the file's ``data.synth``; it refused every other section as an unknown key
    of the synth config."""
    import argparse

    from enspp.flows.commands import synth

    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"workdir": ".", "synth": {"seed": 2024, "grid": [8, 16], "years": [2012, 2013],
                                           "n_perturbed": 4}},
        "pipeline": {"members": {"k": 2}}, "model": {"name": "mixed"}}))
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    config = synth.build_config(parser.parse_args(["--out", str(tmp_path / "w"), "--config",
                                                   str(cfg), "--years", "2012-2017"]))
    assert config.seed == 2024 and tuple(config.grid) == (8, 16) and config.n_perturbed == 4
    assert tuple(config.years) == (2012, 2017)  # the command line still wins
