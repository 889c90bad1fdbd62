"""What an input holds, field by field, and whether its values are plausible.

A *field* is one variable at one record (init time / time) and lead time, every member and
level included (one chunk of a gridded store).  :func:`field_stats` reduces each field of an
input (per member and level) to its minimum, maximum and NaN count, chunk by chunk, without
loading the input: GRIB files from the statistics their scan already took, dask-backed inputs
(Zarr, NetCDF) by a dask reduction over the spatial dims.  From these:

* a field whose every value is NaN is *absent* (the input does not provide it: a variable
  without that lead time, an input merged on the union of coordinates): it is recorded as
  absent, not written, and never confused with NaN inside a field;
* NaN inside a present field is refused unless ``allow_nan``;
* values outside the variable's plausible range are refused, naming the variable, the
  record, the lead time, the member and the offending range (:data:`DEFAULT_BOUNDS`; a
  corrupt GRIB reference value shifts a whole t2m field by -170 K, a wrong scale makes 1e30).

Bounds are physical limits with room to spare, per variable and its units (temperatures in
kelvin 150..350 K, in degC the same limits converted); ``data.bounds`` in ``enspp.yaml`` (or
``ingest(bounds=...)``) overrides them per variable, ``null`` switches a check off.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.schema import (
    INIT_TIME,
    LATITUDE,
    LEAD_TIME,
    LEVEL,
    LONGITUDE,
    MEMBER,
    STATION,
    TIME,
    SchemaError,
    normalise_units,
)

Bounds = tuple[float | None, float | None]

#: (lower, upper) plausible values per canonical variable in its canonical units; generous
#: physical limits (world records with margin), not climatology.
DEFAULT_BOUNDS: dict[str, tuple[str, Bounds]] = {
    "t": ("K", (150.0, 350.0)),
    "t2m": ("K", (150.0, 350.0)),
    "d2m": ("K", (150.0, 350.0)),
    "z": ("m2 s-2", (-10_000.0, 500_000.0)),   # about -1 km .. 50 km of geopotential height
    "orog": ("m", (-1_000.0, 9_000.0)),
    "u": ("m s-1", (-250.0, 250.0)),
    "v": ("m s-1", (-250.0, 250.0)),
    "u10": ("m s-1", (-150.0, 150.0)),
    "v10": ("m s-1", (-150.0, 150.0)),
    "10fg": ("m s-1", (0.0, 150.0)),
    "10fg3": ("m s-1", (0.0, 150.0)),
    "10fg6": ("m s-1", (0.0, 150.0)),
    "w": ("Pa s-1", (-100.0, 100.0)),
    "q": ("kg kg-1", (0.0, 0.1)),
    "r": ("%", (0.0, 150.0)),
    "pv": ("K m2 kg-1 s-1", (-1e-2, 1e-2)),
    "msl": ("Pa", (80_000.0, 110_000.0)),
    "sp": ("Pa", (30_000.0, 110_000.0)),
    "tp": ("m", (0.0, 5.0)),
    "tp24": ("mm", (0.0, 5_000.0)),
    "lsm": ("1", (0.0, 1.0)),
}

#: bounds by units for variables not in :data:`DEFAULT_BOUNDS`
UNIT_BOUNDS: dict[str, Bounds] = {
    "K": (150.0, 350.0),
    "degC": (-123.15, 76.85),
    "m s-1": (-250.0, 250.0),
    "Pa": (0.0, 120_000.0),
    "hPa": (0.0, 1_200.0),
    "m2 s-2": (-10_000.0, 500_000.0),
    "mm": (0.0, 5_000.0),
    "%": (0.0, 150.0),
    "kg kg-1": (0.0, 0.1),
}

#: tolerance for values that rounding in GRIB packing puts just outside a bound (e.g. a
#: precipitation of -1e-9 m)
_SLACK = 1e-6


class UnreadableInputError(EnsppError):
    """A chunk of an input cannot be read (corrupt, truncated, not decodable); the message
    names the variable and the records of the chunk (the caller names the input)."""


class ImplausibleValuesError(EnsppError):
    """Decoded values of an input are outside the plausible range of their variable (or NaN
    where they may not be); the message names the file, variable, record, lead and member."""


@dataclass(frozen=True)
class FieldStats:
    """Per field and member/level: minimum, maximum, NaN count (``dims`` are the non-spatial
    dims of the variable, in its order; ``points`` the spatial size)."""

    dims: tuple[str, ...]
    minimum: np.ndarray
    maximum: np.ndarray
    n_nan: np.ndarray
    points: int

    def present(self, keep: tuple[str, ...]) -> np.ndarray:
        """Boolean mask over ``keep`` (the record and lead dims): the field holds a value."""
        other = tuple(i for i, d in enumerate(self.dims) if d not in keep)
        has = self.n_nan < self.points
        return has.any(axis=other) if other else has


def bounds_for(name: str, units: str, overrides: Mapping[str, Bounds | None] | None = None
               ) -> Bounds | None:
    """The plausible range of variable ``name`` in ``units`` (None: not checked)."""
    if overrides and name in overrides:
        got = overrides[name]
        return None if got is None else (got[0], got[1])
    units = normalise_units(units)
    known = DEFAULT_BOUNDS.get(name)
    if known is not None:
        ref_units, (lo, hi) = known
        if ref_units == units:
            return lo, hi
        if (ref_units, units) == ("K", "degC"):
            return (None if lo is None else lo - 273.15, None if hi is None else hi - 273.15)
        if (ref_units, units) == ("m", "mm"):
            return (None if lo is None else lo * 1000, None if hi is None else hi * 1000)
    return UNIT_BOUNDS.get(units)


def field_stats(da: xr.DataArray) -> FieldStats:
    """:class:`FieldStats` of ``da`` over its spatial dims, without loading ``da`` whole."""
    spatial = tuple(d for d in da.dims if d in (LATITUDE, LONGITUDE, STATION))
    lead = tuple(d for d in da.dims if d not in spatial)
    points = int(np.prod([da.sizes[d] for d in spatial])) if spatial else 1
    if da.size == 0:  # nothing to reduce (numpy and dask refuse a reduction of nothing)
        empty = [d for d in spatial if da.sizes[d] == 0]
        if empty:
            raise SchemaError(f"variable {da.name!r} holds no values (dim {empty[0]!r} is empty)")
        shape = tuple(da.sizes[d] for d in lead)  # no records: no fields
        return FieldStats(dims=lead, minimum=np.full(shape, np.nan), maximum=np.full(shape, np.nan),
                          n_nan=np.zeros(shape, dtype=np.int64), points=points)
    own = _reader_stats(da)
    if own is not None and own[0].shape == tuple(da.sizes[d] for d in lead):
        minimum, maximum, n_nan = own
    elif da.chunks is not None:
        import dask

        try:
            minimum, maximum, n_nan = dask.compute(da.min(spatial, skipna=True).data,
                                                   da.max(spatial, skipna=True).data,
                                                   da.isnull().sum(spatial).data)
        except (MemoryError, EnsppError):
            raise
        except Exception:  # noqa: BLE001 - a chunk that cannot be decoded, if one is found
            unreadable = _unreadable_chunk(da)
            if unreadable is None:
                raise
            raise unreadable from None
    elif isinstance(da.variable._data, np.ndarray) or not lead:
        minimum, maximum, n_nan = _reduce(_read(da, {}), da.dims, spatial)
    else:  # a lazily indexed backend array: one record at a time, never the whole input
        parts = [_reduce(_read(da, {lead[0]: i}),
                         tuple(d for d in da.dims if d != lead[0]), spatial)
                 for i in range(da.sizes[lead[0]])]
        minimum, maximum, n_nan = (np.stack([p[k] for p in parts]) for k in range(3))
    return FieldStats(dims=lead, minimum=np.asarray(minimum, dtype=np.float64),
                      maximum=np.asarray(maximum, dtype=np.float64),
                      n_nan=np.asarray(n_nan, dtype=np.int64), points=points)


def _read(da: xr.DataArray, at: dict[str, int]) -> np.ndarray:
    """The values of ``da.isel(at)``; a failure to read them is :class:`UnreadableInputError`."""
    part = da.isel(at) if at else da
    try:
        return np.asarray(part.values)
    except (MemoryError, EnsppError):
        raise
    except Exception as e:  # noqa: BLE001 - any decode failure of the input's bytes
        raise _unreadable(da, {d: slice(i, i + 1) for d, i in at.items()}, e) from None


def _unreadable_chunk(da: xr.DataArray) -> UnreadableInputError | None:
    """The first dask chunk of ``da`` that cannot be read, as :class:`UnreadableInputError`
    (None when every chunk reads: the error was not one of reading)."""
    data = da.data
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in data.chunks]
    for block in np.ndindex(*data.numblocks):
        try:
            data.blocks[block].compute()
        except (MemoryError, EnsppError):
            raise
        except Exception as e:  # noqa: BLE001 - any decode failure of the input's bytes
            span = {d: slice(int(s[b]), int(s[b + 1]))
                    for d, s, b in zip(da.dims, starts, block)}
            return _unreadable(da, span, e)
    return None


def _unreadable(da: xr.DataArray, span: Mapping[str, slice], e: Exception
                ) -> UnreadableInputError:
    from enspp.data.store import read_error_words

    where = []
    for dim in (INIT_TIME, TIME, LEAD_TIME):
        sl = span.get(dim)
        if sl is None or dim not in da.coords:
            continue
        if sl.stop - sl.start == da.sizes[dim] > 1:  # the chunk spans them all: says nothing
            continue
        first, last = da[dim].values[sl.start], da[dim].values[sl.stop - 1]
        if dim == LEAD_TIME:
            h = [pd.Timedelta(v) / pd.Timedelta(hours=1) for v in (first, last)]
            where.append(f"lead_time +{h[0]:g} h" if h[0] == h[1]
                         else f"lead_time +{h[0]:g}..+{h[1]:g} h")
        else:
            t = [pd.Timestamp(v).isoformat(timespec="minutes") for v in (first, last)]
            where.append(f"{dim} {t[0]}" if t[0] == t[1] else f"{dim} {t[0]}..{t[1]}")
    at = f" ({', '.join(where)})" if where else ""
    return UnreadableInputError(f"variable {da.name!r}{at}: a chunk cannot be read: "
                                f"{read_error_words(e)}")


def _reader_stats(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Statistics a lazy reader took while decoding (``data.ingest_grib``), if any and if
    ``da`` is that reader's array with at most its spatial axes reordered (as a longitude
    wrap does; a spatial reduction does not see the order)."""
    data = da.variable._data
    lead = sum(1 for d in da.dims if d not in (LATITUDE, LONGITUDE, STATION))
    for _ in range(8):
        stats = getattr(data, "field_stats", None)
        if callable(stats):
            return stats() if getattr(data, "shape", None) == da.shape else None
        key = getattr(data, "key", None)
        if key is not None and not _keeps_fields(key, getattr(data, "array", data), lead):
            return None
        data = getattr(data, "array", None)
        if data is None:
            return None
    return None


