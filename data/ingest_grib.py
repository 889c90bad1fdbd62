"""The ingest's own GRIB decode loop (eccodes; values decoded straight into their destination).

Why not :func:`data.readers.read_grib_eccodes`: it asks eccodes for ``shortName`` and ``units``
of every message.  Those are *concept* keys that eccodes evaluates by scanning its parameter
tables: 2-15 ms per message, i.e. 2-15x the decode of a 181x360 field, which made an ingest
~10x the decode floor.  Here the concepts are looked up once per distinct parameter, keyed on
the section 1/4 keys they are defined by; the headers of all messages are read first (each
handle released at once, only the message's place in the file kept) and the inventory is
checked.  :func:`open_grib_lazy` then returns lazily indexed
variables: a selection decodes only its messages (float32, by eccodes) straight into its own
buffer, so the ingest decodes each store chunk in its writer threads, beside compression,
without building a whole-file array; :func:`decode_grib` loads everything at once.
Conventions and inventory checks are those of :mod:`data.grib` (its public
:class:`~data.grib.GribMessage`, :func:`~data.grib.check_inventory`,
:func:`~data.grib.absent_fields`, :func:`~data.grib.kind_of_messages`); the tests check that
both give the same dataset.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict

import eccodes
import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from enspp.data import schema
from enspp.data.grib import GribMessage, absent_fields, check_inventory, messages_kind, read_messages
from enspp.data.translate import ReaderError, canonical_name, canonical_variable, normalise_longitude

#: cheap integer keys that, with edition/centre/typeOfLevel/stepType, determine the concepts
#: shortName and units (GRIB 2: section 4 parameter and surfaces; GRIB 1: section 1 tables)
_PARAM_KEYS = {
    2: ("discipline", "parameterCategory", "parameterNumber", "productDefinitionTemplateNumber",
        "typeOfFirstFixedSurface", "scaleFactorOfFirstFixedSurface",
        "scaledValueOfFirstFixedSurface", "typeOfSecondFixedSurface"),
    1: ("table2Version", "indicatorOfParameter", "indicatorOfTypeOfLevel", "timeRangeIndicator",
        "localDefinitionNumber"),
}
#: GRIB 2 product templates with a statistical process (max/accumulation over a window)
_STATISTICAL_PDTS = frozenset({8, 9, 10, 11, 12, 13, 14, 15, 34, 42, 43, 46, 47, 61, 62, 63})
_STAT_KEYS = ("typeOfStatisticalProcessing", "lengthOfTimeRange", "indicatorOfUnitForTimeRange")
_STEP_UNITS = {0: "m", 1: "h"}


def decode_grib(path: str | os.PathLike[str], *, kind: schema.Kind | None = None,
                allow_nan: bool = False) -> xr.Dataset:
    """Decode one GRIB file into a canonical numpy-backed dataset (float32).

    Raises :class:`~data.translate.ReaderError` naming the file: not GRIB, corrupt or truncated,
    missing (NaN) points unless ``allow_nan``, mixed grids, duplicate fields, members missing
    in one init time, fields absent for some lead times, unknown units.
    """
    ds = open_grib_lazy(path, kind=kind, allow_nan=allow_nan)
    try:
        ds = ds.load()
    finally:
        ds.close()
    for var in ds.data_vars.values():  # views of the scan's buffers, now this dataset's alone
        if not var.values.flags.writeable:
            var.values.flags.writeable = True
    return ds


#: decoded bytes per file that the scan keeps (see :func:`open_grib_lazy`)
DECODE_BUDGET = 512 * 2**20


def open_grib_lazy(path: str | os.PathLike[str], *, kind: schema.Kind | None = None,
                   allow_nan: bool = False, decode_budget: int = DECODE_BUDGET) -> xr.Dataset:
    """Like :func:`decode_grib`, but the values stay encoded until they are indexed.

    The headers are read and checked now (every error :func:`decode_grib` raises is raised
    here, missing points included: they are flagged by each message's bitmap); each data
    variable is a lazily indexed array that decodes only the messages a selection touches,
    straight into the selection's buffer.  The ingest writes a store chunk by chunk from it,
    so decoding runs in the writer's threads beside compression and no whole-file array is
    ever built.  Only the headers, each message's place in the file and the values decoded
    within ``decode_budget`` are kept (until ``ds.close()``); a read builds, uses and releases
    one eccodes handle per message, so concurrent reads from several threads are safe.

    ``decode_budget``: bytes of float32 values the scan may decode and keep while it has each
    handle anyway (building a handle costs about twice the decode of a 1-degree field).  The
    first messages up to the budget cost one handle build; the rest, a second one when read,
    with memory bounded by the budget however large the file (the ingest splits one budget
    across the files it holds open at once).
    """
    source = str(path)
    messages, spans, decoded = _scan(source, allow_nan=allow_nan, decode_budget=decode_budget)
    holder = _Messages(source, spans, decoded)
    try:
        ds = _dataset(messages, holder, source=source, kind=kind, allow_nan=allow_nan)
    except BaseException:
        holder.close()
        raise
    ds.set_close(holder.close)
    return ds


class _Messages:
    """The messages of one file: the values the scan decoded (while they fit its budget) and,
    for the rest, each message's ``(offset, length)``.  A message not decoded by the scan is
    read (one ``pread``), decoded by building an eccodes handle from its bytes, and the handle
    released at once: eccodes' per-handle structures take ~4x the message itself, so holding
    one handle per message (10^4 of them in an operational file) would cost gigabytes and a
    page-fault storm; the price is a second handle build for those messages, done in the
    decoding threads.  No file descriptor or map is held between reads, so an ingest of
    thousands of files stays far from the open-files limit."""

    def __init__(self, path: str, spans: list[tuple[int, int]],
                 decoded: dict[int, np.ndarray]) -> None:
        self.path, self.spans, self.decoded = path, spans, decoded
        self.closed = False

    def read_into(self, slot: int, out: np.ndarray, *, n_missing: int) -> None:
        """Decode message ``slot`` into ``out`` (float32, the grid's shape)."""
        if self.closed:
            raise ReaderError(f"{self.path}: GRIB values read after the file's dataset was "
                              "closed")
        values = self.decoded.get(slot)
        if values is not None:
            out[...] = values.reshape(out.shape)
            return
        h = self._open(slot)
        try:
            _decode_into(h, out, n_missing=n_missing)
        finally:
            eccodes.codes_release(h)

    def view(self, slots: np.ndarray) -> np.ndarray | None:
        """The values of ``slots`` (in C order) as one read-only view of a scan slab, when the
        scan decoded them into consecutive rows of one block (a file written in the store's
        chunk order: variable, time, step, member, level); else None.  The writer then
        encodes a chunk straight from the scan's buffer, without copying it into a fresh
        array (a copy and ~1400 page faults per 5-MB chunk)."""
        if self.closed:
            raise ReaderError(f"{self.path}: GRIB values read after the file's dataset was "
                              "closed")
        flat = slots.reshape(-1)
        first = self.decoded.get(int(flat[0])) if flat.size else None
        block = None if first is None else first.base
        if block is None or block.ndim != 2:
            return None
        step = first.nbytes
        row0 = (first.ctypes.data - block.ctypes.data) // step
        if row0 + flat.size > block.shape[0]:
            return None
        start = first.ctypes.data
        for k, slot in enumerate(flat.tolist()):
            row = self.decoded.get(slot)
            if row is None or row.base is not block or row.ctypes.data != start + k * step:
                return None
        out = block[row0:row0 + flat.size].view()
        out.flags.writeable = False
        return out

    def _open(self, slot: int) -> int:
        """A new eccodes handle (id) on message ``slot``; the caller releases it."""
        off, length = self.spans[slot]
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), length, off)
        if len(data) != length or data[:4] != b"GRIB":
            raise ReaderError(f"{self.path}: message {slot} is no longer at byte {off}: the "
                              "file changed after it was opened")
        if _lib is not None:
            ptr = _lib.grib_handle_new_from_message_copy(_ffi.NULL, _ffi.from_buffer(data),
                                                         length)
            if ptr == _ffi.NULL:
                raise ReaderError(f"{self.path}: cannot decode message {slot}")
            return int(_put_handle(ptr))
        return eccodes.codes_new_from_message(data)  # pragma: no cover

    def close(self) -> None:
        """Drop the decoded values; later reads raise."""
        self.closed = True
        self.decoded.clear()


