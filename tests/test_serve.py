"""``enspp serve``: the Prefect API is found (environment or profile) and checked before
anything is served, with one line when it cannot be; ``--write-prefect-yaml`` creates missing
directories and writes atomically; SIGTERM and SIGINT stop the runner the way Prefect means
to (runs in flight cancelled, schedules paused, resumed by the next start); the next start
settles the runs a killed serve left in flight without a process."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

EXE = Path(sys.executable).parent


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    """``/api/health`` answers ``true``; with ``auth`` set, only to that Authorization."""

    auth: str | None = None
    seen: list[dict[str, str]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(dict(self.headers))
        if self.auth and self.headers.get("Authorization") != self.auth:
            self._answer(401, {"detail": "Unauthorized"})
        elif self.path == "/api/health":
            self._answer(200, True)
        else:
            self._answer(404, {"detail": "Not Found"})

    def _answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    """A stand-in Prefect API on a loopback port: yields its handler class and base URL."""
    handler = type("Handler", (_Health,), {"auth": None, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api_url():
    """Set the Prefect API URL in effect (``None``: unset) for the duration of a test, over
    whatever settings context is active (a test harness's server included)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = []

    def set_url(url: str | None) -> None:
        cm = (temporary_settings(restore_defaults={PREFECT_API_URL}) if url is None
              else temporary_settings(updates={PREFECT_API_URL: url}))
        cm.__enter__()
        stack.append(cm)

    yield set_url
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def cfg(tmp_path) -> Path:
    path = tmp_path / "enspp.yaml"
    path.write_text("")
    return path


# ------------------------------------------------------------------ the API: found and checked
def test_prefect_api_problem_names_the_url_and_what_to_do(health_server):
    from enspp.flows.runtime import prefect_api_problem

    handler, base = health_server
    assert prefect_api_problem(f"{base}/api") is None
    assert prefect_api_problem(f"{base}/api/") is None
    # the server's root is the UI, not the API
    problem = prefect_api_problem(base)
    assert problem.startswith(f"{base}/health answered HTTP 404") and "/api" in problem
    closed = f"http://127.0.0.1:{_closed_port()}/api"
    problem = prefect_api_problem(closed, timeout=2)
    assert closed in problem and "prefect server start --host 127.0.0.1" in problem
    assert "\n" not in problem
    assert "missing an 'http://'" in prefect_api_problem("127.0.0.1:4200/api")


def test_prefect_api_problem_sends_prefects_credentials(health_server):
    from enspp.flows.runtime import prefect_api_headers, prefect_api_problem

    handler, base = health_server
    handler.auth = "Basic dXNlcjpwdw=="  # user:pw
    problem = prefect_api_problem(f"{base}/api")
    assert "refused the credentials (HTTP 401)" in problem and "PREFECT_API_AUTH_STRING" in problem
    headers = prefect_api_headers(auth_string="user:pw", api_key="ignored")
    assert headers == {"Authorization": "Basic dXNlcjpwdw=="}
    assert prefect_api_problem(f"{base}/api", headers=headers) is None
    assert handler.seen[-1]["Authorization"] == "Basic dXNlcjpwdw=="
    assert prefect_api_headers(auth_string=None, api_key="k") == {"Authorization": "Bearer k"}
    assert prefect_api_headers(auth_string=None, api_key=None) == {}


def test_check_prefect_api_reads_the_settings_in_effect(health_server, api_url):
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    from enspp.data.errors import EnsppError
    from enspp.flows.runtime import check_prefect_api

    handler, base = health_server
    api_url(f"{base}/api")
    assert check_prefect_api(timeout=5) == f"{base}/api"
    handler.auth = "Basic dXNlcjpwdw=="
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "user:pw"}):
        assert check_prefect_api(timeout=5) == f"{base}/api"
    api_url(None)
    with pytest.raises(EnsppError, match="PREFECT_API_URL is not set: start a Prefect server"):
        check_prefect_api(timeout=5)


