"""Latitude weights from cell area and region masks applied to them.

Weights are normalised to mean 1 over the latitudes of the grid (so an unweighted and a
weighted mean of a constant agree, and a weighted sum over the grid equals the number of
points).  A region multiplies the weights by its 0/1 mask; means then renormalise over the
region.  Latitude may be ascending or descending; longitude may run 0..360 or -180..180,
and a box may cross the 0/360 meridian or the dateline (``lon_min > lon_max``).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, model_validator

from enspp.data.errors import EnsppError


class RegionError(EnsppError):
    """A region or a latitude/longitude coordinate is invalid; the message says which."""


class Region(BaseModel):
    """A latitude/longitude box (degrees); ``lon_min > lon_max`` wraps through 360/0.

    ``symmetric: true`` adds the mirror band of the other hemisphere (``-lat_max..-lat_min``),
    e.g. the extratropics of both hemispheres, ``{lat_min: 20, lat_max: 90, symmetric: true}``.
    In ``enspp.yaml`` a region is a name of :data:`REGIONS` or such a box with a ``name``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    lat_min: float = -90.0
    lat_max: float = 90.0
    lon_min: float = 0.0
    lon_max: float = 360.0
    symmetric: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Region":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise RegionError(f"region name {self.name!r}: use letters, digits, '_', '.', '-'")
        if not -90.0 <= self.lat_min < self.lat_max <= 90.0:
            raise RegionError(
                f"region {self.name!r}: need -90 <= lat_min < lat_max <= 90, "
                f"got {self.lat_min}, {self.lat_max}"
            )
        if self.symmetric and self.lat_min < 0.0:
            raise RegionError(f"region {self.name!r}: a symmetric region gives its northern band "
                              f"(lat_min >= 0), got lat_min {self.lat_min}")
        for key in ("lon_min", "lon_max"):
            v = getattr(self, key)
            if not -180.0 <= v <= 360.0:
                raise RegionError(f"region {self.name!r}: {key}={v} outside -180..360")
        return self


#: Named regions.  Extratropics are poleward of 20 degrees as in WMO/ECMWF verification
#: (``extratropics``: both hemispheres; ``extratropics_n`` / ``_s``: one each).
REGIONS: dict[str, Region] = {
    r.name: r
    for r in [
        Region(name="global"),
        Region(name="tropics", lat_min=-20, lat_max=20),
        Region(name="extratropics", lat_min=20, lat_max=90, symmetric=True),
        Region(name="extratropics_n", lat_min=20, lat_max=90),
        Region(name="extratropics_s", lat_min=-90, lat_max=-20),
        Region(name="europe", lat_min=35, lat_max=75, lon_min=-12.5, lon_max=42.5),
        Region(name="nw_europe", lat_min=45, lat_max=62, lon_min=-15, lon_max=15),
        Region(name="north_america", lat_min=25, lat_max=60, lon_min=-120, lon_max=-75),
        Region(name="fiji", lat_min=-25, lat_max=-10, lon_min=170, lon_max=-170),
    ]
}


def get_region(region: str | Region) -> Region:
    """A :class:`Region` from its name in :data:`REGIONS` (or the region itself)."""
    if isinstance(region, Region):
        return region
    try:
        return REGIONS[region]
    except KeyError:
        raise RegionError(f"unknown region {region!r}: known regions are {', '.join(REGIONS)}") from None


