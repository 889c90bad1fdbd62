"""Write a synthetic world to files that the ingest reads like real ones."""

from __future__ import annotations

import json
import re
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml
from pydantic import ValidationError

from enspp.data import schema
from enspp.data.grib_writer import GribFields, write_fields
from enspp.data.synth.config import SynthConfig, SynthError
from enspp.data.synth.events import events_to_yaml_dict
from enspp.data.synth.physics import VAR_SPECS
from enspp.data.synth.pool import auto_workers, forecast_runner
from enspp.data.synth.world import AnalysisChunk, ForecastChunk, World, build_world, simulate_states
from enspp.data.yaml_file import read_yaml_mapping

__all__ = ["WorldPaths", "generate_world", "ensure_world", "world_config", "not_a_world",
           "ORACLE_DESCRIPTION"]

ORACLE_DESCRIPTION = (
    "exact predictive distribution of the truth given everything the forecast carries "
    "(the generator's state at init): the truth at the valid time is a draw from "
    "N(<var>_mu, <var>_sigma**2); no post-processing can beat its expected CRPS")
#: written last by generate_world: a world without it was interrupted while being generated
COMPLETE_MARKER = ".complete"
_OWNED = ("forecast", "analysis", "static.nc", "oracle.zarr", "events.yaml", "synth.yaml",
          COMPLETE_MARKER)


@dataclass(frozen=True)
class WorldPaths:
    """Where a generated world lies."""

    root: Path
    forecast_files: tuple[Path, ...]
    analysis_files: tuple[Path, ...]
    static: Path
    oracle: Path
    events: Path
    config: Path

    @property
    def forecast_dir(self) -> Path:
        return self.root / "forecast"

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"


def generate_world(out_dir: str | Path, config: SynthConfig | None = None, *,
                   overwrite: bool = False,
                   progress: Callable[[str], None] | None = None,
                   workers: int | None = None) -> WorldPaths:
    """Simulate the world of ``config`` and write it under ``out_dir``; deterministic in the seed.

    Refuses a non-empty ``out_dir`` that does not hold a synthetic world, and an existing world
    unless ``overwrite`` (then only the world's own files are replaced).  ``progress`` receives
    one line per simulated year.  ``workers`` processes compute and write the forecast files
    while this one simulates (None: one per core, none for a small world; 0: all here); the
    files are the same for any number of workers.
    """
    config = config or SynthConfig()
    root = Path(out_dir)
    world = build_world(config)
    n_workers = auto_workers(world) if workers is None else workers
    if n_workers < 0:
        raise SynthError(f"workers must be >= 0 (0: write in this process), got {n_workers}")
    _prepare(root, overwrite=overwrite)
    (root / "forecast").mkdir(parents=True)
    (root / "analysis").mkdir()
    static = _write_static(root / "static.nc", world)
    events = root / "events.yaml"
    events.write_text(yaml.safe_dump(
        events_to_yaml_dict(world.events, thresholds=_event_thresholds(world),
                            variables=config.variables), sort_keys=False))
    cfg_path = root / "synth.yaml"
    cfg_path.write_text(yaml.safe_dump({"synth": _config_dict(config)}, sort_keys=False))
    analysis_files: list[Path] = []
    oracle = _OracleWriter(root / "oracle.zarr", world)
    inflight: deque[tuple[int, Future]] = deque()
    window = 4 * max(n_workers, 1)
    block = 0
    with forecast_runner(root / "forecast", world, workers=n_workers) as submit:
        for item in simulate_states(world):
            if isinstance(item, AnalysisChunk):
                block += 1
                analysis_files.extend(_write_analysis(root / "analysis", world, item))
                if progress is not None:
                    progress(f"simulated {item.days[0]:%Y-%m-%d}..{item.days[-1]:%Y-%m-%d}")
            else:
                inflight.append((block, submit(item)))
            # collect finished forecasts in order; wait once `window` are in flight
            while inflight and (len(inflight) > window or inflight[0][1].done()):
                oracle.add(*_result(inflight.popleft()))
        while inflight:
            oracle.add(*_result(inflight.popleft()))
    oracle.flush()
    (root / COMPLETE_MARKER).touch()  # last: the world is whole
    return WorldPaths(root=root, forecast_files=tuple(oracle.files),
                      analysis_files=tuple(sorted(set(analysis_files))), static=static,
                      oracle=oracle.path, events=events, config=cfg_path)