def _keeps_fields(key: object, array: object, lead: int) -> bool:
    """True when an indexer keeps every field whole: full slices on the leading axes, and on
    the spatial axes full slices or permutations."""
    tup = getattr(key, "tuple", None)
    shape = getattr(array, "shape", None)
    if tup is None or shape is None or len(tup) != len(shape):
        return False
    for axis, (k, n) in enumerate(zip(tup, shape)):
        if isinstance(k, slice):
            if k.indices(n) != (0, n, 1):
                return False
        elif axis < lead or not (isinstance(k, np.ndarray) and k.ndim == 1 and len(k) == n
                                 and len(np.unique(k)) == n):
            return False
    return True


def _reduce(values: np.ndarray, dims: tuple, spatial: tuple
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = tuple(dims.index(d) for d in spatial)
    nan = np.isnan(values)
    n_nan = nan.sum(axis=axes) if axes else nan.astype(np.int64)
    if nan.any():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN fields: NaN
            return np.nanmin(values, axis=axes), np.nanmax(values, axis=axes), n_nan
    return values.min(axis=axes), values.max(axis=axes), n_nan


def check_fields(ds: xr.Dataset, *, name: str, allow_nan: bool,
                 bounds: Mapping[str, Bounds | None] | None = None,
                 stats: Mapping[str, FieldStats] | None = None) -> dict[str, np.ndarray]:
    """Check every present field of ``ds`` (NaN policy, plausible range) and return, per
    variable, the boolean mask of present fields over its record (and lead) dims.  Raises
    :class:`~data.schema.SchemaError` for NaN inside a field (unless ``allow_nan``) and
    :class:`ImplausibleValuesError` for values out of range, naming ``name`` and the first
    offending fields."""
    rec = INIT_TIME if INIT_TIME in ds.dims else TIME
    keep = tuple(d for d in (rec, LEAD_TIME) if d in ds.dims)
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    count = 0
    for var, da in ds.data_vars.items():
        st = stats[str(var)] if stats is not None and str(var) in stats else field_stats(da)
        present = st.present(keep)
        out[str(var)] = present
        # broadcast the present mask over the member/level dims of the statistics
        pmask = _expand(present, keep, st.dims)
        units = str(da.attrs.get("units", ""))
        if not allow_nan:
            bad = pmask & (st.n_nan > 0)
            if bad.any():
                idx = np.argwhere(bad)[0]
                more = f" ({int(bad.sum()) - 1} more fields hold NaN)" if bad.sum() > 1 else ""
                raise SchemaError(f"{name}: variable {var!r} holds NaN values "
                                  f"({int(st.n_nan[tuple(idx)])} of {st.points} points "
                                  f"{_where(da, st, idx)}){more}; pass allow_nan (--allow-nan) "
                                  "to accept NaN inside fields")
        lim = bounds_for(str(var), units, bounds)
        if lim is None:
            continue
        lo, hi = lim
        with np.errstate(invalid="ignore"):
            low = pmask & (st.minimum < (lo - _SLACK * max(1.0, abs(lo)))) if lo is not None else False
            high = pmask & (st.maximum > (hi + _SLACK * max(1.0, abs(hi)))) if hi is not None else False
        bad = np.asarray(low | high)
        if bad.any():
            count += int(bad.sum())
            for idx in np.argwhere(bad)[:3]:
                i = tuple(idx)
                problems.append(f"variable {var!r} ({units}) {_where(da, st, idx)}: values "
                                f"{_g(st.minimum[i])}..{_g(st.maximum[i])} outside the "
                                f"plausible range {_g(lo)}..{_g(hi)} {units} (data.bounds."
                                f"{var} in the config overrides it)")
    if problems:
        more = f" (and {count - len(problems[:3])} more fields)" if count > 3 else ""
        raise ImplausibleValuesError(f"{name}: " + "; ".join(problems[:3]) + more)
    return out


def _expand(mask: np.ndarray, keep: tuple[str, ...], dims: tuple[str, ...]) -> np.ndarray:
    """``mask`` over ``keep`` reshaped to broadcast against arrays over ``dims``."""
    order = [d for d in dims if d in keep]
    mask = mask.transpose([keep.index(d) for d in order]) if order else mask
    return mask.reshape([mask.shape[order.index(d)] if d in keep else 1 for d in dims])


def _where(da: xr.DataArray, st: FieldStats, idx: np.ndarray) -> str:
    parts = []
    for dim, i in zip(st.dims, idx):
        value = da[dim].values[int(i)] if dim in da.coords else int(i)
        if dim in (INIT_TIME, TIME):
            parts.append(f"{dim} {pd.Timestamp(value).isoformat(timespec='minutes')}")
        elif dim == LEAD_TIME:
            parts.append(f"step +{pd.Timedelta(value) / pd.Timedelta(hours=1):g} h")
        elif dim == MEMBER:
            parts.append(f"member {int(value)}")
        elif dim == LEVEL:
            parts.append(f"level {value:g} hPa" if isinstance(value, (float, np.floating))
                         else f"level {value} hPa")
        else:
            parts.append(f"{dim} {value}")
    return "at " + ", ".join(parts) if parts else ""


def _g(x: float | None) -> str:
    return "none" if x is None else f"{float(x):.6g}"


def members_missing(da: xr.DataArray, *, record: str) -> np.ndarray:
    """Per ``record`` (init time) of ``da``: True where only some members hold a value, i.e.
    at some point (station) and lead time one member is NaN while another is not (a perturbed
    ensemble missing beside its control).  Loads ``da``: meant for point data, which is
    small; False everywhere without a ``member`` dim or with one member."""
    n = da.sizes[record]
    if MEMBER not in da.dims or da.sizes[MEMBER] < 2:
        return np.zeros(n, dtype=bool)
    nan = da.isnull()
    partial = nan.any(MEMBER) & ~nan.all(MEMBER)
    other = [d for d in partial.dims if d != record]
    return np.asarray((partial.any(other) if other else partial).transpose(record).values, dtype=bool)


__all__ = ["Bounds", "DEFAULT_BOUNDS", "FieldStats", "ImplausibleValuesError", "UNIT_BOUNDS",
           "UnreadableInputError", "bounds_for", "check_fields", "field_stats", "members_missing"]