def _lat_values(latitude: xr.DataArray) -> np.ndarray:
    lat = np.asarray(latitude.values, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise RegionError(f"latitude must be a non-empty 1-D coordinate, got shape {lat.shape}")
    if np.any(np.abs(lat) > 90.0):
        raise RegionError(f"latitude values outside -90..90: min {lat.min()}, max {lat.max()}")
    if lat.size > 1 and not (np.all(np.diff(lat) > 0) or np.all(np.diff(lat) < 0)):
        raise RegionError("latitude must be strictly monotonic (ascending or descending)")
    return lat


def latitude_weights(
    latitude: xr.DataArray,
    *,
    method: Literal["cos", "area"] = "area",
) -> xr.DataArray:
    """Weights proportional to cell area, normalised to mean 1 over ``latitude``.

    ``cos``: cos(lat) at the cell centre.  ``area``: the exact area of the latitude band
    between the midpoints of neighbouring latitudes (clipped at the poles), proportional to
    ``sin(upper) - sin(lower)``; a pole row gets its (small, non-zero) polar cap share.
    """
    lat = _lat_values(latitude)
    if method == "cos":
        w = np.clip(np.cos(np.deg2rad(lat)), 0.0, None)
    elif method == "area":
        order = np.argsort(lat)
        s = lat[order]
        if s.size == 1:
            w_sorted = np.ones(1)
        else:
            mid = 0.5 * (s[1:] + s[:-1])
            edges = np.concatenate([[max(-90.0, s[0] - (mid[0] - s[0]))], mid,
                                    [min(90.0, s[-1] + (s[-1] - mid[-1]))]])
            w_sorted = np.diff(np.sin(np.deg2rad(edges)))
        w = np.empty_like(w_sorted)
        w[order] = w_sorted
    else:
        raise RegionError(f"unknown latitude weighting {method!r}: choose 'cos' or 'area'")
    if w.sum() <= 1e-12:
        raise RegionError("latitude weights sum to zero (only pole rows?)")
    w = w / w.mean()
    return xr.DataArray(w, dims=latitude.dims, coords={latitude.dims[0]: latitude.values},
                        attrs={"long_name": f"latitude weight ({method}), mean 1"})


def _in_lat(lat: np.ndarray, reg: Region) -> np.ndarray:
    """Latitudes inside ``reg``'s band (and its mirror band when symmetric); NaN is outside."""
    inside = (lat >= reg.lat_min) & (lat <= reg.lat_max)
    if reg.symmetric:
        inside |= (lat >= -reg.lat_max) & (lat <= -reg.lat_min)
    return inside


def _in_lon(lon: np.ndarray, reg: Region) -> np.ndarray:
    """Longitudes inside ``reg``, either convention, a box crossing 0/360 or the dateline."""
    if reg.lon_min == 0.0 and reg.lon_max == 360.0:
        return np.ones(lon.shape, dtype=bool)
    lon360 = np.mod(lon, 360.0)
    lo, hi = np.mod(reg.lon_min, 360.0), np.mod(reg.lon_max, 360.0)
    if hi == 0.0 and reg.lon_max > reg.lon_min:
        hi = 360.0
    return (lon360 >= lo) & (lon360 <= hi) if lo <= hi else (lon360 >= lo) | (lon360 <= hi)


def is_points(latitude: xr.DataArray, longitude: xr.DataArray) -> bool:
    """True when ``latitude`` and ``longitude`` are coordinates of the same points (both on
    ``station``, say) rather than the two axes of a grid."""
    return latitude.dims == longitude.dims


def region_mask(latitude: xr.DataArray, longitude: xr.DataArray, region: str | Region) -> xr.DataArray:
    """Boolean mask of the points inside ``region`` (edges included).

    On a grid (1-D ``latitude`` and ``longitude`` on their own dims) the ``(latitude,
    longitude)`` mask of the grid points; for points (``latitude`` and ``longitude`` on the
    same dims, e.g. ``latitude(station)``, :func:`is_points`) a mask on those dims: a point
    is inside when its own latitude and longitude are (a point without coordinates, NaN, is
    outside, except from a region covering the whole globe, which holds every point)."""
    reg = get_region(region)
    if is_points(latitude, longitude):
        return _point_mask(latitude, longitude, reg)
    lat = _lat_values(latitude)
    lon = np.asarray(longitude.values, dtype=np.float64)
    mask = np.outer(_in_lat(lat, reg), _in_lon(lon, reg))
    return xr.DataArray(mask, dims=(latitude.dims[0], longitude.dims[0]),
                        coords={latitude.dims[0]: latitude.values, longitude.dims[0]: lon},
                        attrs={"long_name": f"mask of region {reg.name}"})


def _whole_globe(reg: Region) -> bool:
    return reg.lat_min <= -90 and reg.lat_max >= 90 and reg.lon_min == 0.0 and reg.lon_max == 360.0


def _point_mask(latitude: xr.DataArray, longitude: xr.DataArray, reg: Region) -> xr.DataArray:
    """Per point: inside ``reg`` when the point's own latitude and longitude are."""
    lat = np.asarray(latitude.values, dtype=np.float64)
    lon = np.asarray(longitude.values, dtype=np.float64)
    if lat.shape != lon.shape:
        raise RegionError(f"point latitude {lat.shape} and longitude {lon.shape} differ in shape")
    if np.any(np.abs(lat[~np.isnan(lat)]) > 90.0):
        raise RegionError(f"point latitudes outside -90..90: min {np.nanmin(lat)}, "
                          f"max {np.nanmax(lat)}")
    if _whole_globe(reg):
        mask = np.ones(lat.shape, dtype=bool)
    else:
        with np.errstate(invalid="ignore"):
            mask = _in_lat(lat, reg) & _in_lon(lon, reg) & ~np.isnan(lon)
    return xr.DataArray(mask, dims=latitude.dims, coords=latitude.coords,
                        attrs={"long_name": f"mask of region {reg.name}"})


def region_weights(
    latitude: xr.DataArray,
    longitude: xr.DataArray,
    region: str | Region = "global",
    *,
    method: Literal["cos", "area"] = "area",
) -> xr.DataArray:
    """Latitude weights (mean 1 over the grid) times the region mask; raises if the region
    holds no grid point.  Points (:func:`is_points`, e.g. stations) weigh the same: 1 inside
    the region, 0 outside (as :func:`station_weights`)."""
    mask = region_mask(latitude, longitude, region)
    points = is_points(latitude, longitude)
    if not mask.any():
        reg = get_region(region)
        raise RegionError(f"region {reg.name!r} contains no point of the "
                          f"{'points' if points else 'grid'}")
    w = mask.astype(np.float64) if points else latitude_weights(latitude, method=method) * mask
    w.attrs = {"long_name": f"area weights in region {get_region(region).name}", "region": get_region(region).name}
    return w.rename("weights")


def split_regions(latitude: xr.DataArray, longitude: xr.DataArray,
                  regions: list[str | Region]) -> tuple[list[Region], list[Region]]:
    """``(with_points, without_points)``: the regions holding at least one grid point (or
    point, for points such as stations: :func:`region_mask`), and those holding none (a
    tropical box on a European grid), each in the given order."""
    kept, empty = [], []
    for r in regions:
        reg = get_region(r)
        (kept if bool(region_mask(latitude, longitude, reg).any()) else empty).append(reg)
    return kept, empty


def station_weights(stations: xr.Dataset | xr.DataArray, region: str | Region = "global") -> xr.DataArray:
    """One weight (1) per station inside ``region`` (0 outside), from the stations'
    ``latitude``/``longitude`` coordinates; ``global`` holds every station, even one without
    coordinates; a symmetric region holds the stations of both its bands.  Raises if the
    region holds no station."""
    n = stations.sizes["station"]
    reg = get_region(region)
    if _whole_globe(reg):
        inside = np.ones(n, dtype=bool)
    else:
        if "latitude" not in stations.coords or "longitude" not in stations.coords:
            raise RegionError(f"region {reg.name!r} needs the stations' latitude/longitude coordinates")
        inside = _point_mask(stations["latitude"], stations["longitude"], reg).values
    if not inside.any():
        raise RegionError(f"region {reg.name!r} contains no station")
    return xr.DataArray(inside.astype(np.float64), dims=("station",),
                        attrs={"long_name": f"station weights in region {reg.name}", "region": reg.name})
