"""DataLoader workers: how they start, how many decoding threads each reading process gets,
and a count of worker starts (persistent workers start once per fit, per loader)."""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
from multiprocessing.context import BaseContext
from typing import Any

#: most decoding threads one reading process gets by default
MAX_AUTO_THREADS = 8


def start_context(method: str | None) -> BaseContext:
    """The multiprocessing context workers start from.

    ``None`` picks ``fork`` where the platform has it and it is safe (Linux): a worker then
    starts in milliseconds, imports nothing again and never re-runs the main script, so a
    script without a ``__main__`` guard, a notebook and ``python -`` all work.  (A fork server
    or spawn re-import the main script in every worker, which fails in those three cases.)
    The reader keeps nothing a fork could break: its thread pool, file handles and caches are
    per process, made again in the child; zarr and Prefect reset their event loops after a
    fork themselves.  Elsewhere (macOS, Windows) ``spawn``.
    """
    if method is None:
        method = "fork" if sys.platform.startswith("linux") and \
            "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def read_threads(configured: int | None, *, num_workers: int) -> int:
    """Decoding threads per reading process: as configured, else the available cores shared
    among the reading processes (the main process when ``num_workers`` is 0), at most
    :data:`MAX_AUTO_THREADS`."""
    if configured is not None:
        return int(configured)
    return max(1, min(MAX_AUTO_THREADS, available_cores() // max(1, num_workers)))


class WorkerCounter:
    """Counts DataLoader worker starts across processes (a shared integer)."""

    def __init__(self, context: BaseContext):
        self._value = context.Value("i", 0)

    @property
    def value(self) -> int:
        return int(self._value.value)

    def init_fn(self) -> functools.partial:
        """A ``worker_init_fn`` that counts the start (picklable for spawn/forkserver)."""
        return functools.partial(_worker_started, self._value)


def _worker_started(counter: Any, worker_id: int) -> None:
    forget_inherited_exit_hooks()
    with counter.get_lock():
        counter.value += 1


def forget_inherited_exit_hooks() -> None:
    """In a forked worker: drop the thread-shutdown hooks of Prefect's background services
    inherited from the parent.

    A process that has run a Prefect flow (the operational flows, ``enspp demo``) holds
    services (API log and event workers) that register a hook run at thread shutdown.
    Prefect's own fork handler stops them in a child, but the inherited hook still runs when
    the worker ends, fails (``assert self._done_event is not None``, Prefect 3.8) and the
    worker exits with code 1: PyTorch then reports "DataLoader worker exited unexpectedly"
    in the middle of a fit.  The services' threads never exist in the child, so there is
    nothing for those hooks to drain.  A spawned worker imported no Prefect: nothing to do.
    """
    services = sys.modules.get("prefect._internal.concurrency.services")
    hooks = getattr(threading, "_threading_atexits", None)
    base = getattr(services, "_QueueServiceBase", None)
    if base is None or not isinstance(hooks, list):
        return
    def owner(hook: Any) -> Any:  # threading._register_atexit stores functools.partial(f)
        return getattr(getattr(hook, "func", hook), "__self__", None)

    hooks[:] = [h for h in hooks if not isinstance(owner(h), base)]
