"""Durable commits: what a commit names is on disk before the commit itself.

Every enspp write that others rely on goes through a temporary file (or directory) renamed
over its final name, so a *killed* process leaves the old version or the new one, never half
of one.  A *power loss* (or a kernel crash) is different: the kernel writes dirty pages back
in any order, so without an explicit flush a rename may reach the disk before the data it
renames, and the file comes back empty or short after the reboot (XFS; ext4 mitigates only
some cases).  The functions here order those writes:

- :func:`sync_file` / :func:`sync_dir`: ``fsync`` of one file, or of a directory (which makes
  the names created or renamed in it durable);
- :func:`sync_filesystem`: every dirty page of the file system holding a path (``syncfs`` on
  Linux, ``sync`` elsewhere): one call flushes the many chunk files of a store commit, where
  an ``fsync`` per file would cost a disk round trip each;
- :func:`replace`: the commit itself: the new version flushed, renamed over the old one, the
  rename flushed; :func:`write_via` / :func:`write_text`: a file written beside its final
  name and committed so; :func:`swap_tree`: a directory written beside another and swapped
  in (:func:`recover_tree` finishes a swap that was killed).

Setting ``ENSPP_DURABLE=0`` turns the flushes off (scratch directories, file systems where a
flush is slow and a power loss does not matter); killed processes stay safe either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

__all__ = ["DURABLE_ENV", "enabled", "flush", "recover_tree", "replace", "swap_tree",
           "sync_dir", "sync_file", "sync_filesystem", "write_text", "write_via"]

#: environment variable: ``0`` turns the flushes off
DURABLE_ENV = "ENSPP_DURABLE"

#: errors of an fsync that the file system does not support (some FUSE and network file
#: systems refuse fsync on directories): nothing to flush there
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS}


def enabled() -> bool:
    """Whether commits are flushed (``ENSPP_DURABLE`` unset or anything but ``0``/``false``/``no``/``off``)."""
    return os.environ.get(DURABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno in _UNSUPPORTED or e.errno == errno.EISDIR:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def flush(fh: BinaryIO | TextIO) -> None:
    """Flush an open file's data to disk (before it is closed and renamed)."""
    if enabled():
        fh.flush()
        try:
            os.fsync(fh.fileno())
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise


def sync_file(path: str | os.PathLike[str]) -> None:
    """Flush one file's data to disk."""
    if enabled():
        _fsync(Path(path), os.O_RDONLY)


def sync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory: the names created, removed or renamed in it (not on Windows,
    where directories cannot be opened)."""
    if enabled() and sys.platform != "win32":
        _fsync(Path(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _load_syncfs() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Flush every dirty page of the file system that holds ``path`` (a file or directory
    that exists): ``syncfs(2)`` on Linux, ``sync(2)`` where there is no ``syncfs``."""
    if not enabled():
        return
    if _SYNCFS is None:
        if hasattr(os, "sync"):
            os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            if err not in _UNSUPPORTED:
                raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def replace(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Commit ``tmp`` as ``final`` (``os.replace``; an empty directory or a file at
    ``final`` is replaced): the new version flushed first (a file's data, or a
    directory's whole file system), then the rename, then the rename itself flushed."""
    tmp, final = Path(tmp), Path(final)
    if tmp.is_dir():
        sync_filesystem(tmp)
    else:
        sync_file(tmp)
    os.replace(tmp, final)
    sync_dir(final.parent)


def _old_of(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def recover_tree(out: str | os.PathLike[str]) -> None:
    """Finish a :func:`swap_tree` killed between its two renames: the previous directory,
    left at ``.<name>.old`` with nothing at ``out``, is put back (with both there, the old
    one is removed)."""
    out = Path(out)
    old = _old_of(out)
    if old.exists() and out.exists():
        shutil.rmtree(old)
    elif old.exists():
        os.rename(old, out)


def swap_tree(tmp: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Commit the directory ``tmp`` as ``out``, replacing a directory there: ``tmp``'s files
    flushed, the old ``out`` moved aside to ``.<name>.old``, ``tmp`` renamed in, the renames
    flushed, the old directory removed.  Readers see the old directory or the new one; a
    kill between the renames leaves the old one aside, which :func:`recover_tree` restores."""
    tmp, out = Path(tmp), Path(out)
    sync_filesystem(tmp)
    old = _old_of(out)
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    os.rename(tmp, out)
    sync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_via(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path`` (``.<name>.tmp``), then committed
    by :func:`replace`: readers never see half a file, and a kill or a power loss leaves the
    old file or the new one.  The temporary file is removed when anything fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_via` of ``text``."""
    return write_via(path, lambda tmp: tmp.write_text(text))
