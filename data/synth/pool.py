"""Forecast files of the synthetic world, made in this process or in worker processes.

A forecast (members, oracle, GRIB file) depends only on its :class:`ForecastState`, so the
simulation runs in the calling process while workers turn states into files; results come
back in submission order, so the output does not depend on the number of workers (tested).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from enspp.data.synth.config import SynthError
from enspp.data.synth.world import ForecastChunk, ForecastState, World, forecast, init_times

__all__ = ["auto_workers", "forecast_runner", "write_forecast_file"]

#: below this many inits, starting worker processes costs more than it saves
MIN_INITS_FOR_WORKERS = 100
MAX_AUTO_WORKERS = 4

_WORKER_WORLD: World | None = None


def auto_workers(world: World) -> int:
    """Worker processes for ``world``: one per available core (at most 4); none for a small world."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if cpus < 2 or len(init_times(world.config)) < MIN_INITS_FOR_WORKERS:
        return 0
    return min(cpus, MAX_AUTO_WORKERS)


def write_forecast_file(directory: Path, world: World, state: ForecastState) -> tuple[Path, ForecastChunk]:
    """Compute the forecast of ``state``, write its GRIB file; return the path and the chunk
    without its members (they are in the file; the oracle fields stay for the caller)."""
    from enspp.data.synth.writer import write_forecast

    chunk = forecast(world, state)
    path = write_forecast(directory, world, chunk)
    return path, replace(chunk, members={})


def _init_worker(world: World) -> None:
    global _WORKER_WORLD
    _WORKER_WORLD = world


def _worker_task(directory: Path, state: ForecastState) -> tuple[Path, ForecastChunk]:
    if _WORKER_WORLD is None:  # pragma: no cover - the pool initializer always runs first
        raise SynthError("synth worker started without its world")
    return write_forecast_file(directory, _WORKER_WORLD, state)


@contextmanager
def forecast_runner(directory: Path, world: World, *,
                    workers: int) -> Iterator[Callable[[ForecastState], Future]]:
    """A function ``submit(state) -> Future[(path, chunk)]``: run in this process when
    ``workers`` is 0, else in a pool of that many processes (cancelled on error)."""
    if workers < 0:
        raise SynthError(f"workers must be >= 0 (0: write in this process), got {workers}")
    if workers == 0:
        def submit_here(state: ForecastState) -> Future:
            fut: Future = Future()
            try:
                fut.set_result(write_forecast_file(directory, world, state))
            except Exception as e:  # delivered through the future, as from a worker
                fut.set_exception(e)
            return fut

        yield submit_here
        return
    pool: Executor = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_init_worker,
                                         initargs=(world,))
    try:
        yield lambda state: pool.submit(_worker_task, directory, state)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _context() -> multiprocessing.context.BaseContext:
    """``fork`` (instant) from a single-threaded process where available, else ``spawn``:
    forking a process with other threads can deadlock the child."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
