"""Running enspp as a scheduled service (docs/operations.md), step by step as an operator
does: what the flows do between one scheduled run and the next."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_flows import FLOW_CONFIG, harness  # noqa: F401 (the shared Prefect harness)

SERVICE_CONFIG = FLOW_CONFIG.split("evaluate:")[0] + """\
evaluate: {systems: [{name: raw_full, path: stores/forecast.zarr}], truth: stores/analysis.zarr,
           recent_days: 5, metrics: [crps, rmse], bootstrap: {n: 10}}
"""


@pytest.fixture
def service(tmp_path) -> tuple[Path, Path]:
    """A work directory with stores (30 daily init times from 2019-01-01, every one verified
    by the analyses), a nightly report of the last 5 days and a registered model: what
    the service holds right after a weekly training registered a new version."""
    from predict_data import make_checkpoint, pipeline_config

    from enspp.models.registry import register_if_better
    from enspp.pipeline.synthetic import write_stores

    paths = write_stores(tmp_path / "stores", n_init=30, lead_hours=(24, 48), n_members=6,
                         ny=16, nx=24, start="2019-01-01")
    (tmp_path / "enspp.yaml").write_text(SERVICE_CONFIG)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", pipeline_config(paths), perturb=0.05)
    decision = register_if_better(tmp_path / "registry", ckpt, score=1.0, metric="val CRPS")
    assert decision.registered
    return tmp_path / "enspp.yaml", tmp_path / "stores" / "products" / f"{decision.version}.zarr"


def test_a_new_versions_first_predict_covers_the_nightly_reports_window(harness, service,  # noqa: F811
                                                                        caplog):
    """After a new version is registered, the next scheduled predict starts its product with
    the init times the nightly report scores (``evaluate.recent_days``), not the latest one
    alone: the nightly evaluate then scores the new version over its whole window (it
    scored one init time, or failed with 'share no init time' when the analyses lag)."""
    from enspp.flows.ops import evaluate_flow, predict_flow
    from enspp.models.product import open_product

    cfg, product = service
    assert Path(predict_flow(str(cfg))) == product  # the scheduled run: no init times given
    days = sorted(str(t)[:10] for t in open_product(product).init_time.values)
    assert days == [f"2019-01-{d:02d}" for d in range(26, 31)]
    caplog.clear()
    out = evaluate_flow(str(cfg), report_id="nightly")
    assert "scored over 5 init times" in caplog.text and "left out" not in caplog.text
    assert "mixed" in {r["system"] for r in out["rows"]}
    caplog.clear()
    predict_flow(str(cfg))  # nothing new since: nothing to do
    assert "0 init time(s) to post-process" in caplog.text


def test_a_served_run_that_fails_for_an_expected_reason_logs_no_traceback(harness,  # noqa: F811
                                                                        tmp_path, monkeypatch,
                                                                        caplog):
    """A served run refused for a reason enspp names (here: no model registered yet) logs
    that one line, not Prefect's two tracebacks of the flow engine; the run is Failed with
    the message all the same."""
    from enspp.flows.deployments import predict_deployment

    cfg = tmp_path / "service.yaml"
    cfg.write_text("data: {workdir: .}\n")
    monkeypatch.setenv("ENSPP_CONFIG", str(cfg))
    caplog.clear()
    state = predict_deployment(return_state=True)
    assert state.is_failed() and "no current model in registry" in state.message
    assert "no current model in registry" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_bugs_traceback_is_kept():
    """Only enspp's own errors lose their traceback; anything else (a bug) keeps it."""
    import logging
    import sys

    from enspp.data.errors import EnsppError
    from enspp.flows.deployments import RUN_LOGGERS, ExpectedErrorsInOneLine

    for exc in (KeyError("x"), EnsppError("refused")):
        try:
            raise exc
        except Exception:
            record = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "boom",
                                       None, sys.exc_info())
        assert ExpectedErrorsInOneLine().filter(record)
        assert (record.exc_info is None) == isinstance(exc, EnsppError)
    assert all(any(isinstance(f, ExpectedErrorsInOneLine) for f in logging.getLogger(n).filters)
               for n in RUN_LOGGERS)


def test_the_nightly_report_says_when_the_current_model_has_no_product(harness, service,  # noqa: F811
                                                                      caplog):
    """A newly registered version before its first predict: the evaluate flow scores what
    there is (the raw ensembles) and says that the current model is left out, and why."""
    from enspp.flows.ops import evaluate_flow

    cfg, product = service
    caplog.clear()
    out = evaluate_flow(str(cfg), report_id="nightly")
    assert "mixed" not in {r["system"] for r in out["rows"]}
    assert f"note: the current model {product.stem} has no product yet" in caplog.text
    assert "run the predict flow" in caplog.text


def test_a_synthetic_oracle_that_ends_before_the_data_is_left_out_of_the_recent_report(
        harness, service, caplog):  # noqa: F811
    """The demo's world extended by later files (``enspp synth --years`` into the incoming
    directories): the oracle of ``synth/oracle.zarr`` ends before the report's last days, so
    the evaluate flow leaves it out with a note rather than cutting the report to the days it
    covers (or failing: 'share no init time')."""
    from enspp.data.store import open_store
    from enspp.flows.ops import evaluate_flow, predict_flow

    cfg, _ = service
    wd = cfg.parent
    # an oracle like the synthetic world's (t2m_mu, t2m_sigma) for 2019-01-01..10 only
    fc = open_store(wd / "stores" / "forecast.zarr")["t2m"].isel(init_time=slice(0, 10)).load()
    oracle = fc.mean("member").to_dataset(name="t2m_mu")
    oracle["t2m_sigma"] = fc.std("member")
    oracle.to_zarr(wd / "synth" / "oracle.zarr", mode="w")
    predict_flow(str(cfg))
    caplog.clear()
    out = evaluate_flow(str(cfg), report_id="nightly")
    assert "oracle" not in {r["system"] for r in out["rows"]}
    assert "note: the synthetic oracle" in caplog.text and "left out" in caplog.text
    assert "scored over 5 init times" in caplog.text
