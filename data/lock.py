"""An exclusive, process-level lock on a store (``fcntl.flock`` on a file beside it).

The lock file lives next to the store (``<parent>/.<store name>.lock``), never inside it:
creating a store rewrites its directory, and a lock file inside would be deleted while held,
letting a second writer take a fresh lock at the same time.

Two ingests into one store serialise: the second waits up to ``timeout`` seconds for the
first to finish, then refuses with :class:`StoreLockedError` naming the store and the pid
that holds it.  The kernel drops the lock when its holder dies (even by SIGKILL), so a
crashed ingest never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from enspp.data.errors import EnsppError
from enspp.data.store import StoreError

_POLL_S = 0.05


class StoreLockedError(EnsppError):
    """Another process holds the store's lock and did not release it in time."""


class StoreNotWritableError(StoreError):
    """The directory that holds the store (and its lock file) cannot be written."""


def lock_path(store: str | os.PathLike[str]) -> Path:
    """The lock file of ``store``: ``<parent>/.<name>.lock``, outside the store itself."""
    root = Path(store).absolute()
    return root.parent / f".{root.name}.lock"


@contextlib.contextmanager
def store_lock(store: str | os.PathLike[str], *, timeout: float | None = 300.0,
               on_wait: object = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``store`` (its parent directory is created if missing).

    ``timeout``: seconds to wait for another holder (``0``: refuse at once, ``None``: wait
    for ever).  ``on_wait``: optional callable ``(message: str) -> None`` told once when the
    lock is busy, so a CLI can say why it pauses.
    """
    root = Path(store)
    path = lock_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreNotWritableError(
                f"store {root}: the store's directory {path.parent} is not writable "
                f"({e.strerror}); the lock file {path.name} cannot be created there") from None
        raise
    try:
        _acquire(fd, path, root, timeout=timeout, on_wait=on_wait)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, root: Path, *, timeout: float | None, on_wait: object) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _holder(path)
            if deadline is not None and time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"store {root} is locked by another enspp process (pid {holder}); waited "
                    f"{timeout:g} s — retry when it has finished") from None
            if not told and callable(on_wait):
                on_wait(f"store {root} is locked by pid {holder}; waiting for it")
                told = True
            time.sleep(_POLL_S)


def holder_of(store: str | os.PathLike[str]) -> int | None:
    """The pid of the live process holding ``store``'s lock, or None.  Read from the lock
    file without touching the lock (a reader must never make a writer wait); a holder killed
    before releasing it leaves its pid there, which is then no live process."""
    try:
        pid = int(lock_path(store).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
