"""Planning an append (:mod:`data.store_writer`): what a store or a batch looks like, and
the checks an input must pass against it before anything is written.

:class:`Staged` is one validated input; :func:`check_layout` compares it with the store's (or
the batch's) coordinates and variables and says what it adds; :class:`Plan` collects the
inputs, the records, lead times and variables they add and the fields each writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from enspp.data import provenance as prov
from enspp.data import store_meta as sm
from enspp.data.provenance import SourceFile, record_key
from enspp.data.schema import LEAD_TIME, STATION, normalise_units
from enspp.data.store import StoreMismatchError


@dataclass(frozen=True)
class Staged:
    """One validated input: its dataset (store layout), the sources it came from, which of
    its fields it holds (per variable, a boolean mask over its records and lead times) and
    its originating centre (``ecmf``, ``kwbc``...; None when the format does not say)."""

    name: str
    ds: xr.Dataset
    sources: tuple[SourceFile, ...]
    present: Mapping[str, np.ndarray] = field(default_factory=dict)
    centre: str | None = None
    #: per record: only some members hold values (point data; None: not counted)
    members_missing: np.ndarray | None = None


@dataclass
class Var:
    dims: tuple[str, ...]
    units: str
    attrs: dict[str, Any]
    owner: str


@dataclass
class Layout:
    """The coordinates and variables a store has (or a batch will create)."""

    coords: dict[str, np.ndarray] = field(default_factory=dict)  # dims but record and lead
    coord_vars: dict[str, xr.DataArray] = field(default_factory=dict)  # as given (attrs)
    aux: dict[str, xr.DataArray] = field(default_factory=dict)  # non-dim coords (stations)
    owners: dict[str, str] = field(default_factory=dict)
    variables: dict[str, Var] = field(default_factory=dict)
    leads: list[int] = field(default_factory=list)  # ns, storage order


@dataclass
class Item:
    staged: Staged
    records: np.ndarray  # int64 ns
    leads: np.ndarray | None  # int64 ns
    write: dict[str, np.ndarray]  # var -> bool (records[, leads]): fields to write


@dataclass
class Plan:
    kind: str
    layout: Layout
    items: list[Item] = field(default_factory=list)
    new_records: dict[int, None] = field(default_factory=dict)  # ns, in order of arrival
    new_leads: list[int] = field(default_factory=list)
    by_record: dict[int, list[int]] = field(default_factory=dict)  # ns -> items touching it
    commit: dict[int, None] = field(default_factory=dict)  # ns of records to mark complete
    skipped: set[str] = field(default_factory=set)
    centres: set[str] = field(default_factory=set)
    #: ns of records an input holds but provides no field of (every value NaN), not in the store
    empty: dict[int, None] = field(default_factory=dict)
    #: ns of records an input provides with only some of their members
    members_missing: dict[int, None] = field(default_factory=dict)
    reference_name: str = ""

    @property
    def providers(self) -> dict[str, list[Item]]:
        """Records to commit -> the inputs writing them (the work of :meth:`write`)."""
        out: dict[str, list[Item]] = {}
        for ns in self.commit:
            out[record_key(np.datetime64(ns, "ns"))] = [self.items[i] for i in self.by_record.get(ns, [])]
        return out

    @property
    def reference(self) -> xr.Dataset | None:
        return self.items[0].staged.ds if self.items else None


class RowIndex:
    """Positions of record values (int64 ns) in a store, by binary search: no per-record
    Python structure, so looking up a few records costs the same in any store."""

    def __init__(self, records: np.ndarray) -> None:
        values = np.asarray(records).astype("datetime64[ns]").view(np.int64)
        self.order = np.argsort(values, kind="stable")
        self.sorted = values[self.order]

    def find(self, values: np.ndarray) -> np.ndarray:
        """Rows of ``values`` (-1 for a value not in the store)."""
        v = np.asarray(values).astype(np.int64) if np.asarray(values).dtype.kind != "M" else \
            np.asarray(values).astype("datetime64[ns]").view(np.int64)
        pos = np.searchsorted(self.sorted, v)
        pos = np.minimum(pos, max(len(self.sorted) - 1, 0))
        hit = (len(self.sorted) > 0) & (self.sorted[pos] == v) if len(self.sorted) else \
            np.zeros(len(v), dtype=bool)
        return np.where(hit, self.order[pos] if len(self.sorted) else -1, -1).astype(np.int64)


def field_sets(item: Item, rec: str) -> dict[str, sm.FieldSet]:
    """What the input provides, per variable, for the provenance log."""
    keys = prov.record_keys(item.records.view("datetime64[ns]"))
    leads = None if item.leads is None else tuple(sm.lead_seconds(item.leads.view("timedelta64[ns]")))
    out = {}
    for var, present in item.staged.present.items():
        rows = np.flatnonzero(present.any(axis=1) if present.ndim == 2 else present)
        if not len(rows):
            continue
        if present.ndim == 2 and leads is not None:
            sub = present[rows]
            absent = tuple((int(a), int(b)) for a, b in np.argwhere(~sub))
            out[var] = sm.FieldSet(records=tuple(keys[r] for r in rows), leads=leads, absent=absent)
        else:
            out[var] = sm.FieldSet(records=tuple(keys[r] for r in rows), leads=None)
    return out


def hours(ns: int | np.integer) -> str:
    return f"{int(ns) / 3.6e12:g}"


# -- layout checks ------------------------------------------------------------------------

_DIM_WHAT = {"latitude": "grids (latitude)", "longitude": "grids (longitude)",
             "member": "members", "level": "levels (hPa)", "station": "stations"}


@dataclass
class Changes:
    coords: dict[str, xr.DataArray] = field(default_factory=dict)
    aux: dict[str, xr.DataArray] = field(default_factory=dict)
    variables: dict[str, Var] = field(default_factory=dict)


def check_layout(layout: Layout, st: Staged, *, rec: str) -> Changes:
    """Raise :class:`StoreMismatchError` naming both sides when ``st`` does not fit
    ``layout``; return what ``st`` adds (coordinates, variables)."""
    ds = st.ds
    changes = Changes()
    if layout.variables:  # stations and a grid never share a store
        point_store, point_input = STATION in layout.coords, STATION in ds.dims
        if point_store != point_input:
            owner = next(iter(layout.variables.values())).owner or "the store"
            _fail(st.name, owner, "layouts", "stations" if point_input else "a grid",
                  "stations" if point_store else "a grid")
    for dim in ds.dims:
        if dim in (rec, LEAD_TIME):
            continue
        mine = np.asarray(ds[dim].values)
        theirs = layout.coords.get(str(dim))
        if theirs is None:
            changes.coords[str(dim)] = xr.DataArray(mine, dims=(str(dim),),
                                                    attrs=dict(ds[dim].attrs))
            continue
        if not _same(mine, theirs):
            _fail(st.name, layout.owners.get(str(dim), "the store"),
                  _DIM_WHAT.get(str(dim), f"{dim!r} coordinates"), _describe(mine),
                  _describe(theirs))
    for name, coord in ds.coords.items():
        if name in ds.dims or rec in coord.dims:
            continue
        theirs_aux = layout.aux.get(str(name))
        if theirs_aux is None:
            changes.aux[str(name)] = xr.DataArray(np.asarray(coord.values), dims=coord.dims,
                                                  attrs=dict(coord.attrs))
        elif not _same(np.asarray(coord.values), np.asarray(theirs_aux.values)):
            _fail(st.name, layout.owners.get(str(name), "the store"), f"coordinate {name!r}",
                  _describe(np.asarray(coord.values)), _describe(np.asarray(theirs_aux.values)))
    for name, da in ds.data_vars.items():
        units = normalise_units(str(da.attrs.get("units", "")))
        known = layout.variables.get(str(name))
        if known is None:
            changes.variables[str(name)] = Var(dims=tuple(map(str, da.dims)), units=units,
                                                attrs=dict(da.attrs), owner=st.name)
            continue
        if tuple(map(str, da.dims)) != known.dims:
            _fail(st.name, known.owner, f"dims of {name!r}", str(tuple(map(str, da.dims))),
                  str(known.dims))
        if units != known.units:
            _fail(st.name, known.owner, f"units of {name!r}", units, known.units)
    return changes


def apply_layout(plan: Plan, changes: Changes, owner: str) -> None:
    lay = plan.layout
    for name, da in changes.coords.items():
        lay.coords[name] = np.asarray(da.values)
        lay.coord_vars[name] = da
        lay.owners[name] = owner
    for name, da in changes.aux.items():
        lay.aux[name] = da
        lay.owners[name] = owner
    lay.variables.update(changes.variables)
    if not plan.reference_name:
        plan.reference_name = owner


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" and b.dtype.kind in "fiu":
        return bool(np.allclose(a, b, rtol=0, atol=1e-6))
    if a.dtype.kind in "iu" and b.dtype.kind == "f":
        return bool(np.allclose(a, b, rtol=0, atol=1e-6))
    return bool(np.array_equal(_text(a) if a.dtype.kind in "OUST" else a,
                               _text(b) if b.dtype.kind in "OUST" else b))


def _text(a: np.ndarray) -> np.ndarray:
    """Labels as Python strings: a store returns them as numpy's ``StringDType`` (kind
    ``T``, which ``astype(str)`` cannot cast), a file as ``<U`` or objects."""
    return np.array([str(x) for x in a.ravel()], dtype=object).reshape(a.shape)


def _fail(name: str, ref: str, what: str, mine: str, theirs: str) -> None:
    raise StoreMismatchError(f"{name} does not match {ref}: {what} differ ({mine} vs {theirs})")


def _describe(values: np.ndarray) -> str:
    if values.size == 0:
        return "none"
    if values.dtype.kind == "m":
        hours = (values / np.timedelta64(1, "h")).astype(float)
        return f"{_n_values(values)} {_fmt(hours[0])}..{_fmt(hours[-1])} h"
    return f"{_n_values(values)} {_fmt(values[0])}..{_fmt(values[-1])}"


def _n_values(values: np.ndarray) -> str:
    return "1 value" if values.size == 1 else f"{values.size} values"


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (float, np.floating)) else str(x)


def copy_layout(layout: Layout) -> Layout:
    return Layout(coords=dict(layout.coords), coord_vars=dict(layout.coord_vars),
                   aux=dict(layout.aux), owners=dict(layout.owners),
                   variables=dict(layout.variables), leads=list(layout.leads))



__all__ = ["Changes", "Item", "Layout", "Plan", "RowIndex", "Staged", "Var", "apply_layout",
           "check_layout", "copy_layout", "field_sets", "hours"]