def test_serve_refuses_an_unreachable_api_in_one_line(cfg, api_url, capsys):
    """No traceback: one line naming the URL and how to start a server, exit status 1."""
    from enspp.flows.cli import main

    url = f"http://127.0.0.1:{_closed_port()}/api"
    api_url(url)
    assert main(["serve", "--config", str(cfg)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"enspp serve: error: no Prefect API answers at {url}")
    assert "prefect server start --host 127.0.0.1" in lines[0]
    assert "serving" not in captured.out


def test_serve_reads_the_api_url_from_the_environment_and_the_profile(cfg, tmp_path):
    """The command itself, as an operator runs it: ``$PREFECT_API_URL`` or the active
    profile's ``PREFECT_API_URL`` (``prefect config set``) is the URL checked (neither: see
    test_check_prefect_api_reads_the_settings_in_effect)."""
    env_url = f"http://127.0.0.1:{_closed_port()}/api"
    profile_url = f"http://127.0.0.1:{_closed_port()}/api"
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "{profile_url}"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_HOME=str(tmp_path / "prefect"))
    cases = [({"PREFECT_API_URL": env_url}, f"no Prefect API answers at {env_url}"),
             ({"PREFECT_PROFILES_PATH": str(profiles)}, f"no Prefect API answers at {profile_url}")]
    for extra, expected in cases:
        r = subprocess.run([str(EXE / "enspp"), "serve", "--config", str(cfg)],
                           env={**base, **extra}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (extra, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (extra, r.stderr)


# ------------------------------------------------------------------ --write-prefect-yaml
def test_write_prefect_yaml_creates_missing_directories(cfg, tmp_path, capsys):
    import yaml

    from enspp.flows.cli import main

    out = tmp_path / "some" / "missing" / "dir" / "prefect.yaml"
    assert main(["serve", "--config", str(cfg), "--write-prefect-yaml", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert len(yaml.safe_load(out.read_text())["deployments"]) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["prefect.yaml"]  # no temporary file


def test_write_prefect_yaml_failure_names_the_real_path(cfg, tmp_path, capsys):
    from enspp.flows.cli import main

    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "prefect.yaml"
    assert main(["serve", "--config", str(cfg), "--write-prefect-yaml", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"enspp serve: error: {out.parent}: Not a directory"]


def test_write_prefect_yaml_never_replaces_the_config_or_a_foreign_file(cfg, tmp_path, capsys):
    """The --config file itself and an existing file enspp did not write are refused in one
    line and left byte for byte; enspp's own earlier prefect.yaml is written again."""
    from enspp.flows.cli import main

    cfg.write_text("# PRECIOUS hand-written config\n")
    mine = tmp_path / "prefect.yaml"
    mine.write_text("# PRECIOUS hand-tuned prefect.yaml\nname: mine\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(cfg)
    for out, expected in [(cfg, "is the --config file itself"),
                          (link, "is the --config file itself"),
                          (mine, "exists and is not a prefect.yaml written by enspp"),
                          (tmp_path, "exists and is not a prefect.yaml written by enspp")]:
        assert main(["serve", "--config", str(cfg), "--write-prefect-yaml", str(out)]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(out) in lines[0], lines
        assert "nothing was changed" in lines[0]
    assert cfg.read_text() == "# PRECIOUS hand-written config\n"
    assert mine.read_text() == "# PRECIOUS hand-tuned prefect.yaml\nname: mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enspp.yaml", "link.yaml",
                                                          "prefect.yaml"]

    # enspp's own earlier prefect.yaml (an older schedule) is written again
    ours = tmp_path / "deploy" / "prefect.yaml"
    assert main(["serve", "--config", str(cfg), "--write-prefect-yaml", str(ours)]) == 0
    fresh = ours.read_text()
    older = fresh.replace("cron: 5 * * * *", "cron: 7 * * * *")
    assert older != fresh
    ours.write_text(older)
    assert main(["serve", "--config", str(cfg), "--write-prefect-yaml", str(ours)]) == 0
    assert ours.read_text() == fresh


def test_write_atomically_replaces_and_names_the_target_on_failure(tmp_path, monkeypatch):
    from enspp.flows.commands.serve import write_atomically

    target = tmp_path / "prefect.yaml"
    target.write_text("old")
    write_atomically(target, "new")
    assert target.read_text() == "new"

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as info:
        write_atomically(target, "newer")
    assert info.value.filename == str(target)
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefect.yaml"]


# ------------------------------------------------------------------ SIGTERM / SIGINT
@pytest.fixture
def runner():
    from enspp.flows.deployments import _graceful_runner_class

    return _graceful_runner_class()(pause_on_shutdown=True)


def test_a_signal_before_the_runner_started_interrupts(runner):
    assert not runner.started
    with pytest.raises(KeyboardInterrupt):
        runner.handle_sigterm(signal.SIGTERM, None)


def test_the_first_signal_stops_the_runner_on_its_loop_the_second_interrupts(runner, monkeypatch):
    """Prefect's own handler calls the sync ``stop()`` inside the loop, which only creates a
    coroutine; here ``astop()`` (cancel the runs in flight, end the loops) runs on the loop."""
    stopped = []

    async def astop():
        stopped.append(asyncio.get_running_loop())

    monkeypatch.setattr(runner, "astop", astop)
    runner.started = True

    async def main():
        runner.handle_sigterm(signal.SIGTERM, None)
        assert stopped == []  # scheduled, not run inside the signal handler
        for _ in range(5):
            await asyncio.sleep(0)
        assert stopped == [asyncio.get_running_loop()]
        with pytest.raises(KeyboardInterrupt):
            runner.handle_sigterm(signal.SIGINT, None)

    asyncio.run(main())
    assert len(stopped) == 1


def test_serving_routes_sigterm_and_sigint_to_the_runner_and_restores_them(monkeypatch):
    """``serve_deployments`` takes SIGTERM and SIGINT for the runner while it serves (SIGINT
    only where the process does not ignore it) and gives the previous handlers back."""
    from prefect.runner import Runner

    from enspp.flows.deployments import serve_deployments

    seen = {}

    async def fake_start(self, *args, **kwargs):  # what Runner.start does with signals
        signal.signal(signal.SIGTERM, self.handle_sigterm)
        seen.update(term=signal.getsignal(signal.SIGTERM), int=signal.getsignal(signal.SIGINT),
                    runner=self)

    monkeypatch.setattr(Runner, "start", fake_start)
    # Python's own SIGINT handler (a test run started in the background, `pytest &`, begins
    # with SIGINT ignored, which the serve keeps: the case checked last)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        serve_deployments([], limit=2)
        assert seen["term"] == seen["runner"].handle_sigterm
        assert seen["int"] == seen["runner"].handle_sigterm
        assert seen["runner"].limit == 2
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        # a process started with SIGINT ignored (`cmd &` in a script) keeps ignoring it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve_deployments([])
        assert seen["int"] is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


# ------------------------------------------------------------------ runs a killed serve left
def test_flow_run_processes_are_found_by_the_run_id_in_their_environment():
    """The runner starts each run's process with PREFECT__FLOW_RUN_ID in its environment:
    a live process is found by it, one that ended is not."""
    import uuid

    from enspp.flows.deployments import flow_run_processes

    if flow_run_processes() is None:
        pytest.skip("no /proc on this machine")
    run_id = str(uuid.uuid4())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "PREFECT__FLOW_RUN_ID": run_id})
    try:
        _wait(lambda: run_id in flow_run_processes(), what="the child", timeout=30)
    finally:
        child.kill()
        child.wait()
    assert run_id not in flow_run_processes()


def test_runs_left_in_flight_without_a_process_are_settled(monkeypatch):
    """A RUNNING run without a process becomes CRASHED, a CANCELLING one CANCELLED; a run
    whose process is alive here, and a PENDING one younger than the grace, are left; the
    runs are read only for the served deployments and for states in flight; one line each."""
    import datetime
    import uuid
    from types import SimpleNamespace

    import prefect.client.orchestration as orchestration
    from prefect.client.schemas.objects import StateType

    from enspp.flows.deployments import settle_orphaned_runs

    now = datetime.datetime.now(datetime.timezone.utc)
    dep = uuid.uuid4()

    def run(name, kind, age_s=3600.0):
        state = SimpleNamespace(type=kind, timestamp=now - datetime.timedelta(seconds=age_s))
        return SimpleNamespace(id=uuid.uuid4(), name=name, deployment_id=dep, state=state)

    runs = {r.name: r for r in (run("dead", StateType.RUNNING), run("alive", StateType.RUNNING),
                                run("stopping", StateType.CANCELLING),
                                run("starting", StateType.PENDING, age_s=30),
                                run("stuck", StateType.PENDING))}
    calls, filters = [], []

    class Client:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

        async def read_flow_runs(self, *, flow_run_filter, limit, offset):
            filters.append(flow_run_filter)
            return list(runs.values())[offset:offset + limit]

        async def set_flow_run_state(self, run_id, state, force=False):
            calls.append((run_id, state.type, force, state.message))

    monkeypatch.setattr(orchestration, "get_client", lambda: Client())
    lines = asyncio.run(settle_orphaned_runs({dep: "predict/predict"},
                                             alive={str(runs["alive"].id)}))
    assert [(c[0], c[1], c[2]) for c in calls] == [
        (runs["dead"].id, StateType.CRASHED, True), (runs["stopping"].id, StateType.CANCELLED, True),
        (runs["stuck"].id, StateType.CRASHED, True)]
    assert all("its process is gone" in c[3] for c in calls)
    assert filters[0].deployment_id.any_ == [dep]
    assert set(filters[0].state.type.any_) == {StateType.RUNNING, StateType.PENDING,
                                               StateType.CANCELLING}
    assert lines[0] == (f"predict/predict run 'dead' ({runs['dead'].id}) was RUNNING with no "
                        "process left: marked CRASHED (the serve that ran it was stopped "
                        "without ending it)")
    assert len(lines) == 3


_SLEEPER = '''
import sys, time
from prefect import flow
from enspp.flows.deployments import serve_deployments, watch_this_run

@flow(name="enspp-test-sleeper")
def sleeper(seconds: int = 600):
    watch_this_run()  # as enspp's deployment flows do
    print("sleeping", flush=True)
    time.sleep(seconds)

if __name__ == "__main__":
    serve_deployments([sleeper.to_deployment(name="s", cron="0 3 * * 0")],
                      on_started=lambda: print("serving", flush=True))
    print("serve returned", flush=True)
'''


class _Loopback:
    """A real Prefect server on a loopback port and the sleeper script served against it."""

    def __init__(self, tmp_path: Path):
        port = _closed_port()
        self.tmp_path, self.api = tmp_path, f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, "PREFECT_API_URL": self.api,
                    "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.script = tmp_path / "sleeper.py"
        self.script.write_text(_SLEEPER)
        self.serving: list[subprocess.Popen] = []
        self.server = subprocess.Popen([str(EXE / "prefect"), "server", "start", "--host",
                                        "127.0.0.1", "--port", str(port)], env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait(lambda: _get(self.api, "/health") is True, what="the server", timeout=180)

    def serve(self) -> tuple[subprocess.Popen, Path]:
        """The sleeper served, once it serves (SIGTERM before that is Python's default), and
        its output's file."""
        log = self.tmp_path / f"serve{len(self.serving)}.log"
        with open(log, "w") as f:
            self.serving.append(subprocess.Popen([sys.executable, str(self.script)], env=self.env,
                                                 stdout=f, stderr=subprocess.STDOUT,
                                                 cwd=self.tmp_path))
        _wait(lambda: "serving" in log.read_text() or self.serving[-1].poll() is not None,
              what="serving", timeout=120)
        assert self.serving[-1].poll() is None, log.read_text()
        return self.serving[-1], log

    def close(self) -> None:
        for p in (*self.serving, self.server):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


@pytest.fixture
def loopback(tmp_path):
    server = _Loopback(tmp_path)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
def test_sigterm_cancels_the_run_in_flight_and_the_next_start_resumes(loopback):
    """A real loopback server: SIGTERM while a served run sleeps leaves it CANCELLED (not
    RUNNING) and the deployment paused; serving again unpauses it."""
    api = loopback.api
    first, _ = loopback.serve()
    dep = _get(api, "/deployments/name/enspp-test-sleeper/s")
    assert dep["paused"] is False
    run = _post(api, f"/deployments/{dep['id']}/create_flow_run", {})
    _wait(lambda: _state(api, run["id"]) == "RUNNING", what="the run", timeout=120)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0
    assert _state(api, run["id"]) == "CANCELLED"
    assert _get(api, f"/deployments/{dep['id']}")["paused"] is True
    second, _ = loopback.serve()
    assert _get(api, f"/deployments/{dep['id']}")["paused"] is False
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=120) == 0


def _run_pid(run_id: str) -> int | None:
    """The pid of this machine's process started for the flow run ``run_id``."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (
                    d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except OSError:
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_killed_serve_leaves_no_run_in_flight_for_good(loopback):
    """A real loopback server: the serve is killed with SIGKILL while two runs sleep; one run's
    process dies with it, the other's outlives it. The next serve marks the first CRASHED
    (one line saying so) and leaves the second RUNNING: its process is alive and ends it."""
    api, pids = loopback.api, []
    try:
        first, _ = loopback.serve()
        dep = _get(api, "/deployments/name/enspp-test-sleeper/s")
        runs = [_post(api, f"/deployments/{dep['id']}/create_flow_run", {}) for _ in range(2)]
        for r in runs:
            _wait(lambda r=r: _state(api, r["id"]) == "RUNNING", what="the run", timeout=120)
            pids.append(_wait(lambda r=r: _run_pid(r["id"]), what="the run's process", timeout=60))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        os.kill(pids[0], signal.SIGKILL)  # the first run's process dies with the serve
        _wait(lambda: _run_pid(runs[0]["id"]) is None, what="the first run's end", timeout=60)
        states = [_get(api, f"/flow_runs/{r['id']}")["state"] for r in runs]
        assert [st["type"] for st in states] == ["RUNNING", "RUNNING"], states
        second, log = loopback.serve()
        assert [_state(api, r["id"]) for r in runs] == ["CRASHED", "RUNNING"]
        assert "its process is gone" in _get(api, f"/flow_runs/{runs[0]['id']}")["state"]["message"]
        [line] = [x for x in log.read_text().splitlines() if "with no process left" in x]
        # the second serve updated the automation the first one created
        assert "is marked CRASHED by the server (automation " in log.read_text()
        [automation] = _post(api, "/automations/filter", {})
        assert automation["name"] == "enspp: crash unresponsive runs"
        assert line.startswith(f"enspp-test-sleeper/s run '{runs[0]['name']}' ({runs[0]['id']}) "
                               "was RUNNING with no process left")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 0
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_the_server_crashes_a_run_whose_serve_and_process_were_killed(loopback):
    """A real loopback server, heartbeats every 30 s: the serve and its run's process are
    killed with SIGKILL and no serve starts again; the server itself marks the run CRASHED
    once three heartbeats are missed (the automation the serve set), not RUNNING for good."""
    loopback.env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = "30"
    api, pid = loopback.api, None
    try:
        first, log = loopback.serve()
        assert "is marked CRASHED by the server (automation 'enspp: crash unresponsive runs')" in (
            log.read_text())
        dep = _get(api, "/deployments/name/enspp-test-sleeper/s")
        # gone (as for a work pool's deployments, which no serve registers): the run's own
        # start sets it again
        [automation] = _post(api, "/automations/filter", {})
        _request(api, "DELETE", f"/automations/{automation['id']}")
        assert _post(api, "/automations/filter", {}) == []
        run = _post(api, f"/deployments/{dep['id']}/create_flow_run", {})
        _wait(lambda: _state(api, run["id"]) == "RUNNING", what="the run", timeout=120)
        pid = _wait(lambda: _run_pid(run["id"]), what="the run's process", timeout=60)
        [automation] = _wait(lambda: _post(api, "/automations/filter", {}), what="the automation",
                             timeout=60)
        assert automation["trigger"]["match_related"]["prefect.resource.id"] == [
            f"prefect.deployment.{dep['id']}"]
        time.sleep(5)  # its first heartbeat is sent as it starts
        first.send_signal(signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        first.wait(timeout=60)
        killed = time.monotonic()
        _wait(lambda: _state(api, run["id"]) == "CRASHED", what="the crash", timeout=240)
        assert time.monotonic() - killed > 45  # not before heartbeats were missed
        assert "no heartbeat from its process" in _get(api, f"/flow_runs/{run['id']}")["state"]["message"]
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _request(api: str, method: str, path: str, body: dict | None = None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(api + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except (urllib.error.HTTPError, OSError):
        return None


def _get(api: str, path: str):
    return _request(api, "GET", path)


def _post(api: str, path: str, body: dict):
    out = _request(api, "POST", path, body)
    assert out is not None, path
    return out


def _state(api: str, run_id: str) -> str | None:
    run = _get(api, f"/flow_runs/{run_id}") or {}
    return (run.get("state") or {}).get("type")


def _wait(check, *, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not ready within {timeout} s"
        time.sleep(1)


def test_a_served_run_prints_no_lightning_banner():
    """A served flow run is a process of its own that imports the deployments' module, not
    the CLI: Lightning's hardware banner must not reach its logs there either."""
    code = ("import enspp.flows.deployments\n"
            "import lightning as L\n"
            "L.Trainer(accelerator='cpu', logger=False, enable_progress_bar=False, "
            "enable_checkpointing=False)\n"
            "print('trainer built')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trainer built" in done.stdout
    assert "GPU available" not in done.stdout + done.stderr


def test_serve_names_the_deployments_as_prefect_deployment_run_takes_them(cfg, health_server,
                                                                         api_url, capsys,
                                                                         monkeypatch):
    """The line printed once serving names each deployment ``<flow>/<deployment>``, the name
    ``prefect deployment run`` needs (a bare ``ingest-hourly`` is not found)."""
    from enspp.flows import deployments
    from enspp.flows.cli import main

    _, base = health_server
    api_url(f"{base}/api")
    monkeypatch.setenv("ENSPP_CONFIG", "unset after the test")  # enspp serve sets it

    def served(deps, *, limit=None, on_started=None):
        on_started()

    monkeypatch.setattr(deployments, "serve_deployments", served)
    assert main(["serve", "--config", str(cfg)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("serving ingest/ingest-hourly, predict/predict-00-12, "
                           "evaluate/evaluate-nightly, train/train-weekly on ")
    assert "prefect deployment run ingest/ingest-hourly" in line


def test_the_unresponsive_run_automation_crashes_runs_that_stop_beating():
    """The automation enspp serve keeps: after a heartbeat of a run of the served deployments,
    expect another (or the run's end) within 3 heartbeats, per run; else mark it CRASHED."""
    import datetime
    import uuid

    from prefect.client.schemas.objects import StateType

    from enspp.flows.deployments import UNRESPONSIVE_AUTOMATION, unresponsive_run_automation

    deps = [uuid.uuid4(), uuid.uuid4()]
    a = unresponsive_run_automation(deps, heartbeat_s=180)
    t = a.trigger
    assert a.name == UNRESPONSIVE_AUTOMATION and a.enabled
    assert t.posture == "Proactive" and t.threshold == 1
    assert t.within == datetime.timedelta(minutes=9)
    assert t.after == {"prefect.flow-run.heartbeat"}
    assert t.expect == {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                        "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                        "prefect.flow-run.Crashed"}
    assert t.for_each == {"prefect.resource.id"}
    assert t.match["prefect.resource.id"] == ["prefect.flow-run.*"]
    assert t.match_related["prefect.resource.role"] == ["deployment"]
    assert t.match_related["prefect.resource.id"] == sorted(f"prefect.deployment.{d}" for d in deps)
    [action] = a.actions
    assert action.type == "change-flow-run-state" and action.state == StateType.CRASHED
    assert "no heartbeat from its process for 9 min" in action.message


def test_the_unresponsive_run_automation_is_created_once_and_extended(monkeypatch, capsys):
    """The first serve creates the automation; a later serve of other deployments updates it
    to cover both (and removes a duplicate two serves started at once made); a run whose
    deployment it covers writes nothing (each served or work-pool run checks at its start);
    heartbeats turned off: no automation, one line saying what that means; a server that
    cannot be asked: a line in the run's log, not a failed run."""
    import uuid
    from types import SimpleNamespace

    import prefect.client.orchestration as orchestration

    from enspp.flows import deployments
    from enspp.flows.deployments import keep_unresponsive_run_automation, watch_this_run

    stored: dict = {}
    writes: list[str] = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read_automations_by_name(self, name):
            return [SimpleNamespace(id=k, trigger=v.trigger) for k, v in stored.items()
                    if v.name == name]

        def create_automation(self, automation):
            writes.append("create")
            stored[uuid.uuid4()] = automation

        def update_automation(self, automation_id, automation):
            assert automation_id in stored
            writes.append("update")
            stored[automation_id] = automation

        def delete_automation(self, automation_id):
            writes.append("delete")
            del stored[automation_id]

    monkeypatch.setattr(orchestration, "get_client", lambda sync_client=False: Client())
    first, second = uuid.uuid4(), uuid.uuid4()
    wrote, line = keep_unresponsive_run_automation([first])
    assert wrote and line == ("a run of these deployments with no heartbeat for 9 min (its "
                              "process gone) is marked CRASHED by the server (automation "
                              "'enspp: crash unresponsive runs')")
    [kept] = stored
    stored[uuid.uuid4()] = stored[kept]  # a duplicate
    assert keep_unresponsive_run_automation([second])[0]
    [(key, automation)] = stored.items()
    assert automation.trigger.match_related["prefect.resource.id"] == sorted(
        f"prefect.deployment.{d}" for d in (first, second))
    assert writes == ["create", "update", "delete"]
    watch_this_run(first)  # covered: nothing written, nothing said
    assert writes == ["create", "update", "delete"] and capsys.readouterr().out == ""
    third = uuid.uuid4()
    watch_this_run(third)  # a work pool's deployment: added, one line
    assert writes[-1] == "update" and "is marked CRASHED by the server" in capsys.readouterr().out
    watch_this_run(None)  # outside a deployment run: nothing asked
    assert writes[-1] == "update" and len(writes) == 4
    monkeypatch.setattr(deployments, "heartbeat_seconds", lambda: None)
    wrote, line = keep_unresponsive_run_automation([first])
    assert not wrote and line.startswith("flow run heartbeats are off") and len(stored) == 1

    def down(sync_client=False):
        raise OSError("connection refused")

    monkeypatch.setattr(orchestration, "get_client", down)
    monkeypatch.setattr(deployments, "heartbeat_seconds", lambda: 180)
    watch_this_run(first)
    assert capsys.readouterr().out == ("the automation that crashes unresponsive runs was not "
                                       "checked: connection refused\n")


