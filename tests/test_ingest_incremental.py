"""Ingest without re-reading what it holds: the digests of ingested files remembered with their
stat stamps beside the store (``data.provenance.identify_file``, ``data.store_meta``), and the
ingest flow's failure message naming exactly the files that did not land."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_flows import shared_harness, write_forecast_gribs
from test_store import forecast

from enspp.data import provenance as prov
from enspp.data import store_meta as sm
from enspp.data.grib_writer import write_grib
from enspp.data.ingest import IngestError, ingest, ingested, new_inputs
from enspp.data.store import open_store

INITS = ["2020-01-01T00", "2020-01-01T12", "2020-01-02T00"]


@pytest.fixture
def gribs(tmp_path) -> list[Path]:
    return [p.resolve() for p in write_forecast_gribs(tmp_path / "in", INITS)]


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The files whose bytes are hashed from now on; files count as settled at once (the
    tests' files were all written a moment ago)."""
    monkeypatch.setattr(prov, "SETTLE_NS", 0)
    calls: list[str] = []
    real = prov.sha256_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(prov, "sha256_file", counting)
    return calls


def _rewrite(path: Path, init: str, *, seed: int) -> None:
    """``path`` written again in place (same inode) with the fields of ``init``."""
    tmp = path.with_suffix(".tmp")
    write_grib(tmp, forecast([init], seed=seed), kind="forecast")
    with open(path, "r+b") as fh:
        fh.write(tmp.read_bytes())
        fh.truncate()
    tmp.unlink()


