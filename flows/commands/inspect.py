"""``enspp inspect STORE [--json]``: what a store holds (kind, dims, variables, records,
absent fields, members, grid, bytes on disk, provenance)."""

from __future__ import annotations

import argparse
import json

HELP = "show what a store holds (variables, records, absent fields, provenance)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="a forecast or analysis store")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from enspp.data.inspect import format_inspect, inspect_store

    info = inspect_store(args.store)
    print(json.dumps(info, indent=2) if args.json else format_inspect(info))
    return 0
