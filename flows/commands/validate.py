"""``enspp validate STORE_OR_CONFIG``: check a store against the data model, or a config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from enspp.flows.commands import UsageError

HELP = "check a config file or a store against the model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="STORE_OR_CONFIG",
                        help="a Zarr store directory or a YAML config file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such file or directory")
    if target.is_dir():
        from enspp.data.store import validate_store

        print(validate_store(target).summary())
        return 0
    if target.suffix.lower() not in (".yaml", ".yml"):
        raise UsageError(f"{target}: expected a Zarr store directory or a .yaml/.yml config file")
    from enspp.flows.config import load_config

    cfg = load_config(target)
    sections = ["data", "pipeline", "model", "train", "predict", "deploy"]
    if cfg.evaluate is not None:
        sections.insert(5, "evaluate")
    print(f"{target}: valid config (sections {', '.join(sections)}; work directory "
          f"{cfg.data.workdir}; model {cfg.model.name}; task runner {cfg.deploy.task_runner})")
    return 0
