"""Benchmark of the pipeline (run: ``python tests/benchmarks/bench_pipeline.py``).

Writes its own enspp stores (64x128 grid, 11 members, z/t on 2 levels + t2m, 2 lead times)
into a temporary directory and measures, in one run:

1. batches/s of the DataModule's train loader against the floor of reading the same Zarr
   chunks (every lead/variable chunk of the sample's init time and the analysis chunk at its
   valid time) straight with zarr, in the same order;
2. peak RSS of one training epoch (setup with statistics + the same number of batches) over
   a store and over a store 4x as large, each in a fresh subprocess;
3. batches/s of a later epoch with the block cache (``batches.cache_mb``: every block already
   read in the first epoch) against the same loader without it.
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
NY, NX, MEMBERS, LEADS = 64, 128, 11, (24, 48)


def _config(paths, *, samples: int, patch: int, batch: int, cache_mb: float = 0):
    from enspp.pipeline import PipelineConfig

    return PipelineConfig.from_dict({
        "stores": {"forecast": str(paths.forecast), "analysis": str(paths.analysis),
                   "static": str(paths.static)},
        "features": {"variables": VARIABLES, "targets": ["t2m"], "target_lead_time": 48,
                     "input_lead_times": [24]},
        "members": {"k": 5, "strategy": "random"},
        "split": {"fractions": [0.8, 0.1, 0.1]},
        "batches": {"patch_size": patch, "batch_size": batch, "seed": 0,
                    "samples_per_epoch": samples, "num_workers": 0, "cache_mb": cache_mb}})


def write(directory: Path, n_init: int):
    from enspp.pipeline.synthetic import write_stores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_stores(directory, n_init=n_init, lead_hours=LEADS, n_members=MEMBERS,
                            ny=NY, nx=NX, batch_init=8)


def throughput(paths, *, samples: int, patch: int, batch: int) -> tuple[float, float]:
    """(pipeline batches/s, zarr-floor batches/s) over the same samples."""
    import zarr

    from enspp.pipeline import EnsembleDataModule

    dm = EnsembleDataModule(_config(paths, samples=samples, patch=patch, batch=batch))
    loader = dm.train_dataloader()
    next(iter(loader))  # warm: handles opened, statistics done
    order = list(iter(loader.sampler))  # the next epoch's samples
    loader.sampler.set_epoch(loader.sampler.epoch - 1)
    t0 = time.perf_counter()
    n_batches = sum(1 for _ in loader)
    t_pipe = time.perf_counter() - t0

    ds = dm.dataset("train")
    fc, an = zarr.open_group(str(paths.forecast), mode="r"), zarr.open_group(str(paths.analysis), mode="r")
    inits = _decode(fc["init_time"])
    times = _decode(an["time"])
    n_leads = fc["lead_time"].shape[0]
    arrays = [fc[name] for name in ("z", "t", "t2m")]
    positions = [(int(np.flatnonzero(inits == ds.init_times[idx])[0]),
                  int(np.flatnonzero(times == ds.init_times[idx] + np.timedelta64(48, "h"))[0]))
                 for idx, _ in order]
    t0 = time.perf_counter()
    for i, j in positions:
        for lp in range(n_leads):
            for arr in arrays:
                arr[i, lp]
        an["t2m"][j]
    t_zarr = time.perf_counter() - t0
    return n_batches / t_pipe, (len(order) / batch) / t_zarr


def cached_throughput(paths, *, samples: int, patch: int, batch: int) -> tuple[float, float]:
    """(cached, uncached) batches/s of a second epoch over the same samples; the cached
    loader's first epoch fills its cache (1 GiB: the whole small store)."""
    from enspp.pipeline import EnsembleDataModule

    rates = []
    for cache_mb in (1024, 0):
        dm = EnsembleDataModule(_config(paths, samples=samples, patch=patch, batch=batch,
                                        cache_mb=cache_mb))
        loader = dm.train_dataloader()
        sum(1 for _ in loader)  # first epoch: handles, statistics, the cache filled
        t0 = time.perf_counter()
        n = sum(1 for _ in loader)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def _decode(arr) -> np.ndarray:
    """A CF-encoded time coordinate of a zarr group, decoded to datetime64[ns]."""
    import xarray as xr

    units = arr.attrs.get("units", "")
    raw = np.asarray(arr[:])
    decoded = xr.coding.times.decode_cf_datetime(raw, units) if units else raw
    return np.asarray(decoded, dtype="datetime64[ns]")


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-init", type=int, default=24, help="init times of the small store")
    p.add_argument("--samples", type=int, default=64, help="training samples per epoch")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        epoch_child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
        return
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        t0 = time.perf_counter()
        small = write(Path(tmp) / "small", a.n_init)
        write(Path(tmp) / "large", 4 * a.n_init)
        print(f"wrote stores of {a.n_init} and {4 * a.n_init} init times "
              f"({NY}x{NX}, {MEMBERS} members, {len(VARIABLES)} variables, leads {LEADS} h) "
              f"in {time.perf_counter() - t0:.0f} s")
        pipe, floor = throughput(small, samples=a.samples, patch=a.patch, batch=a.batch)
        print(f"train loader {pipe:.2f} batches/s; zarr floor {floor:.2f} batches/s "
              f"(batch {a.batch}, patch {a.patch}, K=5 random members)")
        cached, uncached = cached_throughput(small, samples=a.samples, patch=a.patch, batch=a.batch)
        print(f"second epoch: {cached:.2f} batches/s with the block cache, {uncached:.2f} without")
        rss_small = epoch_rss(Path(tmp) / "small", samples=a.samples, patch=a.patch, batch=a.batch)
        rss_large = epoch_rss(Path(tmp) / "large", samples=a.samples, patch=a.patch, batch=a.batch)
        print(f"peak RSS of one epoch: {rss_small:.0f} MiB ({a.n_init} init times), "
              f"{rss_large:.0f} MiB ({4 * a.n_init} init times)")
    print(f"BENCH pipeline_vs_zarr_ratio {pipe / floor:.3f} target >= 0.5")
    print(f"BENCH epoch_rss_ratio_4x {rss_large / rss_small:.3f} target <= 1.2")
    print(f"BENCH cached_vs_uncached_epoch {cached / uncached:.2f} target >= 2")


if __name__ == "__main__":
    main()
