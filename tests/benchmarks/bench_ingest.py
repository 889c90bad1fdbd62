"""Ingest vs. the eccodes decode floor on >= 1000 ENS-like GRIB messages.

Writes 2 init times x 11 members x 5 lead times x 10 fields (z, t, u, v at 500/850 hPa, t2m,
msl) on a 181 x 360 grid = 1100 messages with ``data.grib_writer`` (one file per init time),
then times, in one run:

* the floor: ``codes_grib_new_from_file`` + ``codes_get_values`` for every message;
* ``data.ingest.ingest`` of the same files into a fresh store (the work ``enspp ingest`` does,
  without interpreter start-up): hash, decode, validate, compress, write, commit.

Each is timed ``--repeat`` times (best of), alternating, so both see the same machine load.
On the 2-vCPU CI-like machines single ingest runs of the same work vary by 40 % (0.80-1.52 s
in one run; the single-threaded floor by 5-10 %), so the minimum of 7 is the figure: it is the
cost the code achieves, with noise only ever adding to it.

    python tests/benchmarks/bench_ingest.py [--repeat 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import eccodes  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from enspp.data.grib_writer import write_grib  # noqa: E402
from enspp.data.ingest import ingest  # noqa: E402

INITS = ("2024-01-01T00", "2024-01-01T12")
MEMBERS = 11
LEADS_H = (24, 48, 72, 96, 120)


def make_init(init: str, *, seed: int) -> xr.Dataset:
    """One init time of an ENS-like forecast on a 1-degree global grid."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(90.0, -90.0, 181)
    lon = np.arange(0.0, 360.0, 1.0)
    coords = {"init_time": pd.to_datetime([init]).values.astype("datetime64[ns]"),
              "lead_time": pd.to_timedelta(LEADS_H, unit="h").values.astype("timedelta64[ns]"),
              "member": np.arange(MEMBERS), "level": np.array([500, 850]),
              "latitude": lat, "longitude": lon}
    base = np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :]

    def field(mean: float, scale: float, levels: bool) -> np.ndarray:
        shape = (1, len(LEADS_H), MEMBERS) + ((2,) if levels else ()) + base.shape
        noise = rng.standard_normal(shape).astype(np.float32)
        return (mean + scale * (base + 0.1 * noise)).astype(np.float32)

    pl = ("init_time", "lead_time", "member", "level", "latitude", "longitude")
    sfc = ("init_time", "lead_time", "member", "latitude", "longitude")
    return xr.Dataset({
        "z": (pl, field(54000.0, 3000.0, True), {"units": "m2 s-2"}),
        "t": (pl, field(260.0, 15.0, True), {"units": "K"}),
        "u": (pl, field(5.0, 10.0, True), {"units": "m s-1"}),
        "v": (pl, field(0.0, 10.0, True), {"units": "m s-1"}),
        "t2m": (sfc, field(285.0, 20.0, False), {"units": "K"}),
        "msl": (sfc, field(101000.0, 1500.0, False), {"units": "Pa"}),
    }, coords=coords)


def write_inputs(out: Path) -> list[Path]:
    paths = []
    for i, init in enumerate(INITS):
        path = out / f"ens_{init.replace('-', '').replace('T', '')}.grib"
        n = write_grib(path, make_init(init, seed=i), kind="forecast")
        print(f"wrote {path.name}: {n} messages, {path.stat().st_size / 1e6:.1f} MB")
        paths.append(path)
    return paths


def decode_floor(paths: list[Path]) -> tuple[float, int]:
    """Wall seconds and message count of a plain eccodes decode of every message."""
    t0 = time.perf_counter()
    n = 0
    for path in paths:
        with open(path, "rb") as fh:
            while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
                eccodes.codes_get_values(h)
                eccodes.codes_release(h)
                n += 1
    return time.perf_counter() - t0, n


def time_ingest(paths: list[Path], store: Path) -> float:
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    summary = ingest(paths, store, progress=False)
    dt = time.perf_counter() - t0
    assert len(summary.added) == len(INITS), summary.line()
    return dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="write inputs/store here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        paths = write_inputs(work)
        floor, n = decode_floor(paths)  # warm the page cache and eccodes
        assert n >= 1000, n
        floors, ingests, cpu_floor, cpu_ingest = [], [], [], []
        for _ in range(args.repeat):
            c0 = time.process_time()
            floors.append(decode_floor(paths)[0])
            c1 = time.process_time()
            ingests.append(time_ingest(paths, work / "store.zarr"))
            cpu_floor.append(c1 - c0)
            cpu_ingest.append(time.process_time() - c1)
        floor, took = min(floors), min(ingests)
        size = sum(f.stat().st_size for f in (work / "store.zarr").rglob("*") if f.is_file())
        print(f"messages: {n} ({len(INITS)} init times x {MEMBERS} members x {len(LEADS_H)} "
              f"leads x 10 fields, 181x360)")
        print(f"eccodes decode floor: {floor:.3f} s (runs: {', '.join(f'{x:.3f}' for x in floors)})")
        print(f"ingest into a fresh store: {took:.3f} s (runs: "
              f"{', '.join(f'{x:.3f}' for x in ingests)}); store {size / 1e6:.1f} MB")
        print(f"cpu seconds (all threads): decode {min(cpu_floor):.3f}, ingest {min(cpu_ingest):.3f} "
              f"(ratio {min(cpu_ingest) / min(cpu_floor):.2f}; the ingest's threads overlap "
              f"decoding, hashing and compression, so its wall time is below its cpu time "
              f"when cores are free); load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores")
        print(f"BENCH ingest_seconds {took:.3f} target <= {2 * floor:.3f}")
        print(f"BENCH ingest_vs_decode_ratio {took / floor:.2f} target <= 2")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
