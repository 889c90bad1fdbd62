"""The ``enspp`` command line.

Each subcommand lives in ``flows/commands/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.  Modules are imported only when their
subcommand runs, so ``enspp --help`` stays fast and a command never pays for another's imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> (module, one-line help); the order is the order of ``enspp --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("enspp.flows.commands.demo", "run the whole chain on the synthetic world (the main job)"),
    "synth": ("enspp.flows.commands.synth", "write the synthetic ENS-like world (GRIB + oracle)"),
    "ingest": ("enspp.flows.commands.ingest", "ingest GRIB/NetCDF/Zarr files into a versioned store"),
    "validate": ("enspp.flows.commands.validate", "check a config file or a store against the model"),
    "inspect": ("enspp.flows.commands.inspect", "show what a store holds (variables, records, absent fields, provenance)"),
    "train": ("enspp.flows.commands.train", "train a post-processing model"),
    "predict": ("enspp.flows.commands.predict", "post-process forecasts with a trained model"),
    "evaluate": ("enspp.flows.commands.evaluate", "score systems, write reports and the dashboard"),
    "experiment": ("enspp.flows.commands.experiment", "train and compare every system of a sweep on one split"),
    "serve": ("enspp.flows.commands.serve", "serve the scheduled deployments on a Prefect server"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enspp",
        description="Deep-learning post-processing of ensemble weather forecasts.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, description=help_)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"enspp {version('enspp')}"
    except PackageNotFoundError:  # running from a source tree
        return "enspp (source tree)"


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its own message
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from enspp.flows.runtime import quiet_libraries

    quiet_libraries()
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / version / error and exits
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"enspp {name}", description=help_)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    from enspp.data.errors import EnsppError  # after the command's own imports: costs nothing
    from enspp.data.progress import show_summaries

    show_summaries()  # one line per long step (what, how much, how long) on stderr

    try:
        rc = int(module.run(args) or 0)
        sys.stdout.flush()  # a closed pipe is met here, inside the try
        return rc
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `enspp inspect STORE | head`: the reader has all it wanted
        _silence_stdout()
        return 0
    except (EnsppError, OSError) as e:  # the user's input or files: one line, no traceback
        if getattr(args, "debug", False):
            raise
        print(f"enspp {name}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    # anything else is a bug: it raises with its traceback


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
