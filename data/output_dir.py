"""Directories enspp writes whole: an evaluation report, a combined dashboard, an experiment's
results.  Which existing directories it may replace or write into.

A directory is enspp's own only when it says so: each carries a manifest,
``.enspp-output.json``, naming its kind and every file written into it.  A directory holding
anything the manifest does not list (a user's notes, another tool's run) is not replaced,
whatever the names of the files in it: :func:`check_replaceable` refuses it in one line and
leaves it as it was.  Directories written before manifests existed are recognised by their
content (``legacy``: e.g. a ``scores.json`` of the report schema), never by names alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from enspp.data.errors import EnsppError
from enspp.data.progress import listed

__all__ = ["MANIFEST", "OutputDirError", "check_replaceable", "files_under", "owned",
           "read_manifest", "write_manifest"]

MANIFEST = ".enspp-output.json"


class OutputDirError(EnsppError):
    """An output directory enspp would replace or write into holds files it did not write."""


def files_under(root: Path) -> list[str]:
    """The files under ``root`` (relative POSIX paths, sorted), the manifest excluded."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(root).as_posix() != MANIFEST)


def read_manifest(root: Path) -> dict | None:
    """The manifest of ``root`` (``{"kind": ..., "files": [...]}``), None without a readable one."""
    try:
        doc = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    return doc


def write_manifest(root: Path, *, kind: str, files: Iterable[str] | None = None) -> None:
    """Record ``root`` as enspp's ``kind`` holding ``files`` (default: every file in it)."""
    from enspp.data.store_meta import write_file_atomic

    listed = sorted(set(files_under(root) if files is None else files))
    write_file_atomic(Path(root) / MANIFEST,
                      json.dumps({"kind": kind, "files": listed}, indent=1).encode())


def owned(root: Path, *, kind: str, legacy: Callable[[Path], bool] | None = None) -> bool:
    """Whether ``root`` holds nothing but what enspp wrote there as ``kind`` (by its manifest;
    without one, by ``legacy``)."""
    doc = read_manifest(root)
    if doc is not None:
        return doc.get("kind") == kind and set(files_under(root)) <= set(doc["files"])
    return legacy is not None and legacy(Path(root))


def check_replaceable(out: Path, *, kind: str, what: str,
                      legacy: Callable[[Path], bool] | None = None) -> None:
    """Refuse (:class:`OutputDirError`, one line) to replace ``out`` unless it is absent,
    empty or enspp's own ``kind`` (:func:`owned`); the working directory is never replaced."""
    out = Path(out).resolve()
    if out == Path.cwd().resolve():
        raise OutputDirError(f"{what} {out}: the working directory cannot be replaced by the "
                             f"{what}; give a directory for it")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{what} {out}: exists and is not a directory (nothing was changed)")
    if not out.exists() or not any(out.iterdir()) or owned(out, kind=kind, legacy=legacy):
        return
    doc = read_manifest(out)
    if doc is not None and doc.get("kind") == kind:
        extra = sorted(set(files_under(out)) - set(doc["files"]))
        raise OutputDirError(f"{what} {out}: holds files the {what} did not write "
                             f"({listed(extra)}); move them aside or give another directory "
                             "(nothing was changed)")
    raise OutputDirError(f"{what} {out}: the directory holds files and is not an enspp {what} "
                         f"({listed(sorted(p.name for p in out.iterdir()))}); give a new or "
                         "empty directory (nothing was changed)")
