"""``enspp demo --workdir DIR`` never replaces a file it did not write: ``enspp.yaml`` and
``service.yaml`` are written again only while they are what the demo wrote (their sha256 in
``DIR/.enspp-demo``; for a directory of an earlier enspp without it, exactly what the demo
writes now); an edited one, a non-empty directory that holds no earlier demo, or a world of
another config is refused in one line before anything is written, and left byte for byte.

The demo's steps are replaced by stand-ins that only record their calls (no world, no
training): what is tested is what the flow writes around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import enspp.flows.demo as demo
from enspp.flows.config import default_demo_config


@pytest.fixture
def steps(monkeypatch) -> list[str]:
    """The demo's steps as stand-ins; the list of those called."""
    called: list[str] = []

    def step(name, result=None):
        def run(*args, **kwargs):
            called.append(name)
            return result
        return run

    monkeypatch.setattr(demo, "synth_world", step("synth"))
    monkeypatch.setattr(demo, "ingest_flow", step("ingest"))
    monkeypatch.setattr(demo, "train_flow", step("train"))
    monkeypatch.setattr(demo, "predict_flow", step("predict", "product.zarr"))
    monkeypatch.setattr(demo, "evaluate_flow", step("evaluate", {"rows": []}))
    return called


def run_demo(wd: Path, *, fast: bool = False) -> dict:
    return demo.demo_flow.fn(workdir=str(wd), fast=fast, baseline=False)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


def refused(wd: Path, steps: list[str], *expected: str, fast: bool = False) -> str:
    """Run the demo in ``wd``: refused in one line naming ``expected``, nothing changed."""
    before = snapshot(wd)
    with pytest.raises(demo.DemoWorkdirError) as info:
        run_demo(wd, fast=fast)
    line = str(info.value)
    assert "\n" not in line and line.endswith("(nothing was changed)"), line
    for part in expected:
        assert part in line, (part, line)
    assert snapshot(wd) == before  # byte for byte, nothing added
    assert steps == []  # refused before the first step
    return line


def test_a_new_work_directory_gets_the_files_and_their_record(tmp_path, steps):
    wd = tmp_path / "work"
    run_demo(wd)
    assert steps == ["synth", "ingest", "train", "predict", "evaluate"]
    config = default_demo_config(wd)
    record = json.loads((wd / demo.DEMO_MARKER).read_text())["sha256"]
    assert set(record) == {"enspp.yaml", "service.yaml"}
    for name in record:
        assert record[name] == [demo._sha256((wd / name).read_bytes())]
    assert (wd / "enspp.yaml").read_text() == demo.final_config_text(config, {})
    assert sorted(p.name for p in wd.iterdir()) == [".enspp-demo", "enspp.yaml",
                                                    "service.yaml"]  # no temporary file


def test_an_untouched_demo_config_is_written_again(tmp_path, steps):
    wd = tmp_path / "work"
    run_demo(wd)
    first = (wd / "enspp.yaml").read_text()
    run_demo(wd, fast=True)  # another config: the demo's own files are rewritten
    again = (wd / "enspp.yaml").read_text()
    assert again != first
    assert again == demo.final_config_text(default_demo_config(wd, fast=True), {})
    record = json.loads((wd / demo.DEMO_MARKER).read_text())["sha256"]
    assert record["enspp.yaml"] == [demo._sha256(again.encode())]
    run_demo(wd, fast=True)  # and again, unchanged
    assert (wd / "enspp.yaml").read_text() == again


@pytest.mark.parametrize("name", ["enspp.yaml", "service.yaml"])
def test_an_edited_demo_config_is_refused_and_kept(tmp_path, steps, name):
    wd = tmp_path / "work"
    run_demo(wd)
    with open(wd / name, "a") as fh:
        fh.write("# PRECIOUS: my own settings\n")
    steps.clear()
    refused(wd, steps, f"{wd / name} differs from the file the demo wrote",
            "move it aside or give another --workdir")
    # moved aside, the demo writes its own again
    (wd / name).rename(tmp_path / name)
    run_demo(wd)
    assert "PRECIOUS" in (tmp_path / name).read_text()
    assert "PRECIOUS" not in (wd / name).read_text()


def test_a_config_edited_while_the_demo_runs_is_kept(tmp_path, steps, monkeypatch):
    wd = tmp_path / "work"
    run_demo(wd)

    def edit(*args, **kwargs):
        with open(wd / "enspp.yaml", "a") as fh:
            fh.write("# PRECIOUS: edited while the demo ran\n")
        return "product.zarr"

    monkeypatch.setattr(demo, "predict_flow", edit)
    with pytest.raises(demo.DemoWorkdirError, match="differs from the file the demo wrote"):
        run_demo(wd)
    assert (wd / "enspp.yaml").read_text().endswith("# PRECIOUS: edited while the demo ran\n")


