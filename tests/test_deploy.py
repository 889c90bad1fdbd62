"""deploy/: prefect.yaml names real flows with parameters they accept and the configured
schedules; compose/Dockerfile are consistent; a served deployment runs on a loopback server."""

from __future__ import annotations

import importlib
import inspect
import os
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


def test_prefect_yaml_entrypoints_name_real_flows_with_accepted_parameters():
    from prefect import Flow

    doc = prefect_yaml()
    assert doc["prefect-version"] == "3.8.8"
    names = [d["name"] for d in doc["deployments"]]
    assert names == list(DEPLOYMENTS)
    for d in doc["deployments"]:
        module_path, _, attr = d["entrypoint"].partition(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert isinstance(flow, Flow), d["entrypoint"]
        assert attr == DEPLOYMENTS[d["name"]][0]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d["parameters"]) <= accepted, (d["name"], d["parameters"], accepted)
        assert d["work_pool"]["name"] == "enspp-pool"


def test_prefect_yaml_schedules_match_the_config_defaults():
    import datetime as dt

    from cronsim import CronSim

    defaults = SchedulesConfig()
    for d in prefect_yaml()["deployments"]:
        key = DEPLOYMENTS[d["name"]][1]
        (sched,) = d["schedules"]
        assert sched["cron"] == getattr(defaults, key) and sched["timezone"] == defaults.timezone
        CronSim(sched["cron"], dt.datetime(2024, 1, 1))  # valid cron
    # predict runs after the 00 and 12 UTC data arrive: twice a day, hours 7 and 19
    nxt = CronSim(defaults.predict, dt.datetime(2024, 1, 1))
    assert [next(nxt).hour for _ in range(3)] == [7, 19, 7]


def test_build_deployments_from_config(tmp_path):
    from enspp.flows.config import load_config
    from enspp.flows.deployments import build_deployments

    cfg_path = tmp_path / "enspp.yaml"
    cfg_path.write_text("deploy: {schedules: {train: null, ingest: '*/10 * * * *'}}\n")
    deps = build_deployments(load_config(cfg_path), cfg_path)
    by_name = {d.name: d for d in deps}
    assert set(by_name) == set(DEPLOYMENTS)
    assert by_name["train-weekly"].schedules == []
    assert by_name["ingest-hourly"].schedules[0].schedule.cron == "*/10 * * * *"
    assert all(d.parameters == {"config_path": str(cfg_path.resolve())} for d in deps)


def test_compose_and_dockerfile_agree():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    server, worker = compose["services"]["prefect-server"], compose["services"]["worker"]
    assert "3.8.8" in server["image"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "enspp-pool" in worker["command"]
    assert worker["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    docker = (DEPLOY / "Dockerfile").read_text()
    assert "torch==2.13.0" in docker and "DO_NOT_TRACK=1" in docker and "COPY flows" in docker


def test_serve_refuses_without_config_or_server(tmp_path, monkeypatch, capsys):
    from enspp.flows.cli import main

    monkeypatch.delenv("ENSPP_CONFIG", raising=False)
    assert main(["serve"]) == 1
    assert "no config: pass --config or set ENSPP_CONFIG" in capsys.readouterr().err
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
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
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


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
