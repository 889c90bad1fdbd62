"""Ingest GRIB / NetCDF / Zarr files into a versioned store (:mod:`data.store`).

```python
summary = ingest(["fc/*.grib"], "stores/forecast.zarr")   # files, directories, globs
print(summary.line())
```

Default policy (``on_error="raise"``): every file is read, validated and checked against the
store and the other files first; if any is bad, nothing is written and :class:`IngestError`
names each bad file and its problem.  ``on_error="skip"`` lands the good files and lists the
bad ones in the summary.  Files already ingested (same SHA-256, all their records complete)
are skipped without being decoded, so re-running an ingest changes nothing; the digests of the
files ingested are remembered beside the store with their stat stamps, so those unchanged since
are not even read again (:func:`data.provenance.identify_file`, :func:`ingested`).

GRIB is decoded directly with eccodes by :func:`data.ingest_grib.open_grib_lazy` (not cfgrib, and
not the per-message ``shortName`` lookups of ``data.readers.read_grib_eccodes``: see that
module for why): headers are checked when a file is read, values are decoded chunk by chunk
in the writer's threads; other formats go through :mod:`data.readers`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from enspp.data import provenance as prov
from enspp.data import store_meta as sm
from enspp.data.errors import EnsppError
from enspp.data.field_checks import Bounds
from enspp.data.grib import expand_inputs
from enspp.data.ingest_grib import DECODE_BUDGET, open_grib_lazy
from enspp.data.progress import plural
from enspp.data.provenance import SourceFile
from enspp.data.schema import MEMBER, STATION, Kind
from enspp.data.station import Part, StationOptions, is_station_part, read_station_part
from enspp.data.store import record_dim
from enspp.data.store_writer import AppendResult, Staged, StoreWriter, open_writer, reader_version

#: Suffixes picked from a directory (a file named explicitly is read whatever its name).
INPUT_SUFFIXES = (".grib", ".grb", ".grib2", ".grb2", ".grib1", ".nc", ".nc4", ".netcdf", ".csv")


class IngestError(EnsppError):
    """One or more inputs were refused; ``failures`` lists ``(file, problem)`` pairs.  The
    message is a few lines: files refused for the same problem are told once (a directory of
    hundreds of files with one problem gives one line, not kilobytes), the first few problems
    named, the rest counted."""

    def __init__(self, failures: Sequence[tuple[str, str]], *, store: str) -> None:
        self.failures, self.store = tuple(failures), store
        super().__init__(f"{len(self.failures)} of the inputs refused, store {store} left "
                         f"unchanged:\n  " + summarise(self.failures, sep="\n  "))

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled by task runners in other processes: keep the files' problems
        return (partial(type(self), store=self.store), (self.failures,))


def summarise(failures: Sequence[tuple[str, str]], *, first: int = 3, sep: str = "; ") -> str:
    """The first ``first`` problems, each with the files it concerns (the first two named,
    the rest counted), then a count of the files with other problems; joined by ``sep``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path, msg in failures:
        groups.setdefault(_problem(path, msg), []).append(path)
    items = []
    for (joint, problem), paths in list(groups.items())[:first]:
        names = ", ".join(paths[:2])
        if len(paths) > 2:
            names += f" and {len(paths) - 2} more files"
        items.append(_clip(f"{names}{joint}{problem}"))
    rest = sum(len(paths) for paths in list(groups.values())[first:])
    if rest:
        other = len(groups) - first
        items.append(f"and {rest} more file{'s' if rest > 1 else ''} "
                     f"({other} other problem{'s' if other > 1 else ''})")
    return sep.join(items)


