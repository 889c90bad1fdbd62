"""Where the bytes of a store came from: source files with checksums, reader, timestamps.

A store's ``provenance`` attribute is a JSON-able dict::

    {"created": "2024-05-01T12:00:00Z", "updated": "...", "reader": "data.readers 1",
     "sources": [{"path": ".../a.grib", "name": "a.grib", "sha256": "...", "bytes": 123,
                  "reader": "...", "ingested": "...", "records": ["2020-01-01T00:00:00", ...]}]}

A source is recorded (with all the records it holds) when its first record is committed; it
is fully in the store when all its records are in ``enspp_complete``.  :func:`recorded_for`
answers "which checksums hold this record", the basis of idempotent re-ingest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

_BLOCK = 1 << 22


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


def source_file(path: str | os.PathLike[str]) -> SourceFile:
    p = Path(path)
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
    """The string under which a record (init time / time) is listed in attributes."""
    return str(np.datetime_as_string(np.datetime64(value, "ns"), unit="s"))


def new_provenance(*, reader: str) -> dict[str, Any]:
    ts = now_iso()
    return {"created": ts, "updated": ts, "reader": reader, "sources": []}


def recorded_for(provenance: Mapping[str, Any], key: str) -> set[str]:
    """Checksums of the recorded sources that hold record ``key``."""
    return {s["sha256"] for s in provenance.get("sources", []) if key in s.get("records", [])}


def recorded_records(provenance: Mapping[str, Any], sha256: str) -> list[str] | None:
    """The records of the source with checksum ``sha256``, or None if it is not recorded."""
    for s in provenance.get("sources", []):
        if s["sha256"] == sha256:
            return list(s.get("records", []))
    return None


def with_sources(provenance: Mapping[str, Any], sources: Iterable[tuple[SourceFile, Iterable[str]]],
                 *, reader: str) -> dict[str, Any]:
    """A copy of ``provenance`` recording each ``(source, records it holds)``; called when the
    first of a source's records is committed, so ``records`` lists all of them (complete or
    not: :func:`recorded_records` callers compare with the store's complete list)."""
    ts = now_iso()
    out = dict(provenance)
    entries = [dict(s) for s in provenance.get("sources", [])]
    for src, records in sources:
        entry = next((e for e in entries if e["sha256"] == src.sha256), None)
        if entry is None:
            entry = {"path": src.path, "name": src.name, "sha256": src.sha256, "bytes": src.size,
                     "reader": reader, "ingested": ts, "records": []}
            entries.append(entry)
        entry["records"] = sorted(set(entry["records"]) | set(records))
    out["sources"] = entries
    out["updated"] = ts
    return out
