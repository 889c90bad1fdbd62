"""What every flow and command needs before and around Prefect: a quiet local Prefect
(no telemetry, a patient temporary server), the config of a run, and the task runner the
``deploy`` section asks for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from enspp.data.errors import EnsppError

#: environment variable naming the config file of deployments (``deploy/prefect.yaml``)
CONFIG_ENV = "ENSPP_CONFIG"

PREFECT_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LOG_PRINTS": "true",
}


def quiet_prefect() -> None:
    """Telemetry off and a patient temporary server; call before ``import prefect``
    (values already in the environment win)."""
    for k, v in PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)


def quiet_libraries() -> None:
    """Silence known, harmless notices that would bury the command's own output: zarr's note
    that consolidated metadata is outside the v3 spec (used on purpose: one atomic root file
    is how stores commit), Lightning's hardware banner and tips (printed twice once Prefect
    also captures the logger), and a torch-internal deprecation inside Lightning.  The CLI
    calls it, and so does every served flow run (:mod:`flows.deployments`)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
    warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component",
                            category=UserWarning)  # a store's provenance log folder
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_config(config_path: str | os.PathLike[str] | None) -> Any:
    """The :class:`~flows.config.EnsppConfig` of ``config_path``, else of ``$ENSPP_CONFIG``."""
    from enspp.flows.config import load_config

    path = config_path or os.environ.get(CONFIG_ENV)
    if not path:
        raise EnsppError(f"no config: pass config_path or set {CONFIG_ENV} to an enspp.yaml")
    return load_config(Path(path))


def make_task_runner(deploy: Any) -> Any:
    """A Prefect task runner for ``deploy`` (:class:`~flows.config.DeployConfig`): a thread
    pool, or prefect-dask's ``DaskTaskRunner`` on the cluster at ``dask_address`` (a temporary
    local cluster when it is null)."""
    if deploy.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if deploy.dask_address:
            return DaskTaskRunner(address=deploy.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": deploy.max_workers,
                                              "threads_per_worker": 1})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=deploy.max_workers)


# ------------------------------------------------------------------ the Prefect API of a server
#: what ``enspp serve`` tells an operator whose Prefect API is missing or unreachable
START_SERVER_HINT = ("start a Prefect server with `prefect server start --host 127.0.0.1` and set "
                     "PREFECT_API_URL=http://127.0.0.1:4200/api (in the environment, or in the "
                     "active profile with `prefect config set PREFECT_API_URL=...`)")


def prefect_api_url() -> str | None:
    """The Prefect API URL in effect: ``$PREFECT_API_URL``, else the active Prefect
    profile's ``PREFECT_API_URL``; ``None`` when neither sets one (Prefect would then start a
    temporary server, whose schedules never fire)."""
    quiet_prefect()
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def prefect_api_headers(*, auth_string: str | None, api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header Prefect's client sends: basic auth of ``auth_string``
    (``user:password``) if set, else the bearer ``api_key``, else none."""
    import base64

    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


def prefect_api_problem(url: str, *, headers: dict[str, str] | None = None,
                        timeout: float = 5.0, verify: Any = True) -> str | None:
    """Why the Prefect API at ``url`` cannot serve deployments (one line), or ``None`` when
    its ``/health`` endpoint answers ``true``: one GET, at most ``timeout`` seconds."""
    import httpx

    health = url.rstrip("/") + "/health"
    try:
        response = httpx.get(health, headers=headers or {}, timeout=timeout, verify=verify)
    except httpx.TimeoutException:
        return f"the Prefect API at {url} did not answer within {timeout:g} s: {START_SERVER_HINT}"
    except (httpx.HTTPError, ValueError) as e:  # refused, unknown host, TLS, malformed URL
        reason = " ".join(str(e).split()) or type(e).__name__
        return f"no Prefect API answers at {url} ({reason}): {START_SERVER_HINT}"
    if response.status_code in (401, 403):
        return (f"the Prefect API at {url} refused the credentials (HTTP {response.status_code}):"
                " set PREFECT_API_AUTH_STRING=user:password as the server's "
                "PREFECT_SERVER_API_AUTH_STRING")
    try:
        healthy = response.status_code == 200 and response.json() is True
    except ValueError:
        healthy = False
    if not healthy:
        return (f"{health} answered HTTP {response.status_code}, not Prefect's health check: "
                "PREFECT_API_URL must name the API (e.g. http://127.0.0.1:4200/api)")
    return None


def check_prefect_api(*, timeout: float = 5.0) -> str:
    """The Prefect API URL in effect, after checking that its server answers; else
    :class:`~enspp.data.errors.EnsppError` with one line naming the URL and what to do."""
    import ssl

    url = prefect_api_url()
    if not url:
        raise EnsppError(f"PREFECT_API_URL is not set: {START_SERVER_HINT}")
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    verify: Any = True
    if api.tls_insecure_skip_verify:
        verify = False
    elif api.ssl_cert_file and Path(api.ssl_cert_file).is_file():
        verify = ssl.create_default_context(cafile=api.ssl_cert_file)
    problem = prefect_api_problem(
        url, timeout=timeout, verify=verify,
        headers=prefect_api_headers(auth_string=_secret(api.auth_string),
                                    api_key=_secret(api.key)))
    if problem:
        raise EnsppError(problem)
    return url
