"""The four scheduled deployments and the only parameters a deployment run accepts.

A deployment run is created through the Prefect API, so its parameters come from whoever can
reach that API.  The flows served here therefore take no ``config_path``: the configuration
is fixed when serving (``enspp serve --config`` puts its absolute path in ``$ENSPP_CONFIG`` of
the serving process; a work pool's worker gets it from its environment), and the parameters
an operator needs are checked before anything runs:

* ``ingest``: ``paths`` must lie inside the configured ``data.incoming`` directories of
  ``kind`` (no ``..`` out of them, no absolute path elsewhere);
* ``predict``: ``version`` is the plain name of a registered model version (not a file path),
  ``split`` is ``train``/``val``/``test``, ``init_times`` are ISO times;
* ``evaluate``: ``report_id`` is a plain name (the report directory ``reports/<report_id>``);
* ``train``: ``min_improvement`` is a finite number >= 0.

A run created with any other parameter (``config_path`` of another YAML) fails before its
flow body starts: Prefect binds the parameters to the flow's signature (the API itself accepts
such a run: a deployment's parameter schema allows extra keys).

The schedules have one source, the config's ``deploy.schedules``: :func:`build_deployments`
serves them and :func:`prefect_yaml` writes the same deployments for a work pool
(``enspp serve --config CFG --write-prefect-yaml FILE``; ``deploy/prefect.yaml`` is the file
for the default schedules, checked by the tests).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from enspp.data.errors import EnsppError
from enspp.flows.runtime import CONFIG_ENV, quiet_libraries, quiet_prefect

quiet_prefect()
quiet_libraries()  # a served run is a process of its own: no Lightning banners in its logs

from prefect import flow  # noqa: E402

#: the Prefect loggers that log a run's exception with its traceback
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")


class ExpectedErrorsInOneLine(logging.Filter):
    """Drop the traceback from a log record of an :class:`EnsppError` (a refused file, a
    missing model, a bad parameter: the message says what happened and what to do), so a
    served run that fails that way logs one line per record; any other exception (a bug)
    keeps its traceback.  Prefect logs a failed run's exception with ``exc_info`` from its
    engine: twice, about 30 lines each, for one expected failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, EnsppError):
            record.exc_info = None
            record.exc_text = None
        return True


def one_line_errors() -> None:
    """Install :class:`ExpectedErrorsInOneLine` on :data:`RUN_LOGGERS` (once): every served
    run imports this module."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedErrorsInOneLine) for f in logger.filters):
            logger.addFilter(ExpectedErrorsInOneLine())


one_line_errors()

#: deployment name -> (served flow in this module, schedule key in deploy.schedules, description)
DEPLOYMENTS: dict[str, tuple[str, str, str]] = {
    "ingest-hourly": ("ingest_deployment", "ingest",
                      "Ingest new GRIB/Zarr files from the incoming directory into the stores."),
    "predict-00-12": ("predict_deployment", "predict",
                      "Operational post-processing of the 00 and 12 UTC runs after data arrival."),
    "evaluate-nightly": ("evaluate_deployment", "evaluate",
                         "Score products against the analyses and refresh the skill dashboard."),
    "train-weekly": ("train_deployment", "train",
                     "Retrain on the stores; register the model only if it beats the current one."),
}

#: the work pool of ``deploy/prefect.yaml``
WORK_POOL = "enspp-pool"

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_GLOB = re.compile(r"[*?\[]")


class DeploymentParameterError(EnsppError):
    """A deployment run was asked for with a parameter it does not accept."""


def check_plain_name(value: str, *, what: str) -> str:
    """``value`` if it is a plain file name (letters, digits, ``.``, ``_``, ``-``; not
    starting with a dot; no separator), else :class:`DeploymentParameterError`."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise DeploymentParameterError(
            f"{what} {value!r} is not a plain name (letters, digits, '.', '_', '-'; not starting "
            "with '.'; at most 128 characters)")
    return value


