"""Gridded stores sampled at points: station stores from a grid (``data.points`` of
``enspp.yaml``).

A pooled-station study on gridded data (one model for many places, the places' coordinates
and static fields as features) needs the grid's forecasts and analyses at those places as
station stores.  :func:`random_points` draws distinct grid points (seeded);
:func:`sample_stores` writes the forecast and analysis stores (``station`` dim with
``latitude``/``longitude`` per station) and the static fields at those points, each once:
written beside its final name and renamed into place, so a killed run leaves no half-written
store behind, and an existing one is kept as it is.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError

__all__ = ["PointsError", "random_points", "sample_grid", "sample_stores"]


class PointsError(EnsppError):
    """The grid cannot be sampled as asked; the message names the store or the option."""


def random_points(shape: tuple[int, int], *, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of ``n`` distinct points of a ``shape`` grid, sorted in
    row-major order (the same ``n`` and ``seed`` give the same points)."""
    ny, nx = shape
    if not 1 <= n <= ny * nx:
        raise PointsError(f"points: n = {n} must be between 1 and the grid's {ny * nx} points")
    flat = np.sort(np.random.default_rng(seed).choice(ny * nx, size=int(n), replace=False))
    return flat // nx, flat % nx


def sample_grid(ds: xr.Dataset, rows: np.ndarray, cols: np.ndarray) -> xr.Dataset:
    """``ds`` (``latitude``, ``longitude`` dims) at the grid points ``(rows[i], cols[i])`` as
    stations ``P0000``, ``P0001``, ... with their coordinates."""
    lat, lon = ds["latitude"].values, ds["longitude"].values
    pts = ds.isel(latitude=xr.DataArray(rows, dims="station"), longitude=xr.DataArray(cols, dims="station"))
    pts = pts.drop_vars(["latitude", "longitude"])
    names = np.asarray([f"P{i:04d}" for i in range(rows.size)], dtype=object)
    return pts.assign_coords(station=names, latitude=("station", lat[rows]), longitude=("station", lon[cols]))


def sample_stores(grid: Mapping[str, Path | None], out: Mapping[str, Path | None], *, n: int,
                  seed: int = 0) -> dict[str, Path]:
    """The grid stores ``grid["forecast"]``, ``grid["analysis"]`` (and the static fields
    ``grid["static"]``, a NetCDF file, if given) at :func:`random_points` of the forecast's
    grid, written to ``out[...]`` (station stores; a ``.nc`` file for the static fields).
    Outputs that exist are kept: delete them to sample again."""
    from enspp.data.store import open_store
    from enspp.data.store_writer import append

    for part in ("forecast", "analysis"):
        if grid.get(part) is None or out.get(part) is None:
            raise PointsError(f"points: the {part} store to sample and the one to write are both needed")
        if not Path(grid[part]).exists():
            raise PointsError(f"points: grid store {grid[part]} does not exist (ingest it first)")
    forecast = open_store(grid["forecast"])
    if "latitude" not in forecast.dims or "longitude" not in forecast.dims:
        raise PointsError(f"points: {grid['forecast']} is not gridded (no latitude/longitude dims)")
    rows, cols = random_points((forecast.sizes["latitude"], forecast.sizes["longitude"]), n=n, seed=seed)
    written: dict[str, Path] = {}
    for part in ("forecast", "analysis"):
        target = Path(out[part])  # type: ignore[arg-type]
        written[part] = target
        if target.exists():
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        src = forecast if part == "forecast" else open_store(grid[part])
        append(tmp, sample_grid(src, rows, cols).load(), kind=part)  # type: ignore[arg-type]
        tmp.replace(target)
    if grid.get("static") is not None and out.get("static") is not None:
        target = Path(out["static"])  # type: ignore[arg-type]
        written["static"] = target
        if not target.exists():
            with xr.open_dataset(grid["static"]) as static:  # type: ignore[arg-type]
                pts = sample_grid(static.load(), rows, cols)
            tmp = target.with_name(f".{target.name}.tmp.nc")
            pts.to_netcdf(tmp)
            tmp.replace(target)
    return written
