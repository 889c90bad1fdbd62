"""``enspp serve [--config CFG]``: serve the four scheduled deployments on a Prefect server.

The server is the one ``PREFECT_API_URL`` names (e.g. ``http://127.0.0.1:4200/api`` after
``prefect server start --host 127.0.0.1``); schedules (UTC by default) come from the config's
``deploy.schedules``: ingest hourly, predict after the 00 and 12 UTC runs arrive, evaluate
nightly, train weekly.  The config is fixed here: the deployments take no config path
(``flows.deployments``).  Runs until interrupted.

``--write-prefect-yaml FILE`` instead writes the same deployments, with the same schedules,
as a ``prefect.yaml`` for a work pool (``prefect deploy --all --prefect-file FILE``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from enspp.flows.commands import UsageError
from enspp.flows.runtime import CONFIG_ENV, quiet_prefect

HELP = "serve the scheduled deployments on a Prefect server"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help=f"enspp.yaml (default: ${CONFIG_ENV})")
    parser.add_argument("--limit", type=int, default=None,
                        help="most flow runs at once (default: no limit)")
    parser.add_argument("--write-prefect-yaml", type=Path, metavar="FILE", default=None,
                        help="write the deployments with the config's schedules as a "
                             "prefect.yaml for a work pool, then exit (serves nothing)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def config_path_of(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        raise UsageError(f"no config: pass --config or set {CONFIG_ENV}")
    return Path(path)


def run(args: argparse.Namespace) -> int:
    quiet_prefect()
    from enspp.flows.config import load_config

    path = config_path_of(args).resolve()
    config = load_config(path)  # a bad file fails here, before anything is served
    if args.write_prefect_yaml is not None:
        from enspp.flows.deployments import prefect_yaml

        out = args.write_prefect_yaml
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(prefect_yaml(config))
        os.replace(tmp, out)
        print(f"wrote {out}: prefect deploy --all --prefect-file {out} (with {CONFIG_ENV}="
              f"{path} in the worker's environment)")
        return 0
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError("PREFECT_API_URL is not set: start a server (prefect server start "
                         "--host 127.0.0.1) and export PREFECT_API_URL=http://127.0.0.1:4200/api")
    # the config of every served run: runs start in subprocesses that inherit this
    # environment, and no deployment parameter can change it
    os.environ[CONFIG_ENV] = str(path)
    from prefect import serve

    from enspp.flows.deployments import build_deployments

    serve(*build_deployments(config), limit=args.limit)
    return 0
