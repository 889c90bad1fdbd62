"""``enspp validate STORE [--deep]``: is a store what its bookkeeping says it is?

Always checked: the root attributes and schema version; the bookkeeping arrays against the
template (one ``complete`` flag per record, ``present``/``source`` arrays for every variable);
each committed field has a recorded source, and the source lists it; each complete record
holds at least one field; the canonical data model on the first complete record.  Records an
interrupted ingest left unfinished are reported (they are hidden from readers and finished by
re-running that ingest).

``deep=True`` also reads every chunk that holds a committed field: a chunk that does not decode
(checksum mismatch, damaged compression) is *corrupt*, a chunk file that is gone is
*missing*, a committed field that reads as NaN everywhere is *inconsistent*.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enspp.data.lock import holder_of
from enspp.data.provenance import record_key
from enspp.data.schema import LEAD_TIME, validate
from enspp.data.store import (
    KIND_ATTR,
    READABLE_VERSIONS,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    StoreError,
    is_store,
    open_store,
    read_error_words,
    read_root_attrs,
    record_dim,
    suppress_zarr_warnings,
)

_EXAMPLES = 5


@dataclass(frozen=True)
class StoreReport:
    """What ``enspp validate`` says about a store."""

    path: str
    kind: str
    version: int
    complete: int
    incomplete: tuple[str, ...]
    variables: tuple[str, ...]
    sizes: Mapping[str, int]
    sources: int
    #: problem kind ("corrupt", "missing", "inconsistent") -> count
    counts: Mapping[str, int] = field(default_factory=dict)
    #: the first examples of each problem, one line each
    problems: tuple[str, ...] = ()
    deep: bool = False
    chunks_checked: int = 0
    #: the pid of an ingest writing the store while it was checked: its records and sources
    #: not yet committed are work in flight, not problems
    writer: int | None = None
    #: sources whose fields are not all committed yet (with a writer), one line each
    in_flight: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        rec = record_dim(self.kind)
        dims = ", ".join(f"{k}={v}" for k, v in self.sizes.items() if k != rec)
        state = "valid" if self.ok else "INVALID"
        line = (f"{self.path}: {state} {self.kind} store, {self.complete} complete {rec}s, "
                f"variables {list(self.variables)}, {dims}, {self.sources} source files")
        if self.version != SCHEMA_VERSION:
            line += (f"; schema version {self.version} (read as it is; the next ingest "
                     f"migrates it to version {SCHEMA_VERSION})")
        if self.deep:
            line += f"; deep check: {self.chunks_checked} chunks read"
        else:
            line += "; chunks not read (--deep decodes every one)"
        if self.incomplete and self.writer is not None:
            line += (f"; {len(self.incomplete)} {rec}s being written by an ingest (pid "
                     f"{self.writer}), not yet visible to readers: {list(self.incomplete[:3])}")
        elif self.incomplete:
            line += (f"; {len(self.incomplete)} unfinished {rec}s from an interrupted ingest "
                     f"(hidden from readers; re-run that ingest to finish them): "
                     f"{list(self.incomplete[:3])}")
        if self.in_flight:
            line += f"; {len(self.in_flight)} sources still being ingested"
        lines = [line]
        if self.counts:
            lines.append("problems: " + ", ".join(f"{n} {k}" for k, n in self.counts.items()))
            lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


class Problems:
    """Problems by kind: every one counted, the first :data:`_EXAMPLES` of each kind kept as
    one line ``kind: message``."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []
        self._per_kind: dict[str, int] = {}

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self._per_kind.get(kind, 0) < _EXAMPLES:
            self._per_kind[kind] = self._per_kind.get(kind, 0) + 1
            self.examples.append(f"{kind}: {message}")


def chunk_exists(arr: object, coords: tuple[int, ...]) -> bool:
    """True if the chunk file of the zarr array ``arr`` at chunk ``coords`` exists (a missing
    one reads as the fill value, silently)."""
    key = arr.metadata.encode_chunk_key(coords)  # type: ignore[attr-defined]
    path = f"{arr.path}/{key}" if arr.path else key  # type: ignore[attr-defined]
    store = arr.store_path.store  # type: ignore[attr-defined]
    root = getattr(store, "root", None)
    if root is not None:
        return (Path(root) / path).exists()
    from zarr.core.sync import sync

    return bool(sync(store.exists(path)))


