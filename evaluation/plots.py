"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

Every function takes already-computed scores and a path, writes one PNG and returns the path.
Systems keep one colour in every figure (:func:`system_colour`) and are named by their labels
(``labels``: key -> words, :mod:`evaluation.labels`).  Maps share one colour scale per
quantity within a figure, label latitude and longitude in one convention (degrees N/S and
E/W, longitudes in -180..180 unless the grid crosses the date line), and draw the coastline
from a land-sea mask when one is given (a contour at 0.5: no map library needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from enspp.data.schema import LATITUDE, LEAD_TIME, LONGITUDE  # noqa: E402
from enspp.evaluation.labels import lat_text, lon_text  # noqa: E402,F401  (the one convention)

_PALETTE = {"raw_full": "#4d4d4d", "raw_subset": "#9e9e9e", "emos": "#1f77b4", "mlp": "#ff7f0e",
            "unet": "#2ca02c", "mixed": "#9467bd", "oracle": "#d62728"}
_EXTRA = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
DPI = 110


def system_colour(name: str, index: int = 0) -> str:
    return _PALETTE.get(name, _EXTRA[index % len(_EXTRA)])


def _label(labels: Mapping[str, str] | None, key: str) -> str:
    return (labels or {}).get(key) or key


def _hours(da: xr.DataArray) -> np.ndarray:
    return da[LEAD_TIME].values / np.timedelta64(1, "h")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------ lines (several lead times)
def skill_by_lead(scores: xr.Dataset, region: str, path: Path, *,
                  labels: Mapping[str, str] | None = None) -> Path:
    """CRPS skill against the reference by lead time, with the bootstrap interval (for two
    or more lead times; with one, the headline table says it all)."""
    s = scores.sel(region=region)
    h = _hours(s)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for i, sysname in enumerate(map(str, s.system.values)):
        c = system_colour(sysname, i)
        y = s["skill"].sel(system=sysname).values * 100
        ax.plot(h, y, "o-", color=c, label=_label(labels, sysname), lw=2)
        if "skill_low" in s:
            ax.fill_between(h, s["skill_low"].sel(system=sysname).values * 100,
                            s["skill_high"].sel(system=sysname).values * 100, color=c, alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("lead time (h)")
    ax.set_xticks(h)
    ax.set_ylabel("CRPS skill vs reference (%)", fontsize=8)
    ax.set_title(f"{scores.attrs.get('variable')} · {region}: CRPS skill by lead time\n"
                 f"reference: {_label(labels, str(scores.attrs.get('reference')))}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="best")
    return _save(fig, path)


def spread_skill(scores: xr.Dataset, region: str, path: Path, *,
                 labels: Mapping[str, str] | None = None) -> Path:
    """Spread/skill ratio by lead time (1 = calibrated) and the RMSE and spread themselves."""
    s = scores.sel(region=region)
    h = _hours(s)
    units = scores.attrs.get("units", "")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.6), layout="constrained")
    for i, sysname in enumerate(map(str, s.system.values)):
        c = system_colour(sysname, i)
        a1.plot(h, s["spread_skill"].sel(system=sysname), "o-", color=c, label=_label(labels, sysname))
        a2.plot(h, s["rmse"].sel(system=sysname), "o-", color=c)
        a2.plot(h, s["spread"].sel(system=sysname), "s--", color=c, alpha=0.7)
    a1.axhline(1, color="k", lw=0.8)
    a1.set_title("spread / skill (1 = calibrated)")
    a1.set_ylabel("spread / RMSE")
    a2.set_title("RMSE of the mean (solid) and spread (dashed)")
    a2.set_ylabel(units)
    for a in (a1, a2):
        a.set_xlabel("lead time (h)")
        a.set_xticks(h)
        a.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(f"{scores.attrs.get('variable')} · {region}")
    return _save(fig, path)


def histograms(hists: dict[str, xr.DataArray], kinds: dict[str, str], region: str,
               variable: str, path: Path, *, labels: Mapping[str, str] | None = None) -> Path:
    """Rank histograms (ensembles) and PIT histograms (distributions), all leads pooled,
    as relative frequency x number of bins (flat at 1 = calibrated)."""
    names = list(hists)
    n = len(names)
    fig, axes = plt.subplots(1, n, figsize=(2.7 * n + 0.5, 3.0), squeeze=False,
                             layout="constrained")
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        h = hists[name].sel(region=region).sum(LEAD_TIME).values
        total = h.sum()
        freq = h / total * h.size if total > 0 else h
        ax.bar(np.arange(h.size), freq, width=1.0, color=system_colour(name, i), edgecolor="white")
        ax.axhline(1, color="k", lw=0.8)
        kind = "rank" if kinds[name] == "rank" else "PIT"
        ax.set_title(f"{_wrap(_label(labels, name))}\n({kind})", fontsize=8)
        ax.set_xticks([])
        ax.set_xlabel("rank" if kind == "rank" else "PIT value", fontsize=7)
    axes[0][0].set_ylabel("frequency × bins")
    fig.suptitle(f"{variable} · {region}: rank / PIT histograms (flat = calibrated)", fontsize=10)
    return _save(fig, path)


def _wrap(text: str, width: int = 26) -> str:
    """Break a long label after its method (histogram titles and row labels are narrow)."""
    if len(text) <= width:
        return text
    for sep, keep in ((", ", ","), (" (", "")):
        if sep in text:
            head, tail = text.split(sep, 1)
            return f"{head}{keep}\n{'(' if sep == ' (' else ''}{tail}"
    return text


# ------------------------------------------------------------------ maps
def map_longitudes(da: xr.DataArray) -> xr.DataArray:
    """``da`` with longitudes in -180..180 (sorted) when they stay contiguous there (a
    global grid, or one that does not cross the prime meridian from 0..360); a grid that
    crosses the date line keeps its own longitudes (its ticks still read E/W)."""
    lon = da[LONGITUDE].values.astype(float)
    if lon.size < 2 or lon.max() <= 180.0:
        return da
    new = ((lon + 180.0) % 360.0) - 180.0
    order = np.argsort(new, kind="stable")
    step = np.median(np.abs(np.diff(lon)))
    gaps = np.diff(new[order])
    span_global = (lon.max() - lon.min() + step) >= 360.0 - 1e-6
    if not span_global and gaps.size and gaps.max() > 1.5 * step:
        return da  # crosses 180°: keep the data's own contiguous longitudes
    return da.assign_coords({LONGITUDE: new}).isel({LONGITUDE: order})


def _geo_axes(ax) -> None:
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: lon_text(v)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: lat_text(v)))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("longitude", fontsize=7)
    ax.set_ylabel("latitude", fontsize=7)