def _problem(path: str, msg: str) -> tuple[str, str]:
    """``msg`` without the file it is about (and what joined them): the leading name
    dropped, later mentions 'this file', so one problem of many files reads the same."""
    for lead in (path, f"store {path}"):  # an input that is one of our stores names it so
        for joint in (": ", " "):
            if msg.startswith(lead + joint):
                return joint, msg[len(lead + joint):].replace(path, "this file")
    return ": ", msg.replace(path, "this file")


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest did (``line()`` is the one-line report of ``enspp ingest``)."""

    store: str
    kind: str
    files: int
    files_already_ingested: int
    added: tuple[str, ...]
    repaired: tuple[str, ...]
    skipped: tuple[str, ...]
    members: int
    variables: tuple[str, ...]
    bytes_read: int
    bytes_written: int
    seconds: float
    failed: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    extended: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: records the inputs held without any value (every member NaN): not in the store
    left_out: tuple[str, ...] = ()
    #: records written with only some of their members (station data)
    members_missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        rec = record_dim(self.kind).replace("_", " ")
        head = (f"ingest {self.store}: {plural(len(self.added), rec)} added, {len(self.skipped)} "
                f"skipped (already in the store)")
        if self.repaired:
            head += f", {len(self.repaired)} repaired (finished after an interrupted ingest)"
        if self.extended:
            head += f", {len(self.extended)} extended with new fields"
        if not self.added and not self.repaired and not self.extended:
            head += ", store unchanged"
        tail = (f"; {plural(self.files, 'file')} ({self.files_already_ingested} already ingested); "
                f"{self.members} member{'' if self.members == 1 else 's'}; "
                f"{len(self.variables)} variable{'' if len(self.variables) == 1 else 's'} "
                f"({', '.join(self.variables)}); read {_mb(self.bytes_read)}, wrote "
                f"{_mb(self.bytes_written)} in {self.seconds:.1f} s")
        if self.failed:
            tail += f"; {len(self.failed)} files FAILED: " + summarise(self.failed)
        for note in self.notes:
            tail += f"; {note}"
        return head + tail


def collect_inputs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files, directories (their GRIB/NetCDF files, sorted; a Zarr store is one input) and
    glob patterns -> a sorted list of inputs without repeats.  Raises FileNotFoundError
    naming a path that does not exist or a pattern/directory that matches nothing."""
    out = expand_inputs(paths, suffixes=INPUT_SUFFIXES, what="input files",
                        error=FileNotFoundError, is_unit=_is_zarr)
    seen: dict[Path, None] = {}
    for p in out:
        seen.setdefault(p.resolve(), None)
    return list(seen)


def _is_zarr(path: Path) -> bool:
    return any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zmetadata"))


def read_input(path: Path, *, kind: Kind | None, allow_nan: bool = False,
               decode_budget: int = DECODE_BUDGET, station: StationOptions | None = None,
               station_part: Part | None = None) -> xr.Dataset:
    """One input as a canonical dataset, lazily: GRIB (headers checked now, values decoded
    when indexed, the first ``decode_budget`` bytes of them by the header scan; close the
    dataset after), our own stores, WeatherBench 2 / CF Zarr and NetCDF (dask-backed,
    :mod:`data.cf_readers`), station files through :mod:`data.station` (``station`` options;
    ``station_part``: the ensemble, the observations or the deterministic forecast, by
    default the observations for ``kind="analysis"`` and the ensemble otherwise)."""
    from enspp.data.sources import detect_format

    fmt = detect_format(path)
    if fmt == "grib":
        return open_grib_lazy(path, kind=kind, allow_nan=allow_nan, decode_budget=decode_budget)
    if fmt == "station":
        part = station_part or ("observation" if kind == "analysis" else "ensemble")
        return read_station_part(path, part, station)
    if fmt == "zarr":  # one of our stores: its complete records, absent fields masked
        from enspp.data.store import open_store

        return open_store(path)
    from enspp.data.cf_readers import open_cf

    return open_cf(path, kind=kind)  # WeatherBench 2 / CF Zarr or NetCDF, lazily


