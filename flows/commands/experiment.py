"""``enspp experiment --config CFG --out DIR [--quick] [--only AXIS=V1,V2 ...]``: an ``enspp.yaml`` with a ``sweep``
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
    parser.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                        help="run a slice of the sweep: the listed values of one axis (e.g. "
                             "pipeline.members.k=5, systems=emos_local,mixed); repeatable")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def parse_only(items: list[str]) -> dict[str, list[str]]:
    """``["pipeline.members.k=5", "systems=emos_local,mixed"]`` as axis -> values (text)."""
    from enspp.flows.experiment import ExperimentConfigError

    only: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        wanted = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not wanted:
            raise ExperimentConfigError(f"--only {item!r}: expected AXIS=VALUE[,VALUE...] "
                                        "(e.g. pipeline.members.k=5 or systems=emos_local,mixed)")
        only.setdefault(key.strip(), []).extend(wanted)
    return only


def run(args: argparse.Namespace) -> int:
    from enspp.flows.experiment import load_any, run_any

    exp = load_any(args.config, quick=args.quick, only=parse_only(args.only))
    out = args.out or Path("reports") / f"experiment-{Path(args.config).stem}"
    result = run_any(exp, out_dir=out, quick=args.quick, progress=lambda m: print(m, flush=True))
    print(Path(result["files"]["table"]).read_text())
    print(f"wall time {result['wall_seconds']:.1f} s; dashboard {result['files']['dashboard']}")
    return 0
