"""A store's bookkeeping: which records are complete, which fields are present, where each
field came from (schema version 2).

Beside the data arrays, in the zarr group ``enspp/`` (which ``xarray.open_zarr`` of the store
does not show)::

    enspp/complete            uint8  (record)               1 once the record's first ingest finished
    enspp/present/<var>       uint8  (record[, lead_time])  1 once the field is written: its commit
    enspp/source/<var>        uint64 (record[, lead_time])  id of the source that wrote it (0: none)
    enspp/sources/<id>.json   one file per source (an append-only log): checksum, name, size,
                              reader, centre, time of ingest and the fields it provides; written
                              once, before any of its fields, and never changed

A *field* is one variable at one record and lead time (one chunk of a gridded store; a forecast
field holds every member and level).  A field a source does not provide is *absent*: its
``present`` flag stays 0 (it is not NaN inside a field, and it is no error).  The writer
commits a field by writing its ``source`` id and then its ``present`` flag after its data, and
commits a record by setting ``complete`` after all its fields; each of these is one chunk
replaced atomically, and none of them grows with the store, so a commit costs the same in a
store of 10 records as in one of 10,000.  Readers (:func:`data.store.open_store`) see a field
when its record is complete and the field is present.

Beside the store, ``.<store name>.digests.json`` (:func:`read_digests`) remembers the SHA-256 of
the input files ingested into it, each with the stat stamp it had when hashed, so a scheduled
ingest does not read again the bytes of files it already holds (:func:`data.provenance.identify_file`).
It is a cache: it never decides what is ingested (the provenance log does, by digest), it is
replaced whole and atomically by a writer holding the store's lock, and a missing or unreadable
one is read as empty (every file is then hashed, as without it).

Schema version 1 kept ``enspp_complete`` and ``provenance`` in the root attributes (rewritten,
whole, at every commit); :class:`StoreMeta` reads such a store as it is and the writer migrates
it once (:func:`migrate_v1`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enspp.data import durable as durable_mod
from enspp.data.errors import EnsppError

META_GROUP = "enspp"
COMPLETE = "enspp/complete"
PRESENT = "enspp/present"
SOURCE = "enspp/source"
SOURCES_DIR = "enspp/sources"
#: records per chunk of the bookkeeping arrays (a multiple of the point stores' data chunk)
META_RECORDS_PER_CHUNK = 512
#: root attributes of schema version 1
V1_COMPLETE_ATTR = "enspp_complete"
V1_PROVENANCE_ATTR = "provenance"


#: suffix of the file beside a store that remembers its inputs' digests
DIGESTS_SUFFIX = ".digests.json"
_DIGESTS_FORMAT = 1


class StoreMetaError(EnsppError):
    """A store's bookkeeping cannot be read (the message names the store and the file)."""


