"""Station data in: NetCDF files and CSV tables of station forecasts and observations.

One reader for every station layout, translating at the edge into the canonical model:

* the ensemble -> a forecast ``<v>(init_time, lead_time, member, station)``;
* the observations -> an analysis ``<v>(time, station)`` at the valid times;
* a deterministic forecast (e.g. HRES) -> a one-member forecast ``<v>(init_time, lead_time,
  member=[0], station)``, the layout of any deterministic forecast in this project.

Everything a file does not state explicitly comes from :class:`StationOptions` (the
``data.station`` section of ``enspp.yaml``); nothing is parsed from free text.

**NetCDF schema** (docs/stations.md shows examples)

* rows: a ``time`` dim whose coordinate is either the forecasts' init time
  (``time: init``), their valid time (``time: valid``), or a CF ``forecast_reference_time`` /
  ``init_time`` coordinate (then the rows are init times and ``time`` need not be given);
* lead time: a scalar (or one-element) coordinate ``lead_time`` / CF ``forecast_period``
  (timedelta, or a number with ``units`` ``hours``), else the option ``lead_time`` (hours);
* rows holding dates (midnight): the option ``hour`` gives their hour UTC;
* variables: ``ensemble`` ``(time, member[, station])``, ``observation`` ``(time[, station])``
  and ``deterministic`` ``(time[, station])``, named by the options or, by default,
  ``<variable>_ens``, ``<variable>_obs``, ``<variable>_hres``; units from each variable's
  ``units`` attribute, else the option ``units``;
* members: integer labels are member numbers (the control is 0); text labels (``CMCG``,
  ``GFS``, ``forc.7``) are numbered 1..N in the file's order, except the label named by the
  option ``control``, which becomes member 0 (a multi-model ensemble has none); the labels
  stay in the coordinate ``member_label``;
* stations: a ``station`` dim whose coordinate is the station id, with optional
  ``latitude``, ``longitude``, ``elevation`` and ``station_name`` on it; a file without a
  ``station`` dim holds one station, described by the option ``station``.

**CSV tables** (the layout of R's ensembleBMA and crch): one row per date and station, one
column per member (``columns.members``, every one required), the observation, the date
(``columns.time``, ISO or ``columns.time_format``) and optionally the station id,
latitude, longitude and elevation.  Timing and members follow the same options.

Station records have gaps: NaN is accepted in every variable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enspp.data import schema
from enspp.data.translate import ReaderError, canonical_variable, finalise

__all__ = ["CsvColumns", "StationData", "StationInfo", "StationOptions", "is_station_file",
           "is_station_part", "open_station", "read_station_part"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
#: the ranges of a station's coordinates (in :class:`StationInfo` and a CSV table's columns):
#: degrees north, degrees east (-180..180 or 0..360), metres above sea level
COORD_RANGES = {"latitude": (-90.0, 90.0), "longitude": (-180.0, 360.0),
                "elevation": (-500.0, 9000.0)}
_INIT_NAMES = ("forecast_reference_time", "init_time")
_LEAD_NAMES = ("forecast_period", "lead_time")
#: the three parts of a station file and the kind of store each goes to
Part = Literal["ensemble", "observation", "deterministic"]
STATION_SUFFIXES = (".csv",)
#: dataset attribute naming the part of a station file a dataset holds
PART_ATTR = "enspp_station_part"


class StationInfo(BaseModel):
    """One station, for files that hold a single station without a ``station`` dim."""

    model_config = _FROZEN
    id: str
    name: str | None = None
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=360)
    elevation: float | None = Field(None, ge=-500, le=9000)

    @field_validator("id", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) else v


class CsvColumns(BaseModel):
    """Column names of a station CSV table (one row per date and station)."""

    model_config = _FROZEN
    time: str = "date"
    #: ``strftime`` format of the time column (e.g. ``%Y%m%d%H``, ensembleBMA's); ISO when None
    time_format: str | None = None
    #: the member columns, in member order; every one must be in the table
    members: tuple[str, ...]
    observation: str | None = "obs"
    deterministic: str | None = None
    #: station id column; None: the table holds one station (option ``station``)
    station: str | None = "station"
    latitude: str | None = None
    longitude: str | None = None
    elevation: str | None = None

    @field_validator("members")
    @classmethod
    def _members(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one member column is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate member columns {sorted({m for m in v if v.count(m) > 1})}")
        return v


class MemberTransform(BaseModel):
    """A stress test of post-processing: every member moved by ``offset`` (the variable's
    units) and its departure from the ensemble mean (of all members) scaled by ``spread``, as
    the file is read, so the stores hold a biased and under- (or over-) dispersed ensemble."""

    model_config = _FROZEN
    offset: float = 0.0
    spread: float = Field(1.0, gt=0)


class StationOptions(BaseModel):
    """How a station file maps onto the canonical model (``data.station`` of ``enspp.yaml``)."""

    model_config = _FROZEN
    #: the canonical variable (``t2m``, ``tp24``, ...); default: the file's one ``<v>_ens``
    variable: str | None = None
    #: units of the values when the file has no ``units`` attribute (``degC``, ``mm``, ``K``...)
    units: str | None = None
    #: what the rows' time is: the forecasts' ``init`` time or their ``valid`` time
    time: Literal["init", "valid"] | None = None
    #: hour UTC of the rows when the time coordinate holds dates (midnight)
    hour: int | None = Field(None, ge=0, le=23)
    #: lead time in hours, when the file has no ``lead_time``/``forecast_period`` coordinate
    lead_time: float | None = Field(None, ge=0)
    #: variable names in a NetCDF file (defaults ``<variable>_ens``, ``_obs``, ``_hres``)
    ensemble: str | None = None
    observation: str | None = None
    deterministic: str | None = None
    #: the label of the control member (member 0); None: no control (e.g. a multi-model ensemble)
    control: str | int | None = None
    #: the station of a file without a ``station`` dim or column
    station: StationInfo | None = None
    #: CSV tables only: the columns
    columns: CsvColumns | None = None
    #: e.g. ``{offset: 8.0, spread: 0.3}``: the members biased by +8 and their spread cut to 30 %
    transform: MemberTransform | None = None

    @model_validator(mode="after")
    def _check(self) -> StationOptions:
        if self.variable is not None and not self.variable.strip():
            raise ValueError("variable must not be empty")
        if self.units is not None and schema.normalise_units(self.units) not in schema.KNOWN_UNITS:
            raise ValueError(f"units {self.units!r} are unknown (known: {sorted(schema.KNOWN_UNITS)})")
        return self


@dataclass(frozen=True)
class StationData:
    """The parts of one station file, canonical (``observations``/``deterministic`` may be None)."""

    forecast: xr.Dataset | None  # None only where the ensemble was not asked for
    observations: xr.Dataset | None
    deterministic: xr.Dataset | None

    def part(self, part: Part, *, source: str) -> xr.Dataset:
        ds = {"ensemble": self.forecast, "observation": self.observations,
              "deterministic": self.deterministic}[part]
        if ds is None:
            raise ReaderError(f"{source}: the file holds no {part} (see data.station options "
                              f"'{part}' / columns.{part})")
        return ds


def is_station_file(path: str | os.PathLike) -> bool:
    """A CSV table (by suffix) or a NetCDF file with a ``member`` dim and no grid."""
    p = Path(path)
    if p.suffix.lower() in STATION_SUFFIXES:
        return True
    try:
        dims, attrs = netcdf_header(p)
    except (OSError, ValueError):
        return False
    if attrs.get("enspp_kind") in ("forecast", "analysis"):
        return False  # one of our stores exported to NetCDF: canonical already
    return schema.MEMBER in dims and not {schema.LATITUDE, schema.LONGITUDE} <= dims \
        and not {"lat", "lon"} <= dims


#: the largest files opened from an image of their bytes (see :func:`open_netcdf`): when
#: reading a station file (loaded whole anyway) and when only looking at a NetCDF file's
#: dims to tell a station file from a gridded one
IMAGE_LIMIT_BYTES = 1024 * 2**20
SNIFF_IMAGE_LIMIT_BYTES = 64 * 2**20


def _netcdf_lock() -> Any:
    """xarray's lock around the netCDF-C / HDF5 libraries (not thread-safe): every call into
    them here holds it, as xarray's own reads do."""
    from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

    return NETCDF4_PYTHON_LOCK