class _FieldArray(BackendArray):
    """One variable's fields: ``slots[i, j, ...]`` is the message index holding the field at
    leading index ``(i, j, ...)`` (-1: absent, NaN); the last two axes are the grid."""

    def __init__(self, holder: _Messages, slots: np.ndarray, n_missing: np.ndarray,
                 grid: tuple[int, int], vmin: np.ndarray | None = None,
                 vmax: np.ndarray | None = None) -> None:
        self.holder, self.slots, self.n_missing = holder, slots, n_missing
        self.vmin = np.full(slots.shape, np.nan) if vmin is None else vmin
        self.vmax = np.full(slots.shape, np.nan) if vmax is None else vmax
        #: no missing point anywhere (the scan refuses bitmaps unless allow_nan): lets
        #: data.schema.validate skip decoding everything to look for NaN
        self.nan_free = bool((slots >= 0).all() and not n_missing.any())
        self.shape = (*slots.shape, *grid)
        self.dtype = np.dtype(np.float32)

    def field_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Minimum, maximum and NaN count of every field (per leading index), taken by the
        scan: what :func:`data.field_checks.field_stats` asks, without a second decode."""
        points = int(np.prod(self.shape[-2:]))
        nans = np.where(self.slots < 0, points, self.n_missing)
        return self.vmin, self.vmax, nans

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        # outer indexing: a selection of members such as [2, 0] decodes those two fields,
        # not every member between them
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.OUTER, self._get)

    def _get(self, key: tuple) -> np.ndarray:
        lead = self.slots.ndim
        slots, missing = _outer(self.slots, key[:lead]), _outer(self.n_missing, key[:lead])
        ny, nx = self.shape[-2:]
        if slots.size and (slots >= 0).all():
            view = self.holder.view(slots)
            if view is not None:  # decoded by the scan in this order: no copy
                return _outer(view.reshape(*slots.shape, ny, nx),
                              (slice(None),) * slots.ndim + tuple(key[lead:]))
        out = np.empty((*slots.shape, ny, nx), dtype=np.float32)
        for idx in np.ndindex(slots.shape):
            slot = int(slots[idx])
            if slot < 0:
                out[idx] = np.nan
                continue
            self.holder.read_into(slot, out[idx], n_missing=int(missing[idx]))
        return _outer(out, (slice(None),) * slots.ndim + tuple(key[lead:]))


def _outer(array: np.ndarray, key: tuple) -> np.ndarray:
    """``array`` indexed axis by axis by ``key`` (ints, slices, 1-D integer arrays): numpy's
    outer (orthogonal) indexing, which plain ``array[key]`` is not for two arrays."""
    axis = 0
    for k in key:
        array = array[(slice(None),) * axis + (k,)]
        if not isinstance(k, (int, np.integer)):
            axis += 1
    return array


def _dataset(messages: list[GribMessage], holder: _Messages, *, source: str,
             kind: schema.Kind | None, allow_nan: bool) -> xr.Dataset:
    """Check the inventory from the headers, then build one lazily indexed array per
    variable (:class:`_FieldArray`) over ``holder``."""
    kind = messages_kind(messages, kind, source=source)
    check_inventory(messages, kind=kind)
    # variables with different lead times (or times) are aligned on the union; a field the
    # file does not hold is absent (NaN here, recorded as absent by the ingest)
    absent = absent_fields(messages, kind=kind)
    forecast = kind == "forecast"
    times = sorted({m.init_time if forecast else m.valid_time for m in messages})
    leads = sorted({m.lead_time for m in messages}) if forecast else [np.timedelta64(0, "ns")]
    lat, lon = messages[0].latitudes, messages[0].longitudes
    by_var: dict[str, list[GribMessage]] = defaultdict(list)
    for m in messages:
        by_var[m.variable].append(m)
    arrays: dict[str, xr.DataArray] = {}
    for msgs in by_var.values():
        da = _assemble(msgs, holder, forecast=forecast, times=times, leads=leads, lat=lat,
                       lon=lon)
        name, da = canonical_variable(da, msgs[0].short_name, source=source,
                                      type_of_level=msgs[0].type_of_level)
        if name in arrays:
            raise ReaderError(f"{source}: two GRIB parameters map to variable {name!r}")
        arrays[name] = da
    ds = xr.Dataset(arrays)
    if absent:
        ds.attrs["enspp_absent_fields"] = absent
    centres = sorted({m.centre for m in messages if m.centre})
    if centres:
        ds.attrs["enspp_centre"] = " ".join(centres)
    return normalise_longitude(ds)


def _assemble(msgs: list[GribMessage], holder: _Messages, *, forecast: bool, times: list,
              leads: list, lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    first = msgs[0]
    pressure = first.type_of_level == "isobaricInhPa"
    others = {(m.type_of_level, m.level) for m in msgs if m.type_of_level != "isobaricInhPa"}
    if len(others) > 1 or (others and pressure):
        raise ReaderError(f"{first.path}: variable {first.short_name!r} on several non-pressure "
                          f"levels {sorted(others)}; only pressure levels become a level dim")
    numbers = sorted({m.number for m in msgs})
    levels = sorted({int(m.level) for m in msgs}) if pressure else [None]
    has_member = forecast or len(numbers) > 1
    ti = {t: i for i, t in enumerate(times)}
    li = {v: i for i, v in enumerate(leads)}
    ni = {v: i for i, v in enumerate(numbers)}
    vi = {v: i for i, v in enumerate(levels)}
    dims = [schema.INIT_TIME if forecast else schema.TIME]
    shape = [len(times)]
    if forecast:
        dims.append(schema.LEAD_TIME)
        shape.append(len(leads))
    if has_member:
        dims.append(schema.MEMBER)
        shape.append(len(numbers))
    if pressure:
        dims.append(schema.LEVEL)
        shape.append(len(levels))
    slots = np.full(shape, -1, dtype=np.int64)  # absent fields: NaN
    missing = np.zeros(shape, dtype=np.int64)
    vmin = np.full(shape, np.nan)
    vmax = np.full(shape, np.nan)
    for m in msgs:
        idx = [ti[m.init_time if forecast else m.valid_time]]
        if forecast:
            idx.append(li[m.lead_time])
        if has_member:
            idx.append(ni[m.number])
        if pressure:
            idx.append(vi[int(m.level)])
        slots[tuple(idx)] = m.index
        missing[tuple(idx)] = m.n_missing
        vmin[tuple(idx)], vmax[tuple(idx)] = m.vmin, m.vmax
    data = indexing.LazilyIndexedArray(_FieldArray(holder, slots, missing, (lat.size, lon.size),
                                                   vmin, vmax))
    coords: dict[str, object] = {dims[0]: np.array(times, dtype="datetime64[ns]"),
                                 schema.LATITUDE: lat, schema.LONGITUDE: lon}
    if forecast:
        coords[schema.LEAD_TIME] = np.array(leads, dtype="timedelta64[ns]")
    if has_member:
        coords[schema.MEMBER] = np.array(numbers, dtype=np.int64)
    if pressure:
        coords[schema.LEVEL] = np.array(levels, dtype=np.int64)
    attrs: dict[str, object] = {"units": first.units, "GRIB_shortName": first.short_name}
    if not pressure and first.type_of_level not in ("surface", "meanSea"):
        attrs.update(grib_type_of_level=first.type_of_level, grib_level=first.level)
    return xr.DataArray(data, dims=(*dims, schema.LATITUDE, schema.LONGITUDE), coords=coords,
                        attrs=attrs)


def _decode_into(h: int, out: np.ndarray, *, n_missing: int) -> None:
    """Decode the values of message ``h`` (float32) straight into ``out`` (a scan slab row or
    a selection's buffer): no intermediate array when ``out`` is C-contiguous."""
    if _lib is not None and out.flags.c_contiguous:
        length = _ffi.new("size_t*", out.size)
        err = _lib.grib_get_float_array(_get_handle(h), b"values",
                                        _ffi.cast("float *", out.ctypes.data), length)
        if err == _NOT_IMPLEMENTED:
            # packings eccodes decodes only in double precision (JPEG 2000, IEEE): its own
            # double decode, rounded to float32 as the float decoder rounds the others
            out[...] = eccodes.codes_get_double_array(h, "values").reshape(out.shape)
        else:
            _check(err)  # a size mismatch cannot pass check_inventory's grid check
    else:  # pragma: no cover - other eccodes bindings
        out[...] = eccodes.codes_get_double_array(h, "values").reshape(out.shape)
    if n_missing:
        out[eccodes.codes_get_array(h, "bitmap").reshape(out.shape) == 0] = np.nan


def _scan(path: str, *, allow_nan: bool, decode_budget: int = 0
          ) -> tuple[list[GribMessage], list[tuple[int, int]], dict[int, np.ndarray]]:
    """Headers of every message, where each lies in the file, the minimum and maximum of
    each message's values (for the plausibility check: every message is decoded once here)
    and the values of the first messages while they fit ``decode_budget`` bytes; each handle
    is released once read.  Past the budget, values are decoded into one scratch row and
    dropped (the writer decodes them again when it reads them)."""
    spans: list[tuple[int, int]] = []
    decoded: dict[int, np.ndarray] = {}
    slab = _Slabs(decode_budget)
    params: dict[tuple, tuple[str, str]] = {}  # concept keys, once per distinct parameter
    grids: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    scratch: dict[int, np.ndarray] = {}

    def read(h: int, i: int) -> GribMessage:
        keys = _Header(h)
        spans.append((keys.long("offset"), keys.message_size()))
        msg = _message(h, keys, path, i, params, grids, allow_nan)
        size = msg.latitudes.size * msg.longitudes.size
        values = slab.take(size)
        if values is not None:
            decoded[i] = values
        else:
            values = scratch.get(size)
            if values is None:
                values = scratch[size] = np.empty(size, dtype=np.float32)
        _decode_into(h, values, n_missing=msg.n_missing)
        msg.vmin, msg.vmax = _extremes(values, msg.n_missing)
        return msg

    return read_messages(path, read), spans, decoded


def _extremes(values: np.ndarray, n_missing: int) -> tuple[float, float]:
    if n_missing == 0:
        return float(values.min()), float(values.max())
    if n_missing >= values.size:
        return float("nan"), float("nan")
    return float(np.nanmin(values)), float(np.nanmax(values))


class _Slabs:
    """Rows for decoded fields, cut from blocks of up to 64 MiB (few, large allocations: the
    kernel maps them with huge pages, ~25x fewer page faults than one array per field), until
    ``budget`` bytes are used; then ``take`` returns None."""

    BLOCK = 64 * 2**20

    def __init__(self, budget: int) -> None:
        self.left = budget
        self.block: np.ndarray | None = None
        self.row = 0

    def take(self, size: int) -> np.ndarray | None:
        block = self.block
        if block is None or block.shape[1] != size or self.row == block.shape[0]:
            rows = min(max(1, self.BLOCK // (4 * size)), self.left // (4 * size))
            if rows < 1:
                return None
            block = self.block = np.empty((rows, size), dtype=np.float32)
            self.left -= block.nbytes
            self.row = 0
        self.row += 1
        return block[self.row - 1]


_HOUR = np.timedelta64(1, "h")
#: eccodes' GRIB_NOT_IMPLEMENTED: no single-precision decoder for the message's packing
_NOT_IMPLEMENTED = -4

try:  # the cffi layer of the eccodes bindings: decode into a caller's buffer
    from gribapi.gribapi import GRIB_CHECK as _check
    from gribapi.gribapi import ffi as _ffi
    from gribapi.gribapi import get_handle as _get_handle
    from gribapi.gribapi import lib as _lib
    from gribapi.gribapi import put_handle as _put_handle
except ImportError:  # pragma: no cover - other eccodes bindings
    _lib = None


def _lead(keys: _Header, path: str, index: int, short: str, edition: int,
          statistical: tuple | None) -> np.timedelta64:
    """End of the step range.  GRIB 2: ``forecastTime`` (+ ``lengthOfTimeRange`` of a
    statistical product), cheap header keys; otherwise eccodes' computed ``endStep``."""
    get_long = keys.long
    if edition == 2:
        unit = get_long("indicatorOfUnitOfTimeRange")
        end = get_long("forecastTime")
        if statistical is not None and statistical[-1] == unit and statistical[-2] is not None:
            end += statistical[-2]
        elif statistical is not None:
            unit = -1  # ranges in different units: let eccodes compute endStep
        if unit in _STEP_UNITS:
            return np.timedelta64(end, _STEP_UNITS[unit]).astype("timedelta64[ns]")
    unit = get_long("stepUnits")
    if unit not in _STEP_UNITS:
        raise ReaderError(f"{path}: message {index} ({short}) has step units code {unit}; "
                          "only minutes and hours are supported")
    return np.timedelta64(get_long("endStep"), _STEP_UNITS[unit]).astype("timedelta64[ns]")


def _long(h: int, key: str) -> int | None:
    try:
        return _get_long(h, key)
    except eccodes.GribInternalError:
        return None


def _get_long(h: int, key: str) -> int:
    """``codes_get_long`` without the wrapper's per-call overhead (a third of the cost of the
    ~25 header keys read per message)."""
    if _lib is None:  # pragma: no cover - other eccodes bindings
        return int(eccodes.codes_get_long(h, key))
    out = getattr(_local, "long", None)
    if out is None:
        out = _local.long = _ffi.new("long*")
    _check(_lib.grib_get_long(_ffi.cast("grib_handle*", h), key.encode(), out))
    return int(out[0])


_local = threading.local()  # one output cell per thread


class _Header:
    """Header keys of one message, read through eccodes' C API with the handle cast once
    and one output cell: the ~25 keys read per message cost a fifth of what
    ``codes_get_long``/``codes_get_string`` cost (each call casts the handle, encodes the
    key and allocates its output), which was a third of the scan's own time."""

    __slots__ = ("h", "ptr", "cell", "size")

    def __init__(self, h: int) -> None:
        self.h = h
        if _lib is not None:
            self.ptr = _ffi.cast("grib_handle*", h)
            self.cell = _ffi.new("long*")
            self.size = _ffi.new("size_t*")

    def long(self, key: str) -> int:
        """``codes_get_long``: raises ``GribInternalError`` when the key is missing."""
        if _lib is None:  # pragma: no cover - other eccodes bindings
            return int(eccodes.codes_get_long(self.h, key))
        err = _lib.grib_get_long(self.ptr, _KEYS.get(key) or _key(key), self.cell)
        if err:
            _check(err)
        return int(self.cell[0])

    def maybe_long(self, key: str) -> int | None:
        """The key's value, or None when the message has no such key."""
        if _lib is None:  # pragma: no cover - other eccodes bindings
            return _long(self.h, key)
        err = _lib.grib_get_long(self.ptr, _KEYS.get(key) or _key(key), self.cell)
        return None if err else int(self.cell[0])

    def string(self, key: str) -> str:
        """``codes_get_string`` (short values; longer ones through eccodes' own call)."""
        if _lib is None:  # pragma: no cover - other eccodes bindings
            return str(eccodes.codes_get_string(self.h, key))
        buf = _ffi.new("char[]", 128)
        self.size[0] = 128
        err = _lib.grib_get_string(self.ptr, _KEYS.get(key) or _key(key), buf, self.size)
        if err:
            return str(eccodes.codes_get_string(self.h, key))  # raises as eccodes does
        return _ffi.string(buf).decode()

    def message_size(self) -> int:
        if _lib is None:  # pragma: no cover - other eccodes bindings
            return int(eccodes.codes_get_message_size(self.h))
        _check(_lib.grib_get_message_size(self.ptr, self.size))
        return int(self.size[0])


#: key names as C strings, encoded once
_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    out = _KEYS[name] = name.encode()
    return out


def _message(h: int, keys: _Header, path: str, index: int, params: dict, grids: dict,
             allow_nan: bool) -> GribMessage:
    get_long, maybe_long, get_str = keys.long, keys.maybe_long, eccodes.codes_get_string
    edition = get_long("edition")
    raw = tuple(maybe_long(k) for k in _PARAM_KEYS.get(edition, ()))
    statistical = edition == 2 and raw[3] in _STATISTICAL_PDTS
    if statistical:
        raw += tuple(maybe_long(k) for k in _STAT_KEYS)
    pkey = (edition, get_long("centre"), raw)
    if pkey not in params:  # concept keys: slow, so once per distinct parameter
        params[pkey] = (get_str(h, "shortName"), get_str(h, "units"), get_str(h, "typeOfLevel"),
                        _centre(h))
    short, units, tol, centre = params[pkey]
    data_type = keys.string("dataType")
    date, hhmm = get_long("dataDate"), get_long("dataTime")
    init = np.datetime64(f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}T"
                         f"{hhmm // 100:02d}:{hhmm % 100:02d}", "ns")
    lead = _lead(keys, path, index, short, edition, raw if statistical else None)
    number = maybe_long("number") or 0
    gkey = (edition, get_long("Ni"), get_long("Nj"),
            get_long("latitudeOfFirstGridPoint"), get_long("longitudeOfFirstGridPoint"),
            get_long("latitudeOfLastGridPoint"), get_long("longitudeOfLastGridPoint"))
    if gkey not in grids:
        grid_type = get_str(h, "gridType")
        if grid_type != "regular_ll":
            raise ReaderError(f"{path}: message {index} ({short}) is on a {grid_type!r} grid; "
                              "only regular_ll is supported")
        lats = eccodes.codes_get_array(h, "distinctLatitudes")
        lons = eccodes.codes_get_array(h, "distinctLongitudes")
        grids[gkey] = (lats, lons, (grid_type, gkey[1], gkey[2], float(lats[0]),
                                    float(lons[0]), float(lats[-1]), float(lons[-1])))
    lat, lon, grid = grids[gkey]
    n_missing = get_long("numberOfMissing") if get_long("bitmapPresent") else 0
    if n_missing and not allow_nan:
        raise ReaderError(f"{path} message {index} ({short}, {data_type}, init "
                          f"{np.datetime_as_string(init, unit='m')}, +{lead // _HOUR} h, "
                          f"number {number}): {n_missing} missing (NaN) points; pass "
                          "allow_nan=True to accept them")
    return GribMessage(path=path, index=index, data_type=data_type,
                       variable=canonical_name(short, type_of_level=tol), short_name=short,
                       units=units, type_of_level=tol, level=get_long("level"), init_time=init,
                       lead_time=lead, number=number, grid=grid, n_missing=n_missing,
                       latitudes=lat, longitudes=lon, centre=centre)


def _centre(h: int) -> str:
    """The originating centre's abbreviation (``ecmf``), or its number when eccodes has none."""
    try:
        return str(eccodes.codes_get_string(h, "centre"))
    except eccodes.GribInternalError:
        return str(_long(h, "centre") or "")


__all__ = ["decode_grib", "open_grib_lazy"]
