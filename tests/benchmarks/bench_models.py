"""Benchmark inference: one global 0.5 deg field set through the predict path vs the I/O floor.

Writes a forecast store with one init time on the global 0.5 deg grid (361 x 720), members
0..5 (K = 5 perturbed members used), ``z500``, ``t850``, ``t2m`` at 48 h; builds the default
``mixed`` model (untrained: weights do not change the time) with normalisation statistics
computed from the store, saved as a checkpoint; then times

* ``predict``: store -> product store (checkpoint load, read, model, quantiles, ECC members
  (M = 10), write) for the three variables as targets;
* the floor: reading the same inputs and writing the same product layout with no model
  (mean/std/quantiles/members from the raw members by plain numpy).

Each side runs ``--repeats`` times (fresh output), the best time is reported; 2 torch threads.
CPU time (``time.process_time``, all threads) is printed too: on a shared, loaded machine
the wall-clock ratio depends on how the scheduler shares cores, the CPU-time ratio less.

    python tests/benchmarks/bench_models.py [--out DIR] [--repeats N]
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from benchlib import best_of, work_directory  # noqa: E402

torch.set_num_threads(2)

from enspp.data.store_writer import append  # noqa: E402
from enspp.models.base import ModelSpec, build_model  # noqa: E402
from enspp.models.checkpoint import write_checkpoint  # noqa: E402
from enspp.models.config import ModelConfig, TrainConfig  # noqa: E402
from enspp.models.predict import predict, read_inputs  # noqa: E402
from enspp.models.product import ProductWriter, product_dataset  # noqa: E402
from enspp.models.train import build_metadata  # noqa: E402
from enspp.pipeline.align import open_dataset  # noqa: E402
from enspp.pipeline.config import PipelineConfig  # noqa: E402
from enspp.pipeline.features import channel_names  # noqa: E402
from enspp.pipeline.stats import compute_stats  # noqa: E402
from enspp.pipeline.synthetic import analysis_dataset, forecast_dataset  # noqa: E402

NY, NX, N_STORE_MEMBERS, K, M = 361, 720, 6, 5, 10
VARIABLES = ("z500", "t850", "t2m")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
LEAD_H = 48


def _global(ds):
    return ds.assign_coords(latitude=np.linspace(90.0, -90.0, NY),
                            longitude=np.arange(NX) * 0.5)


def build(work: Path) -> tuple[Path, Path, PipelineConfig]:
    """The forecast store and a checkpoint of the untrained default model on it."""
    init = pd.DatetimeIndex(["2020-01-01"])
    fc = _global(forecast_dataset(init_times=init, lead_hours=(LEAD_H,),
                                  n_members=N_STORE_MEMBERS, ny=NY, nx=NX))
    store = work / "forecast.zarr"
    append(store, fc, kind="forecast")
    an = _global(analysis_dataset(times=init + pd.Timedelta(hours=LEAD_H), ny=NY, nx=NX))
    fc = open_dataset(store)
    channels = channel_names(VARIABLES, (LEAD_H,))
    stats = compute_stats(fc, an, channels=channels, targets=VARIABLES,
                          init_times=fc.init_time.values, valid_times=an.time.values,
                          source_hash="bench")
    pipe = PipelineConfig.from_dict({"stores": {"forecast": str(store)},
                                     "features": {"variables": list(VARIABLES),
                                                  "targets": list(VARIABLES)},
                                     "members": {"k": K}})
    spec = ModelSpec(name="mixed", channels=channels, targets=VARIABLES,
                     target_channels=(0, 1, 2), static_names=(
                         "lsm", "orog", "sin_lat", "cos_lat", "sin_lon", "cos_lon", "sin_doy",
                         "cos_doy"), n_members=K, grid_shape=(NY, NX), stats=stats.to_dict())
    meta = build_metadata(spec, data=SimpleNamespace(forecast=fc), pipeline=pipe,
                          model=ModelConfig(), train=TrainConfig())
    ckpt = write_checkpoint(work / "mixed.ckpt", build_model(spec), meta)
    return store, ckpt, pipe


def io_floor(store: Path, out: Path, attrs: dict) -> None:
    """Read the K members of every channel, write the product layout without a model."""
    ds = open_dataset(store)
    init = ds.init_time.values[0]
    inputs = read_inputs(ds, channel_names(VARIABLES, (LEAD_H,)), init=init,
                         members=np.arange(1, K + 1))
    raw = inputs[:, :3]
    mean, std = raw.mean(0), raw.std(0, ddof=1)
    fields = {"mean": mean, "std": std,
              "quantiles": np.broadcast_to(mean, (len(QUANTILES), *mean.shape)).copy(),
              "members": np.concatenate([raw, raw])[:M]}
    writer = ProductWriter(out, attrs=attrs, fmt="zarr")
    writer.write(product_dataset(fields, targets=VARIABLES, init=init, lead_h=LEAD_H,
                                 quantiles=QUANTILES, grid=ds))
    writer.finish()


def main() -> None:
    warnings.simplefilter("ignore")
    with work_directory(__doc__, prefix="enspp-bench-models-") as (args, work):
        t0 = time.perf_counter()
        store, ckpt, _ = build(work)
        print(f"setup (store {NY}x{NX}, {N_STORE_MEMBERS} members, checkpoint): "
              f"{time.perf_counter() - t0:.1f} s")
        product = work / "product.zarr"

        def run_predict() -> None:
            shutil.rmtree(product, ignore_errors=True)
            predict(ckpt, store, out=product, quantiles=QUANTILES, n_members=M)

        t_pred, c_pred = best_of(args.repeats, run_predict)
        import zarr

        attrs = dict(zarr.open_group(product, mode="r").attrs)
        attrs.pop("enspp_complete", None)
        floor_out = work / "floor.zarr"

        def run_floor() -> None:
            shutil.rmtree(floor_out, ignore_errors=True)
            io_floor(store, floor_out, attrs)

        t_floor, c_floor = best_of(args.repeats, run_floor)
        print(f"predict (K={K}, {len(VARIABLES)} variables, M={M} ECC members, "
              f"{len(QUANTILES)} quantiles, {torch.get_num_threads()} threads): {t_pred:.2f} s "
          f"(cpu {c_pred:.2f} s)")
        print(f"I/O floor (read inputs, write the same product layout): {t_floor:.2f} s "
          f"(cpu {c_floor:.2f} s)")
        ratio = t_pred / t_floor
        print(f"ratio: {ratio:.2f} (cpu-time ratio {c_pred / c_floor:.2f}; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
        print(f"BENCH predict_vs_io_ratio {ratio:.2f} target <= 3")


if __name__ == "__main__":
    main()