def _open_image(p: Path, image_limit: int) -> Any:
    """``netCDF4.Dataset`` of the file's bytes (of its path above ``image_limit``); the
    caller holds :func:`_netcdf_lock`.  Raises OSError for what netCDF4 cannot open."""
    import netCDF4

    if p.stat().st_size > image_limit:
        return netCDF4.Dataset(str(p), mode="r")
    return netCDF4.Dataset(str(p), mode="r", memory=p.read_bytes())


def netcdf_header(path: str | os.PathLike) -> tuple[set[str], dict[str, Any]]:
    """The dim names and global attributes of a NetCDF file (nothing else is read)."""
    p = Path(path)
    with _netcdf_lock():
        nc = _open_image(p, SNIFF_IMAGE_LIMIT_BYTES)
        try:
            return set(nc.dimensions), {k: nc.getncattr(k) for k in nc.ncattrs()}
        finally:
            nc.close()


def open_netcdf(path: str | os.PathLike, *, image_limit: int = IMAGE_LIMIT_BYTES,
                **kwargs: Any) -> xr.Dataset:
    """A NetCDF file read whole into memory (``xr.open_dataset(path, **kwargs).load()``),
    opened from an image of its bytes (netCDF4's ``memory=``) rather than from its path,
    under xarray's netCDF/HDF5 lock.

    Why the image: with netCDF-C 4.10 / HDF5 2.2, opening a NetCDF-4 file from its path while
    this process already holds it open (a notebook's ``xr.open_dataset`` of the file about to
    be ingested), after another handle to it was closed, kills the process with a
    segmentation fault (both station files in ``../shared/data`` do it; pydata/xarray#8289).
    An image shares nothing with the handles held.  Why the lock: the libraries are not
    thread-safe and the ingest reads files in threads; xarray takes this lock around its own
    opens, which an image opened here would bypass (two files read at once crashed).  Files
    above ``image_limit`` bytes are opened from their path (the image would double the
    memory of a file loaded whole anyway)."""
    p = Path(path)
    with _netcdf_lock():
        try:
            nc = _open_image(p, image_limit)
        except OSError:
            nc = None
        if nc is not None:
            try:
                # lock=False: this thread holds the lock already (it is not re-entrant)
                ds = xr.open_dataset(xr.backends.NetCDF4DataStore(nc, lock=False),
                                     **kwargs).load()
                ds.set_close(None)  # closed here, under the lock
                return ds
            finally:
                nc.close()
    # not NetCDF-4/HDF5 nor classic NetCDF: xarray's engines try it and name the problem
    with xr.open_dataset(p, **kwargs) as f:
        return f.load()


