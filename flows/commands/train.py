"""``enspp train --config CFG [--resume CKPT] [--workdir DIR] [--max-epochs N]``.

Reads the ``pipeline``, ``model`` and ``train`` sections of the config; the run goes to
``runs/<run-id>/`` under the work directory (``data.workdir``, itself relative to the config
file; ``--workdir`` overrides it), and relative store paths in ``pipeline.stores`` are relative
to that work directory.  Prints the run
directory, the best checkpoint and its validation CRPS beside the raw ensemble's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from enspp.flows.commands import UsageError

HELP = "train a post-processing model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help="enspp.yaml with 'pipeline', 'model' and 'train' sections")
    parser.add_argument("--resume", type=Path, metavar="CKPT",
                        help="continue from this checkpoint (its run directory when inside one)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="work directory holding runs/ (default: the config's data.workdir)")
    parser.add_argument("--max-epochs", type=int, metavar="N", help="override train.max_epochs")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def load_sections(path: Path) -> dict[str, Any]:
    """``{"pipeline", "model", "train", "predict"}`` config objects of ``path`` and its
    ``workdir`` (``data.workdir`` made absolute)."""
    from enspp.flows.config import load_config

    full = load_config(path)
    return {**{k: getattr(full, k) for k in ("pipeline", "model", "train", "predict")},
            "workdir": full.workdir.root}


def run(args: argparse.Namespace) -> int:
    from enspp.models.train import train

    cfg = load_sections(args.config)
    train_cfg = cfg["train"]
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise UsageError(f"--max-epochs must be >= 1, got {args.max_epochs}")
        train_cfg = train_cfg.model_copy(update={"max_epochs": args.max_epochs})
    workdir = args.workdir if args.workdir is not None else cfg["workdir"]
    result = train(cfg["pipeline"], cfg["model"], train_cfg, workdir=workdir, resume=args.resume)
    # train() has said what it did (epochs, best normalised validation CRPS, time) on stderr
    print(f"run: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    return 0
