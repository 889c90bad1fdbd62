"""``enspp ingest PATH... --store STORE``: GRIB/NetCDF/Zarr files into a versioned store."""

from __future__ import annotations

import argparse

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
                        help="accept NaN (missing) points in fields (default: an error)")
    parser.add_argument("--lock-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="wait this long for another ingest of the store (default 300)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from enspp.data.ingest import ingest

    summary = ingest(args.paths, args.store, kind=args.kind, progress=not args.quiet,
                     on_error="skip" if args.skip_bad else "raise", allow_nan=args.allow_nan,
                     lock_timeout=args.lock_timeout)
    print(summary.line())
    return 0 if summary.ok else 1
