"""What the benchmark scripts share: the ``--out``/``--repeats`` arguments with a temporary
work directory removed afterwards, and the best of repeated timings."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def work_directory(doc: str, *, prefix: str, repeats: int = 2
                   ) -> Iterator[tuple[argparse.Namespace, Path]]:
    """Parse ``--out DIR`` and ``--repeats N`` (description: ``doc``'s first line) and yield
    ``(args, work)``: ``DIR`` (kept) or a temporary directory (removed on exit)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield args, work
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Best wall-clock and best CPU time (all threads, ``time.process_time``) of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)