def ingest(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
           store: str | os.PathLike[str], *, kind: Kind | None = None, progress: bool = True,
           on_error: Literal["raise", "skip"] = "raise", allow_nan: bool = False,
           lock_timeout: float | None = 300.0, workers: int = 2,
           bounds: Mapping[str, Bounds | None] | None = None,
           allow_mixed_centres: bool = False, station: StationOptions | None = None,
           station_part: Part | None = None) -> IngestSummary:
    """Ingest ``paths`` into ``store`` (created on first use); see the module docstring.

    ``kind``: "forecast" | "analysis", detected from the files when None.  ``allow_nan``:
    accept NaN inside fields (an error by default; a field an input does not provide is
    recorded as absent either way; station files accept NaN, their records have gaps).
    ``lock_timeout``: seconds to wait for another ingest of the same store.  ``workers``:
    threads reading files (eccodes releases the GIL).  ``bounds``: plausible ranges per
    variable overriding :data:`data.field_checks.DEFAULT_BOUNDS` (None for a variable: no
    check).  ``allow_mixed_centres``: accept inputs from several originating centres in one
    store.  ``station``/``station_part``: how station files are read and which of their
    parts goes into the store (:func:`read_input`).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    t0 = time.perf_counter()
    files = collect_inputs(paths)
    bar = _Progress(enabled=progress)
    opened: list[xr.Dataset] = []  # lazily decoded inputs, closed (handles freed) at the end
    with open_writer(store, kind=kind, lock_timeout=lock_timeout, on_wait=bar.note,
                     allow_mixed_centres=allow_mixed_centres) as writer, _closing(opened):
        known = sm.read_digests(store)
        staged, failures, already, nbytes, skipped, hashed = _read_all(
            writer, files, kind=kind, allow_nan=allow_nan, workers=workers, bar=bar,
            opened=opened, bounds=bounds, station=station, station_part=station_part,
            known=known)
        plan = writer.plan() if writer.kind is not None else None
        for item in staged:
            assert plan is not None
            try:
                writer.add(plan, item)
            except ValueError as e:
                if _target_damaged(e, writer):
                    raise
                failures.append((item.name, str(e)))
        if failures and on_error == "raise":
            raise IngestError(failures, store=str(store))
        if plan is None:  # nothing readable and nothing new
            result = AppendResult(store=str(store), kind=writer.kind or kind or "forecast")
        else:
            bar.start("writing", len(plan.commit))
            result = writer.write(plan, progress=lambda _k: bar.step(),
                                  reader=reader_version())
        bar.close()
        members, variables = _shape_of(writer, plan)
        if hashed and Path(store).exists():  # still holding the store's lock
            done = sm.open_meta(store).ingested([src.sha256 for src, _ in hashed])
            _remember(store, {src.path: e for (src, e), ok in zip(hashed, done) if ok},
                      known=known)
    return IngestSummary(store=str(store), kind=result.kind, files=len(files),
                         files_already_ingested=already, added=result.added,
                         repaired=result.repaired,
                         skipped=tuple(sorted(set(result.skipped) | set(skipped))),
                         members=members,
                         variables=variables, bytes_read=nbytes,
                         bytes_written=result.bytes_written,
                         seconds=time.perf_counter() - t0, failed=tuple(failures),
                         extended=result.extended, notes=result.notes,
                         left_out=result.left_out, members_missing=result.members_missing)


def new_inputs(paths: Sequence[str | os.PathLike[str]], store: str | os.PathLike[str]
               ) -> tuple[list[str], list[str]]:
    """``(new, done)``: the files of ``paths`` (files, directories, globs; see
    :func:`collect_inputs`) not yet fully in ``store``, and those already in it (same SHA-256,
    all their records complete; files remembered unchanged are not read: :func:`ingested`).
    A path that matches nothing is kept as new, so ingesting it fails with a clear message."""
    files: list[Path] = []
    for p in paths:
        try:
            files.extend(collect_inputs([p]))
        except FileNotFoundError:
            files.append(Path(p))
    unique = list(dict.fromkeys(files))
    present = [f for f in unique if f.exists()]
    known = dict(zip(present, ingested(present, store)))
    return ([str(f) for f in unique if not known.get(f, False)],
            [str(f) for f in unique if known.get(f, False)])


def ingested(files: Sequence[str | os.PathLike[str]], store: str | os.PathLike[str], *,
             workers: int = 2) -> list[bool]:
    """For each existing input of ``files``: is it in ``store`` already (the same bytes recorded
    and every field it provides committed)?  Files whose digest the store remembers with an
    unchanged stat stamp are not read (:func:`data.provenance.identify_file`); the digests of
    the others found ingested are remembered when the store's lock is free (else next time)."""
    from enspp.data.lock import store_lock
    from enspp.data.store import is_store

    if not files or not Path(store).exists() or not is_store(store):
        return [False] * len(files)
    known = sm.read_digests(store)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = identify_all(files, known=known, pool=pool)
    done = sm.open_meta(store).ingested([src.sha256 for src, _ in found])
    learned = {src.path: entry for (src, entry), ok in zip(found, done) if ok and entry}
    if learned:
        try:
            with store_lock(store, timeout=0):
                _remember(store, learned, known=sm.read_digests(store))
        except (EnsppError, OSError):  # busy (its ingest remembers its own files) or read-only
            pass
    return done


def identify_all(files: Sequence[str | os.PathLike[str]], *,
                 known: Mapping[str, prov.KnownFile], pool: Executor
                 ) -> list[tuple[SourceFile, prov.KnownFile | None]]:
    """:func:`data.provenance.identify_file` of each of ``files``: those ``known`` holds
    unchanged recalled in turn (a stat each), the others hashed in ``pool``'s threads."""
    recalled = [prov.recall_file(f, known=known) for f in files]
    hashed = iter(pool.map(lambda f: prov.identify_file(f, known={}),
                           [f for f, src in zip(files, recalled) if src is None]))
    return [(src, None) if src is not None else next(hashed) for src in recalled]


def _remember(store: str | os.PathLike[str], learned: Mapping[str, prov.KnownFile], *,
              known: Mapping[str, prov.KnownFile]) -> None:
    """Add ``learned`` to the store's remembered digests (``known``: as read), rewriting the
    digest file only when that changes it; the caller holds the store's lock."""
    if learned and any(known.get(path) != entry for path, entry in learned.items()):
        sm.write_digests(store, {**known, **learned})