def is_station_part(ds: xr.Dataset) -> bool:
    """True for a dataset made by this reader (NaN marks gaps in its records)."""
    return ds.attrs.get(PART_ATTR) in ("ensemble", "observation", "deterministic")


def read_station_part(path: str | os.PathLike, part: Part,
                      options: StationOptions | None = None) -> xr.Dataset:
    """One part of a station file (what ``enspp ingest`` writes into one store; only that
    part is built)."""
    return open_station(path, options, parts=(part,)).part(part, source=str(path))


def open_station(path: str | os.PathLike, options: StationOptions | None = None, *,
                 parts: Sequence[Part] = ("ensemble", "observation", "deterministic")
                 ) -> StationData:
    """Read a station NetCDF file or CSV table (see the module doc) into canonical datasets
    (the ``parts`` asked for; the others are None).

    Raises :class:`ReaderError` naming the file and the problem, ``FileNotFoundError`` for a
    missing file.
    """
    path = Path(path)
    opts = options or StationOptions()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = _read_csv(path, opts) if path.suffix.lower() in STATION_SUFFIXES else _read_netcdf(path, opts)
    return _canonical(raw, opts, source=str(path), parts=parts)


# ------------------------------------------------------------------ the two layouts
@dataclass
class _Raw:
    """A station file as plain arrays: rows x [members] x stations."""

    variable: str
    times: np.ndarray  # [R] datetime64[ns]
    rows_are: str | None  # "init" (a CF init coordinate) or None (options decide)
    lead: np.timedelta64 | None
    members: np.ndarray  # [R, M, S]
    labels: list  # M member labels (int or str)
    observation: np.ndarray | None  # [R, S]
    deterministic: np.ndarray | None  # [R, S]
    units: dict[str, str | None]  # part -> units in the file
    names: dict[str, str]  # part -> name in the file (for messages)
    stations: dict[str, np.ndarray] | None  # id, and latitude/longitude/elevation/station_name


