"""Durable commits (``enspp.data.durable``): what a commit names reaches the disk before the
commit, and the commit after it.  A power loss cannot be staged in a test; what can be
checked is the order of the calls that make it safe: every ``fsync``/``syncfs`` and every
rename is logged (by path) and the log is checked for each kind of commit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from test_product_check import INITS, LEADS, QUANTILES, _attrs, _fields
from test_store import forecast

from enspp.data import durable
from enspp.data.grib_writer import write_grib
from enspp.data.ingest import ingest
from enspp.data.store import open_store
from enspp.models.product import COMPLETE_ATTR, ProductWriter, product_block
from enspp.models.registry import current_version, register_if_better

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="paths of open descriptors are read from /proc")


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def log(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync (``("fsync", path)``), syncfs (``("syncfs", path)``) and replace
    (``("replace", destination)``) of the process, in order; ``("replace", ...)`` entries
    record the file's content for small JSON documents as a third field."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", _path_of(fd)))
        return real_fsync(fd)

    def syncfs(fd):
        events.append(("syncfs", _path_of(fd)))
        return 0

    def replace(src, dst, *a, **kw):
        doc = None
        if str(dst).endswith("zarr.json"):
            doc = Path(src).read_text()
        events.append(("replace", str(Path(dst).absolute()), doc))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.delenv(durable.DURABLE_ENV, raising=False)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(durable, "_SYNCFS", syncfs)
    return events


def test_replace_flushes_the_file_then_renames_then_flushes_the_directory(tmp_path, log):
    tmp, final = tmp_path / "a.tmp", tmp_path / "a.json"
    final.write_text("old")
    tmp.write_text("new")
    durable.replace(tmp, final)
    assert final.read_text() == "new" and not tmp.exists()
    assert [e[:2] for e in log] == [("fsync", str(tmp)), ("replace", str(final)),
                                    ("fsync", str(tmp_path))]


def test_replace_of_a_directory_flushes_its_file_system_first(tmp_path, log):
    tmp, final = tmp_path / ".v.partial", tmp_path / "v"
    tmp.mkdir()
    (tmp / "x").write_text("1")
    durable.replace(tmp, final)
    assert (final / "x").read_text() == "1"
    assert [e[:2] for e in log] == [("syncfs", str(tmp)), ("replace", str(final)),
                                    ("fsync", str(tmp_path))]


def test_write_text_is_flushed_and_a_failed_write_leaves_the_old_file(tmp_path, log, monkeypatch):
    path = tmp_path / "current"
    durable.write_text(path, "v1\n")
    assert path.read_text() == "v1\n" and os.listdir(tmp_path) == ["current"]
    tmp = str(tmp_path / ".current.tmp")
    assert [e[:2] for e in log] == [("fsync", tmp), ("replace", str(path)), ("fsync", str(tmp_path))]

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        durable.write_text(path, "v2\n")
    assert path.read_text() == "v1\n" and os.listdir(tmp_path) == ["current"]


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_flushes_can_be_turned_off(tmp_path, log, monkeypatch, value):
    monkeypatch.setenv(durable.DURABLE_ENV, value)
    durable.write_text(tmp_path / "a", "x")
    durable.sync_filesystem(tmp_path)
    durable.sync_dir(tmp_path)
    assert (tmp_path / "a").read_text() == "x"
    assert [e[0] for e in log] == ["replace"]


def test_the_real_flushes_run(tmp_path, monkeypatch):
    """Not patched: syncfs (or sync) and the fsyncs of a file and a directory succeed."""
    monkeypatch.delenv(durable.DURABLE_ENV, raising=False)
    durable.write_text(tmp_path / "a", "x")
    durable.sync_file(tmp_path / "a")
    durable.sync_dir(tmp_path)
    durable.sync_filesystem(tmp_path)
    assert (tmp_path / "a").read_text() == "x"


def _data_chunk(path: str, store: Path) -> bool:
    rel = Path(path).relative_to(store)
    return "c" in rel.parts and rel.parts[0] != "enspp" and rel.name != "zarr.json"


def test_ingest_flushes_the_data_before_the_flags_and_the_flags_after(tmp_path, log):
    """Every ``present``/``complete`` flag chunk an ingest replaces comes after a syncfs that
    follows the last data chunk written before it; the ingest ends with a syncfs after its
    last flag."""
    store = tmp_path / "s.zarr"
    paths = []
    for i, init in enumerate(["2020-01-01T00", "2020-01-01T12", "2020-01-02T00"]):
        p = tmp_path / f"fc{i}.grib"
        write_grib(p, forecast([init], seed=i), kind="forecast")
        paths.append(p)
    ingest(paths, store, progress=False)
    assert open_store(store).sizes["init_time"] == 3
    store = store.absolute()
    flags = [i for i, e in enumerate(log) if e[0] == "replace"
             and Path(e[1]).is_relative_to(store / "enspp")
             and ("complete" in e[1] or "present" in e[1]) and "/c/" in e[1]]
    data = [i for i, e in enumerate(log) if e[0] == "replace"
            and Path(e[1]).is_relative_to(store) and _data_chunk(e[1], store)]
    syncs = [i for i, e in enumerate(log) if e[0] == "syncfs" and Path(e[1]) == store]
    assert flags and data and syncs
    for f in flags:
        last_data = max((d for d in data if d < f), default=-1)
        assert any(last_data < s < f for s in syncs), (log[last_data], log[f])
    assert max(syncs) > max(flags)


def test_product_marks_init_times_complete_only_after_their_fields_are_flushed(tmp_path, log):
    rng = np.random.default_rng(0)
    grid = xr.Dataset(coords={"latitude": np.linspace(50, 47, 4),
                              "longitude": np.linspace(5, 9, 5)})
    out = (tmp_path / "p.zarr").absolute()
    writer = ProductWriter(out, attrs=_attrs("fc.zarr"), fmt="zarr", init_chunk=2)
    for k in range(2):  # a new store (built under .partial and renamed), then an append
        writer.write_block(product_block([_fields(rng)], targets=["t2m"], inits=[INITS[k]],
                                         quantiles=QUANTILES, grid=grid))
    assert sorted(xr.open_zarr(out).init_time.values) == list(INITS[:2])
    assert LEADS  # (the fields hold both leads)
    roots = {str(out / "zarr.json"), str(out.parent / f".{out.name}.partial" / "zarr.json")}
    # a mark: a root replace whose complete list gains init times (an append's root carries
    # the list as it was, whose fields were flushed before it)
    marks, done = [], set()
    for i, e in enumerate(log):
        if e[0] == "replace" and e[1] in roots and e[2]:
            listed = set(json.loads(e[2]).get("attributes", {}).get(COMPLETE_ATTR, []))
            if listed - done:
                marks.append(i)
            done |= listed
    data = [i for i, e in enumerate(log) if e[0] == "replace" and "/t2m_mean/c/" in e[1]]
    syncs = [i for i, e in enumerate(log) if e[0] == "syncfs"]
    assert len(marks) >= 2 and data
    for m in marks:
        last_data = max((d for d in data if d < m), default=-1)
        assert any(last_data < s < m for s in syncs)
    # the new store's rename is flushed in its parent directory
    assert ("fsync", str(out.parent)) in [e[:2] for e in log]


def test_registry_commits_are_flushed(tmp_path, log):
    from predict_data import make_checkpoint, make_stores, pipeline_config

    ckpt = make_checkpoint(tmp_path / "best.ckpt", pipeline_config(make_stores(tmp_path / "d")))
    reg = tmp_path / "registry"
    decision = register_if_better(reg, ckpt, score=1.0, metric="crps")
    assert decision.registered and current_version(reg).version == decision.version
    events = [e[:2] for e in log]
    version = str((reg / "versions" / decision.version).absolute())
    i = events.index(("replace", version))
    assert events[i - 1][0] == "syncfs" and events[i + 1] == ("fsync", str(Path(version).parent))
    j = events.index(("replace", str((reg / "current").absolute())))
    assert events[j - 1] == ("fsync", str((reg / ".current.tmp").absolute())) and j > i


def test_checkpoints_are_written_durably_and_a_failed_save_keeps_the_old_one(tmp_path, log,
                                                                            monkeypatch):
    from enspp.models.train import _DurableCheckpointIO

    io = _DurableCheckpointIO()
    path = tmp_path / "checkpoints" / "best.ckpt"
    io.save_checkpoint({"epoch": 1}, path)
    tmp = str(path.with_name(".best.ckpt.tmp"))
    assert [e[:2] for e in log] == [("fsync", tmp), ("replace", str(path)),
                                    ("fsync", str(path.parent))]
    assert torch.load(path)["epoch"] == 1

    def broken(obj, f, *a, **kw):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2}, path)
    assert torch.load(path)["epoch"] == 1 and os.listdir(path.parent) == ["best.ckpt"]


def test_without_syncfs_the_whole_system_is_synced(tmp_path, monkeypatch):
    """Where libc has no syncfs (not Linux), sync(2) flushes every file system."""
    monkeypatch.delenv(durable.DURABLE_ENV, raising=False)
    monkeypatch.setattr(durable, "_SYNCFS", None)
    calls = []
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    durable.sync_filesystem(tmp_path)
    assert calls == ["sync"]


def test_a_file_system_that_refuses_fsync_on_directories_is_not_an_error(tmp_path, log,
                                                                         monkeypatch):
    """Some FUSE and network file systems answer EINVAL to an fsync of a directory: there is
    nothing to flush there, and the commit goes on."""
    real_fsync = os.fsync

    def refuse_dirs(fd):
        if os.path.isdir(_path_of(fd)):
            raise OSError(22, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", refuse_dirs)
    durable.write_text(tmp_path / "a", "x")
    assert (tmp_path / "a").read_text() == "x"


def test_write_file_atomic_durable_flushes_before_and_after_the_rename(tmp_path, log):
    from enspp.data.store_meta import write_file_atomic

    path = tmp_path / "d" / "point.json"
    write_file_atomic(path, [b'{"a": ', b"1}"], durable=True)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [e[0] for e in log] == ["fsync", "replace", "fsync"]
    assert log[0][1].endswith(".partial") and log[1][1] == str(path.absolute())
    assert log[2][1] == str(path.parent)
    log.clear()
    write_file_atomic(path, b"{}")  # not durable: no flush
    assert [e[0] for e in log] == ["replace"]


def test_swap_tree_flushes_the_new_directory_then_swaps_and_recovers_a_killed_swap(tmp_path,
                                                                                   log):
    out, tmp = tmp_path / "report", tmp_path / ".report.partial"
    out.mkdir()
    (out / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    durable.swap_tree(tmp, out)
    assert (out / "a").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["report"]
    assert [e[:2] for e in log] == [("syncfs", str(tmp)), ("fsync", str(tmp_path))]
    # killed between the renames: the previous directory aside, nothing at out
    os.rename(out, tmp_path / ".report.old")
    durable.recover_tree(out)
    assert (out / "a").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["report"]
    # killed after the second rename: both there, the old one goes
    (tmp_path / ".report.old").mkdir()
    durable.recover_tree(out)
    assert sorted(os.listdir(tmp_path)) == ["report"]
    durable.recover_tree(out)  # nothing to do
    assert (out / "a").read_text() == "new"