def read_rows(arr: object, start: int, stop: int) -> tuple[np.ndarray | None,
                                                           list[tuple[tuple[int, ...], str]]]:
    """Rows ``start:stop`` (first axis) of the zarr array ``arr``, read chunk by chunk: the
    values, or ``None`` and each chunk that cannot be read as ``(chunk coords, why)`` (its
    file missing, or it does not decode)."""
    shape, chunks = tuple(arr.shape), tuple(arr.chunks)  # type: ignore[attr-defined]
    stop = min(stop, shape[0])
    first, last = start // chunks[0], -(-stop // chunks[0])
    base = first * chunks[0]
    out = np.empty((min(last * chunks[0], shape[0]) - base, *shape[1:]),
                   dtype=arr.dtype)  # type: ignore[attr-defined]
    bad: list[tuple[tuple[int, ...], str]] = []
    grid = [range(first, last)] + [range(-(-n // c)) for n, c in zip(shape[1:], chunks[1:])]
    with suppress_zarr_warnings():
        for coords in itertools.product(*grid):
            if not chunk_exists(arr, coords):
                bad.append((coords, "the chunk file is missing"))
                continue
            try:
                block = np.asarray(arr.get_block_selection(coords))  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - any decode failure
                bad.append((coords, read_error_words(e)))
                continue
            lo = [c * n for c, n in zip(coords, chunks)]
            lo[0] -= base  # ``out`` starts at the first row chunk
            out[tuple(slice(x, x + k) for x, k in zip(lo, block.shape))] = block
    if bad:
        return None, bad
    return out[start - base:stop - base], bad


def validate_store(path: str | os.PathLike[str], *, deep: bool = False) -> StoreReport:
    """Check a store (see the module doc); structural damage raises :class:`StoreError`,
    inconsistencies are listed in the report (``report.ok`` is False)."""
    from enspp.data.store_meta import StoreMetaError, iter_sources, open_meta

    root = Path(path)
    attrs = read_root_attrs(root)
    if attrs is None:
        raise StoreError(f"{path} is not a Zarr store (no zarr.json)")
    for key in (KIND_ATTR, SCHEMA_ATTR):
        if key not in attrs:
            raise StoreError(f"store {path}: attribute {key!r} is missing")
    version = attrs[SCHEMA_ATTR]
    if attrs[KIND_ATTR] not in ("forecast", "analysis"):
        raise StoreError(f"store {path}: enspp_kind {attrs[KIND_ATTR]!r}: not a forecast or "
                         "analysis store (a product is read with models.product.open_product)")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"store {path}: schema version {version!r}; this enspp reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version == 1:
        for key in ("provenance", "enspp_complete"):
            if key not in attrs:
                raise StoreError(f"store {path}: attribute {key!r} is missing")
    if not is_store(root):
        raise StoreError(f"store {path}: no consolidated metadata (its creation was interrupted; "
                         "re-run the ingest)")
    kind = str(attrs[KIND_ATTR])
    rec = record_dim(kind)
    problems = Problems()
    try:
        meta = open_meta(root, attrs)
    except StoreMetaError as e:
        raise StoreError(str(e)) from None
    full = open_store(root, complete_only=False)
    done = meta.complete
    ds = full.isel({rec: np.flatnonzero(full["complete"].values)}).drop_vars("complete")
    if ds.sizes[rec]:  # dims, coordinates, units (lazily: no chunk is read here)
        validate(ds, kind=kind, source=f"store {path}", allow_nan=True)  # type: ignore[arg-type]
    incomplete = tuple(record_key(v) for v, c in zip(full[rec].values, full["complete"].values)
                       if not c)
    n_sources = 0
    writer: int | None = None
    in_flight: list[str] = []
    if version >= 2:
        sources = {}
        try:
            for entry in iter_sources(root):
                sources[entry.ident] = entry
        except StoreMetaError as e:
            problems.add("inconsistent", str(e))
        n_sources = len(sources)
        writer = holder_of(root)
        _check_bookkeeping(meta, sources, problems, rec,
                           in_flight=in_flight if writer is not None else None)
    else:
        n_sources = len(attrs.get("provenance", {}).get("sources", []))
    checked = 0
    if deep:
        checked = _check_chunks(meta, problems, rec)
    return StoreReport(path=str(path), kind=kind, version=int(version), complete=int(done.sum()),
                       incomplete=incomplete, variables=tuple(map(str, ds.data_vars)),
                       sizes={str(k): int(v) for k, v in ds.sizes.items()}, sources=n_sources,
                       counts=dict(problems.counts), problems=tuple(problems.examples),
                       deep=deep, chunks_checked=checked, writer=writer,
                       in_flight=tuple(in_flight))


def _check_bookkeeping(meta: object, sources: Mapping[int, object], problems: Problems,
                       rec: str, *, in_flight: list[str] | None = None) -> None:
    """Check the flags against the provenance log.  ``in_flight``: an ingest holds the store,
    so a source whose fields are not all in yet is its work in progress (listed there), not
    a problem."""
    """Completion, presence and provenance agree with each other."""
    from enspp.data.store_meta import COMPLETE, PRESENT, SOURCE, id_hex, meta_shape

    group, n = meta.group, len(meta.records)  # type: ignore[attr-defined]
    n_leads = None if meta.leads is None else len(meta.leads)  # type: ignore[attr-defined]
    if COMPLETE not in group or group[COMPLETE].shape != (n,):
        problems.add("inconsistent", f"the completion array {COMPLETE} is missing or does not "
                                     f"have one flag per {rec} ({n})")
        return
    done = meta.complete  # type: ignore[attr-defined]
    any_present = np.zeros(n, dtype=bool)
    listed: dict[int, set[tuple[str, str, int | None]]] = {}
    for ident, entry in sources.items():
        listed[ident] = {(var, r, lead) for var, fs in entry.fields.items()  # type: ignore[attr-defined]
                         for r, lead in _fields(fs)}
    keys = [record_key(v) for v in meta.records]  # type: ignore[attr-defined]
    lead_s = (None if meta.leads is None else  # type: ignore[attr-defined]
              [int(x) for x in meta.leads // np.timedelta64(1, "s")])  # type: ignore[attr-defined]
    for var in meta.variables:  # type: ignore[attr-defined]
        want = meta_shape(meta.kind, n, n_leads)  # type: ignore[attr-defined]
        bad = [f"{sub}/{var}" for sub in (PRESENT, SOURCE)
               if f"{sub}/{var}" not in group or tuple(group[f"{sub}/{var}"].shape) != want]
        if bad:
            problems.add("inconsistent", f"bookkeeping array(s) {bad} missing or not of shape "
                                         f"{want}")
            continue
        present = meta.present(var)  # type: ignore[attr-defined]
        ids = meta.sources_of(var)  # type: ignore[attr-defined]
        any_present |= present.any(axis=1) if present.ndim == 2 else present
        for idx in np.argwhere(present & done[:, None] if present.ndim == 2 else present & done):
            i = tuple(int(x) for x in idx)
            ident = int(ids[i])
            lead = None if len(i) == 1 or lead_s is None else lead_s[i[1]]
            where = f"{var!r} at {rec} {keys[i[0]]}" + ("" if lead is None else f" +{lead / 3600:g} h")
            if ident == 0:
                problems.add("inconsistent", f"{where} is committed with no source")
            elif ident not in sources:
                problems.add("inconsistent", f"{where} comes from source {id_hex(ident)}, "
                                             "which the provenance log does not hold")
            elif (var, keys[i[0]], lead) not in listed[ident]:
                problems.add("inconsistent", f"{where} comes from "
                                             f"{sources[ident].name}, whose log entry does "  # type: ignore[attr-defined]
                                             "not list it")
    for i in np.flatnonzero(done & ~any_present):
        problems.add("inconsistent", f"{rec} {keys[i]} is complete but holds no field")
    for entry in sources.values():
        missing = list(meta.missing_fields(entry, limit=1))  # type: ignore[attr-defined]
        if missing and in_flight is not None:
            in_flight.append(str(entry.name))  # type: ignore[attr-defined]
        elif missing:
            var, r, lead, why = missing[0]
            problems.add("unfinished", f"source {entry.name}: its field {var!r} at {r}"  # type: ignore[attr-defined]
                                       f"{'' if lead is None else f' +{lead / 3600:g} h'} is "
                                       f"{why} (an interrupted ingest? re-run it)")


def _fields(fs: object) -> list[tuple[str, int | None]]:
    absent = set(fs.absent)  # type: ignore[attr-defined]
    if fs.leads is None:  # type: ignore[attr-defined]
        return [(r, None) for r in fs.records]  # type: ignore[attr-defined]
    return [(r, lead) for i, r in enumerate(fs.records)  # type: ignore[attr-defined]
            for j, lead in enumerate(fs.leads) if (i, j) not in absent]  # type: ignore[attr-defined]


def _check_chunks(meta: object, problems: Problems, rec: str) -> int:
    """Decode every chunk holding a committed field; count corrupt, missing, inconsistent."""
    from enspp.data.store import CheckedArray, StoreReadError

    done = meta.complete  # type: ignore[attr-defined]
    checked = 0
    with suppress_zarr_warnings():
        for var in meta.variables:  # type: ignore[attr-defined]
            arr = meta.group[var]  # type: ignore[attr-defined]
            checker = CheckedArray(arr, store=meta.root, variable=var, meta=meta, rec=rec)  # type: ignore[attr-defined]
            present = meta.present(var) & (done[:, None] if meta.leads is not None else done)  # type: ignore[attr-defined]
            dims = tuple(arr.metadata.dimension_names or ())
            lead_axis = len(dims) > 1 and dims[1] == LEAD_TIME
            grid = [range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks)]
            for coords in itertools.product(*grid):
                r0 = coords[0] * arr.chunks[0]
                rows = slice(r0, min(r0 + arr.chunks[0], arr.shape[0]))
                sub = present[rows]
                if sub.ndim == 2:
                    sub = sub[:, coords[1]] if lead_axis else sub.any(axis=1)
                if not sub.any():
                    continue
                checked += 1
                where = checker._describe(coords, "")[:-2]
                if not checker._chunk_exists(coords):
                    problems.add("missing", f"{where}: the chunk file is missing although its "
                                            "field was ingested")
                    continue
                try:
                    block = np.asarray(arr.get_block_selection(coords))
                except Exception as e:  # noqa: BLE001 - any decode failure
                    problems.add("corrupt", StoreReadError(checker._describe(
                        coords, read_error_words(e))).args[0])
                    continue
                values = block.reshape(block.shape[0], -1)
                for k in np.flatnonzero(sub):
                    if np.isnan(values[k]).all():
                        problems.add("inconsistent", f"{where}: record {k} of the chunk is "
                                                     "committed but holds only NaN")
    return checked


__all__ = ["Problems", "StoreReport", "chunk_exists", "read_rows", "validate_store"]
