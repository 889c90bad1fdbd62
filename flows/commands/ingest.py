"""``enspp ingest PATH... --store STORE``: GRIB/NetCDF/Zarr files into a versioned store."""

from __future__ import annotations

import argparse
import sys

from enspp.flows.commands import UsageError

HELP = "ingest GRIB/NetCDF/Zarr files into a versioned store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="input files, directories or glob patterns (quote globs)")
    parser.add_argument("--store", required=True, help="the Zarr store (created if missing)")
    parser.add_argument("--kind", choices=("forecast", "analysis"), default=None,
                        help="what the files hold (default: detected from the files)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="land the good files and report the bad ones (default: a bad "
                             "file stops the whole batch before anything is written)")
    parser.add_argument("--allow-nan", action="store_true",
                        help="accept NaN (missing) points inside gridded fields (default: an "
                             "error; a field an input does not provide is recorded as absent "
                             "either way). Station tables have gaps by nature: their missing "
                             "members and observations are kept as NaN and counted in the "
                             "summary line, with or without this flag")
    parser.add_argument("--allow-mixed-centres", action="store_true",
                        help="accept inputs from several originating centres in one store")
    parser.add_argument("--config", default=None, metavar="CFG",
                        help="enspp.yaml whose data section gives allow_nan, lock_timeout, "
                             "bounds (plausible ranges per variable), allow_mixed_centres and "
                             "station (how station files, NetCDF or CSV, map onto the data model)")
    parser.add_argument("--deterministic", action="store_true",
                        help="station files: ingest their deterministic forecast (a one-member "
                             "forecast store) instead of the ensemble")
    parser.add_argument("--lock-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="wait this long for another ingest of the store (default 300)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from enspp.data.ingest import IngestError, ingest

    bounds, mixed, allow_nan, station = None, args.allow_mixed_centres, args.allow_nan, None
    if args.deterministic and args.kind == "analysis":
        raise UsageError("--deterministic ingests a forecast; it cannot go with --kind analysis")
    if args.config is not None:
        from enspp.flows.config import load_config

        data = load_config(args.config).data
        bounds = dict(data.bounds)
        mixed = mixed or data.allow_mixed_centres
        allow_nan = allow_nan or data.allow_nan
        station = data.station
    try:
        summary = ingest(args.paths, args.store,
                         kind="forecast" if args.deterministic else args.kind,
                         progress=not args.quiet, on_error="skip" if args.skip_bad else "raise",
                         allow_nan=allow_nan, lock_timeout=args.lock_timeout, bounds=bounds,
                         allow_mixed_centres=mixed, station=station,
                         station_part="deterministic" if args.deterministic else None)
    except IngestError as e:  # a few lines: one per problem (the CLI's one-line form would
        if args.debug:        # run them together)
            raise
        print(f"enspp ingest: error: {e}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0 if summary.ok else 1
