"""Benchmark of the pipeline (run: ``python tests/benchmarks/bench_pipeline.py``).

Writes its own enspp stores into a temporary directory and measures, in one run:

1. the DataModule's train loader at 181x360 (11 members, z/t on 2 levels + t2m, leads 24
   and 48 h; inputs z500, t850, t2m at both leads, K=5 of the 10 perturbed members, target
   t2m at 48 h, whole fields, ``num_workers: 0``), samples/s over a later epoch, against the
   decode floor: numcodecs decoding the same chunks (every chunk each sample needs: one per
   variable and lead, and the analysis at the valid time), from bytes already in memory,
   into one reused buffer, on one core;
2. the same loader with 2 workers against 0 workers, over a later epoch (persistent
   workers: their start is paid once, in the first epoch);
3. peak RSS of one training epoch over a store and over a store 4x as large (64x128, random
   patches), each in a fresh subprocess;
4. batches/s of a later epoch with ``batches.cache_mb`` (decoded chunks kept) against the
   same loader without it (64x128 random patches).

Wall-time ratios move with the load of the machine: the load average and the process CPU
times are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VARIABLES = ["z500", "t850", "t2m"]
MEMBERS, LEADS = 11, (24, 48)
BIG = (181, 360)
SMALL = (64, 128)


def _config(paths, *, samples: int, patch: int | None, batch: int, cache_mb: float = 0,
            workers: int = 0, strategy: str = "random", threads: int | None = None):
    from enspp.pipeline import PipelineConfig

    return PipelineConfig.from_dict({
        "stores": {"forecast": str(paths.forecast), "analysis": str(paths.analysis),
                   "static": str(paths.static)},
        "features": {"variables": VARIABLES, "targets": ["t2m"], "target_lead_time": 48,
                     "input_lead_times": [24]},
        "members": {"k": 5, "strategy": strategy},
        "split": {"fractions": [0.8, 0.1, 0.1]},
        "batches": {"patch_size": patch, "batch_size": batch, "seed": 0,
                    "samples_per_epoch": samples, "num_workers": workers,
                    "cache_mb": cache_mb, "read_threads": threads}})


def write(directory: Path, n_init: int, grid: tuple[int, int]):
    from enspp.pipeline.synthetic import write_stores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_stores(directory, n_init=n_init, lead_hours=LEADS, n_members=MEMBERS,
                            ny=grid[0], nx=grid[1], batch_init=8)


def later_epoch_rate(dm, *, epochs: int = 2) -> float:
    """Samples/s of the best of ``epochs`` epochs after a first one (which opens handles,
    computes statistics and starts the workers)."""
    loader = dm.train_dataloader()
    sum(1 for _ in loader)
    best = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = sum(int(b["inputs"].shape[0]) for b in loader)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def worker_start(paths, *, method: str | None) -> tuple[float, list[str]]:
    """Seconds from a fresh 2-worker loader to its first batch, and the heavy packages a
    worker holds (fork inherits this process's modules; spawn imports what it needs)."""
    from torch.utils.data import DataLoader

    from enspp.pipeline import EnsembleDataModule
    from enspp.pipeline.dataset import collate_rows
    from enspp.pipeline.workers import start_context

    dm = EnsembleDataModule(_config(paths, samples=8, patch=None, batch=2, strategy="first"))
    ds = dm.dataset("train")
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_rows,
                            multiprocessing_context=start_context(method),
                            worker_init_fn=_ModuleReport(report.name))
        t0 = time.perf_counter()
        next(iter(loader))
        seconds = time.perf_counter() - t0
        modules = set(json.loads(Path(report.name).read_text() or "[]"))
    heavy = ["lightning", "prefect", "matplotlib", "eccodes", "cfgrib", "xarray", "dask",
             "pandas", "zarr"]
    return seconds, [m for m in heavy if m in modules]


class _ModuleReport:
    """``worker_init_fn``: write the worker's imported top-level packages to a file."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, worker_id: int) -> None:
        if worker_id == 0:
            Path(self.path).write_text(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))


def decode_floor(dm, *, samples: int) -> float:
    """Samples/s of decoding the chunks ``samples`` training samples need with numcodecs on
    one core (a thread of its own, where Blosc decodes single-threaded), from bytes read
    beforehand, into one reused buffer."""
    from concurrent.futures import ThreadPoolExecutor

    from numcodecs import blosc

    from enspp.pipeline.chunks import ZarrChunks

    fc, an = Path(dm.config.stores.forecast), Path(dm.config.stores.analysis)
    reader = dm._reader
    arrays = {name: ZarrChunks.open(fc / name) for name in ("z", "t", "t2m")}
    target = ZarrChunks.open(an / "t2m")
    inits = dm.split_init_times["train"]
    order = [inits[i % len(inits)] for i in range(samples)]
    blobs = []
    for init in order:
        ip = reader._init_times.position(init, "init time")
        for lp in range(len(LEADS)):
            for arr in arrays.values():
                coords = (ip, lp) + (0,) * (len(arr.shape) - 2)
                blobs.append((Path(arr.chunk_file(coords)).read_bytes(), arr))
        tp = reader._times.position(init + np.timedelta64(48, "h"), "time")
        blobs.append((Path(target.chunk_file((tp, 0, 0))).read_bytes(), target))
    out = {id(a): np.empty(a.chunks, a.dtype) for _, a in blobs}

    def run() -> float:
        t0 = time.perf_counter()
        for data, arr in blobs:
            blosc.decompress(data, out[id(arr)])
        return time.perf_counter() - t0

    with ThreadPoolExecutor(1) as one_core:
        one_core.submit(run).result()
        best = min(one_core.submit(run).result() for _ in range(3))
    return samples / best


def cached_throughput(paths, *, samples: int, patch: int, batch: int) -> tuple[float, float]:
    """(cached, uncached) batches/s of a later epoch over the same samples; the cached
    loader's first epoch fills its cache (1 GiB: the whole small store)."""
    from enspp.pipeline import EnsembleDataModule

    rates = []
    for cache_mb in (1024, 0):
        dm = EnsembleDataModule(_config(paths, samples=samples, patch=patch, batch=batch,
                                        cache_mb=cache_mb))
        rates.append(later_epoch_rate(dm) / batch)
    return rates[0], rates[1]


