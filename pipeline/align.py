"""Opening stores, checking that forecast and analysis share a grid, and pairing each forecast
with the analysis at its valid time (missing analyses drop samples and are reported)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.schema import INIT_TIME, LATITUDE, LEAD_TIME, LONGITUDE, MEMBER, STATION, TIME, spatial_dims

StoreLike = str | Path | xr.Dataset


class GridMismatchError(EnsppError):
    """Forecast and analysis (or static fields) are not on the same grid."""


class AlignmentError(EnsppError):
    """A forecast lead time or dimension needed for alignment is missing."""


def open_dataset(source: StoreLike) -> xr.Dataset:
    """A lazy dataset from a store path (via ``data.store.open_store`` when available, which
    keeps only completed init times) or an already opened dataset (returned as is)."""
    if isinstance(source, xr.Dataset):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"store {path} does not exist")
    try:
        from enspp.data.store import open_store
    except ImportError:  # data.store not present: plain Zarr
        return xr.open_zarr(path)
    return open_store(path)


class StoreKindError(EnsppError):
    """A store of the wrong kind where the config names one (an analysis store as the
    forecast store, or the reverse); the message names the key and the store."""


def store_kind(ds: xr.Dataset) -> str | None:
    """``forecast``/``analysis`` (or ``product``) as the dims say (``init_time``: a forecast
    or a product, ``time``: an analysis), else the recorded kind; ``None`` when neither."""
    kind = ds.attrs.get("enspp_kind")
    if INIT_TIME in ds.dims:
        return "product" if kind == "product" else "forecast"
    if TIME in ds.dims:
        return "analysis"
    return str(kind) if kind else None


def check_store_kind(ds: xr.Dataset, *, expected: str, key: str, source: StoreLike) -> None:
    """Raise :class:`StoreKindError` if ``ds`` (named ``key`` in the config, opened from
    ``source``) is a store of another kind than ``expected``."""
    kind = store_kind(ds)
    if kind is not None and kind != expected:
        swapped = ({kind, expected} == {"forecast", "analysis"})
        raise StoreKindError(
            f"{key}: {source} is {_a(kind)} store, not {_a(expected)} store"
            + (" (are the forecast and analysis stores swapped?)" if swapped else ""))


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def open_static(source: StoreLike) -> xr.Dataset:
    """The static fields (``lsm``, ``orog``) from a NetCDF file, a Zarr store or a dataset."""
    if isinstance(source, xr.Dataset):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"static file {path} does not exist")
    if path.is_dir():
        return xr.open_zarr(path)
    with xr.open_dataset(path) as ds:
        return ds.load()


def source_path(ds: xr.Dataset, source: StoreLike | None = None) -> str | None:
    """The path a dataset was opened from (``None`` for an in-memory dataset)."""
    if source is not None and not isinstance(source, xr.Dataset):
        return str(Path(source).resolve())
    src = ds.encoding.get("source")
    return str(Path(src).resolve()) if src else None


def describe_grid(ds: xr.Dataset | xr.DataArray) -> str:
    """``"64x128 grid, latitude 60..30, longitude 0..50"`` or ``"12 stations"``."""
    dims = spatial_dims(ds)
    if dims == (STATION,):
        return f"{ds.sizes[STATION]} stations"
    lat, lon = ds[LATITUDE].values, ds[LONGITUDE].values
    return (f"{len(lat)}x{len(lon)} grid, latitude {lat[0]:g}..{lat[-1]:g}, "
            f"longitude {lon[0]:g}..{lon[-1]:g}")


def same_grid(a: xr.Dataset | xr.DataArray, b: xr.Dataset | xr.DataArray) -> bool:
    """True when both hold the same spatial coordinates (to 1e-6 degrees)."""
    da, db = spatial_dims(a), spatial_dims(b)
    if da != db:
        return False
    for dim in da:
        va, vb = np.asarray(a[dim].values), np.asarray(b[dim].values)
        if va.shape != vb.shape:
            return False
        if va.dtype.kind in "fiu" and vb.dtype.kind in "fiu":
            if not np.allclose(va, vb, atol=1e-6):
                return False
        elif not np.array_equal(va, vb):
            return False
    return True


def check_grids(forecast: xr.Dataset, other: xr.Dataset, *, regrid: str | None,
                what: str = "analysis") -> bool:
    """Raise :class:`GridMismatchError` naming both grids unless they match or ``regrid`` is set.

    Returns True when ``other`` must be regridded onto the forecast grid.
    """
    if same_grid(forecast, other):
        return False
    if regrid is None or spatial_dims(forecast) != spatial_dims(other) or \
            spatial_dims(forecast) == (STATION,):
        raise GridMismatchError(
            f"forecast and {what} are on different grids: forecast {describe_grid(forecast)}; "
            f"{what} {describe_grid(other)}"
            + ("" if spatial_dims(forecast) == (STATION,) else
               " (set pipeline.regrid to 'nearest' or 'linear' to interpolate the "
               f"{what} onto the forecast grid)"))
    _regrid_plan(other[LATITUDE].values, other[LONGITUDE].values, forecast[LATITUDE].values,
                 forecast[LONGITUDE].values, what=what, source=other, target=forecast)
    return True


@dataclass(frozen=True)
class _Plan:
    """How to read a source grid at the target's points: ``lat_order``/``lon_order`` index
    the source's rows/columns into increasing order, ``lat``/``lon`` are the coordinates
    there (longitudes unwrapped into one increasing run, a global grid padded by one column
    on each side), ``tlat``/``tlon`` the target's points in the same terms."""

    lat_order: np.ndarray
    lon_order: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    tlat: np.ndarray
    tlon: np.ndarray


