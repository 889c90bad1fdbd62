"""Missing data in an evaluation: a lost chunk, init times one system lacks, valid times the
truth lacks.  Refused by default, naming the store, the variable and the init times; with
``evaluate.missing: skip`` scored without them and reported (notes, the CLI)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_data import config_dict, make_world  # noqa: E402

from enspp.data.output_dir import MANIFEST, OutputDirError, write_manifest  # noqa: E402
from enspp.evaluation.config import config_from_mapping  # noqa: E402
from enspp.evaluation.evaluate import MissingDataError, evaluate  # noqa: E402
from enspp.evaluation.systems import AlignmentError  # noqa: E402
from enspp.flows.cli import main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BASE = {"metrics": ["crps"], "cases": [], "regions": ["global"],
        "bootstrap": {"n": 20, "block_length": 2}}


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path / "w", n_init=6, n_members=5, seed=5)  # control + 4: raw_subset K=4


def test_a_lost_chunk_is_refused_naming_the_store_and_init_time(world, tmp_path, capsys):
    """The forecast chunk of init time 4 (2021-01-04) is deleted: zarr would read NaN and
    the points would silently drop out of every score."""
    shutil.rmtree(world.forecast / "t2m" / "c" / "3")
    with pytest.raises(MissingDataError, match=rf"system 'raw_full' \({world.forecast}\) has "
                                               r"\d+ missing values \(NaN\) of 't2m' at init times "
                                               r"2021-01-04T00 \(a field absent from the store or "
                                               r"a lost chunk\); set evaluate.missing: skip"):
        evaluate(config_from_mapping(config_dict(world, **BASE)))
    # skip: scored without them, and said so
    res = evaluate(config_from_mapping(config_dict(world, missing="skip", **BASE)))
    n = 2 * 8 * 16  # 2 leads x the 8 x 16 grid of one init time
    assert res.scores["t2m"].attrs["nan_dropped_raw_full"] == n
    assert res.notes == [f"t2m: missing values skipped (points with NaN in the truth or the system): "
                         f"raw_full {n}, raw_subset {n}, emos 0, oracle 0"]
    assert np.isfinite(res.scores["t2m"]["crps_all"]).all()
    # the CLI: one line and exit 1 by default; the note printed with missing: skip
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": config_dict(world, **BASE)}))
    capsys.readouterr()  # what the library calls above printed (a summary printer may be installed)
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "r1")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing values (NaN) of 't2m' at init times 2021-01-04T00" in err
    cfg.write_text(yaml.safe_dump({"evaluate": config_dict(world, missing="skip", **BASE)}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out
    assert f"note: t2m: missing values skipped (points with NaN in the truth or the system): " \
           f"raw_full {n}" in out


def test_an_ensemble_missing_some_members_is_refused_or_scored_and_said(world, tmp_path):
    """Member 2 is NaN at one init time (a partly archived forecast): refused by default;
    with ``missing: skip`` those points are scored with the members there are, and a note
    counts them per system (raw_subset, members 1..4, holds member 2 too)."""
    fc = xr.open_zarr(world.forecast).load()
    fc["t2m"][dict(init_time=2, member=2)] = np.nan
    partial = tmp_path / "partial.zarr"
    fc.chunk({"init_time": 1}).to_zarr(partial, mode="w")
    cfg = config_dict(world, **BASE)
    for system in cfg["systems"]:
        if system["path"] == str(world.forecast):
            system["path"] = str(partial)
    with pytest.raises(MissingDataError, match=r"system 'raw_full' .* missing values \(NaN\) of "
                                               r"'t2m' at init times 2021-01-03T00"):
        evaluate(config_from_mapping(cfg))
    res = evaluate(config_from_mapping({**cfg, "missing": "skip"}))
    n = 2 * 8 * 16  # 2 leads x the 8 x 16 grid of one init time
    assert res.scores["t2m"].attrs["nan_dropped_raw_full"] == 0  # nothing dropped...
    assert res.notes == [f"t2m: points scored with only some of their members (the others "
                         f"missing): raw_full {n}, raw_subset {n}"]  # ...but said
    assert np.isfinite(res.scores["t2m"]["crps_all"]).all()


def test_init_times_a_system_lacks_are_refused_or_skipped(world, tmp_path):
    """The product lacks two init times the raw ensemble has."""
    prod = xr.open_zarr(world.product).load()
    short = tmp_path / "short.zarr"
    prod.isel(init_time=[0, 1, 3, 5]).chunk({"init_time": 1}).to_zarr(short, mode="w")
    cfg = config_dict(world, **BASE)
    cfg["systems"][2]["path"] = str(short)
    with pytest.raises(MissingDataError, match=rf"'t2m': init times are missing from "
                                               rf"some systems: emos \({short}\) lacks 2 "
                                               r"\(2021-01-03T00, 2021-01-05T00\); ingest or predict "
                                               r"them, or set evaluate.missing: skip"):
        evaluate(config_from_mapping(cfg))
    res = evaluate(config_from_mapping({**cfg, "missing": "skip"}))
    assert int(res.scores["t2m"]["init_count"]) == 4
    assert res.notes == [f"t2m: 2 init times skipped for every system (4 scored) because some "
                         f"systems lack them: emos ({short}) lacks 2 (2021-01-03T00, 2021-01-05T00)"]


def test_systems_covering_different_spans_are_compared_on_the_common_span(world, tmp_path):
    """A product of the last init times only (an operational product): no error, the span
    they all cover is scored and a note says what was left out."""
    prod = xr.open_zarr(world.product).load()
    recent = tmp_path / "recent.zarr"
    prod.isel(init_time=[3, 4, 5]).chunk({"init_time": 1}).to_zarr(recent, mode="w")
    cfg = config_dict(world, **BASE)
    cfg["systems"][2]["path"] = str(recent)
    res = evaluate(config_from_mapping(cfg))
    assert int(res.scores["t2m"]["init_count"]) == 3
    assert res.notes == ["t2m: scored on the init times every system covers, "
                         "2021-01-04T00..2021-01-06T00; 3 init times outside that span are left out",
                         "t2m: bootstrap: 3 init times are fewer than two blocks of 2 "
                         "(evaluate.bootstrap.block_length): no confidence interval"]


def test_valid_times_the_truth_lacks_are_refused_or_skipped(world, tmp_path):
    ana = xr.open_zarr(world.analysis).load()
    cut = tmp_path / "analysis.zarr"
    ana.isel(time=slice(0, -1)).chunk({"time": 1}).to_zarr(cut, mode="w")  # last valid time gone
    cfg = config_dict(world, **BASE)
    cfg["truth"] = str(cut)
    with pytest.raises(AlignmentError, match="1 valid times .* are not in the truth's 'time'"):
        evaluate(config_from_mapping(cfg))
    res = evaluate(config_from_mapping({**cfg, "missing": "skip"}))
    assert int(res.scores["t2m"]["init_count"]) == 5
    assert res.notes == ["t2m: 1 init time skipped because the truth lacks its valid times "
                         "(2021-01-06T00)"]


def test_a_corrupt_chunk_is_one_line_naming_the_store(world, tmp_path, capsys):
    """A product chunk overwritten with random bytes: not a blosc traceback but one line
    naming the system, its store, the variable and the init times being read."""
    chunk = world.product / "t2m_mean" / "c" / "3" / "0" / "0" / "0"
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": config_dict(world, missing="skip", **BASE)}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"enspp evaluate: error: system 'emos' ({world.product}): 't2m' for init "
                          "times 2021-01-01T00..2021-01-05T00 cannot be read: "), err
    assert err.rstrip().endswith("(a corrupt or unreadable chunk)")


def output_dir_files(path):
    from enspp.data.output_dir import files_under

    return files_under(path)


def test_a_report_is_replaced_whole_or_not_at_all(world, tmp_path, monkeypatch):
    """The report is written beside its directory and swapped in: a run that dies while
    writing leaves the previous report as it was; a directory that is not a report (a
    user's) is written in place, its other files kept."""
    import enspp.evaluation.report as report

    cfg = config_from_mapping(config_dict(world, **BASE))
    out = tmp_path / "reports" / "latest"
    res = evaluate(cfg, out)
    assert res.files["index"] == str(out / "index.html") and Path(res.files["index"]).is_file()
    (out / "plots" / "stale.png").write_bytes(b"from the previous report")
    write_manifest(out, kind="report")  # as if that report had written it
    first = (out / "scores.json").read_text()

    def dies(result, out_dir):
        (Path(out_dir) / "scores.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "scores.json").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", dies)
    with pytest.raises(OSError, match="No space left"):
        evaluate(cfg, out)
    monkeypatch.undo()
    assert (out / "scores.json").read_text() == first  # the previous report, untouched
    evaluate(cfg, out)
    assert not (out / "plots" / "stale.png").exists()  # the new report replaced the old whole
    # no .partial / .old left (the lock file of the report's writers stays beside it)
    assert sorted(p.name for p in out.parent.iterdir()) == [".latest.lock", "latest"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for _ in range(2):
        evaluate(cfg, mine)
        assert (mine / "notes.txt").read_text() == "keep" and (mine / "index.html").is_file()


@pytest.mark.parametrize("theirs", ["plots/precious.png", "index.html", "scores.json"])
def test_a_report_never_replaces_files_it_did_not_write(world, tmp_path, theirs):
    """A directory holding only report-like names that enspp did not write (a user's plots/,
    their own index.html) is neither swapped away nor overwritten in place: one line, nothing
    changed.  It used to be taken for an earlier report by its names and deleted whole."""
    cfg = config_from_mapping(config_dict(world, **BASE))
    out = tmp_path / "figs"
    (out / theirs).parent.mkdir(parents=True, exist_ok=True)
    (out / theirs).write_bytes(b"precious")
    with pytest.raises(OutputDirError, match=rf"report .*figs: the directory already holds "
                                             rf"{theirs}, not written by an enspp report"):
        evaluate(cfg, out)
    assert output_dir_files(out) == [theirs] and (out / theirs).read_bytes() == b"precious"
    # beside the user's other files, a report's own earlier files are rewritten in place
    (out / theirs).unlink()
    (out / "notes.txt").write_text("keep")
    evaluate(cfg, out)
    evaluate(cfg, out)
    assert (out / "notes.txt").read_text() == "keep"
    # a report written in place before manifests (scores.json of the schema) is its own
    (out / MANIFEST).unlink()
    evaluate(cfg, out)
    # a file added inside an earlier report's plots/ is not the report's: refused
    latest = tmp_path / "latest"
    evaluate(cfg, latest)
    (latest / "plots" / "mine.png").write_bytes(b"precious")
    with pytest.raises(OutputDirError, match="plots/mine.png, not written by an enspp report"):
        evaluate(cfg, latest)
    assert (latest / "plots" / "mine.png").read_bytes() == b"precious"


def test_two_runs_writing_one_report_take_turns(world, tmp_path, monkeypatch):
    """Two evaluations writing the same report at once (the nightly run and a manual one)
    take turns on its lock instead of sharing one scratch directory: both complete and the
    report is whole; a run that cannot get the lock in time refuses, naming the report."""
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    from enspp.data.lock import StoreLockedError, store_lock

    E = importlib.import_module("enspp.evaluation.evaluate")

    cfg = config_from_mapping(config_dict(world, **BASE))
    out = tmp_path / "reports" / "latest"
    with ThreadPoolExecutor(2) as pool:
        for run in [pool.submit(evaluate, cfg, out, progress=False) for _ in range(2)]:
            assert Path(run.result().files["index"]).is_file()
    assert json.loads((out / "scores.json").read_text())["variables"]
    monkeypatch.setattr(E, "REPORT_LOCK_TIMEOUT", 0.2)
    with store_lock(out), pytest.raises(StoreLockedError, match="latest"):
        evaluate(cfg, out, progress=False)