def epoch_child(store_dir: str, samples: int, patch: int, batch: int) -> None:
    """Run in a subprocess: one training epoch; print peak RSS (MiB) as JSON."""
    from enspp.pipeline import EnsembleDataModule
    from enspp.pipeline.synthetic import StorePaths

    d = Path(store_dir)
    paths = StorePaths(d / "forecast.zarr", d / "analysis.zarr", d / "static.nc")
    dm = EnsembleDataModule(_config(paths, samples=samples, patch=patch, batch=batch))
    n = sum(int(b["inputs"].shape[0]) for b in dm.train_dataloader())
    print(json.dumps({"samples": n, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """Peak RSS of this process: VmHWM (Linux; unlike ``ru_maxrss`` it is not inherited
    from the parent through fork+exec), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_rss(store_dir: Path, *, samples: int, patch: int, batch: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(store_dir), str(samples),
                          str(patch), str(batch)], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"])


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-init", type=int, default=24, help="init times of the stores")
    p.add_argument("--samples", type=int, default=48, help="training samples per epoch")
    p.add_argument("--batch", type=int, default=4, help="batch size at 181x360")
    p.add_argument("--patch", type=int, default=32, help="patch size at 64x128")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        epoch_child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
        return
    from enspp.pipeline import EnsembleDataModule

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        t0 = time.perf_counter()
        big = write(Path(tmp) / "big", a.n_init, BIG)
        small = write(Path(tmp) / "small", a.n_init, SMALL)
        write(Path(tmp) / "large", 4 * a.n_init, SMALL)
        print(f"wrote stores in {time.perf_counter() - t0:.0f} s; {load()}")

        cpu0 = time.process_time()
        dm0 = EnsembleDataModule(_config(big, samples=a.samples, patch=None, batch=a.batch,
                                         strategy="first"))
        rate0 = later_epoch_rate(dm0)
        floor = decode_floor(dm0, samples=a.samples)
        print(f"181x360 whole fields, K=5 of 11, batch {a.batch}: loader (0 workers, "
              f"{dm0._reader.threads} decoding threads) {rate0:.1f} samples/s; decode floor "
              f"(one core) {floor:.1f} samples/s; {load()}")
        one = EnsembleDataModule(_config(big, samples=a.samples, patch=None, batch=a.batch,
                                         strategy="first", threads=1))
        rate1 = later_epoch_rate(one)
        two = EnsembleDataModule(_config(big, samples=a.samples, patch=None, batch=a.batch,
                                         strategy="first", workers=2, threads=1))
        rate2 = later_epoch_rate(two)
        print(f"one decoding thread per process: 0 workers {rate1:.1f} samples/s, 2 workers "
              f"{rate2:.1f} samples/s ({two.worker_starts} worker starts over 3 epochs); "
              f"{load()}")
        auto2 = EnsembleDataModule(_config(big, samples=a.samples, patch=None, batch=a.batch,
                                           strategy="first", workers=2))
        rate2_auto = later_epoch_rate(auto2)
        print(f"default decoding threads: 0 workers {rate0:.1f} samples/s, 2 workers "
              f"{rate2_auto:.1f} samples/s; main process CPU {time.process_time() - cpu0:.1f} s")

        for method in (None, "spawn"):
            seconds, heavy = worker_start(big, method=method)
            held = ("inherited from this process, nothing imported" if method is None else
                    f"imported {', '.join(heavy) or 'none'} of lightning, prefect, matplotlib, "
                    "eccodes, cfgrib, xarray, dask, pandas, zarr")
            print(f"worker start ({method or 'default: fork'}): {seconds:.2f} s from a fresh "
                  f"2-worker loader to its first batch; modules {held}")
        cached, uncached = cached_throughput(small, samples=64, patch=a.patch, batch=8)
        print(f"64x128 patches {a.patch}: later epoch {cached:.1f} batches/s with the chunk "
              f"cache, {uncached:.1f} without; {load()}")
        rss_small = epoch_rss(Path(tmp) / "small", samples=64, patch=a.patch, batch=8)
        rss_large = epoch_rss(Path(tmp) / "large", samples=64, patch=a.patch, batch=8)
        print(f"peak RSS of one epoch: {rss_small:.0f} MiB ({a.n_init} init times), "
              f"{rss_large:.0f} MiB ({4 * a.n_init} init times)")
    print(f"BENCH loader_vs_decode_floor_181x360 {rate0 / floor:.3f} target >= 0.5")
    print(f"BENCH workers2_vs_workers0_later_epoch {rate2 / rate1:.2f} target >= 1.5")
    print(f"BENCH epoch_rss_ratio_4x {rss_large / rss_small:.3f} target <= 1.2")
    print(f"BENCH cached_vs_uncached_epoch {cached / uncached:.2f} target >= 2")


if __name__ == "__main__":
    main()
