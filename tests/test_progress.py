"""Progress of long steps: a bar on a terminal only, one summary line per step, metric names
in words (``data.progress``, ``models.progress``)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from enspp.data import progress
from enspp.data.progress import format_seconds, show_summaries, step, summary_line


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_printed_summaries():
    """Whatever ran before (the CLI installs a printer of summary lines): none here."""
    saved = list(progress.LOGGER.handlers), progress.LOGGER.level, progress.LOGGER.propagate
    progress.LOGGER.handlers[:] = [h for h in saved[0] if not isinstance(h, progress._SummaryHandler)]
    yield
    progress.LOGGER.handlers[:] = saved[0]
    progress.LOGGER.setLevel(saved[1])
    progress.LOGGER.propagate = saved[2]


@pytest.fixture
def summaries(caplog):
    caplog.set_level(logging.INFO, logger="enspp")
    progress.LOGGER.propagate = True  # caplog listens at the root
    yield caplog
    progress.LOGGER.propagate = True


@pytest.mark.parametrize("seconds, text", [
    (0.123, "0.12 s"), (4.25, "4.2 s"), (59.9, "59.9 s"), (61, "1 min 01 s"), (155, "2 min 35 s"),
    (3725, "1 h 02 min"), (-1, "0.00 s")])
def test_durations_in_words(seconds, text):
    assert format_seconds(seconds) == text


def test_summary_line_says_what_how_much_how_long():
    assert summary_line("ingest forecast.zarr", "626 files", 155.2) == \
        "ingest forecast.zarr: 626 files in 2 min 35 s"
    assert summary_line("statistics", "", 1.5) == "statistics: 1.5 s"


def test_a_step_logs_one_line_and_no_bar_off_a_terminal(summaries, monkeypatch, capsys):
    with step("predict mixed-abc", total=3, unit="init time") as s:
        for _ in range(3):
            s.update()
        s.amount = "3 init times"
    lines = [r.getMessage() for r in summaries.records if r.name == "enspp"]
    assert len(lines) == 1 and lines[0].startswith("predict mixed-abc: 3 init times in ")
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # stderr is not a terminal under pytest: no bar


def test_off_a_terminal_a_long_step_logs_its_status_now_and_then(summaries, monkeypatch):
    """A served training run has no bar: its epoch notes reach the log, one a minute at most,
    so the operator sees it is alive; on a terminal the bar shows them instead."""
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    with step("train mixed", total=100, unit="batch") as s:
        for epoch in range(1, 7):
            clock[0] += 25.0
            s.note(f"epoch {epoch}/6 · val 0.0{epoch}")
    lines = [r.getMessage() for r in summaries.records if r.name == "enspp"]
    assert lines[:2] == ["train mixed: epoch 3/6 · val 0.03 (1 min 15 s so far)",
                         "train mixed: epoch 6/6 · val 0.06 (2 min 30 s so far)"]
    assert len(lines) == 3 and lines[2].startswith("train mixed: 2 min 30 s")
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    summaries.clear()
    with step("train mixed", total=100, unit="batch") as s:
        clock[0] += 120.0
        s.note("epoch 1/5")
    assert len([r for r in summaries.records if r.name == "enspp"]) == 1  # the summary only


def test_a_failed_step_logs_nothing(summaries):
    with pytest.raises(RuntimeError):
        with step("evaluate"):
            raise RuntimeError("boom")
    assert not [r for r in summaries.records if r.name == "enspp"]


def test_a_bar_on_a_terminal_disappears_when_the_step_ends(monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)
    monkeypatch.setattr(progress, "BAR_INTERVAL", 0.0)
    with step("ingest analysis.zarr", total=4, unit="file") as s:
        s.note("analysis_201201.grib")
        s.update(2)
    shown = term.getvalue()
    assert "ingest analysis.zarr" in shown and "2/4" in shown and "file" in shown
    assert "analysis_201201.grib" in shown
    last = shown.rsplit("\r", 2)[-2]
    assert shown.endswith("\r") and last.strip() == ""  # the bar is wiped at the end


def test_no_bar_when_progress_is_off(monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)
    with step("statistics", total=2, progress=False) as s:
        s.update(2)
    assert term.getvalue() == ""


def test_show_summaries_prints_each_line_once(monkeypatch):
    term = io.StringIO()
    monkeypatch.setattr(sys, "stderr", term)
    show_summaries()
    show_summaries()  # idempotent
    with step("evaluate", progress=False) as s:
        s.amount = "5 systems"
    assert term.getvalue().count("evaluate: 5 systems in ") == 1
    assert progress.LOGGER.propagate is False  # not printed again by a root handler


def test_dask_progress_counts_the_tasks(monkeypatch):
    import dask.array as da

    seen = []
    with step("statistics", progress=False) as s:
        monkeypatch.setattr(s, "update", lambda n=1: seen.append(n))
        monkeypatch.setattr(s, "set_total", lambda n: seen.append(("total", n)))
        with progress.dask_progress(s):
            da.ones((8, 8), chunks=4).sum().compute(scheduler="sync")
    total = [x for x in seen if isinstance(x, tuple)]
    assert total and total[0][1] == sum(1 for x in seen if x == 1) > 1


@pytest.mark.parametrize("name, words", [
    ("val/crps_gaussian", "val CRPS (gaussian, normalised)"),
    ("train/crps_censored_logistic", "train CRPS (censored_logistic, normalised)"),
    ("val/crps_raw_fair", "val CRPS of the raw ensemble (fair, normalised)"),
    ("val/crps_gaussian/t2m", "val CRPS (gaussian, units of t2m)"),
])
def test_metric_names_in_words(name, words):
    from enspp.models.progress import metric_words

    assert metric_words(name) == words


def test_training_says_its_epochs_from_one_and_what_its_scores_are(tmp_path, summaries, monkeypatch):
    from test_train import PIPE, SMALL, ToyDataModule

    from enspp.models.config import ModelConfig, TrainConfig
    from enspp.models.train import train

    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)
    monkeypatch.setattr(progress, "BAR_INTERVAL", 0.0)
    cfg = TrainConfig(max_epochs=2, run_id="r", learning_rate=0.03, progress_bar=True,
                      early_stopping_patience=None)
    result = train(PIPE, ModelConfig(name="mixed", options=SMALL["mixed"]), cfg,
                   workdir=tmp_path, datamodule=ToyDataModule())
    bar = term.getvalue()
    assert "train mixed" in bar and "epoch 2/2" in bar and "epoch 3/" not in bar
    assert "normalised CRPS" in bar and "val/crps" not in bar
    lines = [r.getMessage() for r in summaries.records if r.name == "enspp"]
    # the anchor's exact EMOS fit says its own line first; training has exactly one summary
    assert any(m.startswith("exact fit of the anchor LocalEMOS: train CRPS ") for m in lines)
    (line,) = [m for m in lines if m.startswith("train ")]
    assert line.startswith("train mixed (r): 2 epochs, best at epoch ")
    assert f"best val CRPS (gaussian, normalised) {result.best_score:.4g}" in line
    assert "val CRPS of the raw ensemble (fair, normalised)" in line and " in " in line
    assert result.epochs == 2