def served_config_path() -> Path:
    """The config fixed when serving: ``$ENSPP_CONFIG`` of the serving process (absolute)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise DeploymentParameterError(f"no config: the serving process sets {CONFIG_ENV} "
                                       "(enspp serve --config CFG)")
    return Path(path).resolve()


def incoming_roots(config: Any, kind: str) -> list[Path]:
    """The directories ``data.incoming.<kind>`` names: each entry's part before its first
    glob character (a file's directory), absolute and normalised."""
    roots = []
    for entry in getattr(config.data.incoming, kind):
        p = config.workdir.path(entry)
        parts = p.parts
        fixed = next((i for i, part in enumerate(parts) if _GLOB.search(part)), len(parts))
        base = Path(*parts[:fixed]) if fixed else Path(p.anchor)
        if fixed == len(parts) and base.is_file():
            base = base.parent  # a single file: its directory
        roots.append(Path(os.path.normpath(base)))
    return roots


def check_incoming_paths(config: Any, paths: list[str], kind: str | None) -> None:
    """Every path (file, directory or glob; relative to the work directory) lies inside one
    of the ``data.incoming.<kind>`` directories, after ``..`` is resolved."""
    if kind not in ("forecast", "analysis"):
        raise DeploymentParameterError(f"kind must be 'forecast' or 'analysis' with paths, "
                                       f"got {kind!r}")
    roots = incoming_roots(config, kind)
    if not roots:
        raise DeploymentParameterError(f"paths: data.incoming.{kind} names no directory, so "
                                       "a deployment run cannot ingest given paths")
    for p in paths:
        if not isinstance(p, str) or not p or "\x00" in p:
            raise DeploymentParameterError(f"paths: {p!r} is not a path")
        full = Path(os.path.normpath(config.workdir.path(p)))
        if not any(full == r or full.is_relative_to(r) for r in roots):
            raise DeploymentParameterError(
                f"paths: {p!r} is outside the incoming {kind} directories "
                f"({', '.join(map(str, roots))})")


def _config() -> tuple[Path, Any]:
    from enspp.flows.config import load_config

    path = served_config_path()
    return path, load_config(path)


# ------------------------------------------------------------------ the served flows
@flow(name="ingest", log_prints=True)
def ingest_deployment(paths: list[str] | None = None,
                      kind: Literal["forecast", "analysis"] | None = None) -> dict[str, Any]:
    """Ingest the configured ``data.incoming`` files, or ``paths`` inside those directories."""
    from enspp.flows.ops import ingest_flow

    watch_this_run()
    path, cfg = _config()
    if paths:
        check_incoming_paths(cfg, paths, kind)
    return ingest_flow.fn(str(path), paths=paths, kind=kind)


@flow(name="predict", log_prints=True)
def predict_deployment(init_times: list[str] | None = None,
                       split: Literal["train", "val", "test"] | None = None,
                       version: str | None = None, init_times_per_task: int = 1) -> str:
    """The registry's current model (or registered ``version``) on the latest init time (or
    ``init_times``, or the ``split``)."""
    import numpy as np

    from enspp.flows.ops import predict_flow
    from enspp.models.registry import list_versions

    watch_this_run()
    path, cfg = _config()
    for t in init_times or []:
        try:
            np.datetime64(t, "ns")
        except (TypeError, ValueError):
            raise DeploymentParameterError(f"init_times: {t!r} is not an ISO time") from None
    if not 1 <= init_times_per_task <= 10_000:
        raise DeploymentParameterError(f"init_times_per_task must be 1..10000, got "
                                       f"{init_times_per_task}")
    checkpoint = None
    if version is not None:
        check_plain_name(version, what="version")
        found = [v for v in list_versions(cfg.workdir.registry) if v.version == version]
        if not found:
            raise DeploymentParameterError(f"version {version!r} is not registered in "
                                           f"{cfg.workdir.registry}")
        checkpoint = str(found[0].checkpoint)
    return predict_flow.fn(str(path), init_times=init_times, split=split, checkpoint=checkpoint,
                           init_times_per_task=init_times_per_task)


@flow(name="evaluate", log_prints=True)
def evaluate_deployment(report_id: str = "latest") -> dict[str, Any]:
    """Score the products and rewrite ``reports/<report_id>/``."""
    from enspp.flows.ops import evaluate_flow

    check_plain_name(report_id, what="report_id")
    watch_this_run()
    path, _ = _config()
    return evaluate_flow.fn(str(path), report_id=report_id)


@flow(name="train", log_prints=True)
def train_deployment(min_improvement: float = 0.0) -> dict[str, Any]:
    """Retrain and register the candidate only if it beats the current model."""
    from enspp.flows.ops import train_flow

    if not (math.isfinite(min_improvement) and min_improvement >= 0):
        raise DeploymentParameterError(f"min_improvement must be a finite number >= 0, got "
                                       f"{min_improvement}")
    watch_this_run()
    path, _ = _config()
    return train_flow.fn(str(path), min_improvement=min_improvement)


# ------------------------------------------------------------------ deployments and prefect.yaml
def _cron(config: Any, key: str) -> str | None:
    return getattr(config.deploy.schedules, key)


def build_deployments(config: Any) -> list[Any]:
    """``RunnerDeployment`` objects for :data:`DEPLOYMENTS` with the config's schedules and no
    preset parameters (the config is the serving process's ``$ENSPP_CONFIG``)."""
    from prefect.schedules import Cron

    tz = config.deploy.schedules.timezone
    out = []
    for name, (flow_name, key, description) in DEPLOYMENTS.items():
        cron = _cron(config, key)
        out.append(globals()[flow_name].to_deployment(
            name=name, description=description, tags=["enspp"],
            schedules=[] if cron is None else [Cron(cron, timezone=tz)]))
    return out


_HEADER = """\
# Prefect 3 deployments of enspp for a process work pool named enspp-pool: run
# `prefect deploy --all --prefect-file deploy/prefect.yaml` from the project root.
# Written by `enspp serve --config CFG --write-prefect-yaml FILE` from deploy.schedules of the
# config (this file: the default schedules, UTC); edit the config and write it again rather
# than this file. Every run reads the config named by $ENSPP_CONFIG of the worker and starts
# in $ENSPP_HOME (the project directory); the deployments take no config path.
"""


def prefect_yaml(config: Any) -> str:
    """``prefect.yaml`` declaring :data:`DEPLOYMENTS` for the work pool ``enspp-pool`` with
    the schedules of ``config.deploy.schedules``."""
    from importlib.metadata import version

    tz = config.deploy.schedules.timezone
    deployments = []
    for name, (flow_name, key, description) in DEPLOYMENTS.items():
        cron = _cron(config, key)
        deployments.append({
            "name": name, "description": description,
            "entrypoint": f"flows/deployments.py:{flow_name}",
            "work_pool": {"name": WORK_POOL, "work_queue_name": "default"},
            "tags": ["enspp"],
            "schedules": [] if cron is None else [{"cron": cron, "timezone": tz}]})
    doc = {"name": "enspp", "prefect-version": version("prefect"), "build": None, "push": None,
           "pull": [{"prefect.deployments.steps.set_working_directory":
                     {"directory": "{{ $ENSPP_HOME }}"}}],
           "deployments": deployments}
    return _HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


# ------------------------------------------------------------------ serving
def _graceful_runner_class() -> type:  # a factory: prefect.runner is imported on first use
    """:class:`prefect.runner.Runner` whose SIGTERM (and SIGINT) stop it the way Prefect
    means to, on the running event loop (see :func:`serve_deployments`)."""
    import asyncio
    import signal

    from prefect.runner import Runner

    class GracefulRunner(Runner):
        _stop_requested = False
        _stop_task: asyncio.Task[None] | None = None
        #: called once the runner serves (its client, loops and signal handlers in place)
        on_started: Callable[[], None] | None = None

        async def __aenter__(self) -> Any:
            out = await super().__aenter__()
            if self.on_started is not None:
                self.on_started()
            return out

        def handle_sigterm(self, signum: int | None = None, frame: Any = None) -> None:
            """First signal: schedule :meth:`astop` on the running loop (cancels the runs in
            flight, ends the polling loops; leaving the runner then pauses the deployments).
            A second signal, or one before the runner started: ``KeyboardInterrupt``."""
            if self._stop_requested or not self.started:
                raise KeyboardInterrupt
            self._stop_requested = True
            name = signal.Signals(signum).name if signum else "signal"
            self._logger.info(f"{name} received: cancelling the runs in flight, then stopping "
                              "(send it again to stop at once)")
            loop = asyncio.get_running_loop()
            loop.call_soon_threadsafe(self._begin_stop, loop)

        def _begin_stop(self, loop: asyncio.AbstractEventLoop) -> None:
            self._stop_task = loop.create_task(self.astop())

        async def start(self, *args: Any, **kwargs: Any) -> None:
            # Runner.start installs handle_sigterm for SIGTERM; SIGINT (Ctrl-C, kill -INT)
            # takes the same path unless the process ignores it
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self.handle_sigterm)
            await super().start(*args, **kwargs)

    return GracefulRunner