def _read_netcdf(path: Path, opts: StationOptions) -> _Raw:
    try:
        with open_netcdf(path, decode_timedelta=True) as f:
            ds = f.load()
    except (OSError, ValueError) as e:
        raise ReaderError(f"{path}: not a readable NetCDF file ({e})") from e
    variable = opts.variable
    if variable is None:
        found = sorted(str(v)[:-4] for v in ds.data_vars if str(v).endswith("_ens"))
        if len(found) != 1:
            raise ReaderError(f"{path}: set data.station.variable (ensemble variables named "
                              f"'<variable>_ens': {found or 'none'}; variables: "
                              f"{sorted(map(str, ds.data_vars))})")
        variable = found[0]
    names = {"ensemble": opts.ensemble or f"{variable}_ens",
             "observation": opts.observation or f"{variable}_obs",
             "deterministic": opts.deterministic or f"{variable}_hres"}
    for part in ("ensemble", "observation", "deterministic"):
        given = getattr(opts, part)
        if names[part] not in ds.data_vars and (part == "ensemble" or given is not None):
            raise ReaderError(f"{path}: no variable {names[part]!r} ({part}; variables: "
                              f"{sorted(map(str, ds.data_vars))})")
    ens = ds[names["ensemble"]]
    if schema.MEMBER not in ens.dims:
        raise ReaderError(f"{path}: {names['ensemble']} has no {schema.MEMBER!r} dim (dims {ens.dims})")
    row_dim, times, rows_are = _rows(path, ds, ens)
    has_station = schema.STATION in ens.dims
    extra = [d for d in ens.dims if d not in (row_dim, schema.MEMBER, schema.STATION)]
    if extra:
        raise ReaderError(f"{path}: {names['ensemble']} has dims {ens.dims}; expected ({row_dim}, "
                          f"member[, station]) (one lead time per file)")
    order = (row_dim, schema.MEMBER, schema.STATION) if has_station else (row_dim, schema.MEMBER)
    members = np.asarray(ens.transpose(*order).values, dtype=np.float32)
    if not has_station:
        members = members[..., None]

    def rows_of(part: str) -> np.ndarray | None:
        if names[part] not in ds.data_vars:
            return None
        da = ds[names[part]]
        want = (row_dim, schema.STATION) if has_station else (row_dim,)
        if set(da.dims) != set(want):
            raise ReaderError(f"{path}: {names[part]} has dims {da.dims}, expected {want}")
        v = np.asarray(da.transpose(*want).values, dtype=np.float32)
        return v if has_station else v[:, None]

    stations = None
    if has_station:
        sid = ds[schema.STATION].values if schema.STATION in ds.coords else np.arange(ds.sizes[schema.STATION])
        stations = {"id": np.asarray([str(s) for s in sid])}
        for name in ("latitude", "longitude", "elevation", "station_name"):
            if name in ds.variables and ds[name].dims == (schema.STATION,):
                stations[name] = ds[name].values
    return _Raw(variable=variable, times=times, rows_are=rows_are, lead=_lead(path, ds),
                members=members, labels=list(ds[schema.MEMBER].values.tolist()
                                             if schema.MEMBER in ds.coords else range(ens.sizes[schema.MEMBER])),
                observation=rows_of("observation"), deterministic=rows_of("deterministic"),
                units={p: (str(ds[n].attrs["units"]) if n in ds and "units" in ds[n].attrs else None)
                       for p, n in names.items()},
                names=names, stations=stations)


def _rows(path: Path, ds: xr.Dataset, ens: xr.DataArray) -> tuple[str, np.ndarray, str | None]:
    """The row dim, its times and whether the file states they are init times."""
    for name in _INIT_NAMES:
        if name in ds.coords and ds[name].ndim == 1 and ds[name].dims[0] in ens.dims:
            return ds[name].dims[0], _times(path, ds[name].values, name), "init"
    if "time" not in ens.dims or "time" not in ds.coords:
        raise ReaderError(f"{path}: the ensemble needs a 'time' dim with a coordinate (or a CF "
                          f"'forecast_reference_time' coordinate); dims {ens.dims}")
    return "time", _times(path, ds["time"].values, "time"), None


def _times(path: Path, values: np.ndarray, name: str) -> np.ndarray:
    if np.asarray(values).dtype.kind != "M":
        raise ReaderError(f"{path}: coordinate {name!r} is not a time (dtype {np.asarray(values).dtype})")
    return pd.DatetimeIndex(values).as_unit("ns").values


