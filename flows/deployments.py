"""The four scheduled deployments (the same as ``deploy/prefect.yaml``), built from a config.

``enspp serve`` serves them from one process with ``prefect.serve``; ``prefect deploy --all
--prefect-file deploy/prefect.yaml`` registers the same deployments for a work pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enspp.flows.runtime import quiet_prefect

quiet_prefect()

#: deployment name -> (flow name in flows/ops.py, schedule key in deploy.schedules, description)
DEPLOYMENTS: dict[str, tuple[str, str, str]] = {
    "ingest-hourly": ("ingest_flow", "ingest",
                      "Ingest new GRIB/Zarr files from the incoming directory into the stores."),
    "predict-00-12": ("predict_flow", "predict",
                      "Operational post-processing of the 00 and 12 UTC runs after data arrival."),
    "evaluate-nightly": ("evaluate_flow", "evaluate",
                         "Score products against the analyses and refresh the skill dashboard."),
    "train-weekly": ("train_flow", "train",
                     "Retrain on the stores; register the model only if it beats the current one."),
}


def build_deployments(config: Any, config_path: str | Path) -> list[Any]:
    """``RunnerDeployment`` objects for :data:`DEPLOYMENTS` with the config's schedules; every
    run reads ``config_path`` (made absolute)."""
    from prefect.schedules import Cron

    from enspp.flows import ops

    sched = config.deploy.schedules
    path = str(Path(config_path).resolve())
    out = []
    for name, (flow_name, key, description) in DEPLOYMENTS.items():
        cron = getattr(sched, key)
        schedules = [] if cron is None else [Cron(cron, timezone=sched.timezone)]
        out.append(getattr(ops, flow_name).to_deployment(
            name=name, description=description, schedules=schedules,
            parameters={"config_path": path}, tags=["enspp"]))
    return out
