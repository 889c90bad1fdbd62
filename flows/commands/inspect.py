"""``enspp inspect STORE [--json]``: what a store holds (kind, dims, variables, records,
absent fields, members, grid, bytes on disk, provenance); for a product (``enspp predict``'s
Zarr store or NetCDF file) its kind, model, variables, lead times, init times complete /
skipped / incomplete, stale ones and chunking."""

from __future__ import annotations

import argparse
import json

HELP = "show what a store holds (variables, records, absent fields, provenance)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE",
                        help="a forecast, analysis or product store, or a NetCDF product")
    parser.add_argument("--forecast", metavar="STORE",
                        help="for a product: the forecast store to find its stale init times "
                             "in (default: the one it records)")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from enspp.data.inspect import format_inspect, format_product, inspect_store
    from enspp.models.product import is_product, product_summary

    if is_product(args.store):
        info = product_summary(args.store, forecast=args.forecast)
        print(json.dumps(info, indent=2) if args.json else format_product(info))
        return 0
    info = inspect_store(args.store)
    print(json.dumps(info, indent=2) if args.json else format_inspect(info))
    return 0
