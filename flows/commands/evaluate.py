"""``enspp evaluate --config CFG --out DIR``: score systems, write reports and the dashboard.

Reads the ``evaluate`` section of the config file; relative paths in it resolve against the
work directory (``data.workdir``, else the config file's folder), as for every command.
``--combine DIR ...`` instead merges finished evaluations into one dashboard at ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from enspp.flows.commands import UsageError

HELP = "score systems, write reports and the dashboard"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="enspp.yaml holding an 'evaluate' section")
    parser.add_argument("--out", type=Path, required=True, help="report directory (index.html, scores, plots)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="DIR",
                        help="combine these evaluation directories into one dashboard at --out")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def load_evaluate_config(path: Path):
    """The :class:`~evaluation.config.EvaluateConfig` of ``path`` with its paths resolved
    against the work directory (as for every command: ``flows.config.load_config``)."""
    from enspp.evaluation.config import EvaluateConfigError
    from enspp.flows.config import load_config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    cfg = load_config(path).evaluate
    if cfg is None:
        raise EvaluateConfigError(f"{path}: no 'evaluate' section")
    return cfg


def run(args: argparse.Namespace) -> int:
    if args.combine:
        from enspp.evaluation.dashboard import write_combined_dashboard

        index = write_combined_dashboard(args.combine, args.out)
        print(f"dashboard: {index}")
        return 0
    if args.config is None:
        raise UsageError("--config is required (or --combine DIR ...)")
    from enspp.evaluation.config import EvaluateConfigError
    from enspp.evaluation.evaluate import evaluate
    from enspp.evaluation.report import format_table, headline_rows, read_scores

    cfg = load_evaluate_config(args.config)
    if cfg.truth is None:
        raise EvaluateConfigError(f"{args.config}: evaluate.truth: not set; name the analysis "
                                  "store to score against (e.g. truth: stores/analysis.zarr)")
    result = evaluate(cfg, args.out)
    # the headline as the demo prints it: systems by their labels, best first
    print(format_table(headline_rows(read_scores(result.out_dir)), reference=cfg.reference))
    for v, ds in result.scores.items():
        region = str(ds.region.values[0])
        if "eecrps_all" in ds:
            parts = [f"{s}={float(ds['eecrps_all'].sel(system=s, region=region)):.4g}"
                     for s in ds.system.values]
            print(f"{v} ({region}) EECRPS: " + ", ".join(parts))
    for note in result.notes:
        print(f"note: {note}")
    n_bad = sum(c.status == "out_of_range" for c in result.cases)
    if n_bad:
        print(f"{n_bad} case(s) outside the data: see the report")
    print(f"dashboard: {result.files['index']}")
    return 0
