"""``enspp experiment --config CFG --out DIR [--quick]``: train and compare every system on
one split; writes ``table.md`` (Markdown), ``results.json`` and the dashboard ``index.html``.

Relative paths in the experiment file (the station file) are relative to the current
directory: run the shipped configs (``configs/experiments/*.yaml``) from the project root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train and compare every system on one split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML (configs/experiments/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: reports/experiment-<config name>)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the largest K only, 3 epochs, one seed, 50 bootstrap resamples")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from enspp.flows.experiment import load_experiment_config, run_experiment

    cfg = load_experiment_config(args.config)
    out = args.out or Path("reports") / f"experiment-{Path(args.config).stem}"
    result = run_experiment(cfg, out_dir=out, quick=args.quick, progress=lambda m: print(m, flush=True))
    print(Path(result["files"]["table"]).read_text())
    print(f"wall time {result['wall_seconds']:.1f} s; dashboard {result['files']['dashboard']}")
    return 0