def _edge_tolerance(values: np.ndarray) -> tuple[float, float]:
    """Half the spacing at each end of the (sorted) coordinate: a target point that close
    beyond the edge is read at the edge (its nearest source point)."""
    if len(values) < 2:
        return 0.0, 0.0
    return 0.5 * float(values[1] - values[0]), 0.5 * float(values[-1] - values[-2])


def _regrid_plan(src_lat: np.ndarray, src_lon: np.ndarray, tgt_lat: np.ndarray,
                 tgt_lon: np.ndarray, *, what: str = "analysis", source=None, target=None) -> _Plan:
    """Longitudes are compared modulo 360: the source's are brought into one increasing run
    (cut at their widest gap, so a regional source crossing the 0 or 180 meridian stays in
    one piece; a global one is padded with a column on each side so that interpolation
    across the seam works) and each target longitude into the same run.  A target point
    farther than half a source spacing outside the source's coverage raises
    :class:`GridMismatchError` (it would be left NaN, or copied from the edge)."""
    slat = np.asarray(src_lat, dtype=np.float64)
    lat_order = np.argsort(slat, kind="stable")
    slat = slat[lat_order]
    wrapped = np.round(np.asarray(src_lon, dtype=np.float64) % 360.0, 9) % 360.0
    lon_vals, lon_order = np.unique(wrapped, return_index=True)  # sorted, duplicates mod 360 out
    gaps = np.diff(np.append(lon_vals, lon_vals[0] + 360.0))     # the last: across 360 -> 0
    cut = int(np.argmax(gaps))
    # global: no gap (the one across the seam included) is wider than about the spacing
    glob = len(lon_vals) > 2 and gaps[cut] <= 1.5 * float(np.median(gaps))
    # one increasing run starting after the widest gap
    roll = (cut + 1) % len(lon_vals)
    lon_order = np.roll(lon_order, -roll)
    lon_vals = np.roll(lon_vals, -roll)
    lon_vals = np.where(np.arange(len(lon_vals)) >= len(lon_vals) - roll, lon_vals + 360.0,
                        lon_vals) if roll else lon_vals
    s0 = float(lon_vals[0])
    tlon = (np.asarray(tgt_lon, dtype=np.float64) - s0) % 360.0 + s0
    tlat = np.asarray(tgt_lat, dtype=np.float64)
    bad_lon = np.zeros(tlon.shape, dtype=bool)
    if glob:
        lon_order = np.concatenate([lon_order[-1:], lon_order, lon_order[:1]])
        lon_vals = np.concatenate([lon_vals[-1:] - 360.0, lon_vals, lon_vals[:1] + 360.0])
    else:
        end = float(lon_vals[-1])
        # beyond the run's end: nearer its start going round? then in front of the start
        before = (tlon > end) & (s0 + 360.0 - tlon < tlon - end)
        tlon = np.where(before, tlon - 360.0, tlon)
        lo_tol, hi_tol = _edge_tolerance(lon_vals)
        bad_lon = (tlon < s0 - lo_tol - 1e-9) | (tlon > end + hi_tol + 1e-9)
        tlon = np.clip(tlon, s0, end)
    lo_tol, hi_tol = _edge_tolerance(slat)
    bad_lat = (tlat < slat[0] - lo_tol - 1e-9) | (tlat > slat[-1] + hi_tol + 1e-9)
    if bad_lon.any() or bad_lat.any():
        src = describe_grid(source) if source is not None else (
            f"latitude {slat[0]:g}..{slat[-1]:g}, longitude {src_lon.min():g}..{src_lon.max():g}")
        tgt = f" ({describe_grid(target)})" if target is not None else ""
        parts = []
        if bad_lat.any():
            parts.append(f"latitudes {_span(np.asarray(tgt_lat)[bad_lat])}")
        if bad_lon.any():
            parts.append(f"longitudes {_span(np.asarray(tgt_lon)[bad_lon])}")
        raise GridMismatchError(
            f"pipeline.regrid: the {what} ({src}) does not cover the forecast grid{tgt}: its "
            f"{' and '.join(parts)} lie outside the {what}, whose values there would be missing "
            f"or copied from its edge; give {_a(what) if what == 'analysis' else what} covering "
            "the forecast grid")
    tlat = np.clip(tlat, slat[0], slat[-1])
    return _Plan(lat_order, lon_order, slat, lon_vals, tlat, tlon)


