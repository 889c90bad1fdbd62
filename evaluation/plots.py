"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

Every function takes already-computed scores and a path, writes one PNG and returns the path.
Systems keep one colour in every figure (:func:`system_colour`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from enspp.data.schema import LATITUDE, LEAD_TIME, LONGITUDE  # noqa: E402

_PALETTE = {"raw_full": "#4d4d4d", "raw_subset": "#9e9e9e", "emos": "#1f77b4", "mlp": "#ff7f0e",
            "unet": "#2ca02c", "mixed": "#9467bd", "oracle": "#d62728"}
_EXTRA = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
DPI = 110


def system_colour(name: str, index: int = 0) -> str:
    return _PALETTE.get(name, _EXTRA[index % len(_EXTRA)])


def _hours(da: xr.DataArray) -> np.ndarray:
    return da[LEAD_TIME].values / np.timedelta64(1, "h")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def skill_by_lead(scores: xr.Dataset, region: str, path: Path) -> Path:
    """CRPS skill against the reference by lead time, with the bootstrap interval."""
    s = scores.sel(region=region)
    h = _hours(s)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, sysname in enumerate(map(str, s.system.values)):
        c = system_colour(sysname, i)
        y = s["skill"].sel(system=sysname).values * 100
        ax.plot(h, y, "o-", color=c, label=sysname, lw=2)
        if "skill_low" in s:
            ax.fill_between(h, s["skill_low"].sel(system=sysname).values * 100,
                            s["skill_high"].sel(system=sysname).values * 100, color=c, alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"CRPS skill vs {scores.attrs.get('reference')} (%)")
    ax.set_title(f"{scores.attrs.get('variable')} · {region}: skill by lead time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def spread_skill(scores: xr.Dataset, region: str, path: Path) -> Path:
    """Spread/skill ratio by lead time (1 = calibrated) and the RMSE and spread themselves."""
    s = scores.sel(region=region)
    h = _hours(s)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for i, sysname in enumerate(map(str, s.system.values)):
        c = system_colour(sysname, i)
        a1.plot(h, s["spread_skill"].sel(system=sysname), "o-", color=c, label=sysname)
        a2.plot(h, s["rmse"].sel(system=sysname), "o-", color=c, label=f"{sysname} RMSE")
        a2.plot(h, s["spread"].sel(system=sysname), "s--", color=c, alpha=0.7)
    a1.axhline(1, color="k", lw=0.8)
    a1.set_title("spread / skill (1 = calibrated)")
    a2.set_title(f"RMSE (solid) and spread (dashed), {scores.attrs.get('units', '')}")
    for a in (a1, a2):
        a.set_xlabel("lead time (h)")
        a.grid(alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle(f"{scores.attrs.get('variable')} · {region}")
    return _save(fig, path)


def histograms(hists: dict[str, xr.DataArray], kinds: dict[str, str], region: str,
               variable: str, path: Path) -> Path:
    """Rank histograms (ensembles) and PIT histograms (distributions), all leads pooled,
    as relative frequency x number of bins (flat at 1 = calibrated)."""
    names = list(hists)
    n = len(names)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 0.5, 2.8), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        h = hists[name].sel(region=region).sum(LEAD_TIME).values
        total = h.sum()
        freq = h / total * h.size if total > 0 else h
        ax.bar(np.arange(h.size), freq, width=1.0, color=system_colour(name, i), edgecolor="white")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_title(f"{name} ({'rank' if kinds[name] == 'rank' else 'PIT'})", fontsize=9)
        ax.set_xticks([])
    axes[0][0].set_ylabel("frequency × bins")
    fig.suptitle(f"{variable} · {region}: rank / PIT histograms (flat = calibrated)", fontsize=10)
    return _save(fig, path)


def _grid(ax, da: xr.DataArray, *, cmap: str, vmin=None, vmax=None, title: str = "", label: str = ""):
    lat = da[LATITUDE].values
    lon = da[LONGITUDE].values
    m = ax.pcolormesh(lon, lat, da.transpose(LATITUDE, LONGITUDE).values, cmap=cmap, vmin=vmin,
                      vmax=vmax, shading="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("auto")
    ax.tick_params(labelsize=7)
    cb = plt.colorbar(m, ax=ax, shrink=0.85)
    cb.ax.tick_params(labelsize=7)
    if label:
        cb.set_label(label, fontsize=7)
    return m


def crps_and_skill_maps(crps_map: xr.DataArray, *, reference: str, variable: str, units: str,
                        estimator: str, path: Path) -> Path:
    """Row 1: mean CRPS per grid point for each system; row 2: skill vs the reference."""
    systems = list(map(str, crps_map.system.values))
    n = len(systems)
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 5.2), squeeze=False)
    vmax = float(np.nanpercentile(crps_map.values, 98)) if np.isfinite(crps_map.values).any() else None
    ref = crps_map.sel(system=reference) if reference in systems else None
    for i, s in enumerate(systems):
        _grid(axes[0][i], crps_map.sel(system=s), cmap="viridis", vmin=0, vmax=vmax,
              title=f"CRPS {s}", label=units)
        if ref is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                sk = 100 * (1 - crps_map.sel(system=s) / ref)
            _grid(axes[1][i], sk, cmap="RdBu", vmin=-50, vmax=50, title=f"skill {s} vs {reference}",
                  label="%")
        else:
            axes[1][i].axis("off")
    fig.suptitle(f"{variable}: mean CRPS ({estimator}) and skill by grid point "
                 f"(blue = better than {reference})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def case_panel(maps: xr.Dataset, *, systems: list[str], title: str, threshold: float | None,
               units: str, box: dict, path: Path) -> Path:
    """Per system: ensemble mean, spread, P(> threshold), error of the mean (when a truth
    exists); the case box outlined."""
    cols = ["mean", "spread"] + (["prob"] if threshold is not None else []) \
        + (["error"] if any(f"{s}_error" in maps for s in systems) else [])
    fig, axes = plt.subplots(len(systems), len(cols), figsize=(3.1 * len(cols), 2.5 * len(systems) + 0.6),
                             squeeze=False)
    mean_vals = np.concatenate([maps[f"{s}_mean"].values.ravel() for s in systems])
    lo, hi = np.nanpercentile(mean_vals, [2, 98]) if np.isfinite(mean_vals).any() else (None, None)
    for r, s in enumerate(systems):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            name = f"{s}_{col}"
            if name not in maps:
                ax.axis("off")
                continue
            if col == "mean":
                _grid(ax, maps[name], cmap="viridis", vmin=lo, vmax=hi, title=f"{s}: mean", label=units)
            elif col == "spread":
                _grid(ax, maps[name], cmap="magma_r", vmin=0, title=f"{s}: spread", label=units)
            elif col == "prob":
                _grid(ax, 100 * maps[name], cmap="Reds", vmin=0, vmax=100,
                      title=f"{s}: P(> {threshold:g} {units})", label="%")
            else:
                e = float(np.nanmax(np.abs(maps[name].values))) if np.isfinite(maps[name].values).any() else 1
                _grid(ax, maps[name], cmap="RdBu_r", vmin=-e, vmax=e, title=f"{s}: mean − truth", label=units)
            _outline(ax, box, maps[LONGITUDE].values)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
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