#: seconds a PENDING run may wait for its process before a restarted serve settles it (a run
#: is pending only while the runner starts its process)
PENDING_GRACE_S = 600.0


def flow_run_processes() -> set[str] | None:
    """The flow run ids of this machine's live processes started for a flow run (the runner
    puts ``PREFECT__FLOW_RUN_ID`` into each run's process environment), read from ``/proc``;
    ``None`` where there is no ``/proc`` to read (not Linux)."""
    proc = Path("/proc")
    if not (proc / "self" / "environ").exists():
        return None
    out: set[str] = set()
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()  # empty for a zombie: not alive
        except OSError:  # gone meanwhile, or another user's
            continue
        for item in env.split(b"\0"):
            if item.startswith(b"PREFECT__FLOW_RUN_ID="):
                out.add(item.split(b"=", 1)[1].decode(errors="replace"))
    return out


async def settle_orphaned_runs(deployments: dict[Any, str], *, alive: set[str],
                               grace_s: float = PENDING_GRACE_S) -> list[str]:
    """Runs of ``deployments`` (id -> ``flow/deployment``) that a serve left in flight with no
    process: a serve killed with SIGKILL, or with the machine, cancels nothing, so its runs
    stay RUNNING (or PENDING, CANCELLING) on the server for good. Every such run whose id is
    not in ``alive`` (:func:`flow_run_processes`) is set CRASHED (CANCELLING ones CANCELLED,
    as asked), PENDING ones only after ``grace_s``. Called by :func:`serve_deployments`
    before serving: no run of these deployments is in flight then but those of a former
    serve, whose processes, if they outlived it, are alive here and report their own end.
    One line per run settled."""
    import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed

    why = ("its process is gone: the enspp serve that ran it stopped without ending it "
           "(killed, or its machine stopped); settled by the next enspp serve")
    lines: list[str] = []
    now = datetime.datetime.now(datetime.timezone.utc)
    flt = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=list(deployments)),
        state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING])))
    async with get_client() as client:
        runs = []
        while batch := await client.read_flow_runs(flow_run_filter=flt, limit=200,
                                                   offset=len(runs)):
            runs += batch
            if len(batch) < 200:
                break
        for run in runs:
            state = run.state
            if str(run.id) in alive or state is None:
                continue
            if state.type == StateType.PENDING and state.timestamp is not None and (
                    now - state.timestamp).total_seconds() < grace_s:
                continue
            new = (Cancelled(message=f"cancelled: {why}") if state.type == StateType.CANCELLING
                   else Crashed(message=f"crashed: {why}"))
            await client.set_flow_run_state(run.id, new, force=True)
            lines.append(f"{deployments.get(run.deployment_id, 'run')} run {run.name!r} ({run.id}) "
                         f"was {state.type.value} with no process left: marked {new.type.value} "
                         "(the serve that ran it was stopped without ending it)")
    return lines