def _span(values: np.ndarray) -> str:
    v = np.unique(np.asarray(values, dtype=np.float64))
    return f"{v[0]:g}" if len(v) == 1 else f"{v.min():g}..{v.max():g} ({len(v)} values)"


def regrid_like(da: xr.DataArray, *, latitude: np.ndarray, longitude: np.ndarray,
                method: str) -> xr.DataArray:
    """Interpolate a (small, in-memory) field onto the given latitudes/longitudes.

    Longitudes are matched modulo 360 (a 0..360 field onto a -180..180 grid and the reverse,
    across the seam too; see :func:`_regrid_plan`); a target point outside the field's
    coverage raises :class:`GridMismatchError` instead of a silent NaN or edge value.  The
    result carries the requested ``latitude``/``longitude`` as coordinates."""
    plan = _regrid_plan(da[LATITUDE].values, da[LONGITUDE].values, latitude, longitude)
    src = da.isel({LATITUDE: plan.lat_order, LONGITUDE: plan.lon_order})
    src = src.assign_coords({LATITUDE: plan.lat, LONGITUDE: plan.lon})
    want = {LATITUDE: plan.tlat, LONGITUDE: plan.tlon}
    if method == "nearest":
        out = src.sel(want, method="nearest")
    else:
        out = src.interp(want, method="linear", kwargs={"fill_value": None})
    return out.assign_coords({LATITUDE: np.asarray(latitude), LONGITUDE: np.asarray(longitude)})