def _lead(path: Path, ds: xr.Dataset) -> np.timedelta64 | None:
    for name in _LEAD_NAMES:
        if name in ds.variables:
            v = ds[name]
            if v.size != 1:
                raise ReaderError(f"{path}: {name} holds {v.size} values; a station file holds "
                                  f"one lead time")
            val = v.values.reshape(-1)[0]
            units = str(v.attrs.get("units", ""))
            if np.asarray(val).dtype.kind == "m":
                lead = np.timedelta64(val, "ns")
            elif units.split()[0:1] in (["hours"], ["hour"], ["h"]):
                hours = float(val)
                lead = (np.timedelta64(int(round(hours * 3600)), "s").astype("timedelta64[ns]")
                        if np.isfinite(hours) else np.timedelta64("NaT", "ns"))
            else:
                raise ReaderError(f"{path}: {name} = {val!r} needs units 'hours' or a timedelta "
                                  f"(units: {units!r})")
            if np.isnat(lead) or lead < np.timedelta64(0, "ns"):
                said = "missing" if np.isnat(lead) else f"{lead / np.timedelta64(1, 'h'):g} h"
                raise ReaderError(f"{path}: {name} is {said}, not a lead time >= 0 (a forecast "
                                  f"is valid at or after its init time)")
            return lead
    return None


def _read_csv(path: Path, opts: StationOptions) -> _Raw:
    cols = opts.columns
    if cols is None:
        raise ReaderError(f"{path}: a CSV table needs data.station.columns (at least the member "
                          f"columns, columns.members)")
    if opts.variable is None:
        raise ReaderError(f"{path}: a CSV table needs data.station.variable (the canonical name "
                          f"of its values, e.g. t2m)")
    try:
        table = pd.read_csv(path)
        # the header as written: pandas renames a second 'GFS' to 'GFS.1'
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        said = (str(e).strip().splitlines() or [type(e).__name__])[0]  # pandas' may end in \n
        raise ReaderError(f"{path}: not a readable CSV table ({said})") from e
    used = {cols.time, cols.observation, cols.deterministic, cols.station, cols.latitude,
            cols.longitude, cols.elevation, *cols.members} - {None}
    written = [str(c) for c in (header.iloc[0].tolist() if len(header) else [])]
    twice = [c for c in dict.fromkeys(written) if written.count(c) > 1 and c in used]
    if twice:
        raise ReaderError(f"{path}: column {twice[0]!r} is in the header {written.count(twice[0])} "
                          f"times (each column once)")
    have = set(table.columns)
    for role, name in (("time", cols.time), ("observation", cols.observation),
                       ("deterministic", cols.deterministic), ("station", cols.station),
                       ("latitude", cols.latitude), ("longitude", cols.longitude),
                       ("elevation", cols.elevation)):
        if name is not None and name not in have:
            raise ReaderError(f"{path}: column {name!r} ({role}) is missing (columns: {list(table.columns)})")
    missing = [m for m in cols.members if m not in have]
    if missing:
        raise ReaderError(f"{path}: member column {missing[0]!r} is missing"
                          + (f" (and {len(missing) - 1} more: {missing[1:4]})" if len(missing) > 1 else "")
                          + f"; columns: {list(table.columns)}")
    if table.empty:
        raise ReaderError(f"{path}: holds no rows (a header only)")
    t = _csv_times(path, table[cols.time], cols.time, cols.time_format)
    table = table.assign(**{"__t": pd.DatetimeIndex(t).as_unit("ns")})
    if cols.station is not None:
        table["__s"] = table[cols.station].astype(str)
    else:
        if opts.station is None:
            raise ReaderError(f"{path}: no station column (columns.station is null): set "
                              f"data.station.station (id, latitude, longitude)")
        table["__s"] = opts.station.id
    dup = table.duplicated(["__t", "__s"])
    if dup.any():
        row = table.loc[dup.idxmax()]
        raise ReaderError(f"{path}: {int(dup.sum())} duplicate rows for one date and station, "
                          f"e.g. {row['__t']} station {row['__s']}")
    times = np.sort(table["__t"].unique())
    ids = list(dict.fromkeys(table["__s"]))
    r = pd.Index(times).get_indexer(table["__t"])
    s = pd.Index(ids).get_indexer(table["__s"])

    def grid(values: np.ndarray) -> np.ndarray:
        out = np.full((len(times), len(ids), *values.shape[1:]), np.nan, np.float32)
        out[r, s] = values
        return out

    def numeric(names: list[str]) -> np.ndarray:
        try:
            return table[names].to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise ReaderError(f"{path}: columns {names} are not all numeric ({e})") from None

    members = np.moveaxis(grid(numeric(list(cols.members))), 2, 1)  # [R, M, S]
    stations: dict[str, np.ndarray] = {"id": np.asarray(ids)}
    for key, col in (("latitude", cols.latitude), ("longitude", cols.longitude),
                     ("elevation", cols.elevation)):
        if col is not None:
            stations[key] = _csv_station_coord(path, table, key, col, ids)
    return _Raw(variable=opts.variable, times=times, rows_are=None, lead=None, members=members,
                labels=list(cols.members),
                observation=None if cols.observation is None else grid(numeric([cols.observation]))[..., 0],
                deterministic=None if cols.deterministic is None else grid(numeric([cols.deterministic]))[..., 0],
                units={"ensemble": None, "observation": None, "deterministic": None},
                names={"ensemble": f"member columns {list(cols.members)[:3]}...",
                       "observation": str(cols.observation), "deterministic": str(cols.deterministic)},
                stations=None if cols.station is None else stations)