def _result(item: tuple[int, Future]) -> tuple[int, Path, ForecastChunk]:
    block, fut = item
    path, chunk = fut.result()
    return block, path, chunk


class _OracleWriter:
    """Collects forecasts in init order and appends their oracle fields to the Zarr store, one
    append per simulated year (the first one sets the chunking)."""

    def __init__(self, path: Path, world: World) -> None:
        self.path, self.world = path, world
        self.files: list[Path] = []
        self._pending: list[ForecastChunk] = []
        self._block: int | None = None
        self._started = False

    def add(self, block: int, path: Path, chunk: ForecastChunk) -> None:
        if self._pending and block != self._block:
            self.flush()
        self._block = block
        self.files.append(path)
        self._pending.append(chunk)

    def flush(self) -> None:
        if self._pending:
            _append_oracle(self.path, self.world, self._pending, first=not self._started)
            self._started, self._pending = True, []


def _event_thresholds(world: World) -> dict[str, float]:
    """Climatological mean +- 2 s.d. (sign of the event) at each event's centre and peak day."""
    out = {}
    for ev in world.events:
        i = int(np.argmin(np.abs(world.lat - ev.lat)))
        j = int(np.argmin(np.abs(world.lon - ev.lon)))
        clim, sd = VAR_SPECS[ev.variable].climate(world.lat[:, None], world.lon[None, :], world.lsm,
                                                  world.orog, np.asarray([ev.peak.day_of_year]))
        sign = 1.0 if ev.kind == "heat_dome" else -1.0
        out[ev.id] = float(clim[0, i, j] + sign * 2.0 * sd[0, i, j])
    return out


def world_config(root: str | Path) -> SynthConfig | None:
    """The configuration of the world in ``root`` (its ``synth.yaml``, written before the
    files), or None; see :func:`is_complete` for whether generation finished."""
    marker = Path(root) / "synth.yaml"
    if not marker.is_file():
        return None
    raw = read_yaml_mapping(marker, what="synthetic world config", error=SynthError)
    return SynthConfig.model_validate(raw.get("synth", {}))


def is_complete(root: str | Path) -> bool:
    """True once :func:`generate_world` has finished writing the world in ``root``."""
    return (Path(root) / COMPLETE_MARKER).is_file()


def ensure_world(root: str | Path, config: SynthConfig, *,
                 progress: Callable[[str], None] | None = None) -> bool:
    """Generate the world of ``config`` in ``root`` unless it is already there, whole; True if
    it was generated (a world of the same config left half-written by an interrupted run is
    generated again).  Raises :class:`SynthError` if ``root`` holds another world."""
    have = world_config(root)
    if have is None:
        generate_world(root, config, progress=progress)
        return True
    if have != config:
        raise SynthError(f"{root} holds another synthetic world ({Path(root) / 'synth.yaml'}); "
                         "use another directory or delete it")
    if not is_complete(root):
        if progress is not None:
            progress(f"{root}: the world was not finished (interrupted run); generating it again")
        generate_world(root, config, overwrite=True, progress=progress)
        return True
    return False


def _config_dict(config: SynthConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.model_dump().items()}


def _prepare(root: Path, *, overwrite: bool) -> None:
    """Make ``root`` ready for a new world: new or empty, or (``overwrite``) holding a world
    whose own files alone are then removed.  Everything is checked before anything is removed:
    a refusal changes nothing."""
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        why = not_a_world(root)
        if why is not None:
            raise SynthError(f"{root}: directory is not empty and holds no synthetic world "
                             f"({why}); choose an empty or new directory (nothing was changed)")
        if not overwrite:
            raise SynthError(f"{root}: already holds a synthetic world; pass overwrite=True "
                             "(--overwrite) to replace it")
        for name in _OWNED:
            foreign = _foreign(root / name)
            if foreign is not None:
                raise SynthError(f"{root}: not overwriting the synthetic world: {foreign}, which "
                                 "the generator did not write; move it away or choose another "
                                 "directory (nothing was changed)")
        for name in _OWNED:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)


#: the generator's file names in ``forecast/`` and ``analysis/`` (:func:`write_forecast`,
#: :func:`_write_analysis`); a cfgrib index of such a file (``<file>.<hash>.idx``, written
#: next to it by a reader that was not given an index directory) is derived from it
_GRIB_INDEX = r"(\.[0-9a-f]+\.idx)?"
_WORLD_FILES = {"forecast": re.compile(r"ens_\d{10}\.grib" + _GRIB_INDEX),
                "analysis": re.compile(r"analysis_\d{6}\.grib" + _GRIB_INDEX)}