@dataclass(frozen=True)
class Alignment:
    """Forecast init times paired with an analysis at ``init_time + lead_time``."""

    lead_time: np.timedelta64
    #: init times kept (datetime64[ns]) and the analysis times that verify them
    init_times: np.ndarray
    valid_times: np.ndarray
    #: init times dropped because the analysis at their valid time is missing
    dropped: np.ndarray
    #: init times dropped because a field they need (an input variable at an input lead
    #: time, or the target in the analysis) is absent from the store: skipped, never filled
    absent: np.ndarray = field(default_factory=lambda: np.array([], dtype="datetime64[ns]"))

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    def report(self) -> str:
        hours = int(self.lead_time // np.timedelta64(1, "h"))
        msg = f"{len(self.init_times)} samples at lead {hours} h"
        if self.n_dropped:
            shown = ", ".join(str(pd.Timestamp(t)) for t in self.dropped[:5])
            more = f" and {self.n_dropped - 5} more" if self.n_dropped > 5 else ""
            msg += (f"; {self.n_dropped} dropped for want of an analysis at the valid time "
                    f"(init times {shown}{more})")
        if len(self.absent):
            shown = ", ".join(str(pd.Timestamp(t)) for t in self.absent[:5])
            more = f" and {len(self.absent) - 5} more" if len(self.absent) > 5 else ""
            msg += (f"; {len(self.absent)} skipped because a field they need is absent from the "
                    f"stores (init times {shown}{more})")
        return msg


def align(forecast: xr.Dataset, analysis: xr.Dataset, *, lead_time: np.timedelta64,
          input_lead_times: tuple[np.timedelta64, ...] = (), variables: tuple[str, ...] = (),
          targets: tuple[str, ...] = ()) -> Alignment:
    """Pair every forecast init time with the analysis at its valid time (no filling).

    With ``variables``/``targets``, an init time whose input fields (each variable at the
    target and input lead times) or target analysis are absent from the stores
    (``data.store.present_fields``) is skipped and counted in ``Alignment.absent``."""
    for dim, ds, name in ((INIT_TIME, forecast, "forecast"), (LEAD_TIME, forecast, "forecast"),
                          (MEMBER, forecast, "forecast"), (TIME, analysis, "analysis")):
        if dim not in ds.dims:
            raise AlignmentError(f"the {name} has no {dim!r} dim (dims: {tuple(ds.dims)})")
    leads = forecast[LEAD_TIME].values.astype("timedelta64[ns]")
    for lead in (lead_time, *input_lead_times):
        if np.timedelta64(lead, "ns") not in set(leads):
            have = [int(x // np.timedelta64(1, "h")) for x in leads]
            raise AlignmentError(f"lead time {int(lead // np.timedelta64(1, 'h'))} h is not in the "
                                 f"forecast store (lead times present, hours: {have})")
    inits = forecast[INIT_TIME].values.astype("datetime64[ns]")
    valid = inits + np.timedelta64(lead_time, "ns")
    have = np.isin(valid, analysis[TIME].values.astype("datetime64[ns]"))
    complete = np.ones(len(inits), dtype=bool)
    if variables or targets:
        complete = _fields_present(forecast, analysis, inits, valid,
                                   (lead_time, *input_lead_times), variables, targets)
    keep = have & complete
    return Alignment(lead_time=np.timedelta64(lead_time, "ns"), init_times=inits[keep],
                     valid_times=valid[keep], dropped=inits[~have],
                     absent=inits[have & ~complete])


def _fields_present(forecast: xr.Dataset, analysis: xr.Dataset, inits: np.ndarray,
                    valid: np.ndarray, leads: tuple, variables: tuple[str, ...],
                    targets: tuple[str, ...]) -> np.ndarray:
    """Per init time: every needed input field and target analysis is present."""
    from enspp.data.store import field_present, present_fields

    ok = np.ones(len(inits), dtype=bool)
    fp = present_fields(forecast)
    lead_values = [np.timedelta64(x, "ns") for x in leads]
    for name in variables:
        p = field_present(fp, name).sel(init_time=inits, lead_time=lead_values)
        ok &= p.all(LEAD_TIME).values
    ap = present_fields(analysis)
    for name in targets:
        p = field_present(ap, name).reindex({TIME: valid}, fill_value=False)
        ok &= p.values.astype(bool)
    return ok
