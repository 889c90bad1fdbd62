"""``enspp validate STORE_OR_CONFIG``: check a store against the data model, or a config file.

A config file is parsed (every bad key named) and then checked against the files it names
before anything runs (``flows.preflight``): stores, static and case files, splits against the
forecast store's period, K against its members, variables and lead times, regions against the
grid, the metrics' needs.  Problems print one per line and exit 1; notes (a store the first
ingest creates, a region evaluate will skip) print and exit 0.

A product store (``enspp predict``'s) is checked by ``models.product.check_product``: its
attributes, its complete init times against the coordinate and the variables, with
``--deep`` every chunk holding a complete init time (missing, corrupt, NaN where no masked
input explains it); incomplete init times (a killed predict) are a note.  A NetCDF product
(``predict.fmt: netcdf``) gets the same checks (every init time it holds is complete;
``--deep`` reads every value); a file that cannot be opened is one line naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enspp.flows.commands import UsageError

HELP = "check a config file or a store against the model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="STORE_OR_CONFIG",
                        help="a Zarr store directory, a NetCDF product or a YAML config file")
    parser.add_argument("--deep", action="store_true",
                        help="for a store: also decode every chunk that holds data and report "
                             "corrupt, missing and inconsistent ones")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def validate_config(target: Path) -> int:
    """Parse and pre-check a config file; print the verdict, the notes and the problems."""
    from enspp.flows.config import read_config
    from enspp.flows.preflight import check_config

    cfg, given = read_config(target)
    # a file with an evaluate section alone scores existing stores: the training stores it
    # does not name are not checked
    evaluate_only = given == ["evaluate"]
    report = check_config(cfg, pipeline=not evaluate_only)
    for note in report.notes:
        print(f"{target}: note: {note}")
    if not report.ok:
        for problem in report.problems:
            print(f"enspp validate: error: {target}: {problem}", file=sys.stderr)
        return 1
    if evaluate_only:
        print(f"{target}: valid config (section evaluate, for enspp evaluate; work directory "
              f"{cfg.data.workdir})")
        return 0
    print(f"{target}: valid config (sections {', '.join(given) or 'none'}, the others default; "
          f"work directory {cfg.data.workdir}; model {cfg.model.name}; task runner "
          f"{cfg.deploy.task_runner})")
    return 0


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such file or directory")
    if target.is_file() and target.suffix.lower() in (".yaml", ".yml"):
        return validate_config(target)
    from enspp.models.product import check_product, is_product

    if is_product(target):
        product = check_product(target, deep=args.deep)
        print(product.summary())
        return 0 if product.ok else 1
    if target.is_dir():
        from enspp.data.store import validate_store

        report = validate_store(target, deep=args.deep)
        print(report.summary())
        return 0 if report.ok else 1
    raise UsageError(f"{target}: expected a Zarr store directory or a .yaml/.yml config file "
                     "(or a NetCDF product)")
