"""``enspp train --config CFG [--resume CKPT] [--workdir DIR] [--max-epochs N]``.

Reads the ``pipeline``, ``model`` and ``train`` sections of the config; relative paths resolve
against the work directory (``--workdir``, else ``data.workdir``, else the config file's
folder), where ``runs/`` is written too.  Prints the run directory, the checkpoint to use and
its validation CRPS beside the raw ensemble's.
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
                        help="work directory holding runs/ and the base of relative paths "
                             "(default: data.workdir, else the config file's folder)")
    parser.add_argument("--max-epochs", type=int, metavar="N", help="override train.max_epochs")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def load_sections(path: Path, *, workdir: Path | None = None) -> dict[str, Any]:
    """``{"pipeline", "model", "train", "predict"}`` config objects of ``path`` (paths
    resolved against the work directory) and ``workdir``, the work directory itself."""
    from enspp.flows.config import load_config

    full = load_config(path, workdir=workdir)
    out: dict[str, Any] = {k: getattr(full, k) for k in ("pipeline", "model", "train", "predict")}
    out["workdir"] = full.workdir.root
    return out


def run(args: argparse.Namespace) -> int:
    from enspp.models.train import train

    cfg = load_sections(args.config, workdir=args.workdir)
    train_cfg = cfg["train"]
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise UsageError(f"--max-epochs must be >= 1, got {args.max_epochs}")
        train_cfg = train_cfg.model_copy(update={"max_epochs": args.max_epochs})
    result = train(cfg["pipeline"], cfg["model"], train_cfg, workdir=cfg["workdir"], resume=args.resume)
    # train() has said what it did (epochs, best normalised validation CRPS, time) on stderr
    print(f"run: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    if result.selection_checkpoint not in (None, result.best_checkpoint):
        print(f"  (refit on training + validation; the early-stopped fit: {result.selection_checkpoint})")
    return 0
