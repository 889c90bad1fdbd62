"""Faults of the flows, in subprocesses talking to the session's Prefect test server: an ingest
or predict run SIGKILLed half-way then re-run gives the stores of an uninterrupted run; two
ingest runs on one store at once serialise on its lock and leave it clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_flows import shared_harness, write_forecast_gribs
from test_ingest import _same_store

from enspp.data.ingest import ingest
from enspp.data.store_writer import FAULT_ENV
from enspp.flows.ops import PREDICT_FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]
INITS = ["2020-01-01T00", "2020-01-01T12", "2020-01-02T00", "2020-01-02T12"]


@pytest.fixture(scope="session")
def harness():
    yield from shared_harness()


@pytest.fixture
def gribs(tmp_path) -> list[Path]:
    return write_forecast_gribs(tmp_path / "in", INITS)


def _flow_process(code: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -c code`` against the harness's Prefect server."""
    from prefect.settings import get_current_settings

    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "PREFECT_API_URL": str(get_current_settings().api.url), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code], env=full, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ingest_code(cfg: Path, paths: list[Path] | None = None) -> str:
    args = "" if paths is None else f", paths={[str(p) for p in paths]!r}, kind='forecast'"
    return f"from enspp.flows.ops import ingest_flow; ingest_flow({str(cfg)!r}{args})"


def test_killed_ingest_flow_rerun_equals_uninterrupted(harness, tmp_path, gribs):
    from enspp.flows.ops import ingest_flow

    clean = tmp_path / "clean.zarr"
    ingest(gribs, clean, progress=False)
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data: {incoming: {forecast: [in]}, files_per_task: 4}\n")
    proc = _flow_process(_ingest_code(cfg), {FAULT_ENV: "3"})  # killed while writing data
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    store = tmp_path / "stores" / "forecast.zarr"
    assert ingest_flow(str(cfg))["forecast"]["new"] >= 1  # the re-run finishes the job
    _same_store(store, clean)


def test_two_ingest_flows_at_once_serialise_on_the_lock(harness, tmp_path, gribs):
    clean = tmp_path / "clean.zarr"
    ingest(gribs, clean, progress=False)
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("")
    procs = [_flow_process(_ingest_code(cfg, gribs[:2])), _flow_process(_ingest_code(cfg, gribs[2:]))]
    logs = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        logs.append(err)
    from enspp.data.store import open_store

    store = tmp_path / "stores" / "forecast.zarr"
    assert open_store(store).sizes["init_time"] == 4, "\n---\n".join(e[-2500:] for e in logs)
    _same_store(store, clean)


PREDICT_CONFIG = """
pipeline:
  stores: {{forecast: {fc}, analysis: {an}, static: {st}}}
  members: {{k: 5}}
predict: {{n_members: 4}}
"""


def test_killed_predict_flow_rerun_equals_uninterrupted(harness, tmp_path):
    from predict_data import make_checkpoint, make_stores, pipeline_config

    from enspp.flows.ops import predict_flow
    from enspp.models.product import open_product
    from enspp.models.registry import register_if_better

    paths = make_stores(tmp_path / "data")
    ckpt = make_checkpoint(tmp_path / "m.ckpt", pipeline_config(paths), perturb=0.1)
    inits = [str(t)[:19] for t in xr.open_zarr(paths.forecast).init_time.values]
    runs = {}
    for name in ("killed", "clean"):
        wd = tmp_path / name
        wd.mkdir()
        register_if_better(wd / "registry", ckpt, score=1.0, metric="test")
        (wd / "enspp.yaml").write_text(PREDICT_CONFIG.format(fc=paths.forecast, an=paths.analysis,
                                                             st=paths.static))
        runs[name] = wd / "enspp.yaml"
    code = (f"from enspp.flows.ops import predict_flow; predict_flow({str(runs['killed'])!r}, "
            f"init_times={inits!r}, init_times_per_task=1)")
    proc = _flow_process(code, {PREDICT_FAULT_ENV: "2"})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    killed = Path(predict_flow(str(runs["killed"]), init_times=inits, init_times_per_task=1))
    clean = Path(predict_flow(str(runs["clean"]), init_times=inits, init_times_per_task=4))
    a, b = open_product(killed).compute(), open_product(clean).compute()
    assert a.sizes["init_time"] == len(inits)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert sorted(a.attrs["enspp_complete"]) == sorted(b.attrs["enspp_complete"])
    assert np.isfinite(a["t2m_mean"].values).all()