# ------------------------------------------------------------------ no bytes read twice
def test_second_pass_over_unchanged_files_reads_no_bytes(tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    first = ingest(gribs, store, progress=False)
    assert len(first.added) == 3 and sorted(hashes) == ["fc0.grib", "fc1.grib", "fc2.grib"]
    hashes.clear()
    assert new_inputs([str(gribs[0].parent)], store) == ([], [str(p) for p in gribs])
    again = ingest(gribs, store, progress=False)
    assert again.files_already_ingested == 3 and again.added == () and hashes == []
    known = sm.read_digests(store)
    assert {p: e.sha256 for p, e in known.items()} == {
        str(p): prov.sha256_file(p) for p in gribs}
    assert not list(store.rglob("*digests*"))  # beside the store: the store is unchanged


def test_digests_of_files_ingested_before_are_remembered_by_the_first_listing(
        tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    ingest(gribs[:2], store, progress=False)
    sm.digests_path(store).unlink()  # a store ingested before digests were remembered
    hashes.clear()
    new, done = new_inputs([str(gribs[0].parent)], store)
    assert new == [str(gribs[2])] and done == [str(p) for p in gribs[:2]]
    assert sorted(hashes) == ["fc0.grib", "fc1.grib", "fc2.grib"]
    hashes.clear()
    assert new_inputs([str(gribs[0].parent)], store)[1] == done
    assert hashes == ["fc2.grib"]  # only the file not ingested is read again


def test_a_file_changed_within_the_settling_time_is_not_remembered(tmp_path, gribs,
                                                                    monkeypatch):
    store = tmp_path / "s.zarr"
    monkeypatch.setattr(prov, "SETTLE_NS", 3600 * 10**9)  # files written "a moment ago":
    ingest(gribs, store, progress=False)  # a write in the same clock tick might not show
    assert sm.read_digests(store) == {} and ingested(gribs, store) == [True] * 3
    assert sm.read_digests(store) == {}
    src, entry = prov.identify_file(gribs[0], known={}, settle_ns=0)
    assert entry is not None and entry.sha256 == src.sha256 and entry.matches(os.stat(gribs[0]))


# ------------------------------------------------------------------ changed files
def test_a_file_rewritten_with_new_content_is_hashed_and_ingested(tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    ingest(gribs[:2], store, progress=False)
    _rewrite(gribs[1], "2020-01-03T00", seed=7)  # a new init time in place of the old one
    hashes.clear()
    new, done = new_inputs([str(p) for p in gribs[:2]], store)
    assert (new, done) == ([str(gribs[1])], [str(gribs[0])]) and hashes == ["fc1.grib"]
    out = ingest(gribs[:2], store, progress=False)
    assert out.added == ("2020-01-03T00:00:00",) and out.files_already_ingested == 1
    hashes.clear()
    assert new_inputs([str(p) for p in gribs[:2]], store)[0] == [] and hashes == []


def test_same_size_rewrite_conflicting_with_the_store_is_refused_as_before(
        tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    ingest(gribs, store, progress=False)
    before = open_store(store).compute()
    size = gribs[1].stat().st_size
    _rewrite(gribs[1], INITS[1], seed=99)  # other values for an init time the store holds
    assert gribs[1].stat().st_size == size
    hashes.clear()
    assert ingested(gribs, store) == [True, False, True] and hashes == ["fc1.grib"]
    with pytest.raises(IngestError, match="fc1.grib"):
        ingest(gribs, store, progress=False)
    assert open_store(store).compute().identical(before)


def test_a_copy_of_ingested_bytes_is_skipped_by_digest(tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    ingest(gribs, store, progress=False)
    copy = gribs[0].parent / "copy.grib"
    copy.write_bytes(gribs[0].read_bytes())
    hashes.clear()
    out = ingest([*gribs, copy], store, progress=False)
    assert out.files_already_ingested == 4 and out.added == () and hashes == ["copy.grib"]


# ------------------------------------------------------------------ the digest file
def test_an_unreadable_digest_file_is_ignored_and_replaced(tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    ingest(gribs, store, progress=False)
    sm.digests_path(store).write_text("{not json")
    hashes.clear()
    assert ingested(gribs, store) == [True] * 3 and len(hashes) == 3
    assert json.loads(sm.digests_path(store).read_text())["format"] == 1
    hashes.clear()
    assert ingested(gribs, store) == [True] * 3 and hashes == []


def test_digest_file_is_replaced_whole_or_not_at_all(tmp_path, gribs, hashes, monkeypatch):
    store = tmp_path / "s.zarr"
    ingest(gribs[:1], store, progress=False)
    path = sm.digests_path(store)
    before = path.read_bytes()
    (path.parent / f"{path.name}.dead.partial").write_text("left by a killed writer")

    real = os.replace

    def killed(src, dst):  # the process stops between writing the digests and renaming
        if Path(dst) == path:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(sm.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest(gribs, store, progress=False)
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.partial"))
    monkeypatch.undo()
    monkeypatch.setattr(prov, "SETTLE_NS", 0)
    assert ingested(gribs, store) == [True] * 3  # what landed is in the store all the same
    assert len(sm.read_digests(store)) == 3


def test_a_vanished_file_is_forgotten(tmp_path, gribs, hashes):
    store = tmp_path / "s.zarr"
    ingest(gribs[:2], store, progress=False)
    gribs[0].unlink()
    ingest(gribs[1:], store, progress=False)
    assert sorted(sm.read_digests(store)) == [str(gribs[1]), str(gribs[2])]


# ------------------------------------------------------------------ the flow's failure message
def test_failure_message_names_only_the_failed_files_and_counts_the_landed():
    from enspp.flows.ops import _ingest_failure

    msg = _ingest_failure([("/in/bad.grib", "/in/bad.grib: not a GRIB file")], files=3)
    assert msg == "ingest: 1 of 3 new files failed, the other 2 landed: /in/bad.grib: not a GRIB file"
    msg = _ingest_failure([("/in/a.grib", "no such file"), ("/in/b.grib", "locked")], files=2)
    assert msg == ("ingest: 2 of 2 new files failed, none landed: /in/a.grib: no such file | "
                   "/in/b.grib: locked")
    msg = _ingest_failure([], files=2, errors=["log full"])
    assert msg == "ingest: all 2 new files landed, but 1 task failed: log full"


def test_not_landed_asks_the_store(tmp_path, gribs):
    from enspp.flows.ops import _failed_batch, _not_landed

    store = tmp_path / "s.zarr"
    bad = gribs[0].parent / "corrupt.grib"
    bad.write_bytes(gribs[0].read_bytes()[:200])
    batch = [str(gribs[0]), str(bad), str(gribs[1])]
    summary = ingest(batch, store, progress=False, on_error="skip")
    err = IngestError(summary.failed, store=str(store))
    problems = _not_landed(_failed_batch(str(store), batch, err))
    assert [p for p, _ in problems] == [str(bad)]
    assert problems[0][1] == " ".join(summary.failed[0][1].split())
    # a batch whose task failed before writing anything: none of its files landed
    other = [str(gribs[2]), str(tmp_path / "gone.grib")]
    problems = _not_landed(_failed_batch(str(store), other, "store s.zarr is locked"))
    assert problems == [(other[0], "not ingested; its task reported the missing file only "
                                   "(see its log)"), (other[1], "no such file")]
    problems = _not_landed(_failed_batch(str(store), other[:1], "store s.zarr is locked"))
    assert problems == [(other[0], "not ingested, its task failed: store s.zarr is locked")]


@pytest.fixture(scope="session")
def harness():
    yield from shared_harness()


def test_ingest_flow_failure_message(harness, tmp_path):
    from enspp.flows.ops import ingest_flow

    d = tmp_path / "in"
    gribs = write_forecast_gribs(d, INITS[:2])
    bad = d / "corrupt.grib"
    bad.write_bytes(gribs[0].read_bytes()[:200])
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data: {incoming: {forecast: [in]}, files_per_task: 3}\n")
    state = ingest_flow(str(cfg), return_state=True)
    assert state.is_failed()
    msg = state.message
    assert "ingest: 1 of 3 new files failed, the other 2 landed: " in msg
    assert f"{bad.resolve()}: " in msg and "its task failed" not in msg  # its own problem
    assert "fc0.grib" not in msg and "fc1.grib" not in msg
    assert open_store(tmp_path / "stores" / "forecast.zarr").sizes["init_time"] == 2
    # only the corrupt file is new now, and it does not land
    state = ingest_flow(str(cfg), return_state=True)
    assert "ingest: 1 of 1 new file failed, none landed: " in state.message