def test_a_foreign_config_is_refused_untouched_and_other_files_are_left_alone(tmp_path, steps):
    # the README's own layout: work/enspp.yaml (the user's), work/stores/...
    wd = tmp_path / "work"
    (wd / "stores").mkdir(parents=True)
    (wd / "stores" / "notes.txt").write_text("mine\n")
    (wd / "enspp.yaml").write_text("# my hand-written config\nevaluate:\n  title: PRECIOUS\n")
    refused(wd, steps, f"{wd / 'enspp.yaml'} is not the file the demo writes",
            "move it aside or give another --workdir")
    (wd / "enspp.yaml").unlink()
    (wd / "enspp.yaml").mkdir()  # nor with a directory in its place
    refused(wd, steps, f"{wd / 'enspp.yaml'} is not a file the demo wrote")
    (wd / "enspp.yaml").rmdir()
    # no config of the demo's names in the way (e.g. the experiments' directories under
    # enspp-work/): the demo writes its own files beside the others, which it never touches
    (wd / "frankfurt").mkdir()
    (wd / "frankfurt" / "enspp.yaml").write_text("mine\n")
    run_demo(wd)
    assert (wd / "stores" / "notes.txt").read_text() == "mine\n"
    assert (wd / "frankfurt" / "enspp.yaml").read_text() == "mine\n"
    assert (wd / "enspp.yaml").is_file() and (wd / demo.DEMO_MARKER).is_file()


def test_an_unreadable_record_is_refused(tmp_path, steps):
    wd = tmp_path / "work"
    run_demo(wd)
    (wd / demo.DEMO_MARKER).write_text("not json")
    steps.clear()
    refused(wd, steps, f"{wd / demo.DEMO_MARKER} is not the record the demo keeps")


@pytest.mark.parametrize("stage", ["before the steps", "after the evaluation"])
def test_a_demo_directory_of_an_earlier_version_is_reused(tmp_path, steps, stage):
    """No record: accepted when its files are exactly what the demo writes now."""
    wd = tmp_path / "work"
    config = default_demo_config(wd)
    (wd / "stores").mkdir(parents=True)
    if stage == "before the steps":  # a run stopped after its first write
        demo.write_config(config, wd / "enspp.yaml")
    else:
        (wd / "enspp.yaml").write_text(demo.final_config_text(config, {}))
        demo.write_service_config(config, wd / "service.yaml")
    run_demo(wd)
    assert steps == ["synth", "ingest", "train", "predict", "evaluate"]
    record = json.loads((wd / demo.DEMO_MARKER).read_text())["sha256"]
    assert record["enspp.yaml"] == [demo._sha256((wd / "enspp.yaml").read_bytes())]


def test_an_edited_demo_directory_of_an_earlier_version_is_refused(tmp_path, steps):
    wd = tmp_path / "work"
    config = default_demo_config(wd)
    demo.write_config(config, wd / "enspp.yaml")
    demo.write_service_config(config, wd / "service.yaml")
    with open(wd / "service.yaml", "a") as fh:
        fh.write("# PRECIOUS: my incoming dirs /srv/mars/incoming\n")
    refused(wd, steps, f"{wd / 'service.yaml'} differs from the file the demo wrote")
    with open(wd / "enspp.yaml", "a") as fh:
        fh.write("# PRECIOUS: my own model settings\n")
    refused(wd, steps, f"{wd / 'enspp.yaml'} differs from the file the demo wrote",
            "give another --workdir")


def test_a_world_of_another_config_is_refused_before_any_write(tmp_path, steps):
    from enspp.data.synth.writer import _config_dict
    from enspp.flows.config import demo_synth

    wd = tmp_path / "work"
    run_demo(wd)
    (wd / "synth").mkdir()
    (wd / "synth" / "synth.yaml").write_text(json.dumps(
        {"synth": _config_dict(demo_synth(fast=True))}))
    steps.clear()
    refused(wd, steps, f"{wd / 'synth'} holds another synthetic world", fast=False)


def test_a_second_demo_in_a_busy_work_directory_is_refused_at_once(tmp_path, steps, capsys):
    """Two demos in one work directory would interleave their steps and their record: while
    one holds the work directory's lock (beside it), ``enspp demo`` there refuses at once in
    one line naming the holder, with nothing changed (the lock is taken without waiting)."""
    import os
    import time

    from enspp.data.lock import lock_path, store_lock
    from enspp.flows.cli import main

    wd = tmp_path / "work"
    run_demo(wd)  # an earlier demo's directory: the CLI would otherwise run there
    steps.clear()
    before = snapshot(wd)
    assert lock_path(wd) == tmp_path / ".work.lock"  # beside the work directory, not inside
    with store_lock(wd, timeout=0):  # another demo (flock: this process's own counts too)
        t0 = time.monotonic()
        rc = main(["demo", "--workdir", str(wd), "--fast", "--no-baseline"])
        took = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert "\n" not in err, err
    assert err == (f"enspp demo: error: demo: another demo is running in {wd} (pid "
                   f"{os.getpid()}); wait for it or give another --workdir (nothing was "
                   "changed)")
    assert took < 5  # at once, not after a wait
    assert snapshot(wd) == before and steps == []
    with demo.workdir_lock(wd) as held:  # free again once the holder is gone
        assert held == lock_path(wd)
    with store_lock(wd, timeout=0):
        pass


def test_an_error_inside_the_work_directory_lock_is_not_another_demo(tmp_path):
    from enspp.data.lock import StoreLockedError

    with pytest.raises(StoreLockedError, match="a store of the flow"):
        with demo.workdir_lock(tmp_path / "work"):
            raise StoreLockedError("a store of the flow")
