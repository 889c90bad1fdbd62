"""Readers of foreign formats into the canonical data model (names translated once, here).

* :func:`open_ens_grib`: ECMWF ENS GRIB via cfgrib (lazy, dask-backed).
* :func:`read_grib_eccodes`: the same content decoded directly with eccodes (numpy-backed,
  ~5x faster; use it for ingest).  Re-exported from :mod:`data.grib`.
* :func:`open_analysis`: analysis / reanalysis GRIB (cfgrib) or NetCDF.
* :func:`open_weatherbench_zarr` (:mod:`data.cf_readers`), :func:`open_canonical_zarr`
  (:mod:`data.point_readers`), re-exported here; station files: :mod:`data.station`.

Every reader returns a dataset that passes :func:`data.schema.validate` and raises
:class:`ReaderError` (a ``ValueError``) naming the file for bad input.  The conventions (member
numbering, lead = end of the step range, variables with different lead times aligned on their
union with absent fields NaN and listed in ``attrs['enspp_absent_fields']``) are those of
:mod:`data.grib`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from enspp.data import schema
from enspp.data.cf_readers import open_weatherbench_zarr
from enspp.data.grib import (
    GribMessage,
    absent_fields,
    check_inventory,
    expand_paths,
    messages_kind,
    read_grib_eccodes,
    scan_grib,
)
from enspp.data.point_readers import open_canonical_zarr
from enspp.data.translate import ReaderError, canonical_variable, finalise

__all__ = ["ReaderError", "open_ens_grib", "open_analysis", "read_grib_eccodes", "open_grib",
           "open_weatherbench_zarr", "open_canonical_zarr", "is_grib_file"]

_DIM_NAMES = {"number": schema.MEMBER, "step": schema.LEAD_TIME, "isobaricInhPa": schema.LEVEL}


def is_grib_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the GRIB magic bytes (within its first 1 kB)."""
    try:
        with open(path, "rb") as fh:
            return b"GRIB" in fh.read(1024)
    except OSError:
        return False


def open_ens_grib(paths, *, cache_dir: str | os.PathLike | None = None,
                  chunks: dict | None = None, allow_nan: bool = False) -> xr.Dataset:
    """Open ECMWF ENS GRIB file(s), a directory or a glob as one canonical forecast dataset.

    Each file is opened with cfgrib once per (dataType, typeOfLevel, shortName), so control and
    perturbed members, pressure-level and surface fields and variables with different steps
    all come out of one call; pieces are combined lazily (dask).  ``chunks`` is passed to
    cfgrib (default ``{}``: one dask chunk per piece).  GRIB indexes go to ``cache_dir`` (never
    beside the data); without it no index is written.  Every file is first scanned with eccodes
    (headers only) to reject corrupt files, NaN fields (unless ``allow_nan``), duplicate fields
    across files and init times missing members.
    """
    return open_grib(paths, kind="forecast", cache_dir=cache_dir, chunks=chunks, allow_nan=allow_nan)