_STATIC_TITLE = "enspp synthetic world: static fields"
_ORACLE_TITLE = "enspp synthetic world: oracle (exact predictive distribution)"
_EVENTS_SOURCE = "enspp synthetic world (events placed by construction)"


def not_a_world(root: str | Path) -> str | None:
    """Why ``root`` holds no world the generator wrote (None: it holds one, whole or
    interrupted): its ``synth.yaml`` must be a synth config, and one of what the generator
    writes with it must be there: the completion marker, the oracle, or the static fields
    (written first, before ``synth.yaml``)."""
    root = Path(root)
    cfg = root / "synth.yaml"
    if not cfg.is_file() or cfg.is_symlink():
        return "no synth.yaml"
    try:
        raw = read_yaml_mapping(cfg, what="synthetic world config", error=SynthError)
        SynthConfig.model_validate(raw["synth"])
    except (SynthError, ValidationError, KeyError, TypeError):
        return f"{cfg} is not a synthetic world's config"
    if set(raw) != {"synth"}:
        return f"{cfg} is not a synthetic world's config"
    marker = root / COMPLETE_MARKER
    if marker.is_file() and not marker.is_symlink():
        return None
    if _foreign(root / "oracle.zarr") is None and (root / "oracle.zarr").exists():
        return None
    if _foreign(root / "static.nc") is None and (root / "static.nc").exists():
        return None
    return f"no {COMPLETE_MARKER}, oracle.zarr or static fields the generator wrote"


def _foreign(p: Path) -> str | None:
    """None if ``p`` (one of the world's own names) is absent or what the generator writes
    there; else a description of what is there instead."""
    if not p.exists() and not p.is_symlink():
        return None
    if p.is_symlink():
        return f"{p} (a symbolic link)"
    if p.name in _WORLD_FILES:
        if not p.is_dir():
            return f"{p} (not a directory)"
        pattern = _WORLD_FILES[p.name]
        for f in sorted(p.iterdir()):
            if f.is_symlink() or not f.is_file() or not pattern.fullmatch(f.name):
                return f"{f}"
        return None
    if p.name == "static.nc":
        return None if p.is_file() and _nc_title(p) == _STATIC_TITLE else f"{p}"
    if p.name == "oracle.zarr":
        return None if p.is_dir() and _zarr_title(p) == _ORACLE_TITLE else f"{p}"
    if p.name == "events.yaml":
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raw = None
        ok = isinstance(raw, dict) and raw.get("source") == _EVENTS_SOURCE
        return None if ok else f"{p}"
    if p.name == COMPLETE_MARKER:
        return None if p.is_file() and p.stat().st_size == 0 else f"{p}"
    return None if p.is_file() else f"{p}"  # synth.yaml: checked by not_a_world


def _nc_title(path: Path) -> str | None:
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.attrs.get("title")
    except Exception:  # not NetCDF at all: not the generator's
        return None


def _zarr_title(path: Path) -> str | None:
    """The ``title`` attribute of the Zarr group ``path`` (v3 ``zarr.json``), without zarr."""
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
        return meta.get("attributes", {}).get("title")
    except (OSError, ValueError, AttributeError):
        return None


def _coords(world: World) -> dict:
    return {schema.LATITUDE: ("latitude", world.lat, {"units": "degrees_north",
                                                      "standard_name": "latitude"}),
            schema.LONGITUDE: ("longitude", world.lon, {"units": "degrees_east",
                                                        "standard_name": "longitude"})}


