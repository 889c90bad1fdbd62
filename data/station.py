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
    elevation: float | None = None

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
            if np.asarray(val).dtype.kind == "m":
                return np.timedelta64(val, "ns")
            units = str(v.attrs.get("units", ""))
            if units.split()[0:1] in (["hours"], ["hour"], ["h"]):
                return np.timedelta64(int(round(float(val) * 3600)), "s").astype("timedelta64[ns]")
            raise ReaderError(f"{path}: {name} = {val!r} needs units 'hours' or a timedelta "
                              f"(units: {units!r})")
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
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ReaderError(f"{path}: not a readable CSV table ({e})") from e
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
    try:
        t = pd.to_datetime(table[cols.time].astype(str) if cols.time_format else table[cols.time],
                           format=cols.time_format)
    except (ValueError, TypeError) as e:
        raise ReaderError(f"{path}: column {cols.time!r} does not parse as times"
                          f"{' with format ' + repr(cols.time_format) if cols.time_format else ''} ({e})") from None
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
    first = table.drop_duplicates("__s").set_index("__s").loc[ids]
    for key, col in (("latitude", cols.latitude), ("longitude", cols.longitude),
                     ("elevation", cols.elevation)):
        if col is not None:
            stations[key] = first[col].to_numpy(dtype=np.float64)
    return _Raw(variable=opts.variable, times=times, rows_are=None, lead=None, members=members,
                labels=list(cols.members),
                observation=None if cols.observation is None else grid(numeric([cols.observation]))[..., 0],
                deterministic=None if cols.deterministic is None else grid(numeric([cols.deterministic]))[..., 0],
                units={"ensemble": None, "observation": None, "deterministic": None},
                names={"ensemble": f"member columns {list(cols.members)[:3]}...",
                       "observation": str(cols.observation), "deterministic": str(cols.deterministic)},
                stations=None if cols.station is None else stations)


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
