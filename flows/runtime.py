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
