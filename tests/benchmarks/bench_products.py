"""Benchmark a station product: predict a decade of daily init times vs the I/O floor, and
the product layout (init times chunked in blocks vs one init time per chunk).

Writes seeded station stores (``tests/station_data.py``: one station, 3650 daily init times,
26 members, K = 25 used), trains the station ``mixed`` network for one epoch (the weights do
not change the time) and times

* ``predict``: every init time of the store -> product (10 ECC members, 5 quantiles);
* the floor: reading the same inputs and writing the same product (same layout, same fields
  from the raw members by plain numpy, one block write) with no model;
* the former layout (one init time per chunk, as products were written before 2026-12-06):
  predict into it, and read either product back whole (``open_product(...).load()``, as
  ``enspp evaluate`` reads a product).

Each side runs ``--repeats`` times (fresh output); best wall-clock times; one torch thread.

    python tests/benchmarks/bench_products.py [--out DIR] [--repeats N]
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[1]))  # tests/: the seeded station stores

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchlib import best_of, work_directory  # noqa: E402

torch.set_num_threads(1)

from station_data import write_station_stores  # noqa: E402

import enspp.models.predict as predict_module  # noqa: E402
from enspp.models.config import ModelConfig, TrainConfig  # noqa: E402
from enspp.models.predict import predict  # noqa: E402
from enspp.models.product import ProductWriter, open_product, product_block  # noqa: E402
from enspp.models.train import train  # noqa: E402
from enspp.pipeline.align import open_dataset  # noqa: E402
from enspp.pipeline.config import PipelineConfig  # noqa: E402

N_DAYS, N_MEMBERS, K, M = 3650, 26, 25, 10
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def build(work: Path) -> tuple[Path, Path]:
    """The station forecast store and a one-epoch checkpoint of the station network."""
    stores = write_station_stores(work / "stores", n_days=N_DAYS, n_stations=1,
                                  n_members=N_MEMBERS, start="2005-01-01T12")
    pipe = PipelineConfig.model_validate({
        "stores": {"forecast": str(stores.forecast), "analysis": str(stores.analysis)},
        "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                     "static": ["sin_doy", "cos_doy"]},
        "members": {"k": K},
        "split": {"train": {"start": "2005-01-01", "end": "2012-12-31"},
                  "val": {"start": "2013-01-01", "end": "2013-12-31"},
                  "test": {"start": "2014-01-01", "end": "2014-12-31"}},
        "batches": {"batch_size": 100000, "preload": True}, "nan_policy": "mask"})
    result = train(pipe, ModelConfig(name="mixed", options={"embed_dim": 64,
                                                             "encoder_hidden": [64]}),
                   TrainConfig(max_epochs=1, progress_bar=False), workdir=work)
    return stores.forecast, result.best_checkpoint


def io_floor(store: Path, out: Path, attrs: dict) -> None:
    """Read the K members of every init time, write the same product layout, no model."""
    ds = open_dataset(store)
    raw = ds["t2m"].sel(member=slice(1, K)).isel(lead_time=0).load().values  # [I, K, S]
    inits = ds.init_time.values
    mean, std = raw.mean(1), raw.std(1, ddof=1)
    fields = [{24: {"mean": mean[i][None, :, None], "std": std[i][None, :, None],
                    "quantiles": np.broadcast_to(mean[i], (len(QUANTILES), 1, raw.shape[2]))
                    [..., None],
                    "members": raw[i, :M][:, None, :, None]}}
              for i in range(len(inits))]
    writer = ProductWriter(out, attrs=attrs, fmt="zarr",
                           init_chunk=predict_module.product_init_chunk(raw.shape[2]))
    writer.write_block(product_block(fields, targets=["t2m"], inits=list(inits),
                                     quantiles=QUANTILES, grid=ds))
    writer.finish()


def wall_of(repeats: int, fn) -> float:
    """The best wall-clock time of ``fn`` over ``repeats`` runs."""
    return best_of(repeats, fn)[0]


def main() -> None:
    warnings.simplefilter("ignore")
    with work_directory(__doc__, prefix="enspp-bench-products-") as (args, work):
        t0 = time.perf_counter()
        store, ckpt = build(work)
        print(f"setup (station store, {N_DAYS} init times, {N_MEMBERS} members; one-epoch "
              f"checkpoint): {time.perf_counter() - t0:.1f} s")
        product, former = work / "product.zarr", work / "former.zarr"

        def run_predict(out: Path) -> None:
            shutil.rmtree(out, ignore_errors=True)
            predict(ckpt, store, out=out, quantiles=QUANTILES, n_members=M, progress=False)

        t_pred = wall_of(args.repeats, lambda: run_predict(product))
        import zarr

        attrs = dict(zarr.open_group(product, mode="r").attrs)
        attrs.pop("enspp_complete", None)
        floor_out = work / "floor.zarr"
        t_floor = wall_of(args.repeats, lambda: io_floor(store, floor_out, attrs) if not
                          shutil.rmtree(floor_out, ignore_errors=True) else None)
        chunk = predict_module.PRODUCT_CHUNK_VALUES
        predict_module.PRODUCT_CHUNK_VALUES = 1  # the former layout: one init time per chunk
        try:
            t_former = wall_of(1, lambda: run_predict(former))
        finally:
            predict_module.PRODUCT_CHUNK_VALUES = chunk
        t_read = wall_of(args.repeats, lambda: open_product(product).load())
        t_read_former = wall_of(1, lambda: open_product(former).load())
        files = {p.name: sum(1 for _ in p.rglob("*")) for p in (product, former)}
        print(f"predict, {N_DAYS} init times (K={K}, M={M}, {len(QUANTILES)} quantiles, "
              f"1 thread): {t_pred:.2f} s; into the former layout {t_former:.2f} s")
        print(f"I/O floor (read inputs, write the same product): {t_floor:.2f} s")
        print(f"read the product whole: {t_read:.3f} s ({files['product.zarr']} files); the "
              f"former layout {t_read_former:.2f} s ({files['former.zarr']} files)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
        print(f"BENCH station_predict_vs_io_ratio {t_pred / t_floor:.2f} target <= 3")
        print(f"BENCH station_product_read_seconds {t_read:.3f} target <= 0.5")
        print(f"BENCH station_predict_former_vs_blocks {t_former / t_pred:.1f} target >= 3")


if __name__ == "__main__":
    main()
