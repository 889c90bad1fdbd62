"""Forecast sources behind one small protocol, and detection of what a set of files holds.

```python
src = open_source("../shared/data/gridded/ecmwf_ens_stjude-storm_2013102500_10fg3_z850.grib")
ds = src.open()          # canonical: init_time, lead_time, member, [level], latitude, longitude
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import xarray as xr

from enspp.data import schema
from enspp.data.cf_readers import open_weatherbench_zarr
from enspp.data.grib import expand_paths, kind_of_messages, scan_grib
from enspp.data.point_readers import open_canonical_zarr
from enspp.data.readers import is_grib_file, open_analysis, open_grib
from enspp.data.station import STATION_SUFFIXES, StationOptions, is_station_file, open_station
from enspp.data.translate import ReaderError

__all__ = ["ForecastSource", "GribForecastSource", "ZarrForecastSource", "WeatherBenchSource",
           "StationSource", "open_source", "detect_kind", "detect_format"]

Format = Literal["grib", "zarr", "weatherbench", "station", "netcdf"]


@runtime_checkable
class ForecastSource(Protocol):
    """Anything that opens as a canonical dataset."""

    def open(self) -> xr.Dataset: ...


@dataclass(frozen=True)
class GribForecastSource:
    """GRIB file(s) / directory / glob, forecasts or analyses, via cfgrib (lazy)."""

    paths: tuple[str, ...]
    kind: schema.Kind | None = None
    cache_dir: str | None = None
    allow_nan: bool = False

    def open(self) -> xr.Dataset:
        return open_grib(list(self.paths), kind=self.kind, cache_dir=self.cache_dir, allow_nan=self.allow_nan)


@dataclass(frozen=True)
class ZarrForecastSource:
    """A store in our own layout (plain reader; :func:`data.store.open_store` filters completion)."""

    path: str

    def open(self) -> xr.Dataset:
        return open_canonical_zarr(self.path)


@dataclass(frozen=True)
class WeatherBenchSource:
    """A WeatherBench 2 style Zarr store."""

    path: str

    def open(self) -> xr.Dataset:
        return open_weatherbench_zarr(self.path)


@dataclass(frozen=True)
class StationSource:
    """A station NetCDF file or CSV table (:mod:`data.station`); ``open()`` gives the ensemble
    forecast, ``observations()`` the observations, ``deterministic()`` the deterministic
    forecast (None when the file has none)."""

    path: str
    options: StationOptions | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def _data(self):
        if "data" not in self._cache:
            self._cache["data"] = open_station(self.path, self.options)
        return self._cache["data"]

    def open(self) -> xr.Dataset:
        return self._data().forecast

    def observations(self) -> xr.Dataset | None:
        return self._data().observations

    def deterministic(self) -> xr.Dataset | None:
        return self._data().deterministic


@dataclass(frozen=True)
class NetcdfAnalysisSource:
    """Analysis NetCDF file(s)."""

    paths: tuple[str, ...]

    def open(self) -> xr.Dataset:
        return open_analysis(list(self.paths))


def detect_format(path: str | os.PathLike) -> Format:
    """``grib`` | ``zarr`` (ours) | ``weatherbench`` (any other Zarr: WeatherBench 2 or CF
    layout) | ``station`` | ``netcdf`` from content."""
    p = Path(path)
    if p.is_dir():
        if (p / "zarr.json").exists() or (p / ".zgroup").exists() or (p / ".zmetadata").exists():
            from enspp.data.store import read_root_attrs

            attrs = read_root_attrs(p) or {}
            if "enspp_kind" in attrs:
                return "zarr"
            return "weatherbench"  # a foreign store: WeatherBench 2 or CF layout
        return "grib"  # a directory of GRIB files; expand_paths checks it
    if not p.exists() and any(ch in str(path) for ch in "*?["):
        return "grib"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.suffix.lower() in STATION_SUFFIXES:
        return "station"
    if is_grib_file(p):
        return "grib"
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith((b"\x89HDF", b"CDF")):
        return "station" if is_station_file(p) else "netcdf"
    raise ReaderError(f"{p}: unknown format (not GRIB, NetCDF or Zarr)")


def detect_kind(paths) -> schema.Kind:
    """``forecast`` or ``analysis`` for GRIB input, from the dataType keys of its messages
    (cf/pf/fc: forecast; an/4v...: analysis); a mixture is a :class:`ReaderError`."""
    files = expand_paths(paths)
    messages = []
    for f in files:
        messages.extend(scan_grib(f, values=False, allow_nan=True))
    return kind_of_messages(messages, source=str(files[0]) if len(files) == 1 else f"{len(files)} files")


def open_source(path_or_paths, *, kind: schema.Kind | None = None, cache_dir: str | None = None,
                station: StationOptions | None = None) -> ForecastSource:
    """Pick the source for the input by content (a list of paths must all be of one format)."""
    items = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    if not items:
        raise ReaderError("open_source: no paths given")
    formats = {detect_format(p) for p in items}
    if len(formats) != 1:
        raise ReaderError(f"{items[0]}: inputs mix formats {sorted(formats)}")
    fmt = formats.pop()
    if fmt in ("zarr", "weatherbench", "station") and len(items) != 1:
        raise ReaderError(f"{items[0]}: give one {fmt} path at a time, got {len(items)}")
    if fmt == "grib":
        return GribForecastSource(tuple(str(p) for p in items), kind=kind, cache_dir=cache_dir)
    if fmt == "zarr":
        return ZarrForecastSource(str(items[0]))
    if fmt == "weatherbench":
        return WeatherBenchSource(str(items[0]))
    if fmt == "station":
        return StationSource(str(items[0]), options=station)
    return NetcdfAnalysisSource(tuple(str(p) for p in items))
