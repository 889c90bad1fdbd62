"""``enspp serve [--config CFG]``: serve the four scheduled deployments on a Prefect server.

The server is the one ``PREFECT_API_URL`` names, in the environment or in the active Prefect
profile (e.g. ``http://127.0.0.1:4200/api`` after ``prefect server start --host 127.0.0.1``);
it must answer before anything is served.  Schedules (UTC by default) come from the config's
``deploy.schedules``: ingest hourly, predict after the 00 and 12 UTC runs arrive, evaluate
nightly, train weekly.  The config is fixed here: the deployments take no config path
(``flows.deployments``).  Runs until SIGTERM or SIGINT, which cancel the runs in flight and
pause the schedules (the next ``enspp serve`` resumes them; ``flows.deployments.serve_deployments``).

``--write-prefect-yaml FILE`` instead writes the same deployments, with the same schedules,
as a ``prefect.yaml`` for a work pool (``prefect deploy --all --prefect-file FILE``).  FILE
may be new or a ``prefect.yaml`` enspp wrote earlier; the config itself or any other existing
file is refused in one line, unchanged (:func:`check_prefect_yaml_target`).
"""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from enspp.data import durable
from enspp.data.errors import EnsppError
from enspp.flows.commands import UsageError
from enspp.flows.runtime import CONFIG_ENV, check_prefect_api, quiet_prefect

HELP = "serve the scheduled deployments on a Prefect server"

#: seconds the Prefect API has to answer its health check before serving
API_TIMEOUT_S = 5.0


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


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it
    (:func:`enspp.data.durable.write_text`: readers never see half a file); missing parent
    directories are created.  A failure is an ``OSError`` naming ``path`` (not the
    temporary file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a file where a directory must be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), e.filename) from e
    try:
        durable.write_text(path, text)
    except OSError as e:
        if e.strerror:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def check_prefect_yaml_target(out: Path, config_path: Path) -> None:
    """Refuse (:class:`~enspp.flows.commands.UsageError`, one line, nothing written) a
    ``--write-prefect-yaml`` target that would replace something enspp does not own: the
    ``--config`` file itself, or an existing file that is not a ``prefect.yaml`` enspp wrote
    (one starting with :data:`enspp.flows.deployments._HEADER`).  An absent file, or one
    enspp wrote earlier, may be written."""
    from enspp.flows.deployments import _HEADER

    try:
        same = out.resolve() == config_path.resolve() or (
            out.exists() and config_path.exists() and os.path.samefile(out, config_path))
    except OSError:
        same = False
    if same:
        raise UsageError(f"--write-prefect-yaml {out} is the --config file itself; give "
                         "another FILE (nothing was changed)")
    if not (out.exists() or out.is_symlink()):
        return
    head = b""
    if out.is_file():
        try:
            with open(out, "rb") as fh:
                head = fh.read(len(_HEADER.encode()))
        except OSError:
            head = b""
    if head != _HEADER.encode():
        raise UsageError(f"--write-prefect-yaml {out}: exists and is not a prefect.yaml "
                         "written by enspp (it does not start with enspp's header); move it "
                         "aside or give another FILE (nothing was changed)")


def serving_line(url: str) -> str:
    """What ``enspp serve`` prints once it serves: the deployments by the full names that
    ``prefect deployment run`` takes (``<flow>/<deployment>``)."""
    from enspp.flows import deployments

    names = [f"{getattr(deployments, flow).name}/{name}"
             for name, (flow, _, _) in deployments.DEPLOYMENTS.items()]
    return (f"serving {', '.join(names)} on {url} (run one now with `prefect deployment run "
            f"{names[0]}`; stop with SIGTERM or Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    quiet_prefect()
    from enspp.flows.config import load_config

    path = config_path_of(args).resolve()
    config = load_config(path)  # a bad file fails here, before anything is served
    if args.write_prefect_yaml is not None:
        from enspp.flows.deployments import prefect_yaml

        out = args.write_prefect_yaml
        check_prefect_yaml_target(out, path)  # before anything is written
        write_atomically(out, prefect_yaml(config))
        print(f"wrote {out}: prefect deploy --all --prefect-file {out} (with {CONFIG_ENV}="
              f"{path} in the worker's environment)")
        return 0
    try:
        url = check_prefect_api(timeout=API_TIMEOUT_S)
    except EnsppError as e:
        raise UsageError(str(e)) from None
    # the config of every served run: runs start in subprocesses that inherit this
    # environment, and no deployment parameter can change it
    os.environ[CONFIG_ENV] = str(path)
    from enspp.flows.deployments import build_deployments, serve_deployments

    def started() -> None:
        print(serving_line(url), flush=True)

    serve_deployments(build_deployments(config), limit=args.limit, on_started=started)
    print("stopped: runs in flight cancelled, schedules paused until the next enspp serve")
    return 0
