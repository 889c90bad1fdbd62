"""``enspp synth``: write the synthetic ENS-like world (GRIB forecasts and analyses, oracle)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from enspp.data.errors import format_validation_error

HELP = "write the synthetic ENS-like world (GRIB + oracle)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write the world to")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file with a 'synth' section (an enspp.yaml's data.synth, or "
                             "the SynthConfig keys at top level)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--grid", default=None, help="NLATxNLON, e.g. 32x64 or 181x360")
    parser.add_argument("--years", default=None, help="FIRST-LAST, e.g. 2012-2019")
    parser.add_argument("--init-frequency", choices=("daily", "twice-weekly", "weekly"), default=None,
                        help="init days: every day, Mon+Thu (ENS reforecasts) or Mondays")
    parser.add_argument("--lead-times", default=None, help="comma-separated hours, e.g. 24,48")
    parser.add_argument("--members", type=int, default=None,
                        help="number of perturbed members (the control is added)")
    parser.add_argument("--variables", default=None, help="comma-separated, e.g. z500,t850,t2m")
    parser.add_argument("--overwrite", action="store_true", help="replace a world already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


_FREQUENCIES = {"daily": (0, 1, 2, 3, 4, 5, 6), "twice-weekly": (0, 3), "weekly": (0,)}


def build_config(args: argparse.Namespace):
    """SynthConfig from ``--config`` overridden by the command-line options."""
    from enspp.data.synth import SynthConfig, SynthError, parse_grid, parse_years
    from enspp.data.yaml_file import read_yaml_mapping

    values: dict = {}
    if args.config is not None:
        doc = read_yaml_mapping(args.config, what="config file", error=SynthError,
                                hint=" with a 'synth' section")
        data = doc.get("data")
        if "synth" not in doc and isinstance(data, dict) and "synth" in data:
            section = data["synth"]  # an enspp.yaml (the demo's): its data.synth
        else:
            section = doc.get("synth", doc)
        if not isinstance(section, dict):
            raise SynthError(f"{args.config}: expected a mapping with a 'synth' section")
        values = dict(section)
    if args.seed is not None:
        values["seed"] = args.seed
    if args.grid is not None:
        values["grid"] = parse_grid(args.grid)
    if args.years is not None:
        values["years"] = parse_years(args.years)
    if args.init_frequency is not None:
        values["init_weekdays"] = _FREQUENCIES[args.init_frequency]
    if args.lead_times is not None:
        try:
            values["lead_times_h"] = tuple(int(x) for x in args.lead_times.split(","))
        except ValueError:
            raise SynthError(f"--lead-times {args.lead_times!r}: expected hours like 24,48") from None
    if args.members is not None:
        values["n_perturbed"] = args.members
    if args.variables is not None:
        values["variables"] = tuple(v.strip() for v in args.variables.split(",") if v.strip())
    from pydantic import ValidationError

    try:
        return SynthConfig(**values)
    except ValidationError as e:
        where = f"{args.config}: " if args.config is not None else ""
        raise SynthError(f"{where}synth config: {format_validation_error(e)}") from None


def run(args: argparse.Namespace) -> int:
    from enspp.data.synth import generate_world

    config = build_config(args)
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"  {line} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    paths = generate_world(args.out, config, overwrite=args.overwrite, progress=progress)
    n_events = len((yaml.safe_load(paths.events.read_text()) or {}).get("cases", []))
    print(f"synthetic world in {paths.root}: {len(paths.forecast_files)} forecast files "
          f"({config.n_members} members, leads {','.join(map(str, config.lead_times_h))} h), "
          f"{len(paths.analysis_files)} analysis files, {config.grid[0]}x{config.grid[1]} grid, "
          f"{n_events} events, seed {config.seed}, {time.perf_counter() - t0:.1f} s")
    return 0