def _read_all(writer: StoreWriter, files: list[Path], *, kind: Kind | None, allow_nan: bool,
              workers: int, bar: _Progress, opened: list[xr.Dataset],
              bounds: Mapping[str, Bounds | None] | None = None,
              station: StationOptions | None = None, station_part: Part | None = None,
              known: Mapping[str, prov.KnownFile] | None = None
              ) -> tuple[list[Staged], list[tuple[str, str]], int, int, list[str],
                         list[tuple[SourceFile, prov.KnownFile]]]:
    """Identify every file (hashing only those ``known`` does not hold unchanged), skip those
    already ingested, read and validate the rest (in threads).  Also returns the files hashed
    whose digest may be remembered once they are in the store
    (:func:`data.provenance.identify_file`).

    GRIB files are opened lazily (headers read and checked, values decoded later by the
    writer's threads, chunk by chunk); every dataset read is appended to ``opened``."""
    bar.start("reading", len(files))
    # every file stays open until the write: one decode budget for the whole ingest
    budget = DECODE_BUDGET // max(1, len(files))

    def load(path: Path) -> tuple[xr.Dataset | None, str | None]:
        try:
            # decode as what the file says it is (unless --kind): a forecast file offered to an
            # analysis store is then refused as such by StoreWriter.prepare
            ds = read_input(path, kind=kind, allow_nan=allow_nan, decode_budget=budget,
                            station=station, station_part=station_part)
            opened.append(ds)
            return ds, None
        except (ValueError, OSError) as e:  # ReaderError, SchemaError, unreadable file
            if _target_damaged(e, writer):
                raise
            msg = str(e)
            return None, msg if str(path) in msg else f"{path}: {msg}"

    staged: list[Staged] = []
    skipped_records: list[str] = []
    failures: list[tuple[str, str]] = []
    already = nbytes = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = identify_all(files, known=known or {}, pool=pool)
        # one look at the store's bookkeeping for all the files, before any is decoded
        done = (writer.meta.ingested([src.sha256 for src, _ in found])
                if writer.meta is not None else [False] * len(files))
        todo = [p for p, ok in zip(files, done) if not ok]
        loaded = dict(zip(todo, pool.map(load, todo)))
        for path, (src, _), ok in zip(files, found, done):
            bar.step()
            nbytes += src.size
            if ok:
                already += 1
                skipped_records.extend(writer.records_of(src))
                continue
            ds, error = loaded[path]
            if error is not None:
                failures.append((str(path), error))
                continue
            assert ds is not None
            try:
                # station records have gaps: a missing member or observation is NaN
                # (in a station file, and in a station store given as input)
                gaps = is_station_part(ds) or STATION in ds.dims
                staged.append(writer.prepare(ds, name=str(path), sources=(src,),
                                             allow_nan=allow_nan or gaps, bounds=bounds))
            except ValueError as e:
                if _target_damaged(e, writer):
                    raise
                ds.close()  # refused: its decoded values need not wait for the write
                msg = str(e)
                failures.append((str(path), msg if str(path) in msg else f"{path}: {msg}"))
    hashed = [(src, entry) for src, entry in found if entry is not None]
    return staged, failures, already, nbytes, skipped_records, hashed


def _target_damaged(e: BaseException, writer: StoreWriter) -> bool:
    """Whether ``e`` is damage of the store being written (not of an input store): the
    ingest stops with it instead of refusing the input it was checking."""
    return isinstance(e, sm.DamagedStoreError) and e.of(writer.root)


@contextmanager
def _closing(datasets: list[xr.Dataset]) -> Iterator[None]:
    try:
        yield
    finally:
        for ds in datasets:
            ds.close()


def _shape_of(writer: StoreWriter, plan: object) -> tuple[int, tuple[str, ...]]:
    """Members and variables of the store as the ingest leaves it."""
    layout = getattr(plan, "layout", None) or writer.layout
    members = len(layout.coords[MEMBER]) if MEMBER in layout.coords else 1
    return members, tuple(sorted(layout.variables))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class _Progress:
    """A tqdm bar on stderr that appears only when a phase lasts over a second."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None

    def start(self, what: str, total: int) -> None:
        self.close()
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit="item", delay=1.0, file=sys.stderr,
                             leave=False, disable=None)  # None: off when stderr is no tty

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["IngestError", "IngestSummary", "collect_inputs", "ingest", "ingested", "new_inputs",
           "read_input", "summarise"]