def _grid(ax, da: xr.DataArray, *, cmap: str, vmin=None, vmax=None, title: str = "",
          lsm: xr.DataArray | None = None):
    """One map panel (no colour bar: a figure gives one per shared scale)."""
    if lsm is not None:  # the mask on the panel's points, before longitudes are rearranged
        lsm = lsm.sel({LATITUDE: da[LATITUDE].values, LONGITUDE: da[LONGITUDE].values},
                      method="nearest").assign_coords({LATITUDE: da[LATITUDE].values,
                                                       LONGITUDE: da[LONGITUDE].values})
    da = map_longitudes(da)
    lat = da[LATITUDE].values
    lon = da[LONGITUDE].values
    m = ax.pcolormesh(lon, lat, da.transpose(LATITUDE, LONGITUDE).values, cmap=cmap, vmin=vmin,
                      vmax=vmax, shading="nearest")
    if lsm is not None:
        coast(ax, map_longitudes(lsm))
    ax.set_title(title, fontsize=8)
    ax.set_aspect("auto")
    ax.set_xlim(lon.min() - _half_step(lon), lon.max() + _half_step(lon))
    ax.set_ylim(lat.min() - _half_step(lat), lat.max() + _half_step(lat))
    _geo_axes(ax)
    return m


def _half_step(v: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(v)))) / 2 if v.size > 1 else 0.5


def coast(ax, lsm: xr.DataArray) -> None:
    """The coastline of a land-sea mask (fraction of land, 0..1): its 0.5 contour."""
    v = lsm.transpose(LATITUDE, LONGITUDE).values.astype(float)
    if v.shape[0] > 1 and v.shape[1] > 1 and np.nanmin(v) < 0.5 < np.nanmax(v):
        ax.contour(lsm[LONGITUDE].values, lsm[LATITUDE].values, v, levels=[0.5], colors="k",
                   linewidths=0.7)


