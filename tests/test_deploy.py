"""deploy/: prefect.yaml is derived from the config's schedules and names the served flows;
a deployment run accepts only the parameters an operator needs (no config path, incoming
paths, plain report ids); compose/Dockerfile are consistent; a served deployment runs on a
loopback server and refuses what a client of the API could send to steer it."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from enspp.flows.config import SchedulesConfig
from enspp.flows.deployments import DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


def test_prefect_yaml_entrypoints_name_the_served_flows_without_parameters():
    from prefect import Flow

    doc = prefect_yaml()
    assert doc["prefect-version"] == "3.8.8"
    names = [d["name"] for d in doc["deployments"]]
    assert names == list(DEPLOYMENTS)
    for d in doc["deployments"]:
        module_path, _, attr = d["entrypoint"].partition(":")
        module = importlib.import_module("enspp." + module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert isinstance(flow, Flow), d["entrypoint"]
        assert attr == DEPLOYMENTS[d["name"]][0]
        assert "parameters" not in d  # nothing preset, in particular no config path
        assert "config_path" not in inspect.signature(flow.fn).parameters
        assert d["work_pool"]["name"] == "enspp-pool"


def test_shipped_prefect_yaml_is_derived_from_the_config_schedules(tmp_path, capsys):
    """One place for schedules: ``deploy.schedules``; ``deploy/prefect.yaml`` is what
    ``enspp serve --write-prefect-yaml`` writes for the default config."""
    import datetime as dt

    from cronsim import CronSim

    from enspp.flows.cli import main
    from enspp.flows.config import EnsppConfig
    from enspp.flows.deployments import prefect_yaml as render

    assert (DEPLOY / "prefect.yaml").read_text() == render(EnsppConfig())
    defaults = SchedulesConfig()
    for d in prefect_yaml()["deployments"]:
        (sched,) = d["schedules"]
        assert sched == {"cron": getattr(defaults, DEPLOYMENTS[d["name"]][1]), "timezone": "UTC"}
    # predict runs after the 00 and 12 UTC data arrive: twice a day, hours 7 and 19
    nxt = CronSim(defaults.predict, dt.datetime(2024, 1, 1))
    assert [next(nxt).hour for _ in range(3)] == [7, 19, 7]
    # an operator's schedules reach the work-pool file through the same config
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("deploy: {schedules: {timezone: Europe/Berlin, train: null, "
                   "ingest: '*/10 * * * *'}}\n")
    out = tmp_path / "prefect.yaml"
    assert main(["serve", "--config", str(cfg), "--write-prefect-yaml", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    by_name = {d["name"]: d for d in yaml.safe_load(out.read_text())["deployments"]}
    assert by_name["train-weekly"]["schedules"] == []
    assert by_name["ingest-hourly"]["schedules"] == [{"cron": "*/10 * * * *",
                                                      "timezone": "Europe/Berlin"}]
    assert by_name["predict-00-12"]["schedules"][0]["cron"] == defaults.predict


def test_build_deployments_from_config(tmp_path):
    from enspp.flows.config import load_config
    from enspp.flows.deployments import build_deployments

    cfg_path = tmp_path / "enspp.yaml"
    cfg_path.write_text("deploy: {schedules: {train: null, ingest: '*/10 * * * *'}}\n")
    deps = build_deployments(load_config(cfg_path))
    by_name = {d.name: d for d in deps}
    assert set(by_name) == set(DEPLOYMENTS)
    assert by_name["train-weekly"].schedules == []
    assert by_name["ingest-hourly"].schedules[0].schedule.cron == "*/10 * * * *"
    assert all(d.parameters == {} for d in deps)
    assert all(d.enforce_parameter_schema for d in deps)
    for d in deps:
        assert "config_path" not in d._parameter_openapi_schema.properties, d.name


# ------------------------------------------------------------------ what a run may ask for
@pytest.fixture
def served(tmp_path, monkeypatch):
    """A served config: work directory ``tmp_path/work``, incoming ``in/fc`` and ``in/an``."""
    from enspp.flows.config import load_config

    work = tmp_path / "work"
    (work / "in" / "fc").mkdir(parents=True)
    (work / "in" / "an").mkdir(parents=True)
    cfg = work / "enspp.yaml"
    cfg.write_text("data: {incoming: {forecast: ['in/fc/*.grib'], analysis: [in/an]}}\n")
    monkeypatch.setenv("ENSPP_CONFIG", str(cfg))
    return load_config(cfg)


def test_a_foreign_config_path_is_refused(served, tmp_path):
    """The served flows have no ``config_path``: a run that passes one is refused when Prefect
    binds its parameters, before the flow body runs."""
    from prefect.exceptions import SignatureMismatchError

    from enspp.flows import deployments as dep

    other = tmp_path / "other.yaml"
    other.write_text(f"data: {{workdir: {tmp_path / 'elsewhere'}}}\n")
    for _name, (flow_name, _, _) in DEPLOYMENTS.items():
        flow = getattr(dep, flow_name)
        with pytest.raises(SignatureMismatchError, match="config_path"):
            flow.validate_parameters({"config_path": str(other)})
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("report_id", ["../../etc", "..", ".hidden", "a/b", "/abs", "", "x" * 200,
                                       "a\\b"])
def test_a_traversing_report_id_is_refused(served, report_id):
    from enspp.flows.deployments import DeploymentParameterError, evaluate_deployment

    with pytest.raises(DeploymentParameterError, match="report_id .* is not a plain name"):
        evaluate_deployment.fn(report_id=report_id)


@pytest.mark.parametrize("paths, kind", [
    (["../outside.grib"], "forecast"),
    (["in/fc/../../../x.grib"], "forecast"),
    (["/etc/passwd"], "forecast"),
    (["in/an/a.grib"], "forecast"),      # an analysis directory is not a forecast one
    (["in/fc/*.grib", "in/x.grib"], "forecast"),
    (["in/an"], None),
])
def test_ingest_paths_outside_the_incoming_directories_are_refused(served, paths, kind):
    from enspp.flows.deployments import DeploymentParameterError, ingest_deployment

    with pytest.raises(DeploymentParameterError, match="outside the incoming|kind must be"):
        ingest_deployment.fn(paths=paths, kind=kind)


def test_incoming_roots_and_accepted_paths(served):
    from enspp.flows.deployments import check_incoming_paths, incoming_roots

    work = served.workdir.root
    assert incoming_roots(served, "forecast") == [work / "in" / "fc"]
    assert incoming_roots(served, "analysis") == [work / "in" / "an"]
    check_incoming_paths(served, ["in/fc/a.grib", "in/fc/2024/*.grib", str(work / "in/fc")],
                         "forecast")
    check_incoming_paths(served, ["in/an/./x.nc"], "analysis")


@pytest.mark.parametrize("params, match", [
    ({"version": "../../runs/x/checkpoints/best"}, "version .* is not a plain name"),
    ({"version": "mixed-000000000000"}, "is not registered"),
    ({"init_times": ["yesterday"]}, "is not an ISO time"),
    ({"init_times_per_task": 0}, "init_times_per_task must be"),
])
def test_predict_parameters_are_checked(served, params, match):
    from enspp.flows.deployments import DeploymentParameterError, predict_deployment

    with pytest.raises(DeploymentParameterError, match=match):
        predict_deployment.fn(**params)


def test_train_min_improvement_is_checked(served):
    from enspp.flows.deployments import DeploymentParameterError, train_deployment

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(DeploymentParameterError, match="min_improvement"):
            train_deployment.fn(min_improvement=bad)


def test_served_flows_need_the_served_config(monkeypatch):
    from enspp.flows.deployments import DeploymentParameterError, evaluate_deployment

    monkeypatch.delenv("ENSPP_CONFIG", raising=False)
    with pytest.raises(DeploymentParameterError, match="no config"):
        evaluate_deployment.fn()


def test_compose_and_dockerfile_agree():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    server, worker = compose["services"]["prefect-server"], compose["services"]["worker"]
    assert "3.8.8" in server["image"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "enspp-pool" in worker["command"]
    assert worker["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    # the API is the control surface: loopback only, basic auth required on both sides
    assert server["ports"] == ["127.0.0.1:4200:4200"]
    auth = "${PREFECT_AUTH:?set PREFECT_AUTH=user:password}"
    assert server["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == auth
    assert worker["environment"]["PREFECT_API_AUTH_STRING"] == auth
    docker = (DEPLOY / "Dockerfile").read_text()
    assert "torch==2.13.0" in docker and "DO_NOT_TRACK=1" in docker and "COPY flows" in docker


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """``.dockerignore`` as (exclude, regex) rules, Docker's syntax: ``*``/``?`` within one
    path element, ``**`` across any, a leading ``!`` re-includes."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not include, re.compile(regex + r"\Z")))
    return rules


