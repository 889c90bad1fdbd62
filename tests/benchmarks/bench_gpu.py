"""GPU benchmark: is training bound by the network or by the loader?
(run: ``python tests/benchmarks/bench_gpu.py`` on a machine with a CUDA GPU).

For each grid (181x360 and 721x1440 by default) it writes stores with
``pipeline.synthetic.write_stores`` (11 members, z/t on 2 levels + t2m, leads 24 and 48 h),
builds the real ``EnsembleDataModule`` (inputs z500, t850, t2m at both leads, K=5 of the 10
perturbed members, target t2m at 48 h, whole fields, persistent workers, pinned batches)
and the ``mixed`` network with default options, and measures per sample:

* the compute-only step: forward, CRPS loss, backward and an AdamW step on one batch
  already on the GPU, repeated;
* the loader-fed step: the same step over a later epoch of the train loader, each batch
  copied to the GPU (``non_blocking``) as Lightning does.

It prints ``BENCH gpu_fed_vs_compute_step_<grid> <ratio> target <= 1.25``.  Without a CUDA
GPU it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIABLES = ["z500", "t850", "t2m"]
GRIDS = {"181x360": (181, 360), "721x1440": (721, 1440), "32x64": (32, 64)}


def _stats(dm_channels, targets, ny: int, nx: int):
    """Unit statistics (the step's cost does not depend on them; computing real ones over
    a 721x1440 store would only lengthen the run)."""
    import numpy as np

    from enspp.pipeline.stats import NormStats

    c, t = len(dm_channels), len(targets)
    return NormStats(channels=tuple(dm_channels), targets=tuple(targets),
                     channel_mean=np.zeros(c, np.float32), channel_std=np.ones(c, np.float32),
                     channel_mean_local=np.zeros((c, ny, nx), np.float32),
                     channel_std_local=np.ones((c, ny, nx), np.float32),
                     target_mean=np.zeros(t, np.float32), target_std=np.ones(t, np.float32),
                     target_mean_local=np.zeros((t, ny, nx), np.float32),
                     target_std_local=np.ones((t, ny, nx), np.float32),
                     train_start="2019-01-01", train_end="2019-12-31", source_hash="bench")


def bench_grid(name: str, directory: Path, *, n_init: int, batch: int, samples: int,
               workers: int, threads: int | None, precision: str, steps: int,
               device: str = "cuda") -> float:
    import torch

    from enspp.models.base import build_model
    from enspp.models.config import ModelConfig
    from enspp.models.train import build_spec
    from enspp.pipeline import EnsembleDataModule, PipelineConfig
    from enspp.pipeline.features import channel_leads, channel_names
    from enspp.pipeline.synthetic import write_stores

    ny, nx = GRIDS[name]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = write_stores(directory, n_init=n_init, lead_hours=(24, 48), n_members=11,
                             ny=ny, nx=nx, batch_init=2)
    print(f"{name}: wrote {n_init} init times in {time.perf_counter() - t0:.0f} s", flush=True)
    cfg = PipelineConfig.from_dict({
        "stores": {"forecast": str(paths.forecast), "analysis": str(paths.analysis),
                   "static": str(paths.static)},
        "features": {"variables": VARIABLES, "targets": ["t2m"], "target_lead_time": 48,
                     "input_lead_times": [24]},
        "members": {"k": 5}, "split": {"fractions": [0.8, 0.1, 0.1]},
        "batches": {"batch_size": batch, "samples_per_epoch": samples, "num_workers": workers,
                    "read_threads": threads}})
    channels = channel_names(VARIABLES, channel_leads(target_lead_time=48, input_lead_times=[24]))
    dm = EnsembleDataModule(cfg, stats=_stats(channels, ["t2m"], ny, nx),
                            pin_memory=device == "cuda")
    dm.setup("fit")
    spec = build_spec(dm, ModelConfig(name="mixed"), n_members=dm.n_members,
                      grid_shape=dm.grid_shape)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model(spec).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = precision == "bf16-mixed"

    def step(b: dict) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(model(b), b["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def to_device(b: dict) -> dict:
        return {k: v.to(dev, non_blocking=True) for k, v in b.items()}

    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    first = None
    for b in loader:  # the first epoch: workers start, every chunk file is read once
        if first is None:
            first = to_device(b)
    print(f"{name}: first epoch (worker start included) {time.perf_counter() - t0:.1f} s; "
          f"{dm.worker_starts} workers, {dm._reader.threads} decoding threads each", flush=True)
    for _ in range(3):
        step(first)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(first)
    sync()
    compute = (time.perf_counter() - t0) / (steps * batch)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        step(to_device(b))
        n += int(b["inputs"].shape[0])
    sync()
    fed = (time.perf_counter() - t0) / n
    print(f"{name} ({precision}, batch {batch}): compute-only {compute * 1e3:.2f} ms/sample, "
          f"loader-fed {fed * 1e3:.2f} ms/sample over {n} samples; peak GPU memory "
          f"{peak:.2f} GiB", flush=True)
    return fed / compute


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grids", default="181x360,721x1440")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: half the CPU cores, at most 8)")
    p.add_argument("--threads", type=int, default=None, help="decoding threads per worker")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: only to check this script (with --grids 32x64)")
    a = p.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA GPU on this machine (torch {torch.__version__}); nothing "
              "measured. Run it where torch.cuda.is_available() is True.")
        return 0
    from enspp.pipeline.workers import available_cores

    workers = a.workers if a.workers is not None else max(1, min(8, available_cores() // 2))
    gpu = torch.cuda.get_device_name(0) if a.device == "cuda" else "none (CPU check)"
    print(f"GPU {gpu}, torch {torch.__version__}, "
          f"{available_cores()} CPU cores, {workers} workers; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    settings = {"181x360": dict(n_init=40, batch=4, samples=320, steps=30),
                "721x1440": dict(n_init=8, batch=1, samples=48, steps=10),
                "32x64": dict(n_init=12, batch=4, samples=16, steps=2)}
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for name in a.grids.split(","):
            if name not in GRIDS:
                p.error(f"--grids: unknown grid {name!r} (known: {', '.join(GRIDS)})")
            ratios[name] = bench_grid(name, Path(tmp) / name, workers=workers,
                                      threads=a.threads, precision=a.precision,
                                      device=a.device, **settings[name])
            if a.device == "cuda":
                torch.cuda.empty_cache()
    for name, r in ratios.items():
        print(f"BENCH gpu_fed_vs_compute_step_{name} {r:.2f} target <= 1.25")
    return 0


if __name__ == "__main__":
    sys.exit(main())