def _grouped(names: tuple[str, ...]) -> dict[str, list[str]]:
    """short name -> addressable names (``z`` -> [``z500``, ``z850``])."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(VAR_SPECS[name].short, []).append(name)
    return groups


def _levels(names: tuple[str, ...]) -> list[int]:
    return sorted({VAR_SPECS[n].level for n in names if VAR_SPECS[n].level is not None})


def _grib_fields(fields: dict[str, np.ndarray], *, times, lead_hours: tuple[int, ...],
                 members: list[int] | None) -> list[GribFields]:
    """GRIB fields from name -> (time, lead, member, lat, lon) arrays, levels stacked per short name.

    Pressure levels are in increasing order; a (variable, level) not simulated is all-NaN,
    hence absent from the file.
    """
    levels = _levels(tuple(fields))
    out = []
    for short, names in _grouped(tuple(fields)).items():
        spec0 = VAR_SPECS[names[0]]
        if spec0.level is None:
            values = fields[names[0]][:, :, :, None]
        else:
            shape = fields[names[0]].shape
            values = np.full((*shape[:3], len(levels), *shape[3:]), np.nan, dtype=np.float64)
            for n in names:
                values[:, :, :, levels.index(VAR_SPECS[n].level)] = fields[n]
        out.append(GribFields(name=short, values=values, times=times, lead_hours=lead_hours,
                              members=members, levels=None if spec0.level is None else levels,
                              units=spec0.units))
    return out


def write_forecast(directory: Path, world: World, chunk: ForecastChunk) -> Path:
    """One GRIB file per init: ``ens_YYYYMMDDHH.grib`` with cf + pf messages of every variable."""
    cfg = world.config
    fields = {n: a[None] for n, a in chunk.members.items()}
    path = directory / f"ens_{chunk.init:%Y%m%d%H}.grib"
    write_fields(path, _grib_fields(fields, times=[chunk.init], lead_hours=cfg.lead_times_h,
                                    members=list(range(cfg.n_members))),
                 kind="forecast", latitude=world.lat, longitude=world.lon)
    return path


def _write_analysis(directory: Path, world: World, chunk: AnalysisChunk) -> list[Path]:
    """The truth, one file per month (``analysis_YYYYMM.grib``), appended to if it exists."""
    paths = []
    months = chunk.days.to_period("M")
    for month in months.unique():
        sel = np.asarray(months == month)
        fields = {n: a[sel][:, None, None] for n, a in chunk.fields.items()}
        path = directory / f"analysis_{month.year:04d}{month.month:02d}.grib"
        write_fields(path, _grib_fields(fields, times=chunk.days[sel], lead_hours=(0,), members=None),
                     kind="analysis", latitude=world.lat, longitude=world.lon, append=path.exists())
        paths.append(path)
    return paths


def _write_static(path: Path, world: World) -> Path:
    ds = xr.Dataset(
        {"lsm": schema.annotate(xr.DataArray(world.lsm, dims=("latitude", "longitude")), "lsm"),
         "orog": schema.annotate(xr.DataArray(world.orog, dims=("latitude", "longitude")), "orog")},
        coords=_coords(world),
        attrs={"title": "enspp synthetic world: static fields", "seed": world.config.seed},
    )
    ds.to_netcdf(path, engine="netcdf4")
    return path


def _append_oracle(path: Path, world: World, chunks: list[ForecastChunk], *, first: bool) -> None:
    cfg = world.config
    coords = {
        "init_time": np.array([c.init.to_datetime64() for c in chunks], dtype="datetime64[ns]"),
        "lead_time": pd.to_timedelta(list(cfg.lead_times_h), unit="h").values.astype("timedelta64[ns]"),
        **_coords(world),
    }
    dims = ("init_time", "lead_time", "latitude", "longitude")
    data_vars = {}
    for name in cfg.output_variables:
        spec = VAR_SPECS[name]
        info = schema.VARIABLES[spec.short]
        for part, what in (("mu", "mean"), ("sigma", "standard deviation")):
            arr = np.stack([getattr(c, part)[name] for c in chunks])
            data_vars[f"{name}_{part}"] = xr.DataArray(arr, dims=dims, attrs={
                "units": spec.units,
                "long_name": f"{info.long_name}"
                             f"{'' if spec.level is None else f' at {spec.level} hPa'}: "
                             f"{what} of the exact Gaussian predictive distribution",
                "distribution": "gaussian",
                "parameter": part,
                **({"standard_name": info.standard_name} if part == "mu" and info.standard_name else {}),
            })
    ds = xr.Dataset(data_vars, coords=coords, attrs={
        "title": "enspp synthetic world: oracle (exact predictive distribution)",
        "description": ORACLE_DESCRIPTION,
        "distribution": "gaussian",
        "crps_of_oracle": "closed-form Gaussian CRPS of N(mu, sigma**2)",
        "seed": cfg.seed,
        "variables": list(cfg.output_variables),
    })
    chunks_init = min(len(chunks), 64)
    if first:
        encoding = {v: {"chunks": (chunks_init, len(cfg.lead_times_h), *world.lsm.shape)}
                    for v in data_vars}
        ds.to_zarr(path, mode="w", encoding=encoding, consolidated=True, zarr_format=3)
    else:
        ds.to_zarr(path, append_dim="init_time", consolidated=True)