def _docker_ignores(path: str, rules) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last rule matching
    the path or one of its parent directories decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for exclude, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = exclude
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_big():
    """The compose build context is the project root (``context: ..``): ``.dockerignore``
    keeps every COPY source of the Dockerfile (and the files inside) and leaves out the
    virtual environment, work directories, reports, build outputs, git and caches."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert (DEPLOY / compose["services"]["worker"]["build"]["context"]).resolve() == ROOT
    rules = _dockerignore_rules()
    sources = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            assert not any(w.startswith("--from") for w in words), line
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert {"pyproject.toml", "README.md", "flows", "deploy"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _docker_ignores(src, rules), f"{src} is COPYed but ignored"
    # every file git tracks under a copied folder travels (the package data included)
    tracked = subprocess.run(["git", "ls-files", *sources], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert any(t.endswith(".yaml") for t in tracked) and len(tracked) > 20
    sent = [t for t in tracked if not _docker_ignores(t, rules)]
    assert sent == tracked, sorted(set(tracked) - set(sent))
    for big in (".venv", ".venv/lib/python3.11/site-packages/torch/__init__.py", "enspp-work",
                "enspp-work/stores/forecast.zarr/zarr.json", "build", "reports", "test-artifacts",
                ".git", ".git/HEAD", "tests", "enspp.egg-info", ".pytest_cache", ".ruff_cache",
                "real", "flows/__pycache__/cli.cpython-311.pyc", "data/x.grib.idx"):
        assert _docker_ignores(big, rules), f"{big} would be sent to the Docker daemon"


def test_dockerignore_matcher_follows_dockers_rules():
    rules = [(True, re.compile(r"[^/]*\Z")), (False, re.compile(r"data\Z")),
             (True, re.compile(r"(?:.*/)?__pycache__\Z"))]
    assert _docker_ignores(".venv/bin/python", rules)
    assert not _docker_ignores("data/errors.py", rules)
    assert _docker_ignores("data/sub/__pycache__/a.pyc", rules)
    assert _docker_ignores("datafile", rules)


def test_serve_refuses_without_config_or_server(tmp_path, monkeypatch, capsys):
    from enspp.flows.cli import main

    monkeypatch.delenv("ENSPP_CONFIG", raising=False)
    assert main(["serve"]) == 1
    assert "no config: pass --config or set ENSPP_CONFIG" in capsys.readouterr().err
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # the URL in effect (environment or profile) is unset, whatever server a harness started
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve", "--config", str(cfg)]) == 1
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_deployment_runs_once_on_a_loopback_server(tmp_path):
    """``prefect server start`` on 127.0.0.1, ``enspp serve``, then one run of the ingest
    deployment (triggered now) lands the incoming file in the forecast store."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_store import forecast

    from enspp.data.grib_writer import write_grib

    (tmp_path / "in").mkdir()
    write_grib(tmp_path / "in" / "fc.grib", forecast(["2020-01-01T00"]), kind="forecast")
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data: {incoming: {forecast: [in]}}\n")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect"),
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    exe = Path(sys.executable).parent
    server = subprocess.Popen([str(exe / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    serve = None
    try:
        _wait_http(f"{api}/health", timeout=180)
        serve = subprocess.Popen([str(exe / "enspp"), "serve", "--config", str(cfg)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            r = subprocess.run([str(exe / "prefect"), "deployment", "run", "ingest/ingest-hourly"],
                               env=env, capture_output=True, text=True)
            if r.returncode == 0:
                break
            assert time.time() < deadline, r.stdout + r.stderr
            time.sleep(3)
        store = tmp_path / "stores" / "forecast.zarr"
        deadline = time.time() + 240
        from enspp.data.store import is_store, open_store

        while not (is_store(store) and open_store(store).sizes["init_time"] == 1):
            assert time.time() < deadline, "the served ingest deployment did not run"
            time.sleep(2)
        _attack_the_api(api, tmp_path)
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def _api(api: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    for attempt in range(10):  # the server answers 503 while its database is busy
        req = urllib.request.Request(api + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 9:
                return e.code, {"detail": e.read().decode(errors="replace")}
        time.sleep(2)
    raise AssertionError("unreachable")


def _attack_the_api(api: str, tmp_path: Path) -> None:
    """What any local client of the API can send: a run of the ingest deployment with the
    ``config_path`` of another YAML, with and without the parameter schema, and an evaluate
    run with a traversing ``report_id``.  None of them may run or write anything."""
    elsewhere = tmp_path / "elsewhere"
    other = tmp_path / "other.yaml"
    other.write_text(f"data: {{workdir: {elsewhere}, incoming: {{forecast: [{tmp_path / 'in'}]}}}}\n")
    ids = {}
    for name in ("ingest/ingest-hourly", "evaluate/evaluate-nightly"):
        status, dep = _api(api, "GET", f"/deployments/name/{name}")
        assert status == 200, dep
        ids[name] = dep["id"]
    runs = []
    for name, params, enforce in (("ingest/ingest-hourly", {"config_path": str(other)}, True),
                                  ("ingest/ingest-hourly", {"config_path": str(other)}, False),
                                  ("evaluate/evaluate-nightly", {"report_id": "../../pwned"}, True)):
        # the API accepts the run (its parameter schema allows extra keys) ...
        status, run = _api(api, "POST", f"/deployments/{ids[name]}/create_flow_run",
                           {"parameters": params, "enforce_parameter_schema": enforce})
        assert status == 201, (status, run)
        runs.append(run["id"])
    # ... and the served process refuses to run it
    deadline = time.time() + 240
    for run_id in runs:
        while True:
            _, run = _api(api, "GET", f"/flow_runs/{run_id}")
            state = (run.get("state") or {}).get("type")
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.time() < deadline, f"run {run_id} stayed {state}"
            time.sleep(2)
        assert state != "COMPLETED", run
    assert not elsewhere.exists(), "a foreign config_path steered the served ingest"
    assert not (tmp_path.parent / "pwned").exists() and not (tmp_path / "pwned").exists()


def _wait_http(url: str, *, timeout: float) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.time() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(1)


@pytest.fixture(scope="session")
def harness():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_flows import shared_harness

    yield from shared_harness()


def test_ingest_flow_on_a_dask_cluster_by_address(harness, tmp_path):
    """Scale-out by configuration only: ``deploy: {task_runner: dask, dask_address: ...}``
    runs the ingest tasks on a dask.distributed LocalCluster of 2 worker processes."""
    from distributed import LocalCluster
    from test_store import forecast

    from enspp.data.grib_writer import write_grib
    from enspp.data.store import open_store
    from enspp.flows.ops import ingest_flow
    from enspp.flows.runtime import make_task_runner

    (tmp_path / "in").mkdir()
    for i, init in enumerate(["2020-01-01T00", "2020-01-01T12", "2020-01-02T00"]):
        write_grib(tmp_path / "in" / f"fc{i}.grib", forecast([init], seed=i), kind="forecast")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        cfg = tmp_path / "enspp.yaml"
        cfg.write_text(f"data: {{incoming: {{forecast: [in]}}}}\n"
                       f"deploy: {{task_runner: dask, dask_address: '{cluster.scheduler_address}'}}\n")
        from enspp.flows.config import load_config

        runner = make_task_runner(load_config(cfg).deploy)
        assert type(runner).__name__ == "DaskTaskRunner"
        assert ingest_flow(str(cfg)) == {"forecast": {"new": 3, "already_ingested": 0}}
        prefixes = list(cluster.scheduler.task_prefixes)
        assert any("ingest" in p for p in prefixes), prefixes  # ran on the cluster
        assert open_store(tmp_path / "stores" / "forecast.zarr").sizes["init_time"] == 3