def _line(i: int) -> str:
    """Where row ``i`` (0-based, of the data) of a CSV table is: its line, the header line 1."""
    return f"line {i + 2}"


def _csv_times(path: Path, column: pd.Series, name: str, time_format: str | None) -> pd.Series:
    """The time column of a CSV table as datetimes; an empty cell or a value that does not
    parse is refused, naming its line."""
    empty = column.isna().to_numpy()
    if empty.any():
        i = int(np.argmax(empty))
        raise ReaderError(f"{path}: column {name!r} (time) is empty on {_line(i)}"
                          + (f" (and {int(empty.sum()) - 1} more lines)" if empty.sum() > 1 else ""))
    values = column.astype(str) if time_format else column
    how = f" with format {time_format!r}" if time_format else ""
    try:
        return pd.to_datetime(values, format=time_format)
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        first = first.split(". You might want to try")[0]
        try:
            bad = pd.to_datetime(values, format=time_format, errors="coerce").isna().to_numpy()
        except (ValueError, TypeError):
            bad = np.zeros(len(values), dtype=bool)
        at = ""
        if bad.any():
            i = int(np.argmax(bad))
            at = f": {column.iloc[i]!r} on {_line(i)}"
        raise ReaderError(f"{path}: column {name!r} does not parse as times{how}{at} "
                          f"({first})") from None


def _csv_station_coord(path: Path, table: pd.DataFrame, key: str, col: str,
                       ids: list[str]) -> np.ndarray:
    """One value of ``key`` (latitude, longitude, elevation) per station, from column ``col``:
    every row must hold a number in :data:`COORD_RANGES`, the same on every row of a station."""
    raw = table[col]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    lo, hi = COORD_RANGES[key]
    # a cell that is not a number (text, empty), or one outside the range
    wrong = ~np.isfinite(values) | (values < lo) | (values > hi)
    if wrong.any():
        i = int(np.argmax(wrong))
        st = table["__s"].iloc[i]
        what = ("is empty" if pd.isna(raw.iloc[i]) else
                f"holds {str(raw.iloc[i])!r}" if np.isnan(values[i]) else f"holds {values[i]:g}")
        n = int(wrong.sum())
        role = "" if col == key else f" ({key})"
        more = f"; {n - 1} more lines like it" if n > 1 else ""
        raise ReaderError(f"{path}: column {col!r}{role} {what} on {_line(i)} (station {st}"
                          f"{more}); a {key} is a number in {lo:g}..{hi:g}")
    per = pd.Series(values, index=table.index).groupby(table["__s"].to_numpy(), sort=False)
    first = per.transform("first").to_numpy()
    differ = values != first
    if differ.any():
        i = int(np.argmax(differ))
        st = table["__s"].iloc[i]
        j = int(np.argmax((table["__s"] == st).to_numpy()))
        raise ReaderError(f"{path}: station {st} has {key} {values[j]:g} on {_line(j)} but "
                          f"{values[i]:g} on {_line(i)} (column {col!r}; one {key} per station)")
    return per.first().loc[ids].to_numpy(dtype=np.float64)


