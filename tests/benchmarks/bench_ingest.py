"""Ingest speed: vs. the eccodes decode floor, a station file vs. xarray's own copy, and the
cost of one commit in a large store vs. a small one.

1. Ingest vs. the eccodes decode floor on >= 1000 ENS-like GRIB messages.

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

2. The Magdeburg station file (``../shared/data/station``, 4461 days x 51 members) ingested
   (its conventions given as ``data.station`` options) vs. ``xr.open_dataset(f).to_zarr(...)``
   of the same file (best of ``--repeat``).  Target <= 5.

3. Appending one init time to a store of 10,000 init times vs. to a store of 10 (the same
   small grid; best of ``--repeat`` appends to each, alternating).  Commits write fixed-size
   chunks, so the ratio should be 1: target <= 1.2.

4. A scheduled ingest with nothing new: ``data.ingest.new_inputs`` (what the ingest flow runs
   before it submits any task) over 600 small GRIB files all in the store, vs. the floor of
   listing them and a ``stat`` of each (best of ``--repeat``, alternating).  Digests of files
   remembered unchanged are not read again, so the pass is the listing plus one look at the
   store's provenance: target <= 10.  Also printed: the former pass (every file hashed and
   looked up in the store on its own, as listings did before) and ``ingest`` of the directory.

    python tests/benchmarks/bench_ingest.py [--repeat 7] [--keep DIR]
        [--only decode|station|append|nothing_new]
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


MAGDEBURG = Path(__file__).resolve().parents[3] / "shared" / "data" / "station" / \
    "ecmwf_ens_t2m_magdeburg_2002-2014.nc"


def _magdeburg_options():
    """The file's conventions, as configs/experiments/magdeburg_t2m.yaml states them (a
    station file's timing is never guessed)."""
    from enspp.data.station import StationOptions

    return StationOptions(variable="t2m", units="degC", time="valid", hour=12, lead_time=24,
                          control="forc.CTRL", station={"id": "10361", "name": "Magdeburg",
                                                        "latitude": 52.1, "longitude": 11.6,
                                                        "elevation": 76})


def bench_station(work: Path, repeat: int) -> None:
    """The Magdeburg file into a store vs. xarray's own copy of it to Zarr."""
    if not MAGDEBURG.is_file():
        print(f"skipped the station figure: {MAGDEBURG} not found")
        return
    options = _magdeburg_options()
    floors, ingests = [], []
    for i in range(repeat):
        out = work / f"xr_{i}.zarr"
        os.sync()  # each timing starts without the other's writes pending (ingest flushes)
        t0 = time.perf_counter()
        xr.open_dataset(MAGDEBURG).to_zarr(out, mode="w")
        floors.append(time.perf_counter() - t0)
        store = work / f"station_{i}.zarr"
        os.sync()
        t0 = time.perf_counter()
        summary = ingest([MAGDEBURG], store, progress=False, station=options)
        ingests.append(time.perf_counter() - t0)
        assert len(summary.added) > 4000, summary.line()
        shutil.rmtree(out)
        shutil.rmtree(store)
    floor, took = min(floors), min(ingests)
    print(f"station file {MAGDEBURG.name}: ingest {took:.3f} s (runs: "
          f"{', '.join(f'{x:.3f}' for x in ingests)}), xarray open_dataset().to_zarr() "
          f"{floor:.3f} s (runs: {', '.join(f'{x:.3f}' for x in floors)})")
    print(f"BENCH station_ingest_seconds {took:.3f} target <= {5 * floor:.3f}")
    print(f"BENCH station_ingest_vs_xarray_ratio {took / floor:.2f} target <= 5")


