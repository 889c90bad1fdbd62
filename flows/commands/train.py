"""``enspp train --config CFG [--resume CKPT] [--workdir DIR] [--max-epochs N]``.

Reads the ``pipeline``, ``model`` and ``train`` sections (through ``flows.config.load_config``
when that module exists, else section by section); relative store paths in ``pipeline.stores``
are relative to the work directory (default: the config file's directory).  Prints the run
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
                        help="work directory holding runs/ (default: the config file's directory)")
    parser.add_argument("--max-epochs", type=int, metavar="N", help="override train.max_epochs")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def load_sections(path: Path) -> dict[str, Any]:
    """``{"pipeline", "model", "train", "predict"}`` config objects of ``path``."""
    try:
        from enspp.flows.config import load_config
    except ImportError:
        load_config = None
    if load_config is not None:
        full = load_config(path)
        return {k: getattr(full, k) for k in ("pipeline", "model", "train", "predict")}
    from enspp.models.config import ModelConfig, PredictConfig, TrainConfig, parse_section
    from enspp.models.config import load_sections as read
    from enspp.pipeline.config import PipelineConfig

    raw = read(path)
    return {"pipeline": PipelineConfig.from_dict(raw.get("pipeline"), source=f"{path}: pipeline"),
            "model": parse_section(raw, "model", ModelConfig, source=path),
            "train": parse_section(raw, "train", TrainConfig, source=path),
            "predict": parse_section(raw, "predict", PredictConfig, source=path)}


def run(args: argparse.Namespace) -> int:
    from enspp.models.train import train

    cfg = load_sections(args.config)
    train_cfg = cfg["train"]
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise UsageError(f"--max-epochs must be >= 1, got {args.max_epochs}")
        train_cfg = train_cfg.model_copy(update={"max_epochs": args.max_epochs})
    workdir = args.workdir if args.workdir is not None else args.config.resolve().parent
    result = train(cfg["pipeline"], cfg["model"], train_cfg, workdir=workdir, resume=args.resume)
    raw = "n/a" if result.raw_score is None else f"{result.raw_score:.4g}"
    est = train_cfg.ensemble_estimator
    print(f"run: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"best {result.monitor} (normalised CRPS, estimator {result.monitor.removeprefix('val/crps_')}): "
          f"{result.best_score:.4g}; raw ensemble val/crps_raw_{est} (estimator {est}): {raw}; "
          f"{result.epochs} epochs")
    return 0
