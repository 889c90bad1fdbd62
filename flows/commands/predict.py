"""``enspp predict --checkpoint CKPT --store STORE [--init-time T ...] [--out PATH] [--netcdf]
[--config CFG]``.

Writes (or extends: re-running an init time leaves the product identical) the product store
of a checkpoint; by default ``<store's directory>/products/<model version>.zarr``, which is
``WORKDIR/stores/products/<version>.zarr`` for ``WORKDIR/stores/forecast.zarr``.  Options of
the ``predict`` config section (quantiles, ECC members, format, batch size, seed) apply when
``--config`` is given.  Prints the product path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "post-process forecasts with a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="trained checkpoint (.ckpt), or a run directory of enspp train "
                             "(its checkpoints/best.ckpt)")
    parser.add_argument("--store", type=Path, required=True, help="forecast store (Zarr)")
    parser.add_argument("--init-time", nargs="+", metavar="T", dest="init_times",
                        help="init times to post-process (default: all in the store)")
    parser.add_argument("--out", type=Path, help="product path (default: "
                        "<store dir>/products/<model version>.zarr)")
    parser.add_argument("--netcdf", action="store_true", help="write NetCDF instead of Zarr")
    parser.add_argument("--static", type=Path, help="static fields (default: --config's "
                        "pipeline.stores.static, else the training ones)")
    parser.add_argument("--analysis", type=Path, metavar="STORE",
                        help="station models with past-error features: the observations "
                             "(default: the training analysis store)")
    parser.add_argument("--deterministic", type=Path, metavar="STORE",
                        help="station models with the hres feature: the deterministic forecasts "
                             "(default: the training one)")
    parser.add_argument("--config", type=Path, help="enspp.yaml with a 'predict' section")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def default_product_path(checkpoint: Path, store: Path, *, fmt: str) -> Path:
    """``<store dir>/products/<name>-<sha256[:12]>.zarr`` (``.nc`` for NetCDF)."""
    from enspp.models.checkpoint import file_sha256, read_checkpoint

    _, meta = read_checkpoint(checkpoint)
    suffix = ".nc" if fmt == "netcdf" else ".zarr"
    return Path(store).parent / "products" / f"{meta.spec['name']}-{file_sha256(checkpoint)[:12]}{suffix}"


def run(args: argparse.Namespace) -> int:
    from enspp.models.config import PredictConfig
    from enspp.models.predict import predict

    options = PredictConfig()
    static, analysis, deterministic = args.static, args.analysis, args.deterministic
    if args.config is not None:
        from enspp.flows.commands.train import load_sections

        sections = load_sections(args.config)
        options = sections["predict"]
        # the config's stores (resolved against its work directory) before the paths the
        # checkpoint recorded at training: a work directory moved or copied still predicts
        stores = sections["pipeline"].stores
        static = static if static is not None else stores.static
        analysis = analysis if analysis is not None else stores.analysis
        deterministic = deterministic if deterministic is not None else stores.deterministic
    from enspp.models.checkpoint import checkpoint_file

    checkpoint = checkpoint_file(args.checkpoint)
    fmt = "netcdf" if args.netcdf else options.fmt
    out = args.out or default_product_path(checkpoint, args.store, fmt=fmt)
    path = predict(checkpoint, args.store, out=out, init_times=args.init_times,
                   quantiles=options.quantiles, n_members=options.n_members, fmt=fmt,
                   static=static, batch_size=options.batch_size, seed=options.seed,
                   analysis=analysis, deterministic=deterministic)
    print(f"product: {path}")
    return 0