def open_grib(paths, *, kind: schema.Kind | None = None, cache_dir: str | os.PathLike | None = None,
              chunks: dict | None = None, allow_nan: bool = False) -> xr.Dataset:
    """GRIB file(s) of forecasts or analyses through cfgrib (``kind`` detected when None)."""
    files = expand_paths(paths)
    messages: list[GribMessage] = []
    per_file: dict[Path, list[GribMessage]] = {}
    for f in files:
        per_file[f] = scan_grib(f, values=False, allow_nan=allow_nan)
        messages.extend(per_file[f])
    source = _source_name(files)
    found = messages_kind(messages, kind, source=source)
    check_inventory(messages, kind=found)
    pieces: dict[str, list[xr.DataArray]] = defaultdict(list)
    for f, msgs in per_file.items():
        groups = sorted({(m.data_type, m.type_of_level, m.short_name) for m in msgs})
        for data_type, tol, short in groups:
            ds = _open_cfgrib(f, {"dataType": data_type, "typeOfLevel": tol, "shortName": short},
                              cache_dir=cache_dir, chunks={} if chunks is None else chunks)
            for name, da in ds.data_vars.items():
                da = _canonical_dims(da, kind=found, source=str(f))
                new, da = canonical_variable(da, da.attrs.get("GRIB_shortName", str(name)),
                                             source=str(f), type_of_level=tol)
                if tol not in ("isobaricInhPa", "surface", "meanSea"):
                    level = next(m.level for m in msgs if (m.type_of_level, m.short_name) == (tol, short))
                    da.attrs.update(grib_type_of_level=tol, grib_level=level)  # one level: checked
                pieces[new].append(da)
    arrays = [_combine_pieces(p, kind=found, name=n, source=source) for n, p in pieces.items()]
    ds = xr.merge(arrays, join="outer", compat="override", combine_attrs="override")
    ds.attrs = {}
    holes = absent_fields(messages, kind=found)
    if holes:
        ds.attrs["enspp_absent_fields"] = holes
    centres = sorted({m.centre for m in messages if m.centre})
    if centres:
        ds.attrs["enspp_centre"] = " ".join(centres)
    return finalise(ds, kind=found, source=source, allow_nan=allow_nan or bool(holes))


def open_analysis(paths, *, cache_dir: str | os.PathLike | None = None, chunks: dict | None = None,
                  allow_nan: bool = False) -> xr.Dataset:
    """Analyses / reanalyses from GRIB (cfgrib; an analysis ensemble keeps a ``member`` dim)
    or NetCDF (dims ``time``/``valid_time``, ``latitude``/``lat``, ``longitude``/``lon``,
    optional ``level``/``pressure_level``/``isobaricInhPa`` and ``number``/``member``)."""
    files = expand_paths(paths) if not _is_netcdf_input(paths) else [Path(p) for p in _as_list(paths)]
    if all(is_grib_file(f) for f in files):
        return open_grib(files, kind="analysis", cache_dir=cache_dir, chunks=chunks, allow_nan=allow_nan)
    if any(is_grib_file(f) for f in files):
        raise ReaderError(f"{_source_name(files)}: mixes GRIB and non-GRIB files")
    parts = [_open_netcdf_analysis(f) for f in files]
    ds = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    return finalise(ds, kind="analysis", source=_source_name(files), allow_nan=allow_nan)


_NC_DIMS = {"valid_time": schema.TIME, "lat": schema.LATITUDE, "lon": schema.LONGITUDE,
            "pressure_level": schema.LEVEL, "isobaricInhPa": schema.LEVEL, "plev": schema.LEVEL,
            "number": schema.MEMBER, "realization": schema.MEMBER, "ensemble_member": schema.MEMBER}


def _open_netcdf_analysis(path: Path) -> xr.Dataset:
    try:
        ds = xr.open_dataset(path)
    except (OSError, ValueError) as e:
        raise ReaderError(f"{path}: not a readable GRIB or NetCDF file ({e})") from e
    ds = ds.rename({k: v for k, v in _NC_DIMS.items() if k in ds.variables and v not in ds.variables})
    if schema.TIME not in ds.dims:
        raise ReaderError(f"{path}: an analysis needs a 'time' (or 'valid_time') dim, found {tuple(ds.dims)}")
    if schema.LEVEL in ds.coords and ds[schema.LEVEL].attrs.get("units") == "Pa":
        ds = ds.assign_coords({schema.LEVEL: ds[schema.LEVEL] / 100.0})
    keep = {d for d in (schema.TIME, schema.MEMBER, schema.LEVEL, schema.LATITUDE, schema.LONGITUDE)}
    out = {}
    for name, da in ds.data_vars.items():
        if not set(da.dims) <= keep:
            raise ReaderError(f"{path}: variable {name!r} has dims {da.dims} outside the canonical "
                              f"{sorted(keep)}")
        new, da = canonical_variable(da, str(name), source=str(path))
        out[new] = da
    return xr.Dataset(out).drop_vars([c for c in ds.coords if c not in ds.dims], errors="ignore")