#: the automation ``enspp serve`` keeps on the server (one per server, over every deployment
#: an enspp serve has served there)
UNRESPONSIVE_AUTOMATION = "enspp: crash unresponsive runs"
#: heartbeats a run may miss before the server marks it CRASHED
MISSED_HEARTBEATS = 3
#: the events that end a run's wait for its next heartbeat
_RUN_ENDS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed",
             "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed")


def heartbeat_seconds() -> int | None:
    """Seconds between a flow run's heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; Prefect
    3.8 sends them by default, every 180 s, at least every 30 s); ``None`` where turned off."""
    from prefect.settings import get_current_settings

    value = get_current_settings().flows.heartbeat_frequency
    return None if value is None else max(int(value), 30)


def unresponsive_run_automation(deployment_ids: Sequence[Any], *, heartbeat_s: int) -> Any:
    """The Prefect automation that marks a run of ``deployment_ids`` CRASHED once it sent no
    heartbeat for :data:`MISSED_HEARTBEATS` heartbeats and did not end: its serve or worker
    was killed with it, or its machine stopped, and nothing else would ever end it on the
    server (the Prefect server's own services do not; Prefect's guide "detect zombie flows").
    Heartbeats come from the run's process itself (a thread of Prefect's flow engine)."""
    import datetime

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    within = datetime.timedelta(seconds=MISSED_HEARTBEATS * heartbeat_s)
    ids = sorted({f"prefect.deployment.{d}" for d in deployment_ids})
    return AutomationCore(
        name=UNRESPONSIVE_AUTOMATION,
        description=(f"enspp serve: a run of its deployments with no heartbeat for "
                     f"{_minutes(within)} that did not end is marked CRASHED"),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *_RUN_ENDS},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "deployment", "prefect.resource.id": ids},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=within),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=(f"crashed: no heartbeat from its process for {_minutes(within)} (its enspp "
                     "serve or worker was killed with it, or its machine stopped)"))])


