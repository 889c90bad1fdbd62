"""Benchmark the exact EMOS fit's memory: cases held in memory vs spilled to disk by ranges.

A local EMOS (one parameter group per grid point) on a 181 x 360 grid with ``--inits`` training
init times (synthetic fields: a bias per point, a collapsed spread), fitted by
``models.emos.fit_emos`` twice, each in a fresh process:

* ``held``: every case in memory (the default below a quarter of the machine's memory);
* ``spilled``: the fit's memory set to a quarter of the cases' compact size, so the cases go
  to files by ranges of grid points and the ranges are fitted one after another.

Each process reports the growth of its peak resident memory over the fit (``VmHWM`` reset
just before it) and the fit's wall time; the held fit runs again on a third of the init times, so
that the peak's growth per case is separated from the fit's fixed working set (the
temporaries of one piece of cases, the allocator's slack). The floor of that growth is the
compact case itself (``models.emos.CASE_BYTES``: group, raw mean, raw variance and target,
float64), which every Newton iteration reads again; the spilled fit must stay well below the
held one and give the same parameters.

    python tests/benchmarks/bench_emos.py [--out DIR] [--inits N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NY, NX = 181, 360


def _status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def fit(n_inits: int, memory: int | None, spill_dir: str) -> dict:
    """One fit in this process: its peak memory growth, time and result."""
    import numpy as np
    import torch

    from enspp.models import ModelSpec, build_model
    from enspp.models.emos import fit_emos

    torch.set_num_threads(2)
    st = {k: np.array([v], np.float32) for k, v in (("channel_mean", 280.0), ("channel_std", 10.0),
                                                    ("target_mean", 280.0), ("target_std", 10.0))}
    spec = ModelSpec(name="emos_local", channels=("t2m",), targets=("t2m",), target_channels=(0,),
                     static_names=(), n_members=5, grid_shape=(NY, NX), stats=st)
    model = build_model(spec)
    gen = torch.Generator().manual_seed(0)
    bias = 2.0 * torch.randn(NY, NX, generator=gen, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.long)

    def chunks():
        for _ in range(n_inits):
            z = 280 + 10 * torch.randn(1, 1, NY, NX, generator=gen, dtype=torch.float64)
            y = (z + torch.randn(1, 1, NY, NX, generator=gen, dtype=torch.float64)).float()
            m = z + bias + 0.3 * torch.randn(1, 1, NY, NX, generator=gen, dtype=torch.float64)
            s = 0.3 + 0.1 * torch.rand(1, 1, NY, NX, generator=gen, dtype=torch.float64)
            yield {"m": m, "s": s, "target": y.double(), "y0": zero, "x0": zero}

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    t0 = time.perf_counter()
    r = fit_emos(model, chunks(), memory=memory, spill_dir=spill_dir)
    wall = time.perf_counter() - t0
    return {"peak": _status("VmHWM") - base, "wall": wall, "cases": r.cases, "ranges": r.ranges,
            "spilled": r.spilled_bytes, "iterations": r.iterations, "converged": r.converged,
            "loss": r.loss, "params": model.params.detach().double().flatten().tolist()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        n, memory, spill = int(sys.argv[2]), sys.argv[3], sys.argv[4]
        print(json.dumps(fit(n, None if memory == "none" else int(memory), spill)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="spill folder's parent (default: a temporary one)")
    parser.add_argument("--inits", type=int, default=48)
    args = parser.parse_args()
    from enspp.models.emos import CASE_BYTES

    out = args.out or Path(tempfile.mkdtemp(prefix="enspp-bench-emos-"))
    out.mkdir(parents=True, exist_ok=True)
    cases = args.inits * NY * NX
    memory = cases * CASE_BYTES // 4

    def child(mem: str, inits: int = args.inits) -> dict:
        run = subprocess.run([sys.executable, __file__, "--child", str(inits), mem, str(out)],
                             check=True, capture_output=True, text=True)
        return json.loads(run.stdout.strip().splitlines()[-1])

    part = args.inits // 3
    held, spilled = child("none"), child(str(memory))
    held_half = child("none", part)
    # growth of the peak per case beyond the fit's fixed working set (its pieces' temporaries)
    per_case = (held["peak"] - held_half["peak"]) / (cases - held_half["cases"])
    import numpy as np

    diff = float(np.max(np.abs(np.subtract(held["params"], spilled["params"]))))
    print(f"{NY}x{NX} grid, {args.inits} init times: {cases} cases, compact "
          f"{cases * CASE_BYTES / 2**20:.1f} MiB; {held['iterations']} Newton iterations "
          f"(converged: {held['converged']})")
    print(f"held in memory: peak +{held['peak'] / 2**20:.1f} MiB, {held['wall']:.1f} s; with "
          f"{part} init times +{held_half['peak'] / 2**20:.1f} MiB: {per_case:.1f} B per further "
          f"case (floor {CASE_BYTES})")
    print(f"spilled (memory {memory / 2**20:.1f} MiB): peak +{spilled['peak'] / 2**20:.1f} MiB, "
          f"{spilled['ranges']} ranges, {spilled['spilled'] / 2**20:.1f} MiB written, "
          f"{spilled['wall']:.1f} s; parameters differ by at most {diff:.2g}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"BENCH emos_fit_held_bytes_per_case {per_case:.1f} target <= {1.5 * CASE_BYTES:.0f}")
    print(f"BENCH emos_fit_spilled_vs_held_peak {spilled['peak'] / held['peak']:.2f} target <= 0.5")
    print(f"BENCH emos_fit_spilled_vs_held_time {spilled['wall'] / held['wall']:.2f} target <= 1.5")
    if args.out is None:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