def _tiny(inits: pd.DatetimeIndex, seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (len(inits), 1, 5, 8, 16)
    return xr.Dataset(
        {"t2m": (("init_time", "lead_time", "member", "latitude", "longitude"),
                 (280 + rng.standard_normal(shape)).astype(np.float32), {"units": "K"})},
        coords={"init_time": inits.as_unit("ns").values,
                "lead_time": pd.to_timedelta([24], unit="h").as_unit("ns").values,
                "member": np.arange(5), "latitude": np.linspace(60.0, 30.0, 8),
                "longitude": np.linspace(0.0, 30.0, 16)})


def bench_append(work: Path, repeat: int, large: int = 10_000) -> None:
    """One init time appended to a store of ``large`` init times vs. one of 10."""
    from enspp.data.store_writer import append

    stores = {}
    for n in (10, large):
        store = work / f"append_{n}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        append(store, _tiny(pd.date_range("1990-01-01", periods=n, freq="D"), seed=n))
        print(f"built a store of {n} init times in {time.perf_counter() - t0:.1f} s")
        stores[n] = store
    times: dict[int, list[float]] = {10: [], large: []}
    for i in range(repeat):
        new = pd.DatetimeIndex([pd.Timestamp("2100-01-01") + pd.Timedelta(days=i)])
        for n, store in stores.items():
            ds = _tiny(new, seed=100 + i)
            t0 = time.perf_counter()
            result = append(store, ds)
            times[n].append(time.perf_counter() - t0)
            assert result.added, result.message()
    small, big = min(times[10]), min(times[large])
    print(f"append one init time: store of 10 {small * 1e3:.1f} ms (runs: "
          f"{', '.join(f'{x * 1e3:.0f}' for x in times[10])}), store of {large} "
          f"{big * 1e3:.1f} ms (runs: {', '.join(f'{x * 1e3:.0f}' for x in times[large])})")
    print(f"BENCH append_large_vs_small_store_ratio {big / small:.2f} target <= 1.2")


def write_small_inputs(out: Path, n: int) -> list[Path]:
    """``n`` small forecast GRIB files of one init time each (3 members, 2 leads, 6 x 8)."""
    out.mkdir(parents=True, exist_ok=True)
    inits = pd.date_range("2000-01-01", periods=n, freq="12h")
    paths = []
    for i, init in enumerate(inits):
        rng = np.random.default_rng(i)
        ds = xr.Dataset(
            {"t2m": (("init_time", "lead_time", "member", "latitude", "longitude"),
                     (280 + rng.standard_normal((1, 2, 3, 6, 8))).astype(np.float32),
                     {"units": "K"})},
            coords={"init_time": pd.DatetimeIndex([init]).as_unit("ns").values,
                    "lead_time": pd.to_timedelta([0, 24], unit="h").as_unit("ns").values,
                    "member": np.arange(3), "latitude": np.linspace(60.0, 30.0, 6),
                    "longitude": np.linspace(0.0, 14.0, 8)})
        paths.append(out / f"fc_{i:04d}.grib")
        write_grib(paths[-1], ds, kind="forecast")
    return paths


def bench_nothing_new(work: Path, repeat: int, n: int = 600) -> None:
    """A no-new-files pass of the ingest flow over ``n`` files vs. listing + stat of them."""
    from enspp.data.ingest import collect_inputs, new_inputs
    from enspp.data.provenance import source_file
    from enspp.data.store_meta import open_meta

    def former_pass(files: list) -> list[bool]:
        """The former listing: each file hashed and looked up in the store on its own."""
        meta = open_meta(store)
        return [meta.is_ingested(source_file(f).sha256) for f in files]

    t0 = time.perf_counter()
    incoming, store = work / "incoming", work / "nothing_new.zarr"
    paths = write_small_inputs(incoming, n)
    summary = ingest(incoming, store, progress=False)
    assert len(summary.added) == n, summary.line()
    print(f"wrote and ingested {n} files ({sum(p.stat().st_size for p in paths) / 1e6:.1f} MB) "
          f"in {time.perf_counter() - t0:.1f} s")
    # the files written last were hashed too soon after their last change to be remembered
    # by that ingest (data.provenance.SETTLE_NS): the next pass remembers them
    new_inputs([str(incoming)], store)

    def floor() -> None:
        for f in collect_inputs([incoming]):
            os.stat(f)

    floors, passes = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        floor()
        floors.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new, done = new_inputs([str(incoming)], store)
        passes.append(time.perf_counter() - t0)
        assert not new and len(done) == n, (len(new), len(done))
    t0 = time.perf_counter()
    assert all(former_pass(collect_inputs([incoming])))
    former = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ingest(incoming, store, progress=False)
    cli = time.perf_counter() - t0
    assert again.files_already_ingested == n and not again.added, again.line()
    took, base = min(passes), min(floors)
    print(f"nothing new in {n} files: pass {took:.3f} s (runs: "
          f"{', '.join(f'{x:.3f}' for x in passes)}), listing + stat {base:.3f} s (runs: "
          f"{', '.join(f'{x:.3f}' for x in floors)}); every file hashed and looked up on its "
          f"own (the former pass) {former:.3f} s; ingest of the directory {cli:.3f} s; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"BENCH ingest_nothing_new_seconds {took:.3f} target <= {10 * base:.3f}")
    print(f"BENCH ingest_nothing_new_vs_floor_ratio {took / base:.2f} target <= 10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="write inputs/store here")
    parser.add_argument("--only", choices=("decode", "station", "append", "nothing_new"),
                        default=None)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.only in (None, "station"):
            bench_station(work, args.repeat)
        if args.only in (None, "append"):
            bench_append(work, args.repeat)
        if args.only in (None, "nothing_new"):
            bench_nothing_new(work, args.repeat)
        if args.only not in (None, "decode"):
            return
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