# ------------------------------------------------------------------ to the canonical model
def _canonical(raw: _Raw, opts: StationOptions, *, source: str,
               parts: Sequence[Part]) -> StationData:
    init, lead = _timing(raw, opts, source=source)
    members, labels = _member_numbers(raw.labels, opts, source=source)
    order = np.argsort(members, kind="stable")
    station_coords = _station_coords(raw, opts, source=source)
    n_st = raw.members.shape[2]
    if len(station_coords[schema.STATION][1]) != n_st:
        raise ReaderError(f"{source}: {len(station_coords[schema.STATION][1])} station ids for "
                          f"{n_st} stations")
    present = {"ensemble": True, "observation": raw.observation is not None,
               "deterministic": raw.deterministic is not None}
    units = {p: _units(raw, opts, p, source=source) for p in raw.units if present[p]}
    valid = init + lead

    def forecast(values: np.ndarray, member_numbers: np.ndarray, part: str,
                 label_coord: list | None) -> xr.Dataset:
        da = xr.DataArray(values[:, None], dims=(schema.INIT_TIME, schema.LEAD_TIME, schema.MEMBER, schema.STATION),
                          coords={schema.INIT_TIME: init, schema.LEAD_TIME: [lead],
                                  schema.MEMBER: member_numbers},
                          attrs={"units": units[part]})
        _, da = canonical_variable(da, raw.variable, source=source)
        coords = dict(station_coords)
        if label_coord is not None:
            coords["member_label"] = (schema.MEMBER, _text([str(x) for x in label_coord]))
        ds = xr.Dataset({raw.variable: da}).assign_coords(coords)
        return _finish(ds, kind="forecast", source=source, part=part)

    ens = raw.members[:, order]
    if opts.transform is not None:
        t = opts.transform
        m = ens.astype(np.float64)
        mean = np.mean(m, axis=1, keepdims=True)
        ens = (mean + t.offset + t.spread * (m - mean)).astype(ens.dtype)
    fc = forecast(ens, members[order], "ensemble", [labels[i] for i in order]) \
        if "ensemble" in parts else None
    det = None
    if raw.deterministic is not None and "deterministic" in parts:
        det = forecast(raw.deterministic[:, None, :], np.array([0]), "deterministic", None)
    obs = None
    if raw.observation is not None and "observation" in parts:
        ob = raw.observation
        keep = np.ones(len(valid), bool)
        if len(np.unique(valid)) != len(valid):  # cannot happen for one lead; guard anyway
            raise ReaderError(f"{source}: two rows verify at the same time")
        da = xr.DataArray(ob[keep], dims=(schema.TIME, schema.STATION),
                          coords={schema.TIME: valid[keep]}, attrs={"units": units["observation"]})
        _, da = canonical_variable(da, raw.variable, source=source)
        obs = _finish(xr.Dataset({raw.variable: da}).assign_coords(station_coords),
                      kind="analysis", source=source, part="observation")
    return StationData(forecast=fc, observations=obs, deterministic=det)


def _finish(ds: xr.Dataset, *, kind: schema.Kind, source: str, part: str) -> xr.Dataset:
    ds = finalise(ds, kind=kind, source=source, allow_nan=True)
    return ds.assign_attrs({PART_ATTR: part})


def _timing(raw: _Raw, opts: StationOptions, *, source: str) -> tuple[np.ndarray, np.timedelta64]:
    """Init times of the rows and the lead time, from the file's CF coordinates or the options."""
    if raw.lead is not None:
        lead = raw.lead
        if opts.lead_time is not None and np.timedelta64(int(round(opts.lead_time * 3600)), "s") != lead:
            raise ReaderError(f"{source}: the file's lead time {lead / np.timedelta64(1, 'h'):g} h "
                              f"differs from data.station.lead_time {opts.lead_time:g} h")
    elif opts.lead_time is None:
        raise ReaderError(f"{source}: the lead time is not stated: set data.station.lead_time "
                          f"(hours) or give the file a 'forecast_period' coordinate")
    else:
        lead = np.timedelta64(int(round(opts.lead_time * 3600)), "s").astype("timedelta64[ns]")
    rows_are = raw.rows_are or opts.time
    if raw.rows_are is not None and opts.time not in (None, raw.rows_are):
        raise ReaderError(f"{source}: the file's rows are init times (a CF init coordinate), but "
                          f"data.station.time is {opts.time!r}")
    if rows_are is None:
        raise ReaderError(f"{source}: say what the rows' time is: data.station.time 'init' "
                          f"(forecast start) or 'valid' (verifying time)")
    times = raw.times
    if opts.hour is not None:
        midnight = times.astype("datetime64[D]").astype("datetime64[ns]")
        if not np.array_equal(times, midnight):
            raise ReaderError(f"{source}: data.station.hour is set but the rows' times are not "
                              f"dates at 00 UTC (e.g. {pd.Timestamp(times[times != midnight][0])})")
        times = times + np.timedelta64(opts.hour, "h")
    init = times if rows_are == "init" else times - lead
    return init.astype("datetime64[ns]"), lead.astype("timedelta64[ns]")