def _open_cfgrib(path: Path, filter_by_keys: dict, *, cache_dir, chunks) -> xr.Dataset:
    kwargs = {"filter_by_keys": filter_by_keys, "indexpath": _indexpath(path, cache_dir),
              "errors": "raise"}
    logging.getLogger("cfgrib").setLevel(logging.ERROR)
    try:
        return xr.open_dataset(path, engine="cfgrib", backend_kwargs=kwargs, chunks=chunks,
                               decode_timedelta=True)
    except Exception as e:  # cfgrib raises a zoo of types for a file it cannot build
        raise ReaderError(f"{path}: cfgrib cannot open {filter_by_keys} ({type(e).__name__}: {e})") from e


def _indexpath(path: Path, cache_dir) -> str:
    if cache_dir is None:
        return ""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return str(cache / f"{digest}.{{short_hash}}.idx")


def _canonical_dims(da: xr.DataArray, *, kind: str, source: str) -> xr.DataArray:
    """cfgrib names -> canonical names; scalar coordinates become length-1 dims."""
    if kind == "forecast":
        da = da.rename({"time": schema.INIT_TIME}) if "time" in da.coords else da
        wanted = [schema.INIT_TIME, schema.LEAD_TIME, schema.MEMBER]
    else:
        if "valid_time" in da.coords and "time" in da.dims:
            da = da.assign_coords(time=da["valid_time"].values)
        elif "valid_time" in da.coords and "time" not in da.dims:
            da = da.assign_coords(time=da["valid_time"])
        wanted = [schema.TIME]
    da = da.rename({k: v for k, v in _DIM_NAMES.items() if k in da.coords})
    if kind == "analysis":
        if schema.LEAD_TIME in da.dims:
            raise ReaderError(f"{source}: analysis messages with several steps; open as a forecast")
        if schema.MEMBER in da.coords and da[schema.MEMBER].size == 1 and schema.MEMBER not in da.dims:
            da = da.drop_vars(schema.MEMBER)
        if schema.MEMBER in da.dims:
            wanted.append(schema.MEMBER)
    if schema.LEVEL in da.coords:
        wanted.append(schema.LEVEL)
    for dim in wanted:
        if dim not in da.dims:
            da = da.expand_dims(dim)
    drop = [c for c in da.coords if c not in da.dims]
    return da.drop_vars(drop)


def _combine_pieces(pieces: Sequence[xr.DataArray], *, kind: str, name: str, source: str) -> xr.DataArray:
    """One variable's pieces (control/perturbed, one file per init time...) -> one array, lazily."""
    if len(pieces) == 1:
        return pieces[0]
    time_dim = schema.INIT_TIME if kind == "forecast" else schema.TIME
    # pieces with the same times but other members (cf + pf) first, then along time
    by_time: dict[tuple, list[xr.DataArray]] = defaultdict(list)
    for p in pieces:
        by_time[tuple(p[time_dim].values.tolist())].append(p)
    stacked = []
    for group in by_time.values():
        if len(group) == 1:
            stacked.append(group[0])
            continue
        try:
            stacked.append(xr.combine_by_coords([g.to_dataset(name=name) for g in group],
                                                join="outer", combine_attrs="override")[name])
        except ValueError as e:
            raise ReaderError(f"{source}: cannot combine the pieces of {name!r} for one time "
                              f"(split across files in an unsupported way: {e})") from e
    stacked.sort(key=lambda a: a[time_dim].values[0])
    times = np.concatenate([a[time_dim].values for a in stacked])
    if len(np.unique(times)) != len(times):
        raise ReaderError(f"{source}: variable {name!r} has overlapping time sets across files")
    return xr.concat(stacked, dim=time_dim, join="outer", combine_attrs="override")


def _is_netcdf_input(paths) -> bool:
    return all(Path(p).suffix.lower() in (".nc", ".nc4", ".netcdf") for p in _as_list(paths))


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _source_name(files: Sequence[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
