"""Appending to a store: idempotent, atomic whatever the moment a process is killed, at a cost
that does not grow with the store.

Protocol, all under the store's lock (:mod:`data.lock`):

1. *recover* (:func:`data.store_template.recover`): temporary files of a killed writer
   removed, template changes it did not commit rolled back;
2. *stage* (:meth:`StoreWriter.prepare`): each input validated (``data.schema``), put in
   store layout and checked field by field (:mod:`data.field_checks`: which fields it holds,
   NaN policy, plausible values);
3. *plan* (:meth:`StoreWriter.add`, :mod:`data.store_plan`): each input checked against the store and the inputs
   before it (same grid, members, levels and station set; a variable keeps its dims and
   units; one originating centre unless mixing is allowed); a field already in the store
   from the same bytes is skipped, from other bytes refused, a field given by two inputs
   refused.  New records, lead times and variables extend the store.  Nothing is written
   until every input passed, so a refused batch leaves the store byte-identical;
4. *write* (:meth:`StoreWriter.write`): a schema-1 store is migrated; the sources are added
   to the provenance log; the template is extended and committed (one root-file replace);
   then per record (a block of records for point data) its data chunks, the source ids and
   ``present`` flags of its fields and its ``complete`` flag (:mod:`data.store_meta`).

A reader sees a field once its record is complete and its ``present`` flag set; every one of
these is one file replaced atomically, so a kill at any write leaves a store that reads as
before or after it, and re-running the same ingest finishes it exactly.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from enspp.data import durable
from enspp.data import provenance as prov
from enspp.data import store_meta as sm
from enspp.data import store_plan as plan_mod
from enspp.data import store_template as tpl
from enspp.data.field_checks import Bounds, check_fields, field_stats, members_missing
from enspp.data.lock import store_lock
from enspp.data.progress import listed, plural
from enspp.data.provenance import SourceFile, record_key
from enspp.data.schema import LEAD_TIME, MEMBER, STATION, Kind, detect_kind, normalise_units, validate
from enspp.data.store import (
    CENTRES_ATTR,
    POINT_RECORDS_PER_CHUNK,
    StoreError,
    is_store,
    read_root_attrs,
    record_dim,
    suppress_zarr_warnings,
    to_store_layout,
)
from enspp.data.store_plan import Staged
from enspp.data.store_template import FAULT_ENV, Faults

__all__ = ["AppendResult", "FAULT_ENV", "Staged", "StoreWriter", "append", "open_writer",
           "reader_version"]


@dataclass(frozen=True)
class AppendResult:
    """What an append did: records added, repaired (finished after an interrupted run),
    extended (complete records that got new fields: a variable or lead time) or skipped
    (everything already in the store from the same bytes), the bytes of data written, and
    notes (a migration; records left out for want of any value, records written with only
    some members: see ``left_out`` and ``members_missing``)."""

    store: str
    kind: str
    added: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    bytes_written: int = 0
    extended: tuple[str, ...] = ()
    fields_written: int = 0
    notes: tuple[str, ...] = ()
    #: records an input held with no value in any field (NaN for every member): not written
    left_out: tuple[str, ...] = ()
    #: records written with only some of their members (point data: NaN beside values)
    members_missing: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.repaired or self.extended)

    def message(self) -> str:
        rec = record_dim(self.kind)
        if not self.changed:
            return (f"{self.store}: nothing to do, {plural(len(self.skipped), rec)} already in the "
                    f"store from the same bytes (unchanged)")
        out = f"{self.store}: {plural(len(self.added), rec)} added, {len(self.repaired)} repaired"
        if self.extended:
            out += f", {len(self.extended)} extended with new fields"
        return out + f", {len(self.skipped)} skipped (already in the store)"


# -- the writer ---------------------------------------------------------------------------

class StoreWriter:
    """Write access to one store, held under its lock; use :func:`open_writer`."""

    def __init__(self, root: Path, *, kind: Kind | None,
                 allow_mixed_centres: bool = False) -> None:
        self.root = root
        self.faults = Faults()
        tpl.recover(root, self.faults)
        if tpl.is_foreign(root):
            raise StoreError(f"store {root}: the directory holds files and is not an enspp store "
                             f"({listed(sorted(p.name for p in root.iterdir()))}); give a new or "
                             "empty directory (nothing was changed)")
        self.exists = is_store(root)
        self.allow_mixed_centres = allow_mixed_centres
        self.meta: sm.StoreMeta | None = sm.open_meta(root) if self.exists else None
        self.attrs: dict[str, Any] = (read_root_attrs(root) or {}) if self.exists else {}
        self.kind: str | None = self.meta.kind if self.meta is not None else kind
        if self.exists and kind is not None and kind != self.kind:
            raise StoreError(f"store {root} holds {self.kind} data; refusing to write "
                             f"{kind} data into it")
        self.centres: set[str] = set(str(self.attrs.get(CENTRES_ATTR, "")).split())
        self.layout = self._read_layout() if self.meta is not None else plan_mod.Layout()
        self._rows = plan_mod.RowIndex(self.meta.records if self.meta is not None else np.array([], "datetime64[ns]"))
        self._lead_cols = {v: i for i, v in enumerate(self.layout.leads)}

    @property
    def template(self) -> sm.StoreMeta | None:
        return self.meta

    def _read_layout(self) -> plan_mod.Layout:
        assert self.meta is not None
        group, rec = self.meta.group, record_dim(self.meta.kind)
        out = plan_mod.Layout()
        name = f"store {self.root}"
        for key, arr in group.arrays():
            dims = tuple(arr.metadata.dimension_names or ())
            if key in (rec, LEAD_TIME):
                continue
            if dims == (key,):
                out.coords[key] = np.asarray(arr[:])
                out.owners[key] = name
            elif rec not in dims:
                out.aux[key] = xr.DataArray(np.asarray(arr[:]), dims=dims)
                out.owners[key] = name
            else:
                out.variables[key] = plan_mod.Var(dims=dims, units=normalise_units(
                    str(arr.attrs.get("units", ""))), attrs=dict(arr.attrs), owner=name)
        if self.meta.leads is not None:
            out.leads = [int(v) for v in self.meta.leads.view(np.int64)]
        return out

    # -- staging ------------------------------------------------------------------------
    def is_ingested(self, source: SourceFile) -> bool:
        """True if ``source`` (same bytes) is recorded and all its fields are committed."""
        return self.meta is not None and self.meta.is_ingested(source.sha256)

    def records_of(self, source: SourceFile) -> list[str]:
        """The records ``source`` holds according to the store's provenance (or none)."""
        if self.meta is None:
            return []
        entry = self.meta.source(sm.source_id(source.sha256))
        return entry.records if entry is not None else []

    def prepare(self, ds: xr.Dataset, *, name: str, sources: Sequence[SourceFile],
                allow_nan: bool = False, bounds: Mapping[str, Bounds | None] | None = None,
                centre: str | None = None) -> Staged:
        """Validate ``ds`` (data.schema), check its fields (which are present, NaN policy,
        plausible values) and put it in store layout; raises naming ``name``.  Checks against
        the store happen in :meth:`add`."""
        kind = self.kind or detect_kind(ds)
        if self.kind is None:
            self.kind = kind
        got = detect_kind(ds)
        if got != kind:
            where = f"store {self.root} holds" if self.exists else "the other inputs hold"
            raise StoreError(f"{name} holds {got} data but {where} {kind} data")
        validate(ds, kind=kind, source=name, allow_nan=True)  # type: ignore[arg-type]
        stats = {str(v): field_stats(da) for v, da in ds.data_vars.items()}
        present = check_fields(ds, name=name, allow_nan=allow_nan, bounds=bounds, stats=stats)
        centre = centre or ds.attrs.get("enspp_centre") or None
        laid = to_store_layout(ds, kind=kind)  # type: ignore[arg-type]
        gaps = None
        if STATION in laid.dims:  # point data is small: which records lack some members
            rec = record_dim(kind)
            gaps = np.zeros(laid.sizes[rec], dtype=bool)
            for da in laid.data_vars.values():
                gaps |= members_missing(da, record=rec)
        return Staged(name=name, ds=laid, sources=tuple(sources), present=present,
                      centre=None if centre is None else str(centre), members_missing=gaps)

    def plan(self, staged: Sequence[Staged] = ()) -> plan_mod.Plan:
        """A plan holding ``staged`` (see :meth:`add`); nothing is written."""
        if self.kind is None:
            raise StoreError(f"store {self.root}: nothing to write and no kind given")
        plan = plan_mod.Plan(kind=self.kind, layout=plan_mod.copy_layout(self.layout),
                     reference_name=f"store {self.root}" if self.exists else "")
        for item in staged:
            self.add(plan, item)
        return plan

    def add(self, plan: plan_mod.Plan, st: Staged) -> None:
        """Check ``st`` against the store and the inputs already in ``plan``, then add it;
        on error ``plan`` is unchanged and the message names ``st`` and the other side."""
        rec = record_dim(plan.kind)
        ds = st.ds
        self._check_centre(plan, st)
        changes = plan_mod.check_layout(plan.layout, st, rec=rec)
        records = ds[rec].values.astype("datetime64[ns]").view(np.int64)
        leads = (ds[LEAD_TIME].values.astype("timedelta64[ns]").view(np.int64)
                 if LEAD_TIME in ds.dims else None)
        write: dict[str, np.ndarray] = {}
        ids = {sm.source_id(s.sha256) for s in st.sources}
        rows = self._rows.find(records)
        for var, present in st.present.items():
            mask = np.array(present, dtype=bool, copy=True)
            if self.meta is not None and var in self.layout.variables and (rows >= 0).any():
                self._against_store(st, var, mask, rows, leads, ids, rec)
            write[var] = mask
        self._against_batch(plan, st, write, records, leads, rec)
        # every check passed: record the input in the plan
        plan_mod.apply_layout(plan, changes, st.name)
        index = len(plan.items)
        plan.items.append(plan_mod.Item(staged=st, records=records, leads=leads, write=write))
        plan.centres.update((st.centre or "").split())
        if leads is not None:
            for v in leads:
                if int(v) not in plan.layout.leads:
                    plan.layout.leads.append(int(v))
                    plan.new_leads.append(int(v))
        done = self.meta.complete if self.meta is not None else np.zeros(0, dtype=bool)
        writes = np.zeros(len(records), dtype=bool)
        provides = np.zeros(len(records), dtype=bool)
        for var, mask in write.items():
            writes |= mask.any(axis=1) if mask.ndim == 2 else mask
            p = np.asarray(st.present[var])
            provides |= p.any(axis=1) if p.ndim == 2 else p
        is_done = np.zeros(len(records), dtype=bool)
        is_done[rows >= 0] = done[rows[rows >= 0]]
        for ns in records[~provides & (rows < 0)]:  # no value at all: never written
            plan.empty.setdefault(int(ns), None)
        if st.members_missing is not None:
            for ns in records[st.members_missing & provides]:
                plan.members_missing.setdefault(int(ns), None)
        for i in np.flatnonzero(writes):
            plan.by_record.setdefault(int(records[i]), []).append(index)
        for ns in records[writes & (rows < 0)]:  # new records
            plan.new_records.setdefault(int(ns), None)
            plan.commit.setdefault(int(ns), None)
        # existing records: repaired (finished by this run) or extended (new fields)
        for ns in records[(rows >= 0) & ((~is_done & (writes | provides)) | (is_done & writes))]:
            plan.commit.setdefault(int(ns), None)
        plan.skipped.update(prov.record_keys(records[(rows >= 0) & is_done & ~writes]
                                             .view("datetime64[ns]")))

    def _check_centre(self, plan: plan_mod.Plan, st: Staged) -> None:
        """One originating centre per store (unless mixing is allowed): an NCEP file does
        not slip into an ECMWF store."""
        mine = set((st.centre or "").split())
        if not mine or self.allow_mixed_centres:
            return
        known = self.centres | plan.centres
        if len(mine | known) > 1:
            where = (f"store {self.root} holds" if self.centres else
                     "the other inputs hold" if known else "it mixes")
            raise StoreError(f"{st.name} comes from centre(s) {', '.join(sorted(mine))} but "
                             f"{where} data from {', '.join(sorted(known or mine))}; refusing to "
                             "mix originating centres in one store (set "
                             "data.allow_mixed_centres: true, or pass --allow-mixed-centres, "
                             "to allow it)")

    def _against_store(self, st: Staged, var: str, mask: np.ndarray, rows: np.ndarray,
                       leads: np.ndarray | None, ids: set[int], rec: str) -> None:
        """Drop from ``mask`` the fields already in the store from the same bytes; refuse
        those there from other bytes."""
        assert self.meta is not None
        existing = np.flatnonzero(rows >= 0)
        present = self.meta.present(var, rows[existing])
        source = self.meta.sources_of(var, rows[existing])
        if leads is not None:
            cols = np.array([self._lead_cols.get(int(v), -1) for v in leads], dtype=np.int64)
            known = np.flatnonzero(cols >= 0)
            sub = np.zeros((len(existing), len(leads)), dtype=bool)
            same = np.zeros_like(sub)
            sub[:, known] = present[:, cols[known]]
            same[:, known] = np.isin(source[:, cols[known]], list(ids))
            present, same_source = sub, same
        else:
            same_source = np.isin(source, list(ids))
        mine = mask[existing]
        conflict = mine & present & ~same_source
        if conflict.any():
            first = np.argwhere(conflict)[0]
            row = int(rows[existing[first[0]]])
            col = None if leads is None else self._lead_cols[int(leads[first[1]])]
            holder = self.meta.sources_of(var, np.array([row])).reshape(-1)[col or 0]
            key = record_key(self.meta.records[row])
            lead = "" if leads is None else f", +{plan_mod.hours(leads[first[1]])} h"
            state = ("complete" if self.meta.complete[row] else
                     "there (from an interrupted ingest: re-run it to finish the store)")
            raise StoreError(f"{st.name}: {rec} {key} is already {state} in store {self.root} "
                             f"from other bytes ({self.meta.source_names([int(holder)])}) for "
                             f"variable {var!r}{lead}; refusing to overwrite it "
                             f"({int(conflict.sum())} such fields)")
        mine &= ~(present & same_source)
        mask[existing] = mine

    def _against_batch(self, plan: plan_mod.Plan, st: Staged, write: Mapping[str, np.ndarray],
                       records: np.ndarray, leads: np.ndarray | None, rec: str) -> None:
        """Refuse a field that another input of the batch also provides."""
        others: dict[int, list[int]] = {}
        for i, ns in enumerate(records):
            for j in plan.by_record.get(int(ns), []):
                others.setdefault(j, []).append(i)
        for j, mine_rows in others.items():
            other = plan.items[j]
            for var, mask in write.items():
                theirs = other.write.get(var)
                if theirs is None:
                    continue
                o_index = {int(v): k for k, v in enumerate(other.records)}
                for i in mine_rows:
                    k = o_index.get(int(records[i]))
                    if k is None:
                        continue
                    a, b = mask[i], theirs[k]
                    if leads is not None and other.leads is not None:
                        common, ia, ib = np.intersect1d(leads, other.leads, return_indices=True)
                        clash = a[ia] & b[ib]
                        if clash.any():
                            lead = f", +{plan_mod.hours(common[np.flatnonzero(clash)[0]])} h"
                        else:
                            continue
                    elif not (a & b).any():
                        continue
                    else:
                        lead = ""
                    key = record_key(np.datetime64(int(records[i]), "ns"))
                    raise StoreError(f"duplicate {rec} {key}: in both {other.staged.name} and "
                                     f"{st.name} (variable {var!r}{lead})")

    # -- writing ------------------------------------------------------------------------
    def write(self, plan: plan_mod.Plan, *, progress: Callable[[str], None] | None = None,
              reader: str = "", on_note: Callable[[str], None] | None = None) -> AppendResult:
        """Extend the template, then write and commit each record (see the module doc)."""
        import zarr

        rec = record_dim(plan.kind)
        commit = np.array(list(plan.commit), dtype=np.int64)
        keys = dict(zip(commit.tolist(), prov.record_keys(commit.view("datetime64[ns]"))))
        left_out, partial, gap_notes = _gap_report(plan)
        if not plan.commit:
            return AppendResult(store=str(self.root), kind=plan.kind,
                                skipped=tuple(sorted(plan.skipped)), notes=gap_notes,
                                left_out=left_out, members_missing=partial)
        notes: list[str] = []
        zstore = tpl.ticking_store(self.root, self.faults)
        done_before: set[int] = set()
        if self.meta is not None:  # the records of this plan complete before it
            wanted = np.array(list(plan.commit), dtype=np.int64)
            found = self._rows.find(wanted)
            done = self.meta.complete
            done_before = {int(v) for v, r in zip(wanted, found) if r >= 0 and done[r]}
        with suppress_zarr_warnings(), zarr.config.set({"array.write_empty_chunks": True}):
            if self.meta is not None and self.meta.version == 1:
                tpl.migrate_v1(self.root, zstore, self.faults, self.meta,
                               centres=sorted(self.centres))
                note = (f"store {self.root}: migrated from schema version 1 to "
                        f"{tpl.SCHEMA_VERSION} (completion, field presence and provenance "
                        "moved to its enspp/ group; chunks already written keep their codecs)")
                notes.append(note)
                if on_note is not None:
                    on_note(note)
                self.meta = sm.open_meta(self.root)
            centres = sorted(self.centres | plan.centres)
            if self.meta is None:  # a new store: its template first, then its sources
                self._create(zstore, plan, centres)
                self._write_sources(plan, reader)
            else:  # sources first: no field is ever committed before its source is recorded
                self._write_sources(plan, reader)
                self._extend(zstore, plan, centres)
            self.meta = sm.open_meta(self.root)
            self.exists = True
            group = zarr.open_group(zstore, mode="r+", use_consolidated=False)
            nbytes, nfields = self._write_records(group, plan, keys, rec, progress)
        order = sorted(plan.commit)
        new = set(plan.new_records)
        return AppendResult(
            store=str(self.root), kind=plan.kind,
            added=tuple(keys[ns] for ns in order if ns in new),
            repaired=tuple(keys[ns] for ns in order if ns not in new and ns not in done_before),
            extended=tuple(keys[ns] for ns in order if ns in done_before),
            skipped=tuple(sorted(plan.skipped - set(keys.values()))), bytes_written=nbytes,
            fields_written=nfields,
            notes=tuple(notes) + gap_notes, left_out=left_out, members_missing=partial)

    def _write_sources(self, plan: plan_mod.Plan, reader: str) -> None:
        ts = prov.now_iso()
        rec = record_dim(plan.kind)
        for item in plan.items:
            fields = plan_mod.field_sets(item, rec)
            for src in item.staged.sources:
                sm.write_source(self.root, sm.SourceEntry(
                    sha256=src.sha256, path=src.path, name=src.name, size=src.size,
                    reader=reader, ingested=ts, centre=item.staged.centre, fields=fields),
                    tick=self.faults.tick)

    def _create(self, zstore: Any, plan: plan_mod.Plan, centres: list[str]) -> None:
        """The template of a new store: coordinates through xarray (its CF time encoding),
        data and bookkeeping arrays through zarr, then the root attributes that make it a
        store (written last: until they are there, a re-run starts the store afresh).

        The template is built in memory and its files then written out in one pass
        (:func:`store_template.write_out`): built on disk, each of its ~30 zarr calls paid
        two thread hops and a file write (half a new station store's ingest)."""
        import zarr
        from zarr.storage import MemoryStore

        files: dict[str, Any] = {}  # the template's files: key -> zarr buffer
        disk, zstore = zstore, MemoryStore(files)

        rec = record_dim(plan.kind)
        lay = plan.layout
        records = np.array(list(plan.new_records), dtype=np.int64).view("datetime64[ns]")
        coords: dict[str, Any] = {rec: records}
        if plan.kind == "forecast":
            coords[LEAD_TIME] = np.array(lay.leads, dtype=np.int64).view("timedelta64[ns]")
        for name, values in lay.coords.items():
            da = lay.coord_vars.get(name)
            coords[name] = da if da is not None else xr.DataArray(values, dims=(name,))
        coords.update(lay.aux)
        tpl.coord_dataset(coords, rec=rec).to_zarr(
            zstore, mode="w", compute=True, consolidated=False, zarr_format=3,
            encoding=tpl.coord_encoding(list(coords), rec=rec))
        group = zarr.open_group(zstore, mode="r+", use_consolidated=False)
        sizes = {rec: len(records), LEAD_TIME: len(lay.leads),
                 **{k: len(v) for k, v in lay.coords.items()}}
        per_chunk = POINT_RECORDS_PER_CHUNK if STATION in lay.coords else 1
        for name, var in lay.variables.items():
            self._create_var(group, name, var, sizes, per_chunk, rec, plan.kind)
        sm.create_meta(group, kind=plan.kind, rec=rec, n_records=len(records),
                       n_leads=len(lay.leads) if plan.kind == "forecast" else None,
                       variables=[])
        for name in lay.variables:
            self._create_var_meta(group, name, plan.kind, len(records), lay, rec)
        zarr.consolidate_metadata(zstore)
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / tpl.NEW_MARKER  # first: a kill from here on leaves it
        marker.touch()
        tpl.write_out(files, self.root, self.faults)
        tpl.commit_template(self.root, disk, self.faults,
                            attrs=tpl.root_attrs(plan.kind, centres), consolidate=False)
        marker.unlink()

    def _create_var(self, group: Any, name: str, var: plan_mod.Var, sizes: Mapping[str, int],
                    per_chunk: int, rec: str, kind: str) -> None:
        shape = tuple(sizes[d] for d in var.dims)
        chunks = tuple(per_chunk if d == rec else 1 if d == LEAD_TIME else sizes[d]
                       for d in var.dims)
        tpl.create_data_array(group, name, xr.Variable(var.dims, np.empty((0,) * len(var.dims)),
                                                       var.attrs), shape=shape, chunks=chunks)

    def _create_var_meta(self, group: Any, name: str, kind: str, n_records: int, lay: plan_mod.Layout,
                         rec: str) -> None:
        n_leads = len(lay.leads) if kind == "forecast" else None
        dims = (rec, LEAD_TIME) if n_leads is not None else (rec,)
        sm.create_field_arrays(group, name, kind=kind, n_records=n_records, n_leads=n_leads,
                               dims=dims)

    def _extend(self, zstore: Any, plan: plan_mod.Plan, centres: list[str]) -> None:
        """New variables, records and lead times, committed in one root-file replace."""
        import zarr

        assert self.meta is not None
        rec = record_dim(plan.kind)
        n_old, l_old = len(self.meta.records), len(self.layout.leads)
        n_new = n_old + len(plan.new_records)
        l_new = len(plan.layout.leads)
        new_vars = [v for v in plan.layout.variables if v not in self.layout.variables]
        new_coords = [c for c in plan.layout.coords if c not in self.layout.coords]
        changed_centres = set(centres) != self.centres
        if not (plan.new_records or plan.new_leads or new_vars or new_coords or changed_centres):
            return
        group = zarr.open_group(zstore, mode="r+", use_consolidated=False)
        if new_coords:
            # encoded by xarray into memory, then only their arrays' files written out: an
            # xarray append to the store itself rewrites its root attributes (the store's
            # kind and schema were lost: a pressure-level parameter added to a store of
            # surface fields left a store no command would open)
            from zarr.storage import MemoryStore

            coords = {c: plan.layout.coord_vars.get(c, xr.DataArray(plan.layout.coords[c], dims=(c,)))
                      for c in new_coords}
            files: dict[str, Any] = {}
            tpl.coord_dataset(coords, rec=rec).to_zarr(MemoryStore(files), mode="w",
                                                        consolidated=False, zarr_format=3)
            tpl.write_out({k: v for k, v in files.items() if k != "zarr.json"}, self.root,
                          self.faults)
        sizes = {rec: n_new, LEAD_TIME: l_new, **{k: len(v) for k, v in plan.layout.coords.items()}}
        per_chunk = POINT_RECORDS_PER_CHUNK if STATION in plan.layout.coords else 1
        for name in new_vars:
            self._create_var(group, name, plan.layout.variables[name], sizes, per_chunk, rec,
                             plan.kind)
            self._create_var_meta(group, name, plan.kind, n_new, plan.layout, rec)
        for name in self.layout.variables:
            arr = group[name]
            shape = list(arr.shape)
            shape[0] = n_new
            if plan.kind == "forecast" and arr.metadata.dimension_names[1] == LEAD_TIME:
                shape[1] = l_new
            if tuple(shape) != tuple(arr.shape):
                arr.resize(tuple(shape))
            for sub in (sm.PRESENT, sm.SOURCE):
                meta_arr = group[f"{sub}/{name}"]
                want = sm.meta_shape(plan.kind, n_new, l_new if plan.kind == "forecast" else None)
                if tuple(meta_arr.shape) != want:
                    meta_arr.resize(want)
        if n_new != n_old:
            group[sm.COMPLETE].resize((n_new,))
            group[rec].resize((n_new,))
            tpl.write_coordinate_values(group, rec, n_old,
                                        np.array(list(plan.new_records), dtype=np.int64)
                                        .view("datetime64[ns]"))
        if l_new != l_old:
            group[LEAD_TIME].resize((l_new,))
            tpl.write_coordinate_values(group, LEAD_TIME, l_old,
                                        np.array(plan.layout.leads[l_old:], dtype=np.int64)
                                        .view("timedelta64[ns]"))
        tpl.commit_template(self.root, zstore, self.faults,
                            attrs={CENTRES_ATTR: " ".join(centres)} if changed_centres else None)

    def _write_records(self, group: Any, plan: plan_mod.Plan, keys: Mapping[int, str], rec: str,
                       progress: Callable[[str], None] | None) -> tuple[int, int]:
        """Write every field of the plan, then commit it block by block in order (the records
        of one chunk of the bookkeeping arrays: a commit rewrites each of its chunks once);
        returns (bytes, fields) written."""
        assert self.meta is not None
        index = plan_mod.RowIndex(self.meta.records)
        wanted = np.array(list(plan.commit), dtype=np.int64)
        rows = {int(v): int(r) for v, r in zip(wanted, index.find(wanted))}
        for item in plan.items:  # the positions of every record the plan writes
            rows.update((int(v), int(r)) for v, r in zip(item.records, index.find(item.records))
                        if int(v) in plan.by_record)
        cols = {int(v): i for i, v in enumerate(self.meta.leads.view(np.int64))} \
            if self.meta.leads is not None else {}
        point = STATION in plan.layout.coords
        units: dict[int, list[int]] = {}  # data chunk along the record dim -> its records
        for ns in sorted(plan.commit, key=lambda x: rows[x]):
            unit = rows[ns] // POINT_RECORDS_PER_CHUNK if point else rows[ns]
            units.setdefault(unit, []).append(ns)
        per_block = sm.META_RECORDS_PER_CHUNK // (POINT_RECORDS_PER_CHUNK if point else 1)
        blocks: dict[int, list[int]] = {}
        for unit in units:
            blocks.setdefault(unit // per_block, []).append(unit)
        arrays = {name: group[name] for name in plan.layout.variables}
        writers = {name: tpl.ChunkWriter.for_array(arr, root=self.root, faults=self.faults,
                                                   tmp_dir=self.root / tpl.TMP_DIR)
                   for name, arr in arrays.items()}
        positions = [plan_mod.RowIndex(item.records) for item in plan.items]
        nbytes = nfields = 0
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            jobs = {u: self._submit_unit(pool, plan, arrays, writers, ns_list, positions, rows,
                                         cols, rec, point)
                    for u, ns_list in units.items()}
            try:
                pending = list(blocks.values())
                last = time.monotonic()
                while pending:
                    # the next block once written, and with it the blocks after it whose
                    # writes are done already: one commit for them all (each row's source,
                    # present and complete flags are still written in that order)
                    take = [pending.pop(0)]
                    for job, _ in (j for unit in take[0] for j in jobs[unit]):
                        job.result()
                    while pending and len(take) < _MAX_BLOCKS_PER_COMMIT and (
                            time.monotonic() - last < _COMMIT_EVERY_S or all(
                                job.done() for unit in pending[0] for job, _ in jobs[unit])):
                        take.append(pending.pop(0))
                        for job, _ in (j for unit in take[-1] for j in jobs[unit]):
                            job.result()
                    last = time.monotonic()
                    commits, commit_rows = [], []
                    for block_units in take:
                        for unit in block_units:
                            for job, commit in jobs[unit]:
                                nbytes += job.result()
                                commits.append(commit)
                            commit_rows.extend(rows[ns] for ns in units[unit])
                    nfields += self._commit_unit(group, commits, commit_rows)
                    if progress is not None:
                        for block_units in take:
                            for unit in block_units:
                                for ns in units[unit]:
                                    progress(keys[ns])
            except BaseException:
                for unit_jobs in jobs.values():
                    for job, _ in unit_jobs:
                        job.cancel()
                raise
        shutil.rmtree(self.root / tpl.TMP_DIR, ignore_errors=True)
        return nbytes, nfields

    def _submit_unit(self, pool: ThreadPoolExecutor, plan: plan_mod.Plan, arrays: Mapping[str, Any],
                     writers: Mapping[str, tpl.ChunkWriter | None], ns_list: list[int],
                     positions: list[plan_mod.RowIndex], rows: Mapping[int, int],
                     cols: Mapping[int, int], rec: str, point: bool
                     ) -> list[tuple[Future[int], tuple[str, np.ndarray, int | None, int]]]:
        """Queue the data writes of one unit; each job comes with what its commit records:
        ``(variable, store rows, store lead column or None, source id)``."""
        out = []
        for index in sorted({i for ns in ns_list for i in plan.by_record.get(ns, [])}):
            item = plan.items[index]
            ident = sm.source_id(item.staged.sources[0].sha256) if item.staged.sources else 1
            found = positions[index].find(np.array(ns_list, dtype=np.int64))
            mine = np.sort(found[found >= 0])
            for var, mask in item.write.items():
                da = item.staged.ds[var]
                arr = arrays[var]
                lead_axis = item.leads is not None and LEAD_TIME in da.dims
                for j in range(len(item.leads) if lead_axis else 1):
                    sel = mask[mine, j] if lead_axis else mask[mine]
                    idx = mine[sel]
                    if not len(idx):
                        continue
                    store_rows = np.array([rows[int(item.records[i])] for i in idx])
                    col = cols[int(item.leads[j])] if lead_axis else None
                    jj = j if lead_axis else None
                    if point:
                        job = pool.submit(_write_block, arr, writers[var], da, rec, idx,
                                          store_rows, jj, col)
                        out.append((job, (var, store_rows, col, ident)))
                        continue
                    for i, row in zip(idx, store_rows):
                        job = pool.submit(_write_field, arr, writers[var], da, rec, int(i),
                                          int(row), jj, col)
                        out.append((job, (var, np.array([row]), col, ident)))
        return out

    def _commit_unit(self, group: Any, commits: list[tuple[str, np.ndarray, int | None, int]],
                     rows: list[int]) -> int:
        """Source ids, then ``present`` flags of the fields, then the records' ``complete``
        flags: each chunk replaced atomically, every row's flags in that order.  The data
        they flag are flushed to disk first and the flags after them (one ``syncfs`` each,
        :mod:`enspp.data.durable`): after a power loss a flag never names data the disk
        lacks, nor is a flag chunk itself left empty."""
        durable.sync_filesystem(self.root)
        lo, hi = min(rows), max(rows) + 1
        by_var: dict[str, list[tuple[np.ndarray, int | None, int]]] = {}
        for var, store_rows, col, ident in commits:
            by_var.setdefault(var, []).append((store_rows, col, ident))
        staged = {}
        for var, entries in by_var.items():
            src, pres = (sm.read_bookkeeping(self.root, group[name], name, lambda a: a[lo:hi])
                         for name in (f"{sm.SOURCE}/{var}", f"{sm.PRESENT}/{var}"))
            for store_rows, col, ident in entries:
                r = store_rows - lo
                if col is None:
                    src[r], pres[r] = ident, 1
                else:
                    src[r, col], pres[r, col] = ident, 1
            staged[var] = (src, pres)
        for var, (src, _) in staged.items():
            group[f"{sm.SOURCE}/{var}"][lo:hi] = src
        for var, (_, pres) in staged.items():
            group[f"{sm.PRESENT}/{var}"][lo:hi] = pres
        complete = sm.read_bookkeeping(self.root, group[sm.COMPLETE], sm.COMPLETE,
                                       lambda a: a[lo:hi])
        complete[np.array(rows) - lo] = 1
        group[sm.COMPLETE][lo:hi] = complete
        durable.sync_filesystem(self.root)
        return len(commits)


#: bookkeeping chunks one commit may span: blocks finished within ``_COMMIT_EVERY_S`` of the
#: last commit (or already finished) are committed together, so a large ingest commits a few
#: times a second at most and a kill loses at most that much work (redone by the re-run)
_MAX_BLOCKS_PER_COMMIT = 64
_COMMIT_EVERY_S = 0.5


def _write_field(array: Any, writer: tpl.ChunkWriter | None, da: xr.DataArray, rec: str,
                 i: int, row: int, j: int | None, col: int | None) -> int:
    """One field (record ``i``, lead ``j`` of the input) into its chunk (``row``, ``col``)."""
    var = da.variable  # positional indexing of the Variable: no coordinate work per field
    key = tuple(slice(i, i + 1) if d == rec else slice(j, j + 1) if d == LEAD_TIME and j is not None
                else slice(None) for d in var.dims)
    block = np.ascontiguousarray(var[key].values, dtype=np.float32)
    if col is None:
        if writer is not None and writer.fits(block):
            writer.write(block, row, 0)
        else:
            array[row:row + 1] = block
    elif writer is not None and writer.fits(block):
        writer.write(block, row, col)
    else:
        array[row:row + 1, col:col + 1] = block
    return int(block.nbytes)


def _write_block(array: Any, writer: tpl.ChunkWriter | None, da: xr.DataArray, rec: str,
                 idx: np.ndarray, rows: np.ndarray, j: int | None, col: int | None) -> int:
    """Records ``idx`` of the input (one lead ``j``) into rows ``rows`` of a point store (one
    chunk).  A chunk without a file yet is built here (the fill value beside the rows) and
    written whole by ``writer``; an existing one is merged by zarr (read, modify, replace)."""
    var = da.variable
    key = tuple(idx if d == rec else [j] if d == LEAD_TIME and j is not None else slice(None)
                for d in var.dims)
    block = np.ascontiguousarray(var[key].values, dtype=np.float32)
    if writer is not None:
        per = writer.chunk_shape[0]
        index = int(rows[0]) // per
        if bool((rows // per == index).all()) and not writer.exists(index, col or 0):
            whole = np.full(writer.chunk_shape, array.metadata.fill_value, dtype=np.float32)
            whole[rows - index * per] = block
            writer.write(whole, index, col or 0)
            return int(block.nbytes)
    if col is None:
        array.oindex[(rows,)] = block
    else:
        array.oindex[(rows, [col])] = block
    return int(block.nbytes)


# -- entry points -------------------------------------------------------------------------

def _gap_report(plan: plan_mod.Plan) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(left_out, members_missing, notes)`` of a plan: the records its inputs hold without
    any value (not written: NaN for every member), the records it writes with only some
    members, and a note on each for the ingest's summary, e.g. ``2 init times left out
    (every member missing: 2005-06-04T12, 2006-06-19T12)``."""
    rec = record_dim(plan.kind).replace("_", " ")
    left = np.array(sorted(ns for ns in plan.empty if ns not in plan.new_records), dtype=np.int64)
    part = np.array(sorted(ns for ns in plan.members_missing if ns in plan.commit), dtype=np.int64)
    members = plan.kind == "forecast" and len(plan.layout.coords.get(MEMBER, ())) > 1
    notes = []
    if left.size:
        why = "every member missing" if members else "every value missing"
        notes.append(f"{left.size} {rec}{'s' * (left.size != 1)} left out ({why}: "
                     f"{_examples(left)})")
    if part.size:
        notes.append(f"{part.size} {rec}{'s' * (part.size != 1)} with members missing (only "
                     f"some members hold values: {_examples(part)})")
    return (tuple(prov.record_keys(left.view("datetime64[ns]"))),
            tuple(prov.record_keys(part.view("datetime64[ns]"))), tuple(notes))


def _examples(ns: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(t) for t in np.datetime_as_string(ns[:limit].view("datetime64[ns]"), unit="h"))
    return shown + (f" and {ns.size - limit} more" if ns.size > limit else "")


@contextmanager
def open_writer(store: str | os.PathLike[str], *, kind: Kind | None = None,
                lock_timeout: float | None = 300.0,
                on_wait: Callable[[str], None] | None = None,
                allow_mixed_centres: bool = False) -> Iterator[StoreWriter]:
    """Lock ``store`` (the lock file lies beside it), recover it, and yield a
    :class:`StoreWriter`; the store itself is created by the first write."""
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise StoreError(f"store path {root} exists and is not a directory")
    if root.exists() and not os.access(root, os.W_OK):
        raise StoreError(f"store {root}: the store's directory is not writable")
    with store_lock(root, timeout=lock_timeout, on_wait=on_wait):
        yield StoreWriter(root, kind=kind, allow_mixed_centres=allow_mixed_centres)


def append(store_path: str | os.PathLike[str], ds: xr.Dataset, *,
           sources: Sequence[str | os.PathLike[str] | SourceFile] = (),
           kind: Kind | None = None, allow_nan: bool = False,
           lock_timeout: float | None = 300.0,
           bounds: Mapping[str, Bounds | None] | None = None,
           allow_mixed_centres: bool = False) -> AppendResult:
    """Append the records (and fields) of ``ds`` to the store (created if missing).

    ``sources``: the files ``ds`` was read from (checksummed into the provenance log; an
    empty list records the checksum of ``ds`` itself).  Idempotent: fields already in the
    store from the same bytes are skipped and the store is not touched.  ``ds`` is validated
    (``data.schema.validate``; NaN inside a field is an error unless ``allow_nan``, a field
    that is NaN everywhere is recorded as absent; values outside ``bounds``, by default
    :data:`data.field_checks.DEFAULT_BOUNDS`, are refused) and checked against the store
    before anything is written; a mismatch raises naming both sides.
    """
    srcs = tuple(s if isinstance(s, SourceFile) else prov.source_file(s) for s in sources)
    if not srcs:
        srcs = (prov.dataset_source(ds),)
    name = ", ".join(s.name for s in srcs)
    with open_writer(store_path, kind=kind, lock_timeout=lock_timeout,
                     allow_mixed_centres=allow_mixed_centres) as writer:
        staged = writer.prepare(ds, name=name, sources=srcs, allow_nan=allow_nan, bounds=bounds)
        plan = writer.plan([staged])
        return writer.write(plan, reader=reader_version(),
                            on_note=lambda m: print(m, file=sys.stderr))


def reader_version() -> str:
    """The reader identity recorded in provenance (``data.readers`` version if it has one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("enspp")
    except PackageNotFoundError:  # source tree
        pkg = "source"
    try:
        from enspp.data import readers

        own = getattr(readers, "READER_VERSION", None) or getattr(readers, "__version__", None)
    except ImportError:
        own = None
    return f"enspp {pkg} data.readers {own or pkg}"