def _member_numbers(labels: list, opts: StationOptions, *, source: str) -> tuple[np.ndarray, list]:
    """Member numbers of the file's labels (see the module doc) and the labels."""
    if all(isinstance(x, (int, np.integer)) for x in labels):
        nums = np.asarray(labels, dtype=np.int64)
        if opts.control is not None and opts.control not in nums.tolist():
            raise ReaderError(f"{source}: data.station.control {opts.control!r} is not a member "
                              f"(members {nums.min()}..{nums.max()})")
        if opts.control not in (None, 0):
            raise ReaderError(f"{source}: integer member labels are member numbers (the control "
                              f"is 0); data.station.control must be 0 or unset, got {opts.control!r}")
        return nums, labels
    text = [str(x) for x in labels]
    if len(set(text)) != len(text):
        dup = sorted({x for x in text if text.count(x) > 1})
        raise ReaderError(f"{source}: duplicate member labels {dup}")
    control = None if opts.control is None else str(opts.control)
    if control is not None and control not in text:
        raise ReaderError(f"{source}: data.station.control {control!r} is not among the member "
                          f"labels {text[:5]}{'...' if len(text) > 5 else ''}")
    nums, n = [], 1
    for x in text:
        if x == control:
            nums.append(0)
        else:
            nums.append(n)
            n += 1
    return np.asarray(nums, dtype=np.int64), text


def _station_coords(raw: _Raw, opts: StationOptions, *, source: str) -> dict:
    """``station`` (ids) and ``latitude``/``longitude``/``elevation``/``station_name`` on it."""
    if raw.stations is None:
        if opts.station is None:
            raise ReaderError(f"{source}: the file holds one station without a 'station' dim: set "
                              f"data.station.station (id, and latitude, longitude, elevation)")
        st = opts.station
        values = {"id": np.asarray([st.id]), "latitude": st.latitude, "longitude": st.longitude,
                  "elevation": st.elevation, "station_name": st.name}
        values = {k: (v if k == "id" else np.asarray([v])) for k, v in values.items() if v is not None}
    else:
        if opts.station is not None:
            raise ReaderError(f"{source}: the file holds a station dim/column; data.station.station "
                              f"is for files of one station without one")
        values = raw.stations
    coords = {schema.STATION: (schema.STATION, _text([str(s) for s in values["id"]]))}
    attrs = {"latitude": {"units": "degrees_north", "standard_name": "latitude"},
             "longitude": {"units": "degrees_east", "standard_name": "longitude"},
             "elevation": {"units": "m", "standard_name": "height_above_mean_sea_level"},
             "station_name": {"long_name": "station name"}}
    for key, a in attrs.items():
        if key in values:
            v = np.asarray(values[key])
            coords[key] = (schema.STATION, _text(v.astype(str)) if key == "station_name" else v.astype(np.float64), a)
    return coords


def _text(values) -> np.ndarray:
    """Labels as an object array: stored as variable-length UTF-8 strings (zarr 3 has no
    specification for numpy's fixed-width unicode)."""
    return np.asarray(list(values), dtype=object)


def _units(raw: _Raw, opts: StationOptions, part: str, *, source: str) -> str:
    have = raw.units.get(part)
    if have is not None and opts.units is not None and \
            schema.normalise_units(have) != schema.normalise_units(opts.units):
        raise ReaderError(f"{source}: {raw.names[part]} is in {have!r} but data.station.units "
                          f"says {opts.units!r}")
    units = have or opts.units
    if units is None:
        raise ReaderError(f"{source}: {raw.names[part]} has no units: set data.station.units "
                          f"(e.g. degC, K, mm)")
    return units