def crps_and_skill_maps(crps_map: xr.DataArray, *, reference: str, variable: str, units: str,
                        estimator: str, path: Path, labels: Mapping[str, str] | None = None,
                        lsm: xr.DataArray | None = None) -> Path:
    """Row 1: mean CRPS per grid point for each system (one colour scale); row 2: skill
    against the reference for every other system (one scale), under its CRPS map."""
    systems = list(map(str, crps_map.system.values))
    others = [s for s in systems if s != reference] if reference in systems else []
    n = len(systems)
    fig, axes = plt.subplots(2 if others else 1, n, figsize=(3.4 * n + 0.8, 5.6 if others else 2.9),
                             squeeze=False, layout="constrained")
    finite = np.isfinite(crps_map.values)
    vmax = float(np.nanpercentile(crps_map.values, 98)) if finite.any() else None
    ref = crps_map.sel(system=reference) if others else None
    m1 = m2 = None
    for i, s in enumerate(systems):
        m1 = _grid(axes[0][i], crps_map.sel(system=s), cmap="viridis", vmin=0, vmax=vmax,
                   title=_wrap(_label(labels, s), 34), lsm=lsm)
        if not others:
            continue
        if s == reference:
            axes[1][i].set_visible(False)  # no self-comparison panel
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            sk = 100 * (1 - crps_map.sel(system=s) / ref)
        m2 = _grid(axes[1][i], sk, cmap="RdBu", vmin=-50, vmax=50,
                   title=f"skill: {_wrap(_label(labels, s), 34)}", lsm=lsm)
    fig.suptitle(f"{variable}: mean CRPS per grid point (top) and CRPS skill against "
                 f"{_label(labels, reference)} (bottom; blue = better)\nCRPS: {estimator}",
                 fontsize=9)
    if m1 is not None:
        cb = fig.colorbar(m1, ax=list(axes[0]), shrink=0.9, pad=0.01)
        cb.set_label(f"CRPS ({units})", fontsize=8)
    if m2 is not None:
        cb = fig.colorbar(m2, ax=[a for a in axes[1] if a.get_visible()], shrink=0.9, pad=0.01)
        cb.set_label("CRPS skill (%)", fontsize=8)
    return _save(fig, path)


def case_panel(maps: xr.Dataset, *, systems: list[str], title: str, threshold: float | None,
               units: str, box: dict, path: Path, labels: Mapping[str, str] | None = None,
               lsm: xr.DataArray | None = None) -> Path:
    """Per system (rows): ensemble mean, spread, P(> threshold), error of the mean (when a
    truth exists); every column shares one colour scale across the systems; the case box
    outlined."""
    cols = ["mean", "spread"] + (["prob"] if threshold is not None else []) \
        + (["error"] if any(f"{s}_error" in maps for s in systems) else [])
    fig, axes = plt.subplots(len(systems), len(cols),
                             figsize=(3.3 * len(cols) + 0.8, 2.6 * len(systems) + 1.2),
                             squeeze=False, layout="constrained")

    def values(col: str) -> np.ndarray:
        parts = [maps[f"{s}_{col}"].values.ravel() for s in systems if f"{s}_{col}" in maps]
        if col == "mean" and "truth" in maps:
            parts.append(maps["truth"].values.ravel())
        v = np.concatenate(parts) if parts else np.zeros(0)
        return v[np.isfinite(v)]

    scale: dict[str, tuple[float | None, float | None, str, str]] = {}
    v = values("mean")
    lo, hi = (np.percentile(v, [2, 98]) if v.size else (None, None))
    scale["mean"] = (lo, hi, "viridis", f"mean ({units})")
    v = values("spread")
    scale["spread"] = (0.0, float(np.percentile(v, 98)) if v.size else None, "magma_r",
                       f"spread ({units})")
    if threshold is not None:
        scale["prob"] = (0.0, 100.0, "Reds", f"P(> {threshold:g} {units}) (%)")
    v = values("error")
    e = float(np.percentile(np.abs(v), 98)) if v.size else 1.0
    scale["error"] = (-e, e, "RdBu_r", f"mean − truth ({units})")
    handles: dict[str, object] = {}
    for r, s in enumerate(systems):
        name_s = _wrap(_label(labels, s), 30)
        for c, col in enumerate(cols):
            ax = axes[r][c]
            field = maps.get(f"{s}_{col}")
            if field is None:
                ax.set_visible(False)
                continue
            lo, hi, cmap, what = scale[col]
            data = 100 * field if col == "prob" else field
            handles[col] = _grid(ax, data, cmap=cmap, vmin=lo, vmax=hi,
                                 title=what if r == 0 else "", lsm=lsm)
            if c == 0:
                ax.set_ylabel(f"{name_s}\n\nlatitude", fontsize=8)
            _outline(ax, box, map_longitudes(field)[LONGITUDE].values)
    fig.suptitle(title, fontsize=10)
    for c, col in enumerate(cols):
        if col in handles:
            cb = fig.colorbar(handles[col], ax=[axes[r][c] for r in range(len(systems))],
                              orientation="horizontal", shrink=0.85, pad=0.04, aspect=30)
            cb.set_label(scale[col][3], fontsize=8)
    return _save(fig, path)


def _outline(ax, box: dict, lon: np.ndarray) -> None:
    lo0, lo1 = box["lon_min"], box["lon_max"]
    if lon.size and lon.max() > 180:  # data in 0..360
        lo0, lo1 = lo0 % 360, lo1 % 360
    elif lon.size:
        lo0, lo1 = ((lo0 + 180) % 360) - 180, ((lo1 + 180) % 360) - 180
    if lo1 < lo0:  # wraps: draw nothing misleading
        return
    ax.plot([lo0, lo1, lo1, lo0, lo0], [box["lat_min"]] * 2 + [box["lat_max"]] * 2 + [box["lat_min"]],
            color="k", lw=1.0, ls="--")