def _minutes(t: Any) -> str:
    s = int(t.total_seconds())
    return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")


def keep_unresponsive_run_automation(deployment_ids: Sequence[Any]) -> tuple[bool, str]:
    """Create the :data:`UNRESPONSIVE_AUTOMATION` automation on the server, or update the one
    there to cover ``deployment_ids`` too (those it covered stay: several serves, and a work
    pool's deployments, may share a server); nothing is written when it covers them already.
    Whether it wrote, and one line saying what the automation does."""
    import datetime

    from prefect.client.orchestration import get_client

    heartbeat_s = heartbeat_seconds()
    if heartbeat_s is None:
        return False, ("flow run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY): a run "
                       "whose process dies with its serve or worker stays RUNNING (the next "
                       "enspp serve settles it)")
    with get_client(sync_client=True) as client:
        kept = client.read_automations_by_name(UNRESPONSIVE_AUTOMATION)
        have: set[str] = set()
        for a in kept:  # the deployments it covers already stay covered
            related = getattr(a.trigger, "match_related", None) or []
            for spec in related if isinstance(related, list) else [related]:
                if "prefect.resource.id" in spec:
                    have |= {h.removeprefix("prefect.deployment.")
                             for h in spec["prefect.resource.id"]}
        ids = have | set(map(str, deployment_ids))
        automation = unresponsive_run_automation(sorted(ids), heartbeat_s=heartbeat_s)
        wrote = not (len(kept) == 1 and ids == have
                     and getattr(kept[0].trigger, "within", None) == automation.trigger.within)
        if wrote and kept:
            client.update_automation(kept[0].id, automation)
            for extra in kept[1:]:  # two serves started at once each created one
                client.delete_automation(extra.id)
        elif wrote:
            client.create_automation(automation)
    within = _minutes(datetime.timedelta(seconds=MISSED_HEARTBEATS * heartbeat_s))
    return wrote, (f"a run of these deployments with no heartbeat for {within} (its process "
                   f"gone) is marked CRASHED by the server (automation "
                   f"'{UNRESPONSIVE_AUTOMATION}')")