class DamagedStoreError(StoreMetaError):
    """A chunk of a store's bookkeeping arrays does not decode; ``root``: the store."""

    def __init__(self, message: str, *, root: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.root = Path(root)

    def of(self, root: str | os.PathLike[str]) -> bool:
        """Whether this is the damage of the store at ``root``."""
        return self.root.resolve() == Path(root).resolve()


def read_bookkeeping(root: str | os.PathLike[str], array: Any, name: str, read: Any
                     ) -> np.ndarray:
    """``read(array)`` of the store's bookkeeping array ``name``.  A chunk of it that does not
    decode (changed or cut short on disk: a disk fault, or a power loss on a store written
    before enspp flushed its commits) is a :class:`DamagedStoreError` naming the store and
    the array, not a traceback: the store cannot say which of its fields are committed, so
    it is rebuilt by ingesting its files into a new store."""
    try:
        return np.asarray(read(array))
    except MemoryError:
        raise
    except Exception as e:
        from enspp.data.store import read_error_words

        raise DamagedStoreError(
            f"store {root}: its bookkeeping array {name} cannot be read, "
            f"{read_error_words(e)}: the store cannot say which fields are committed; ingest "
            f"its files into a new store",
            root=root) from e


def source_id(sha256: str) -> int:
    """The 64-bit id of a source in ``enspp/source/<var>``: the first 16 hex digits of its
    SHA-256 (never 0, which means "no source")."""
    return int(sha256[:16], 16) or 1


def id_hex(ident: int) -> str:
    return f"{int(ident):016x}"


def source_path(root: str | os.PathLike[str], ident: int) -> Path:
    return Path(root) / SOURCES_DIR / f"{id_hex(ident)}.json"


@dataclass(frozen=True)
class FieldSet:
    """The fields one source provides for one variable: a rectangle of records (keys) by lead
    times (seconds; analyses: none) less the ``absent`` pairs of indices into both."""

    records: tuple[str, ...]
    leads: tuple[int, ...] | None
    absent: tuple[tuple[int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"records": list(self.records)}
        if self.leads is not None:
            out["lead_time_seconds"] = list(self.leads)
        if self.absent:
            out["absent"] = [list(p) for p in self.absent]
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FieldSet:
        leads = doc.get("lead_time_seconds")
        return cls(records=tuple(doc.get("records", [])),
                   leads=None if leads is None else tuple(int(x) for x in leads),
                   absent=tuple((int(a), int(b)) for a, b in doc.get("absent", [])))

    def count(self) -> int:
        return len(self.records) * (len(self.leads) if self.leads is not None else 1) - len(self.absent)


@dataclass(frozen=True)
class SourceEntry:
    """One line of the provenance log (``enspp/sources/<id>.json``)."""

    sha256: str
    path: str
    name: str
    size: int
    reader: str
    ingested: str
    centre: str | None = None
    fields: Mapping[str, FieldSet] = field(default_factory=dict)

    @property
    def ident(self) -> int:
        return source_id(self.sha256)

    @property
    def records(self) -> list[str]:
        return sorted({r for fs in self.fields.values() for r in fs.records})

    def to_json(self) -> dict[str, Any]:
        return {"id": id_hex(self.ident), "sha256": self.sha256, "path": self.path,
                "name": self.name, "bytes": self.size, "reader": self.reader,
                "ingested": self.ingested, "centre": self.centre,
                "fields": {v: fs.to_json() for v, fs in self.fields.items()}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SourceEntry:
        return cls(sha256=str(doc["sha256"]), path=str(doc.get("path", "")),
                   name=str(doc.get("name", "")), size=int(doc.get("bytes", 0)),
                   reader=str(doc.get("reader", "")), ingested=str(doc.get("ingested", "")),
                   centre=doc.get("centre"),
                   fields={str(v): FieldSet.from_json(fs) for v, fs in doc.get("fields", {}).items()})


def write_file_atomic(path: Path, data: bytes | memoryview | list[Any], *, tick: Any = None,
                      tmp_dir: Path | None = None, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it: a reader (or a
    crash) sees the old file or the new one, never half of one.  The temporary file lies in
    ``tmp_dir`` (on the same file system; the store's ``enspp/tmp``, which recovery clears)
    or beside ``path``.  ``data`` may be a list of pieces written in order.  ``tick`` is
    called after the write (the writer's fault hook).  ``durable``: the data flushed to disk
    before the rename and the rename after it (:mod:`enspp.data.durable`; a commit's own
    file: chunk data are flushed once per commit instead, by the commit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = (tmp_dir or path.parent) / f"{path.name}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as fh:
            for piece in data if isinstance(data, list) else [data]:
                fh.write(memoryview(piece))
            if durable:
                durable_mod.flush(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        durable_mod.sync_dir(path.parent)
    if tick is not None:
        tick()


def write_source(root: Path, entry: SourceEntry, *, tick: Any = None) -> None:
    """Add ``entry`` to the provenance log (once: an entry already there is kept)."""
    path = source_path(root, entry.ident)
    if path.exists():
        return
    write_file_atomic(path, json.dumps(entry.to_json(), sort_keys=True).encode(), tick=tick,
                      tmp_dir=Path(root) / "enspp" / "tmp")


def digests_path(root: str | os.PathLike[str]) -> Path:
    """``<parent>/.<store name>.digests.json``: beside the store (like its lock file), so
    remembering a digest never changes the store itself."""
    root = Path(root).absolute()
    return root.parent / f".{root.name}{DIGESTS_SUFFIX}"


def read_digests(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The remembered digests of ``root``'s inputs: resolved path -> ``KnownFile``; empty when
    there is no digest file or it cannot be read (a cache: every file is then hashed)."""
    from enspp.data.provenance import KnownFile

    try:
        doc = json.loads(digests_path(root).read_bytes())
        files = doc["files"] if doc.get("format") == _DIGESTS_FORMAT else {}
        return {str(path): KnownFile(int(a), int(b), int(c), int(d), str(sha))
                for path, (a, b, c, d, sha) in files.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def write_digests(root: str | os.PathLike[str], known: Mapping[str, Any], *,
                  keep: Any = os.path.exists) -> None:
    """Replace ``root``'s digest file with ``known`` (path -> ``KnownFile``) less the paths
    ``keep`` refuses (by default, files that are gone), atomically; the caller holds the
    store's lock.  Temporary files of a writer killed earlier are removed."""
    path = digests_path(root)
    for stale in path.parent.glob(f"{path.name}.*.partial"):
        stale.unlink(missing_ok=True)
    files = {p: [e.size, e.mtime_ns, e.ctime_ns, e.inode, e.sha256]
             for p, e in sorted(known.items()) if keep(p)}
    doc = {"format": _DIGESTS_FORMAT, "files": files}
    write_file_atomic(path, json.dumps(doc, separators=(",", ":")).encode())


def read_source(root: str | os.PathLike[str], ident: int) -> SourceEntry | None:
    path = source_path(root, ident)
    try:
        return SourceEntry.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        raise StoreMetaError(f"store {root}: provenance entry {path.name} is unreadable ({e})") from None


def iter_sources(root: str | os.PathLike[str]) -> Iterator[SourceEntry]:
    """Every entry of the provenance log (for inspect and validate: reads the whole log)."""
    folder = Path(root) / SOURCES_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            yield SourceEntry.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise StoreMetaError(f"store {root}: provenance entry {path.name} is unreadable "
                                 f"({e})") from None


class StoreMeta:
    """The bookkeeping of one store, read on demand (v2 arrays, or v1 root attributes).

    ``records``/``leads`` are in storage order (``open_store`` sorts them for readers).
    """

    def __init__(self, root: Path, *, version: int, kind: str, records: np.ndarray,
                 leads: np.ndarray | None, attrs: Mapping[str, Any], group: Any,
                 variables: Sequence[str]) -> None:
        self.root, self.version, self.kind = root, version, kind
        self.records, self.leads, self.attrs, self.group = records, leads, attrs, group
        self.variables = list(variables)
        self._complete: np.ndarray | None = None
        self._v1_sources: list[SourceEntry] | None = None

    # -- records ------------------------------------------------------------------------
    @property
    def complete(self) -> np.ndarray:
        """Boolean mask over :attr:`records`: the records whose first ingest finished."""
        if self._complete is None:
            if self.version == 1:
                from enspp.data.provenance import record_keys

                done = set(self.attrs.get(V1_COMPLETE_ATTR, []))
                self._complete = np.array([k in done for k in record_keys(self.records)],
                                          dtype=bool)
            else:
                n = len(self.records)
                self._complete = self._read(COMPLETE, lambda arr: arr[:n]).astype(bool)
        return self._complete

    # -- fields -------------------------------------------------------------------------
    def present(self, var: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``present[rows(, leads)]`` of ``var`` as booleans (all rows when None)."""
        rows = slice(0, len(self.records)) if rows is None else rows
        if self.version == 1:
            done = self.complete[rows]
            return np.repeat(done[:, None], len(self.leads), axis=1) if self.leads is not None else done
        return self._rows(f"{PRESENT}/{var}", rows).astype(bool)

    def sources_of(self, var: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """The source ids (uint64, 0: none) of ``var``'s fields at ``rows``."""
        rows = slice(0, len(self.records)) if rows is None else rows
        if self.version == 1:
            ids = self._v1_record_ids()[rows]
            return np.repeat(ids[:, None], len(self.leads), axis=1) if self.leads is not None else ids
        return self._rows(f"{SOURCE}/{var}", rows).astype(np.uint64)

    def field_digests(self, fields: Sequence[tuple[str, int]], records: np.ndarray
                      ) -> dict[str, str]:
        """Per record of ``records`` (``record_key`` -> digest): a short hash of the source
        ids of ``fields`` (``(variable, lead hours)`` pairs; the lead is ignored outside a
        forecast store) at that record.  It changes when any of those fields comes from other
        bytes than before (a store rebuilt from corrected files) or is written where it was
        absent, so a product can tell which of its init times were computed from other
        inputs.  Records the store does not hold are left out; absent fields count as id 0."""
        import hashlib

        from enspp.data.provenance import record_keys

        index = _index_of(self.records)
        keys = [k for k in record_keys(records) if k in index]
        if not keys:
            return {}
        rows = np.array([index[k] for k in keys], dtype=np.int64)
        cols = None if self.leads is None else _lead_index(self.leads)
        parts = []
        for var, lead_h in sorted(set(fields)):
            if var not in self.variables:
                parts.append(np.zeros((len(rows), 1), dtype=np.uint64))
                continue
            ids = self.sources_of(var, rows)
            if cols is not None:
                col = cols.get(int(lead_h) * 3600)
                ids = (np.zeros(len(rows), dtype=np.uint64) if col is None
                       else ids[:, col])
            parts.append(np.asarray(ids, dtype=np.uint64).reshape(len(rows), -1))
        table = np.ascontiguousarray(np.concatenate(parts, axis=1))
        return {k: hashlib.sha256(table[i].tobytes()).hexdigest()[:16]
                for i, k in enumerate(keys)}

    def _rows(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        if name not in self.group:
            raise StoreMetaError(f"store {self.root}: bookkeeping array {name} is missing "
                                 f"(run `enspp validate {self.root}`)")
        n_leads = None if self.leads is None else len(self.leads)
        if isinstance(rows, slice):
            return self._read(name, lambda arr: arr[rows] if n_leads is None else
                              arr[rows, :n_leads])
        index = np.asarray(rows, dtype=np.int64)
        return self._read(name, lambda arr: arr.oindex[index] if n_leads is None else
                          arr.oindex[index, :n_leads])

    def _read(self, name: str, read: Any) -> np.ndarray:
        return read_bookkeeping(self.root, self.group[name], name, read)

    # -- sources ------------------------------------------------------------------------
    def source(self, ident: int) -> SourceEntry | None:
        if self.version == 1:
            return next((s for s in self._v1_entries() if s.ident == ident), None)
        return read_source(self.root, ident)

    def sources(self) -> list[SourceEntry]:
        return self._v1_entries() if self.version == 1 else list(iter_sources(self.root))

    def source_names(self, idents: Iterable[int]) -> str:
        names = []
        for ident in sorted({int(i) for i in idents if int(i)}):
            entry = self.source(ident)
            names.append(entry.name if entry is not None else f"unrecorded source {id_hex(ident)}")
        return ", ".join(names) or "unrecorded source"

    def _v1_entries(self) -> list[SourceEntry]:
        if self._v1_sources is None:
            prov = self.attrs.get(V1_PROVENANCE_ATTR, {}) or {}
            variables = self.variables
            leads = None if self.leads is None else tuple(_seconds(self.leads))
            self._v1_sources = [SourceEntry(
                sha256=s["sha256"], path=s.get("path", ""), name=s.get("name", ""),
                size=int(s.get("bytes", 0)), reader=s.get("reader", prov.get("reader", "")),
                ingested=s.get("ingested", prov.get("created", "")),
                fields={v: FieldSet(records=tuple(s.get("records", [])), leads=leads)
                        for v in variables}) for s in prov.get("sources", [])]
        return self._v1_sources

    def _v1_record_ids(self) -> np.ndarray:
        from enspp.data.provenance import record_keys

        first: dict[str, int] = {}
        for entry in self._v1_entries():
            for key in entry.records:
                first.setdefault(key, entry.ident)
        return np.array([first.get(k, 0) for k in record_keys(self.records)], dtype=np.uint64)

    def is_ingested(self, sha256: str) -> bool:
        """True if the source with this checksum is recorded and every field it provides is
        committed (present, written by it) in a complete record."""
        return self.ingested([sha256])[0]

    def ingested(self, sha256s: Sequence[str]) -> list[bool]:
        """:meth:`is_ingested` of many sources at once: each variable's flags are read once,
        at the records of all of them, not once per source."""
        entries = []
        for sha in sha256s:
            entry = self.source(source_id(sha))
            entries.append(entry if entry is not None and entry.sha256 == sha else None)
        flags = _Flags(self, [e for e in entries if e is not None])
        return [e is not None and not list(self.missing_fields(e, limit=1, flags=flags))
                for e in entries]

    def missing_fields(self, entry: SourceEntry, *, limit: int | None = None,
                       flags: _Flags | None = None) -> Iterator[tuple[str, str, int | None, str]]:
        """The fields ``entry`` lists that the store does not hold from it, as
        ``(variable, record, lead seconds or None, why)``; ``flags``: the store's flags
        already read (by :meth:`ingested`)."""
        flags = flags or _Flags(self, [entry])
        rec_index, lead_index = flags.rec_index, flags.lead_index
        want = np.uint64(source_id(entry.sha256))
        found = 0
        for var, fs in entry.fields.items():
            rows = np.array([rec_index.get(r, -1) for r in fs.records], dtype=np.int64)
            cols = (None if fs.leads is None or lead_index is None else
                    np.array([lead_index.get(s, -1) for s in fs.leads], dtype=np.int64))
            if (rows < 0).any() or (cols is not None and (cols < 0).any()) or \
                    not flags.has(var):
                yield var, fs.records[0] if fs.records else "", None, "not in the store's template"
                found += 1
                if limit is not None and found >= limit:
                    return
                continue
            present, ids = flags.at(var, rows)
            done = self.complete[rows]
            if cols is not None:
                present, ids, done = present[:, cols], ids[:, cols], done[:, None]
            why = np.where(~present, 1, np.where(ids != want, 2, np.where(~done, 3, 0)))
            for i, j in fs.absent:
                why[(i, j) if cols is not None else i] = 0
            for idx in np.argwhere(why > 0):
                i, j = int(idx[0]), int(idx[1]) if cols is not None else 0
                yield (var, fs.records[i], None if fs.leads is None else fs.leads[j],
                       _WHY[int(why[tuple(idx)])])
                found += 1
                if limit is not None and found >= limit:
                    return


_WHY = {1: "not present", 2: "written by another source", 3: "record not complete"}


class _Flags:
    """The ``present`` flags and source ids of a store's variables at the records some
    provenance entries name, each variable read once (one orthogonal selection)."""

    def __init__(self, meta: StoreMeta, entries: Sequence[SourceEntry]) -> None:
        self.meta = meta
        self.rec_index = _index_of(meta.records)
        self.lead_index = None if meta.leads is None else _lead_index(meta.leads)
        wanted: dict[str, set[int]] = {}
        for entry in entries:
            for var, fs in entry.fields.items():
                wanted.setdefault(var, set()).update(self.rec_index.get(r, -1) for r in fs.records)
        self._rows = {var: np.array(sorted(r for r in rows if r >= 0), dtype=np.int64)
                      for var, rows in wanted.items()}
        self._read: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def has(self, var: str) -> bool:
        """False for a variable without bookkeeping arrays (not in the store's template)."""
        if var not in self._read:
            if self.meta.version == 2 and f"{PRESENT}/{var}" not in self.meta.group:
                self._read[var] = None
            else:
                rows = self._rows.get(var, np.zeros(0, dtype=np.int64))
                self._read[var] = (self.meta.present(var, rows), self.meta.sources_of(var, rows))
        return self._read[var] is not None

    def at(self, var: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``present`` and source ids of ``var`` at ``rows`` (records this object read)."""
        read = self._read[var] if self.has(var) else None
        assert read is not None
        pos = np.searchsorted(self._rows[var], rows)
        return read[0][pos], read[1][pos]


def open_meta(root: str | os.PathLike[str], attrs: Mapping[str, Any] | None = None) -> StoreMeta:
    """The bookkeeping of the store at ``root`` (its root attributes already read, or not)."""
    import zarr

    from enspp.data.store import KIND_ATTR, SCHEMA_ATTR, read_root_attrs, record_dim, suppress_zarr_warnings

    root = Path(root)
    attrs = read_root_attrs(root) if attrs is None else attrs
    if attrs is None or KIND_ATTR not in attrs:
        raise StoreMetaError(f"{root} is not an enspp store")
    kind = str(attrs[KIND_ATTR])
    rec = record_dim(kind)
    with suppress_zarr_warnings():
        group = zarr.open_group(root, mode="r", use_consolidated=True)
    records = decode_times(group[rec], where=f"store {root}")
    leads = decode_leads(group["lead_time"], where=f"store {root}") if kind == "forecast" else None
    variables = [name for name, arr in group.arrays()
                 if (arr.metadata.dimension_names or (None,))[0] == rec and name != rec]
    meta = StoreMeta(root, version=int(attrs.get(SCHEMA_ATTR, 0)), kind=kind, records=records,
                     leads=leads, attrs=attrs, group=group, variables=variables)
    return meta


_TIME_UNITS = {"days": "D", "hours": "h", "minutes": "m", "seconds": "s", "milliseconds": "ms",
               "microseconds": "us", "nanoseconds": "ns"}


def decode_times(arr: Any, *, where: str) -> np.ndarray:
    """A record coordinate (int64 ``seconds since 1970-01-01``) as datetime64[ns]."""
    units = str(arr.attrs.get("units", ""))
    if units != "seconds since 1970-01-01":
        raise StoreMetaError(f"{where}: record coordinate has units {units!r}; expected "
                             f"'seconds since 1970-01-01'")
    raw = np.asarray(arr[:]).astype(np.int64)
    return (np.datetime64(0, "s") + raw.astype("timedelta64[s]")).astype("datetime64[ns]")


def decode_leads(arr: Any, *, where: str) -> np.ndarray:
    """The ``lead_time`` coordinate (integers in its CF ``units``) as timedelta64[ns]."""
    units = str(arr.attrs.get("units", ""))
    if units not in _TIME_UNITS:
        raise StoreMetaError(f"{where}: lead_time has units {units!r} (expected one of "
                             f"{sorted(_TIME_UNITS)})")
    raw = np.asarray(arr[:])
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.allclose(raw, np.round(raw)):
            raise StoreMetaError(f"{where}: lead_time values are not whole {units}")
        raw = np.round(raw)
    return raw.astype(np.int64).astype(f"timedelta64[{_TIME_UNITS[units]}]").astype("timedelta64[ns]")


def encode_leads(values: np.ndarray, units: str, *, where: str) -> np.ndarray:
    """Lead times as integers in ``units`` (the store's encoding); an error when one is not a
    whole number of them."""
    step = np.timedelta64(1, _TIME_UNITS[units]).astype("timedelta64[ns]")
    ns = np.asarray(values, dtype="timedelta64[ns]")
    if (ns % step != np.timedelta64(0, "ns")).any():
        raise StoreMetaError(f"{where}: lead_time is stored in whole {units}; lead times "
                             f"{[str(v) for v in ns[ns % step != np.timedelta64(0, 'ns')][:3]]} "
                             "are not (write them to a new store)")
    return (ns // step).astype(np.int64)


def _seconds(leads: np.ndarray) -> list[int]:
    return [int(x) for x in (np.asarray(leads, dtype="timedelta64[ns]")
                             // np.timedelta64(1, "s"))]


def _index_of(records: np.ndarray) -> dict[str, int]:
    from enspp.data.provenance import record_keys

    return {k: i for i, k in enumerate(record_keys(records))}


def _lead_index(leads: np.ndarray) -> dict[int, int]:
    return {s: i for i, s in enumerate(_seconds(leads))}


def lead_seconds(leads: np.ndarray) -> list[int]:
    """Lead times (timedelta64) as whole seconds, the unit of the provenance log."""
    return _seconds(leads)


def meta_shape(kind: str, n_records: int, n_leads: int | None) -> tuple[int, ...]:
    return (n_records,) if kind != "forecast" or n_leads is None else (n_records, n_leads)


def meta_chunks(kind: str, n_leads: int | None) -> tuple[int, ...]:
    return ((META_RECORDS_PER_CHUNK,) if kind != "forecast" or n_leads is None
            else (META_RECORDS_PER_CHUNK, max(1, n_leads)))


def create_field_arrays(group: Any, var: str, *, kind: str, n_records: int,
                        n_leads: int | None, dims: Sequence[str]) -> None:
    """The ``present``/``source`` arrays of a new variable (every field absent)."""
    shape, chunks = meta_shape(kind, n_records, n_leads), meta_chunks(kind, n_leads)
    for sub, dtype in ((PRESENT, np.uint8), (SOURCE, np.uint64)):
        group.require_group(sub).create_array(
            var, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            dimension_names=tuple(dims), overwrite=True)


def create_meta(group: Any, *, kind: str, rec: str, n_records: int, n_leads: int | None,
                variables: Sequence[str]) -> None:
    """The bookkeeping group of a new store (nothing complete, nothing present)."""
    meta = group.require_group(META_GROUP)
    meta.create_array("complete", shape=(n_records,), chunks=(META_RECORDS_PER_CHUNK,),
                      dtype=np.uint8, fill_value=0, dimension_names=(rec,), overwrite=True)
    dims = (rec, "lead_time") if kind == "forecast" and n_leads is not None else (rec,)
    for var in variables:
        create_field_arrays(group, var, kind=kind, n_records=n_records, n_leads=n_leads, dims=dims)


__all__ = ["COMPLETE", "DIGESTS_SUFFIX", "DamagedStoreError", "FieldSet", "META_GROUP", "META_RECORDS_PER_CHUNK", "PRESENT", "SOURCE",
           "SOURCES_DIR", "SourceEntry", "StoreMeta", "StoreMetaError", "create_field_arrays",
           "create_meta", "decode_leads", "decode_times", "digests_path", "encode_leads", "id_hex", "iter_sources", "lead_seconds", "meta_chunks", "meta_shape", "open_meta",
           "read_bookkeeping", "read_digests", "read_source", "source_id", "source_path",
           "write_digests", "write_file_atomic", "write_source"]
