"""Progress of long steps: a bar while a person watches, one summary line when it ends.

Every long step (ingest, statistics, training, predict, evaluate) runs inside
:func:`step`::

    with step("predict mixed-3f2a", total=len(inits), unit="init time") as s:
        for t in inits:
            ...
            s.update()
        s.amount = f"{len(inits)} init times"

* the bar (tqdm, on stderr) appears only when stderr is a terminal and the step lasts
  longer than a second, and disappears when the step ends: logs and pipes get no bar;
* the summary line (``<what>: <how much> in <how long>``) goes to the ``enspp`` logger at
  INFO.  Nothing shows it unless someone asked: the CLI and the flows call
  :func:`show_summaries`, which prints it to stderr (inside a Prefect run, whose flows log
  prints, it lands in the run's log instead).  A library caller sees nothing by default.

This module sits in the lowest package so that every package can use it; it imports only
the standard library and tqdm.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["LOGGER", "Step", "dask_progress", "format_seconds", "plural", "show_summaries",
           "step", "summary_line"]

#: the logger every summary line goes to
LOGGER = logging.getLogger("enspp")

#: seconds a step must last before its bar appears, and between two redraws
BAR_DELAY = 1.0
BAR_INTERVAL = 0.5
#: with no bar shown (a log, a served flow run), a step's status (:meth:`Step.note`) is
#: logged at most this often, so a long training shows it is alive
HEARTBEAT_SECONDS = 60.0


def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``2 min 05 s``, ``1 h 02 min``."""
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r:02d} s"
    h, r = divmod(int(round(s)), 3600)
    return f"{h} h {r // 60:02d} min"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``3 files``, ``2 init times``; ``many``: an irregular plural."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def listed(names: list[str], limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` names of a message."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more"
                                       if len(names) > limit else "")


def summary_line(what: str, amount: str, seconds: float) -> str:
    """``<what>: <amount> in <duration>`` (``<what>: <duration>`` without an amount)."""
    return f"{what}: {amount} in {format_seconds(seconds)}" if amount else \
        f"{what}: {format_seconds(seconds)}"


class Step:
    """A running step: :meth:`update` moves the bar; set :attr:`amount` to say how much was
    done (the summary line's middle part).  Made by :func:`step`."""

    def __init__(self, what: str, *, total: int | None, unit: str, bar: bool) -> None:
        self.what = what
        self.unit = unit
        self.amount = ""
        self.t0 = time.perf_counter()
        self._last_beat = self.t0
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (a log file, a pipe)
            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", delay=BAR_DELAY,
                             file=sys.stderr, leave=False, disable=None, dynamic_ncols=True,
                             mininterval=BAR_INTERVAL)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total: int) -> None:
        """Say how many units there are, once known."""
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def note(self, text: str) -> None:
        """A short status beside the bar (e.g. the current file or metric); with no bar on
        screen, logged as ``<what>: <text>`` every :data:`HEARTBEAT_SECONDS` at most."""
        if self._bar is not None and not self._bar.disable:
            self._bar.set_postfix_str(text, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            LOGGER.info(f"{self.what}: {text} ({format_seconds(now - self.t0)} so far)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def line(self) -> str:
        return summary_line(self.what, self.amount, self.seconds)


@contextmanager
def step(what: str, *, total: int | None = None, unit: str = "item",
         progress: bool = True) -> Iterator[Step]:
    """Run a step with a bar (``progress`` and a terminal) and log its summary line when it
    ends without an error (an error says enough by itself)."""
    s = Step(what, total=total, unit=unit, bar=progress)
    try:
        yield s
    finally:
        s.close()
    LOGGER.info(s.line())


@contextmanager
def dask_progress(s: Step) -> Iterator[None]:
    """Advance ``s`` by one per finished task of the dask computations run inside (the local
    schedulers; a distributed cluster reports nothing here)."""
    from dask.callbacks import Callback

    class _Tasks(Callback):
        def _start_state(self, dsk: Any, state: Any) -> None:
            s.set_total(sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")))

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            s.update()

    with _Tasks():
        yield


class _SummaryHandler(logging.Handler):
    """Prints summary lines with ``print`` looked up when a line is written, so that a
    Prefect run that logs prints (every enspp flow) takes them into its own log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the step
            self.handleError(record)


def show_summaries() -> None:
    """Print the ``enspp`` logger's INFO lines on stderr (idempotent)."""
    if not any(isinstance(h, _SummaryHandler) for h in LOGGER.handlers):
        handler = _SummaryHandler(logging.INFO)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET or LOGGER.level > logging.INFO:
        LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # printed here once, not again by a root handler (Prefect's)