def watch_this_run(deployment_id: Any = None) -> None:
    """At the start of a deployment's run (served, or a work pool's worker's): make sure the
    :data:`UNRESPONSIVE_AUTOMATION` covers its deployment (``deployment_id``, by default this
    run's), so the server marks the run CRASHED if its process dies with its serve or worker.
    A line only when that changed the automation; a failure is a line, never the run's."""
    if deployment_id is None:
        from prefect.runtime import deployment

        deployment_id = deployment.id
    if not deployment_id:
        return
    try:
        wrote, line = keep_unresponsive_run_automation([deployment_id])
    except Exception as e:
        print("the automation that crashes unresponsive runs was not checked: "
              f"{' '.join(str(e).split()) or type(e).__name__}")
        return
    if wrote:
        print(line)


def _settle_lines(deployments: dict[Any, str]) -> list[str]:
    """Before serving: :func:`settle_orphaned_runs`, then
    :func:`keep_unresponsive_run_automation`, as lines to report; a failure of either is one
    line (serving matters more than a former serve's leftovers)."""
    import asyncio

    alive = flow_run_processes()
    if alive is None:
        lines = ["enspp serve: this machine's processes cannot be read (no /proc): runs a "
                 "killed serve left RUNNING are not settled; set them crashed in the Prefect UI"]
    else:
        try:
            lines = asyncio.run(settle_orphaned_runs(deployments, alive=alive))
        except Exception as e:
            lines = [f"enspp serve: runs a former serve left in flight were not checked: "
                     f"{' '.join(str(e).split()) or type(e).__name__}"]
    try:
        lines.append(f"enspp serve: {keep_unresponsive_run_automation(list(deployments))[1]}")
    except Exception as e:
        lines.append("enspp serve: the automation that crashes unresponsive runs was not set: "
                     f"{' '.join(str(e).split()) or type(e).__name__}")
    return lines


def serve_deployments(deployments: list[Any], *, limit: int | None = None,
                      on_started: Callable[[], None] | None = None,
                      report: Callable[[str], None] = print) -> None:
    """Serve ``deployments`` until SIGTERM or SIGINT, then stop gracefully; ``on_started()``
    is called once they are served (a signal before that stops the process at once).

    Prefect 3.8.8's ``serve()`` does not: its SIGTERM handler calls ``Runner.stop()`` from
    inside the event loop, which only creates a coroutine that is never awaited, then exits,
    and its SIGINT path leaves the loop without cancelling anything; either way a run in
    flight stays RUNNING on the server.  Here the first signal runs ``Runner.astop()`` on the
    loop: each run in flight is cancelled (its process stopped, its state set to CANCELLED),
    then the runner pauses the deployments' schedules as it leaves (Prefect's
    ``pause_on_shutdown``: no runs pile up while nothing serves them); the next
    ``enspp serve`` registers them unpaused again.  The signal handlers in place before are
    restored on return.

    Before serving, runs of these deployments that a former serve left in flight with no
    process (it was killed: SIGKILL, out of memory, the machine) are settled
    (:func:`settle_orphaned_runs`, one ``report`` line each); where this machine's processes
    cannot be read (no ``/proc``), a ``report`` line says that such runs are left as they are."""
    import asyncio
    import signal
    import threading

    runner = _graceful_runner_class()(pause_on_shutdown=True, limit=limit)
    runner.on_started = on_started
    ids = {runner.add_deployment(d): f"{d.flow_name}/{d.name}" for d in deployments}
    if ids:
        for line in _settle_lines(ids):
            report(line)
    main = threading.current_thread() is threading.main_thread()
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        asyncio.run(runner.start())
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
