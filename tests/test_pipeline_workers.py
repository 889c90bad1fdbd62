"""Feeding training: batches identical whatever the workers, decoding threads, cache and read
strategy; persistent workers start once per fit; workers import only the reading code;
scripts without a ``__main__`` guard and ``python -`` run workers; training imports without
the GRIB libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from predict_data import SMALL_MIXED, make_stores

from enspp.pipeline import EnsembleDataModule, PipelineConfig, PipelineConfigError
from enspp.pipeline.dataset import _empty, collate_rows
from enspp.pipeline.synthetic import write_stores
from enspp.pipeline.workers import read_threads, start_context

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_stores(tmp_path_factory.mktemp("stores"), n_init=16, ny=12, nx=20, n_members=7,
                        lead_hours=(0, 24, 48))


def _cfg(**batches) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "features": {"variables": ["z500", "t850", "t2m"], "targets": ["t2m"],
                     "input_lead_times": [0]},
        "members": {"k": 3, "strategy": "random"},
        "split": {"fractions": [0.6, 0.2, 0.2]},
        "batches": {"patch_size": 8, "batch_size": 3, "seed": 5, "read_threads": 1,
                    "tile_size": 8, "tile_overlap": 2, **batches}})


def _batches(dm: EnsembleDataModule) -> list[dict[str, torch.Tensor]]:
    """Two training epochs, then the validation and test loaders (tiles)."""
    train = dm.train_dataloader()
    out = [b for _ in range(2) for b in train]
    return out + list(dm.val_dataloader()) + list(dm.test_dataloader())


def _rechunked(ds: xr.Dataset, path: Path, chunks: dict, **kw) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.drop_encoding().chunk({d: chunks.get(d, -1) for d in ds.dims}).to_zarr(
            path, mode="w", **kw)
        return xr.open_zarr(path)


def test_batches_identical_whatever_workers_threads_cache_and_strategy(stores, tmp_path):
    fc, an = xr.open_zarr(stores.forecast), xr.open_zarr(stores.analysis)
    ref = EnsembleDataModule(_cfg(), forecast=stores.forecast, analysis=stores.analysis)
    memory = (fc.load().drop_encoding(), an.load().drop_encoding())
    # chunks across the grid and the members (several chunks per sample, partial edges)
    tiled = (_rechunked(fc, tmp_path / "f.zarr", {"init_time": 1, "lead_time": 1, "member": 3,
                                                   "latitude": 5, "longitude": 7}),
             _rechunked(an, tmp_path / "a.zarr", {"time": 2, "latitude": 5, "longitude": 6}))
    # Zarr format 2: read through xarray from the path
    v2 = (_rechunked(fc, tmp_path / "f2.zarr", {"init_time": 1, "lead_time": 1}, zarr_format=2),
          _rechunked(an, tmp_path / "a2.zarr", {"time": 1}, zarr_format=2))
    variants = {
        "2 workers, 2 threads": (_cfg(num_workers=2, read_threads=2), None),
        "3 threads + cache": (_cfg(read_threads=3, cache_mb=64), None),
        "in memory (xarray)": (_cfg(), memory),
        "grid-chunked store": (_cfg(read_threads=2), tiled),
        "zarr 2 (xarray)": (_cfg(num_workers=1), v2),
    }
    want = _batches(ref)
    assert set(ref._reader.strategies.values()) == {"chunks"}
    for name, (cfg, sources) in variants.items():
        dm = EnsembleDataModule(cfg, forecast=sources[0] if sources else stores.forecast,
                                analysis=sources[1] if sources else stores.analysis,
                                stats=ref.stats)
        got = _batches(dm)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for k in w:
                torch.testing.assert_close(g[k], w[k], rtol=0, atol=0, equal_nan=True,
                                           msg=f"{name}: {k}")
        expected = {"in memory (xarray)": {"xarray"}, "zarr 2 (xarray)": {"xarray"}}
        assert set(dm._reader.strategies.values()) == expected.get(name, {"chunks"}), name


def test_worker_start_up_once_per_fit(tmp_path):
    """Persistent workers: one start per loader (train and validation) for a whole fit, not
    one per epoch and validation pass."""
    from enspp.models.config import ModelConfig, TrainConfig
    from enspp.models.train import train

    paths = make_stores(tmp_path / "stores")
    cfg = PipelineConfig.from_dict({
        "stores": {"forecast": str(paths.forecast), "analysis": str(paths.analysis),
                   "static": str(paths.static)},
        "members": {"k": 3}, "batches": {"batch_size": 4, "patch_size": 8, "num_workers": 1}})
    dm = EnsembleDataModule(cfg)
    result = train(cfg, ModelConfig(name="mixed", options=SMALL_MIXED),
                   TrainConfig(max_epochs=3, progress_bar=False, run_id="w",
                               early_stopping_patience=None),
                   workdir=tmp_path, datamodule=dm)
    assert result.epochs == 3
    assert dm.worker_starts == 2


def _same(got: list, want: list, what: str) -> None:
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            torch.testing.assert_close(g[k], w[k], rtol=0, atol=0, equal_nan=True,
                                       msg=f"{what}: {k}")


@pytest.mark.parametrize("patch_size", [8, None])
def test_exact_fit_pass_is_read_by_the_training_workers(stores, patch_size):
    """An exact fit's pass (random patches: the training init times' whole fields, as the
    evaluation loader reads them, each point's target in the one tile that owns it; whole
    fields: the training loader's first epoch) is read by the training loader's one worker,
    and leaves the training epochs as they were."""
    dm = EnsembleDataModule(_cfg(num_workers=1, patch_size=patch_size),
                            forecast=stores.forecast, analysis=stores.analysis)
    ref = EnsembleDataModule(_cfg(patch_size=patch_size), forecast=stores.forecast,
                             analysis=stores.analysis, stats=dm.stats)
    exact = dm.exact_fit_dataloader()
    got = list(exact)
    want = (list(ref._loader(ref.dataset("train", mode="eval"))) if patch_size else
            list(ref.train_dataloader()))
    assert len(exact) == len(want)
    if patch_size:  # overlapping tiles: each point's target kept in one tile only
        owned = [{**w, "target": torch.where(g["target"].isnan(), torch.nan, w["target"])}
                 for g, w in zip(got, want)]
        _same(got, owned, "exact pass")
        ny, nx = dm.grid_shape
        cover = torch.zeros(ny, nx)
        for g in got:
            th, tw = g["target"].shape[-2:]
            for t, y, x in zip(g["target"], g["y0"].tolist(), g["x0"].tolist()):
                cover[y:y + th, x:x + tw] += t[0].isfinite()
        n_samples = len(dm.split_init_times["train"])
        assert torch.equal(cover, torch.full((ny, nx), float(n_samples))), cover
        assert sum(int(w["target"].isfinite().sum()) for w in want) > n_samples * ny * nx
    else:
        _same(got, want, "exact pass")
    if patch_size:  # the tiles of whole fields in order, not random patches
        assert got[0]["y0"].tolist() == [0, 0, 0] and got[0]["x0"].tolist() == [0, 6, 12]
    fresh = EnsembleDataModule(_cfg(patch_size=patch_size), forecast=stores.forecast,
                               analysis=stores.analysis, stats=dm.stats).train_dataloader()
    train = dm.train_dataloader()
    assert train is dm.train_dataloader() and dm.val_dataloader() is dm.val_dataloader()
    _same([b for _ in range(2) for b in train], [b for _ in range(2) for b in fresh], "epochs")
    _same(list(exact), got, "a second pass")
    assert dm.worker_starts == 1


def test_exact_fit_reads_every_sample_once_whatever_samples_per_epoch(stores):
    """batches.samples_per_epoch sets a network epoch's length: an exact fit on whole fields
    still reads every training sample once (not the first epoch's few, nor repeats), so the
    EMOS it fits is the same with and without it."""
    from enspp.models.base import build_model
    from enspp.models.config import ModelConfig
    from enspp.models.emos import emos_chunk, fit_emos
    from enspp.models.train import build_spec

    params, passes = [], []
    for spe in (None, 3, 40):
        dm = EnsembleDataModule(_cfg(patch_size=None, samples_per_epoch=spe),
                                forecast=stores.forecast, analysis=stores.analysis)
        assert len(dm.train_dataloader().sampler) == (spe or len(dm.train_dataloader().dataset))
        exact = dm.exact_fit_dataloader()
        got = list(exact)
        assert len(exact) == len(got)
        passes.append(got)
        model = build_model(build_spec(dm, ModelConfig(name="emos_local"), n_members=dm.n_members,
                                       grid_shape=dm.grid_shape))
        fit_emos(model, (emos_chunk(model, b) for b in got))
        params.append(model.params.detach().clone())
    times = torch.cat([b["init_time"] for b in passes[0]])
    assert len(times) == len(set(times.tolist())) == len(dm.split_init_times["train"])
    for got, p in zip(passes[1:], params[1:]):
        _same(got, passes[0], "exact pass")
        torch.testing.assert_close(p, params[0], rtol=0, atol=0)


def _rows(batches: list) -> dict:
    """Each sample row of ``batches`` by (init time, lead, tile origin)."""
    out = {}
    for b in batches:
        for i in range(len(b["init_time"])):
            key = (int(b["init_time"][i]), int(b["lead_time"][i]), int(b["y0"][i]), int(b["x0"][i]))
            out[key] = {k: v[i] for k, v in b.items()}
    return out


@pytest.mark.parametrize("patch_size", [8, None])
def test_exact_fit_pass_reads_only_the_init_times_it_is_given(stores, patch_size):
    """batches.exact_fit_init_times: the exact fit's pass reads that many training init
    times, evenly spread (the first and the last included), each sample as the full pass
    reads it; the training epochs are untouched."""
    dm = EnsembleDataModule(_cfg(num_workers=1, patch_size=patch_size, exact_fit_init_times=2),
                            forecast=stores.forecast, analysis=stores.analysis)
    full = EnsembleDataModule(_cfg(patch_size=patch_size), forecast=stores.forecast,
                              analysis=stores.analysis, stats=dm.stats)
    times = dm.split_init_times["train"]
    keep = dm.exact_fit_keep()
    assert keep.sum() == 2 and keep[0] and keep[-1] and len(times) == 4
    exact = dm.exact_fit_dataloader()
    got = list(exact)
    assert len(exact) == len(got)
    rows, all_rows = _rows(got), _rows(list(full.exact_fit_dataloader()))
    kept = set(times[keep].astype("datetime64[ns]").astype(np.int64).tolist())
    assert {k[0] for k in rows} == kept
    assert len(rows) == sum(1 for k in all_rows if k[0] in kept)  # every sample of those
    for key, row in rows.items():
        for name, value in row.items():
            torch.testing.assert_close(value, all_rows[key][name], rtol=0, atol=0, equal_nan=True)
    assert "from 2 of 4 training init times" in dm.exact_fit_words() and full.exact_fit_words() == ""
    fresh = EnsembleDataModule(_cfg(patch_size=patch_size), forecast=stores.forecast,
                               analysis=stores.analysis, stats=dm.stats).train_dataloader()
    _same(list(dm.train_dataloader()), list(fresh), "the first epoch after the pass")


def test_worker_batches_reuse_shared_blocks_once_released(stores):
    """A worker writes a batch into a shared-memory block the main process has let go of;
    a batch still held is never overwritten (the worker takes fresh memory instead)."""
    import gc

    dm = EnsembleDataModule(_cfg(num_workers=1, batch_size=2, samples_per_epoch=20),
                            forecast=stores.forecast, analysis=stores.analysis)
    ref = EnsembleDataModule(_cfg(batch_size=2, samples_per_epoch=20), forecast=stores.forecast,
                             analysis=stores.analysis, stats=dm.stats)
    loader, want = dm.train_dataloader(), ref.train_dataloader()
    ring = loader.dataset.ring
    held = list(loader)  # every batch of the epoch held: more than the worker's slots
    assert len(held) > ring.slots and all(ring.state[:])  # every slot taken, none freed
    _same(held, list(want), "held epoch")
    del held
    gc.collect()
    assert not any(ring.state[:])  # all released
    for got, w in zip(loader, want):  # batches dropped as they go: slots come back
        _same([got], [w], "released epoch")
        del got
    gc.collect()
    assert not any(ring.state[:]) and dm.worker_starts == 1


def test_workers_import_only_the_reading_code(stores, tmp_path):
    """A worker started afresh (spawn) imports the reading code, not Lightning, Prefect,
    plotting or the GRIB libraries; ``fork`` (the default on Linux) imports nothing."""
    import worker_probe
    from torch.utils.data import DataLoader

    dm = EnsembleDataModule(_cfg(), forecast=stores.forecast, analysis=stores.analysis)
    report = tmp_path / "modules.json"
    loader = DataLoader(dm.dataset("train"), batch_size=2, num_workers=1,
                        collate_fn=collate_rows, multiprocessing_context="spawn",
                        worker_init_fn=worker_probe.Probe(str(report)))
    batch = next(iter(loader))
    assert batch["inputs"].shape[0] == 2
    modules = set(json.loads(report.read_text()))
    assert "enspp.pipeline.reader" in modules
    heavy = {"lightning", "pytorch_lightning", "prefect", "matplotlib", "eccodes", "cfgrib",
             "gribapi", "enspp.pipeline.datamodule", "enspp.models", "enspp.flows"}
    assert not modules & heavy, sorted(modules & heavy)
    assert start_context(None).get_start_method() == ("fork" if sys.platform.startswith("linux")
                                                      else "spawn")


SCRIPT = """
import sys
from pathlib import Path
from enspp.pipeline import EnsembleDataModule, PipelineConfig
d = Path({stores!r})
cfg = PipelineConfig.from_dict({{
    "stores": {{"forecast": str(d / "forecast.zarr"), "analysis": str(d / "analysis.zarr")}},
    "members": {{"k": 3}}, "batches": {{"batch_size": 2, "num_workers": 2}}}})
dm = EnsembleDataModule(cfg)
n = sum(int(b["inputs"].shape[0]) for b in dm.train_dataloader())
print("samples", n, "workers", dm.worker_starts)
"""


def test_scripts_without_main_guard_and_stdin_run_workers(stores, tmp_path):
    """A script without ``if __name__ == "__main__"`` and code piped to ``python -`` start
    workers (a fork server or spawn would re-run or fail to find the main script)."""
    code = SCRIPT.format(stores=str(Path(stores.forecast).parent))
    script = tmp_path / "train_script.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = []
    for i, args in enumerate(([str(script)], ["-"])):  # both at once
        with open(tmp_path / f"out{i}", "w") as out, open(tmp_path / f"err{i}", "w") as err:
            procs.append(subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE,
                                          stdout=out, stderr=err, text=True, env=env,
                                          cwd=tmp_path))
    procs[1].stdin.write(code)
    for p in procs:
        p.stdin.close()
    for i, p in enumerate(procs):
        rc = p.wait(timeout=600)
        out, err = (tmp_path / f"out{i}").read_text(), (tmp_path / f"err{i}").read_text()
        assert rc == 0, err[-2000:]
        assert "workers 2" in out and "samples 0" not in out


def test_training_imports_and_runs_without_grib_libraries(tmp_path):
    """``enspp train`` with eccodes, gribapi and cfgrib unimportable (a GPU image carrying only
    the training stack)."""
    make_stores(tmp_path / "stores")
    cfg = {"pipeline": {"stores": {"forecast": "stores/forecast.zarr",
                                   "analysis": "stores/analysis.zarr",
                                   "static": "stores/static.nc"},
                        "members": {"k": 3}, "batches": {"batch_size": 4, "patch_size": 8}},
           "model": {"name": "mixed", "options": SMALL_MIXED},
           "train": {"max_epochs": 1, "progress_bar": False, "run_id": "nogrib"}}
    (tmp_path / "enspp.yaml").write_text(yaml.safe_dump(cfg))
    code = textwrap.dedent("""
        import sys
        for name in ("eccodes", "gribapi", "cfgrib"):
            sys.modules[name] = None  # import raises ImportError
        from enspp.flows.cli import main
        rc = main(["train", "--config", "enspp.yaml"])
        loaded = [m for m in ("eccodes", "gribapi", "cfgrib") if sys.modules.get(m) is not None]
        print("rc", rc, "grib modules", loaded)
        sys.exit(rc)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rc 0 grib modules []" in r.stdout
    assert (tmp_path / "runs" / "nogrib" / "checkpoints" / "best.ckpt").is_file()


def test_loader_settings_and_their_errors(stores):
    dm = EnsembleDataModule(_cfg(num_workers=2, prefetch_factor=3), forecast=stores.forecast,
                            analysis=stores.analysis)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.prefetch_factor == 3 and not loader.pin_memory
    assert loader.multiprocessing_context.get_start_method() == start_context(None).get_start_method()
    assert dm._feeds_gpu() is False  # no trainer, no GPU: nothing pinned
    assert read_threads(3, num_workers=8) == 3
    assert 1 <= read_threads(None, num_workers=0) <= 8
    assert read_threads(None, num_workers=10**6) == 1
    shared = _empty((2, 3), torch.float32, "shared")
    assert shared.is_shared() and shared.shape == (2, 3)
    for key, value in (("read_threads", 0), ("prefetch_factor", 0), ("start_method", "thread")):
        with pytest.raises(PipelineConfigError, match=f"pipeline.batches.{key}"):
            _cfg(**{key: value})
    assert np.array_equal(dm._reader.members(), np.arange(7))


def test_lazy_packages_export_functions_named_like_submodules():
    """``enspp.data`` and ``enspp.pipeline`` import their names on first use; a name that is
    also a submodule (``ingest``, ``align``) stays the function once the submodule is loaded."""
    import importlib
    import inspect

    import enspp.data
    import enspp.pipeline

    importlib.import_module("enspp.data.ingest")
    importlib.import_module("enspp.pipeline.align")
    from enspp.data import ingest
    from enspp.pipeline import align

    assert inspect.isfunction(ingest) and inspect.isfunction(align)
    assert enspp.data.ingest is ingest and enspp.pipeline.align is align
    assert set(enspp.data.__all__) <= set(dir(enspp.data))
    for name in enspp.pipeline.__all__:
        assert getattr(enspp.pipeline, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        enspp.data.nope  # noqa: B018


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the benchmark")
def test_gpu_benchmark_says_so_without_a_gpu():
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "benchmarks" / "bench_gpu.py")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("bench_gpu: no CUDA GPU on this machine") and "BENCH" not in r.stdout


@pytest.mark.slow
def test_large_grid_patches_whole_fields_and_tiles(tmp_path):
    """721x1440 (0.25 degree): random patches, a whole field and inference tiles read the
    store's values (checked against xarray), in batches of the contract's shapes."""
    paths = write_stores(tmp_path, n_init=12, ny=721, nx=1440, n_members=4,
                         lead_hours=(24, 48), batch_init=2)
    cfg = {"stores": {"forecast": str(paths.forecast), "analysis": str(paths.analysis),
                      "static": str(paths.static)},
           "features": {"variables": ["z500", "t2m"], "targets": ["t2m"],
                        "input_lead_times": [24]},
           "members": {"k": 3, "strategy": "random"},
           "split": {"train": {"start": "2019-01-01", "end": "2019-01-08"},
                     "test": {"start": "2019-01-09", "end": "2019-01-14"}},
           "batches": {"batch_size": 2, "patch_size": 128, "tile_size": 256, "tile_overlap": 16}}
    dm = EnsembleDataModule(PipelineConfig.from_dict(cfg))
    fc, an = xr.open_zarr(paths.forecast), xr.open_zarr(paths.analysis)

    def check(batch, b):
        i, y0, x0 = (int(batch[k][b]) for k in ("init_time", "y0", "x0"))
        h, w = batch["inputs"].shape[-2:]
        ref = fc["t2m"].sel(init_time=np.datetime64(i, "ns"), lead_time=np.timedelta64(24, "h")
                            ).isel(latitude=slice(y0, y0 + h), longitude=slice(x0, x0 + w))
        got = batch["inputs"][b, :, 3].numpy()  # t2m@24h, the members drawn
        assert any(np.array_equal(got[0], ref.isel(member=m).values) for m in range(1, 4))
        tref = an["t2m"].sel(time=np.datetime64(i, "ns") + np.timedelta64(48, "h")).isel(
            latitude=slice(y0, y0 + h), longitude=slice(x0, x0 + w)).values
        np.testing.assert_array_equal(batch["target"][b, 0].numpy(), tref)

    patches = next(iter(dm.train_dataloader()))
    assert patches["inputs"].shape == (2, 3, 4, 128, 128)
    check(patches, 1)
    whole = dm.dataset("train", mode="eval")
    item = whole.__getitems__([0])
    assert item["inputs"].shape == (1, 3, 4, 256, 256)  # eval: the first tile
    tiles = dm.test_dataloader()
    n_tiles = len(dm.dataset("test").tiles)
    assert n_tiles == 3 * 6
    first = next(iter(tiles))
    check(first, 0)
    full = EnsembleDataModule(PipelineConfig.from_dict(
        {**cfg, "batches": {"batch_size": 1, "patch_size": None}}))
    b = next(iter(full.train_dataloader()))
    assert b["inputs"].shape == (1, 3, 4, 721, 1440) and b["static"].shape == (1, 8, 721, 1440)
    check(b, 0)


def test_tiles_of_one_init_time_share_one_decode(stores):
    """Inference tiles (and any samples of one init time) decode each chunk once: the
    working set holds a sample's chunks."""
    dm = EnsembleDataModule(_cfg(batch_size=2), forecast=stores.forecast,
                            analysis=stores.analysis)
    tiles = len(dm.dataset("test").tiles)
    n = sum(int(b["inputs"].shape[0]) for b in dm.test_dataloader())
    inits = len(dm.split_init_times["test"])
    assert tiles > 2 and n == tiles * inits
    cache = dm._reader.cache
    # z500, t850, t2m at 48 h and 0 h: 6 forecast chunks, and the analysis at the valid time
    # each batch (2 tiles of one init) acquires each chunk once: the init's later batches hit
    assert tiles % 2 == 0
    assert cache.misses == 7 * inits and cache.hits == 7 * inits * (tiles // 2 - 1)


def test_workers_end_cleanly_in_a_process_that_ran_prefect(stores, tmp_path):
    """A process holding Prefect's background services (as after a flow run: the operational
    flows, the demo) forks workers that exit with code 0, not 1 (Prefect 3.8's inherited
    thread-shutdown hook fails in a forked child; PyTorch then stops the fit with "DataLoader
    worker exited unexpectedly").  Run in a fresh interpreter so the started service does
    not outlive the test."""
    code = textwrap.dedent("""
        import sys
        from prefect._internal.concurrency.services import QueueService
        from enspp.pipeline import EnsembleDataModule, PipelineConfig

        class Echo(QueueService[int]):
            async def _handle(self, item):
                pass

        Echo.instance()  # a started Prefect service
        cfg = PipelineConfig.from_dict(json.loads(sys.argv[1]))
        dm = EnsembleDataModule(cfg, forecast=sys.argv[2], analysis=sys.argv[3])
        loader = dm.train_dataloader()
        it = iter(loader)
        n = sum(1 for _ in it)
        workers = list(it._workers)
        it._shutdown_workers()
        print("batches", n, "exit codes", [w.exitcode for w in workers])
    """)
    cfg = _cfg(num_workers=2).model_dump(mode="json")
    r = subprocess.run([sys.executable, "-c", "import json\n" + code, json.dumps(cfg),
                        str(stores.forecast), str(stores.analysis)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exit codes [0, 0]" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "batches 0" not in r.stdout
