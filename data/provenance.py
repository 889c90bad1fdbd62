"""Where the bytes of a store came from: each input's checksum and size, and record keys.

An input file is identified by the SHA-256 of its bytes.  A directory input (a Zarr store:
WeatherBench 2, CF, one of ours) is identified by :func:`sha256_tree`: the SHA-256 of its
metadata files' bytes and of the name and size of every other file in it, so the same
store gives the same identity without reading a multi-terabyte store's chunks (which a
content hash would need).  The store's provenance log (:mod:`data.store_meta`) keeps one
entry per input: checksum, name, size, reader, centre, time of ingest and the fields it
provides.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

_BLOCK = 1 << 22
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


__all__ = ["SourceFile", "dataset_source", "now_iso", "record_key", "record_keys",
           "sha256_file", "sha256_tree", "source_file"]
