"""A damaged store fails train, predict and evaluate with one line naming the store, the
variable and the chunk (index and init time), not a decompression traceback or NaN."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from predict_data import SMALL_MIXED, K, make_checkpoint, make_stores, pipeline_config

from enspp.flows.cli import main


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("read_errors")
    paths = make_stores(root / "stores")
    ckpt = make_checkpoint(root / "m.ckpt", pipeline_config(paths), perturb=0.1)
    return root, ckpt


def _damaged(root: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the stores whose forecast t2m chunk of the first init time, +48 h is
    overwritten with random bytes (``corrupt``) or deleted (``missing``)."""
    work = tmp_path / "w"
    shutil.copytree(root / "stores", work / "stores")
    chunks = sorted((work / "stores" / "forecast.zarr" / "t2m" / "c" / "0" / "1").rglob("*"))
    chunk = next(p for p in chunks if p.is_file())
    if how == "corrupt":
        rng = np.random.default_rng(1)
        chunk.write_bytes(rng.integers(0, 256, chunk.stat().st_size, dtype=np.uint8).tobytes())
    else:
        chunk.unlink()
    return work


def _config(work: Path) -> Path:
    cfg = {"pipeline": {"stores": {"forecast": "stores/forecast.zarr",
                                   "analysis": "stores/analysis.zarr", "static": "stores/static.nc"},
                        "members": {"k": K}, "batches": {"batch_size": 4}},
           "model": {"name": "mixed", "options": SMALL_MIXED},
           "train": {"max_epochs": 1, "progress_bar": False, "run_id": "r"},
           "evaluate": {"truth": "stores/analysis.zarr", "variables": ["t2m"],
                        "systems": [{"name": "raw_full", "path": "stores/forecast.zarr"}]}}
    path = work / "enspp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


WHY = {"corrupt": "corrupt chunk", "missing": "the chunk file is missing although its field was ingested"}


def _one_line(err: str, how: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("enspp ")]
    assert lines, err[-2000:]
    assert re.search(r"error: store \S*forecast\.zarr: variable 't2m', chunk 0/1/0/0/0 \(init_time "
                     r"2019-01-01T00:00, lead_time \+48 h\): " + re.escape(WHY[how]), lines[-1]), err[-2000:]
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_predict_and_evaluate_name_the_damaged_chunk(stores, tmp_path, capsys, how):
    root, ckpt = stores
    work = _damaged(root, tmp_path, how)
    config = _config(work)
    rc = main(["predict", "--checkpoint", str(ckpt), "--store", str(work / "stores" / "forecast.zarr"),
               "--init-time", "2019-01-01T00:00:00", "--config", str(config)])
    assert rc == 1
    _one_line(capsys.readouterr().err, how)
    rc = main(["evaluate", "--config", str(config), "--out", str(work / "report")])
    assert rc == 1
    _one_line(capsys.readouterr().err, how)


def test_train_names_the_damaged_chunk(stores, tmp_path, capsys):
    root, _ = stores
    work = _damaged(root, tmp_path, "corrupt")
    assert main(["train", "--config", str(_config(work))]) == 1
    _one_line(capsys.readouterr().err, "corrupt")


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_the_pipelines_chunk_decoder_names_the_chunk_and_its_init_time(stores, tmp_path, how):
    from enspp.pipeline.chunks import ChunkReadError, ZarrChunks

    root, _ = stores
    work = _damaged(root, tmp_path, how)
    chunks = ZarrChunks.open(work / "stores" / "forecast.zarr" / "t2m")
    assert chunks is not None
    out = np.empty(chunks.chunks, chunks.dtype)
    chunks.decode((0, 0, 0, 0, 0), out)  # an intact chunk
    with pytest.raises(ChunkReadError, match=r"variable 't2m', chunk 0/1/0/0/0 \(init_time "
                                             r"2019-01-01T00:00, lead_time \+48 h\): "
                                             + re.escape(WHY[how])):
        chunks.decode((0, 1, 0, 0, 0), out)


@pytest.mark.parametrize("array", ["enspp/complete", "enspp/present/t2m", "enspp/source/t2m"])
@pytest.mark.parametrize("how", ["empty", "corrupt"])
def test_a_damaged_bookkeeping_chunk_is_one_line_naming_store_and_array(stores, tmp_path, capsys,
                                                                       array, how):
    """A flag chunk emptied (what a power loss can leave of a file renamed before its data
    reached the disk) or overwritten: each command that reads the array says in one line that the
    store's bookkeeping cannot be read, and the store is left as it was."""
    root, _ = stores
    work = tmp_path / "w"
    shutil.copytree(root / "stores", work / "stores")
    store = work / "stores" / "forecast.zarr"
    chunk = next(p for p in sorted((store / array / "c").rglob("*")) if p.is_file())
    if how == "empty":
        chunk.write_bytes(b"")
    else:
        size = max(chunk.stat().st_size, 16)
        chunk.write_bytes(np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8).tobytes())
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    cfg = _config(work)
    commands = {"validate": ["validate", str(store)], "inspect": ["inspect", str(store)],
                "evaluate": ["evaluate", "--config", str(cfg), "--out", str(work / "report")],
                "ingest": ["ingest", str(root / "stores" / "forecast.zarr"), "--store", str(store)]}
    # the commands that read the array: every writer reads the completion flags before it
    # looks at an input; inspect and evaluate read no source ids (provenance comes from the
    # sources' log)
    reading = {"enspp/complete": ["validate", "inspect", "evaluate", "ingest"],
               "enspp/present/t2m": ["validate", "inspect", "evaluate"],
               "enspp/source/t2m": ["validate"]}[array]
    for argv in (commands[c] for c in reading):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.startswith("enspp ")]
        assert lines and re.search(rf"error: store \S*forecast\.zarr: its bookkeeping array "
                                   rf"{re.escape(array)} cannot be read, ", lines[-1]), err[-2000:]
        assert "ingest its files into a new store" in lines[-1] and "Traceback" not in err
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_a_damaged_store_given_to_ingest_as_input_is_one_line_and_writes_nothing(stores, tmp_path,
                                                                                 capsys, how):
    """One of our stores as the input of an ingest (a copy into a new store): its damaged chunk
    refuses the input in one line naming it, the variable and the chunk; no store is made."""
    root, _ = stores
    work = _damaged(root, tmp_path, how)
    target = tmp_path / "copy.zarr"
    assert main(["ingest", str(work / "stores" / "forecast.zarr"), "--store", str(target),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err
    assert "this file" not in err, err  # the input store named once, not 'store this file'
    assert re.search(r"forecast\.zarr: .*variable 't2m', chunk 0/1/0/0/0 \(init_time "
                     r"2019-01-01T00:00, lead_time \+48 h\): " + re.escape(WHY[how]), err), err
    assert not target.exists()
