"""``enspp experiment --config CFG --out DIR [--quick]``: an ``enspp.yaml`` with a ``sweep``
block, every point trained, registered, predicted and evaluated through the service path;
writes ``table.md``, ``results.json``, the evaluations and the dashboard ``index.html``.

Relative paths in the file resolve as for every command (``data.workdir``, relative to the
file's folder, else the file's folder), whatever the current directory.  A failed run
leaves no ``--out`` directory behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train and compare every system of a sweep on one split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help="experiment file: an enspp.yaml with a sweep block (configs/experiments/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: reports/experiment-<config name>)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the first value of every axis, 3 epochs, one seed, "
                             "50 bootstrap resamples")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from enspp.flows.experiment import load_any, run_any

    exp = load_any(args.config, quick=args.quick)
    out = args.out or Path("reports") / f"experiment-{Path(args.config).stem}"
    result = run_any(exp, out_dir=out, quick=args.quick, progress=lambda m: print(m, flush=True))
    print(Path(result["files"]["table"]).read_text())
    print(f"wall time {result['wall_seconds']:.1f} s; dashboard {result['files']['dashboard']}")
    return 0
