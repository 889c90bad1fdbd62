"""Where the bytes of a store came from: each input's checksum and size, and record keys.

An input file is identified by the SHA-256 of its bytes.  A directory input (a Zarr store:
WeatherBench 2, CF, one of ours) is identified by :func:`sha256_tree`: the SHA-256 of its
metadata files' bytes and of the name and size of every other file in it, so the same
store gives the same identity without reading a multi-terabyte store's chunks (which a
content hash would need).  The store's provenance log (:mod:`data.store_meta`) keeps one
entry per input: checksum, name, size, reader, centre, time of ingest and the fields it
provides.

Hashing every incoming file on every scheduled run costs seconds to minutes, so the digest of a
file already ingested is remembered with its stat *stamp* (size, mtime, ctime and inode; the
store's digest file, :func:`data.store_meta.read_digests`): :func:`identify_file` reads a file
whose stamp matches its entry not at all.  Any write to a file, in place or by a rename over it,
changes its ctime (which no tool can set back), so a changed file never matches.  A digest is
remembered only for a file that did not change while it was hashed and whose last change lies
:data:`SETTLE_NS` before the hash began, since a write within the file system's timestamp
granularity of the hash would leave the stamp as it was.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

_BLOCK = 1 << 22
#: a file's digest is remembered only once the file was last changed this long before it was
#: hashed (a coarse timestamp, or a file server's clock a little off, would hide a later write)
SETTLE_NS = 2_000_000_000
#: files of a Zarr store whose bytes identify it (everything else by name and size)
_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


@dataclass(frozen=True)
class SourceFile:
    """One input of an ingest: its path, content checksum and size in bytes."""

    path: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return Path(self.path).name or self.path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (hashlib releases the GIL, so this overlaps decoding)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Identity of a directory input and its size in bytes: SHA-256 over its metadata files'
    bytes and the relative path and size of every other file, in sorted order (temporary
    files of a writer, ``*.partial``, and our stores' ``enspp/tmp`` are left out)."""
    root = Path(path)
    h = hashlib.sha256()
    total = 0
    entries = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if (rel / d).as_posix() != "enspp/tmp")
        for name in files:
            if name.endswith(".partial"):
                continue
            entries.append((rel / name).as_posix())
    for rel in sorted(entries):
        p = root / rel
        size = p.stat().st_size
        total += size
        h.update(rel.encode() + b"\0")
        if p.name in _METADATA_NAMES:
            h.update(p.read_bytes())
        else:
            h.update(str(size).encode())
        h.update(b"\n")
    return h.hexdigest(), total


def source_file(path: str | os.PathLike[str]) -> SourceFile:
    """The identity of an input: a file (its bytes) or a directory (:func:`sha256_tree`)."""
    p = Path(path)
    if p.is_dir():
        digest, size = sha256_tree(p)
        return SourceFile(path=str(p.resolve()), sha256=digest, size=size)
    return SourceFile(path=str(p.resolve()), sha256=sha256_file(p), size=p.stat().st_size)


@dataclass(frozen=True)
class KnownFile:
    """A file's stat stamp when its digest was computed, and the digest."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == _stamp(st)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def recall_file(path: str | os.PathLike[str], *, known: Mapping[str, KnownFile]
                ) -> SourceFile | None:
    """The identity of a regular file whose stat stamp matches its entry in ``known`` (by
    resolved path), without reading it; None for any other input."""
    p = Path(path).resolve()
    entry = known.get(str(p))
    if entry is None:
        return None
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode) or not entry.matches(st):
        return None
    return SourceFile(path=str(p), sha256=entry.sha256, size=st.st_size)


def identify_file(path: str | os.PathLike[str], *, known: Mapping[str, KnownFile],
                  settle_ns: int | None = None) -> tuple[SourceFile, KnownFile | None]:
    """The identity of an input (:func:`source_file`) and what to remember of it.

    A file :func:`recall_file` knows is not read, and nothing new is to be remembered (None).
    Any other input is hashed; a regular file that kept its stat stamp while hashed and was
    last changed ``settle_ns`` (default :data:`SETTLE_NS`) before the hash began gives the
    entry to remember, others None."""
    recalled = recall_file(path, known=known)
    if recalled is not None:
        return recalled, None
    p = Path(path).resolve()
    before = time.time_ns()
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        return source_file(p), None
    digest = sha256_file(p)
    after = os.stat(p)
    settle = SETTLE_NS if settle_ns is None else settle_ns
    src = SourceFile(path=str(p), sha256=digest, size=st.st_size)
    if _stamp(after) != _stamp(st) or st.st_ctime_ns > before - settle:
        return src, None
    return src, KnownFile(*_stamp(st), sha256=digest)


def dataset_source(ds: xr.Dataset) -> SourceFile:
    """A stand-in source for an in-memory dataset: the checksum of its values and coords."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        h.update(name.encode())
        h.update(np.ascontiguousarray(ds[name].values).tobytes())
    return SourceFile(path="<in-memory dataset>", sha256=h.hexdigest(), size=int(ds.nbytes))


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_key(value: np.datetime64) -> str:
    """The string under which a record (init time / time) is named in results and logs."""
    return str(np.datetime_as_string(np.datetime64(value, "ns"), unit="s"))


def record_keys(values: Iterable[np.datetime64] | np.ndarray) -> list[str]:
    """:func:`record_key` of many values at once."""
    arr = np.asarray(values, dtype="datetime64[ns]")
    return [str(x) for x in np.datetime_as_string(arr, unit="s")]


__all__ = ["KnownFile", "SETTLE_NS", "SourceFile", "dataset_source", "identify_file", "now_iso",
           "recall_file", "record_key", "record_keys", "sha256_file", "sha256_tree", "source_file"]
