"""Tiny synthetic forecast / analysis / product stores for the evaluation tests.

A truth field ``t2m`` on an 8 x 16 grid (60N..60S) every 24 h; a 10-member raw ensemble
(biased, under-dispersive), a Gaussian product (``t2m_mean``/``t2m_std``) that is better,
and the oracle (``t2m_mu``/``t2m_sigma``, the truth's generating distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

LAT = np.linspace(60.0, -60.0, 8)
LON = np.arange(16) * 22.5


@dataclass(frozen=True)
class World:
    forecast: Path
    analysis: Path
    product: Path
    oracle: Path
    events: Path
    static: Path
    init_times: pd.DatetimeIndex


def make_world(root: Path, *, n_init: int = 24, n_members: int = 10, seed: int = 0,
               leads_h: tuple[int, ...] = (24, 48), nan_truth: bool = False) -> World:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    init = pd.date_range("2021-01-01", periods=n_init, freq="D")
    lead = pd.to_timedelta(list(leads_h), unit="h")
    times = pd.date_range(init[0], init[-1] + lead[-1], freq="D")
    ny, nx = LAT.size, LON.size
    clim = 280.0 + 20.0 * np.cos(np.deg2rad(LAT))[:, None] + np.zeros((ny, nx))
    # truth = predictable signal + noise; the signal is what forecasts know
    signal = clim[None] + 3.0 * rng.standard_normal((times.size, ny, nx))
    sigma_true = 1.0 + 0.5 * np.abs(np.sin(np.deg2rad(LAT)))[:, None] * np.ones((1, nx))
    truth = signal + sigma_true[None] * rng.standard_normal(signal.shape)
    if nan_truth:
        truth[2, 0, 0] = np.nan
    ana = xr.Dataset({"t2m": (("time", "latitude", "longitude"), truth.astype("float32"),
                              {"units": "K", "standard_name": "air_temperature"})},
                     coords={"time": times.values.astype("datetime64[ns]"), "latitude": LAT, "longitude": LON})
    ana.attrs["enspp_kind"] = "analysis"
    # valid-time index of each (init, lead)
    vidx = np.array([[times.get_loc(i + L) for L in lead] for i in init])
    sig = signal[vidx]  # (init, lead, y, x)
    lead_noise = np.array(leads_h, float)[None, :, None, None] / 24.0
    mu_true = sig
    sd_true = np.broadcast_to(sigma_true, sig.shape)
    members = (sig[:, :, None] + 0.8 + 0.4 * rng.standard_normal((n_init, len(lead), n_members, ny, nx))
               * np.sqrt(lead_noise)[:, :, None] + 0.3 * rng.standard_normal(sig.shape)[:, :, None])
    fc = xr.Dataset({"t2m": (("init_time", "lead_time", "member", "latitude", "longitude"),
                             members.astype("float32"), {"units": "K"})},
                    coords={"init_time": init.values.astype("datetime64[ns]"),
                            "lead_time": lead.values.astype("timedelta64[ns]"),
                            "member": np.arange(n_members), "latitude": LAT, "longitude": LON})
    fc.attrs["enspp_kind"] = "forecast"
    pmu = sig + 0.2 * rng.standard_normal(sig.shape)
    psd = np.sqrt(sd_true ** 2 + 0.04)
    dims4 = ("init_time", "lead_time", "latitude", "longitude")
    coords4 = {k: fc[k].values for k in dims4}
    prod = xr.Dataset({"t2m_mean": (dims4, pmu.astype("float32"), {"units": "K"}),
                       "t2m_std": (dims4, psd.astype("float32"), {"units": "K"})}, coords=coords4)
    prod.attrs.update({"distribution": "gaussian", "model_version": "test"})
    orc = xr.Dataset({"t2m_mu": (dims4, mu_true.astype("float32"), {"units": "K"}),
                      "t2m_sigma": (dims4, sd_true.astype("float32"), {"units": "K"})}, coords=coords4)
    paths = World(root / "forecast.zarr", root / "analysis.zarr", root / "product.zarr",
                  root / "oracle.zarr", root / "events.yaml", root / "static.nc", init)
    # a land-sea mask: one continent between 20 and 120 E, north of the equator
    land = (LAT[:, None] > 0) & (LON[None, :] >= 20) & (LON[None, :] <= 120)
    xr.Dataset({"lsm": (("latitude", "longitude"), land.astype("float64"))},
               coords={"latitude": LAT, "longitude": LON}).to_netcdf(paths.static)
    chunks = {"init_time": 1}
    fc.chunk(chunks).to_zarr(paths.forecast, mode="w")
    ana.chunk({"time": 1}).to_zarr(paths.analysis, mode="w")
    prod.chunk(chunks).to_zarr(paths.product, mode="w")
    orc.chunk(chunks).to_zarr(paths.oracle, mode="w")
    paths.events.write_text(
        "events:\n"
        "  - id: warm-spell\n"
        "    name: Synthetic warm spell\n"
        "    variable: t2m\n"
        "    kind: heat\n"
        "    box: {lat_min: 20, lat_max: 50, lon_min: 20, lon_max: 100}\n"
        f"    window: {{start: {init[n_init // 2 - 1].isoformat()}, end: {init[n_init // 2 + 1].isoformat()}}}\n"
        "    threshold: 295.0\n"
        "    how_chosen: fixed in advance by the synthetic world's configuration, not by the outcome\n"
        "  - id: far-away\n"
        "    name: Out of the period\n"
        "    variable: t2m\n"
        "    box: {lat_min: 20, lat_max: 50, lon_min: 20, lon_max: 100}\n"
        "    window: {start: 2030-01-01T00:00, end: 2030-01-02T00:00}\n"
        "    how_chosen: a test of a case outside the data\n"
    )
    return paths


def config_dict(w: World, **over) -> dict:
    cfg = {
        "title": "synthetic test",
        "truth": str(w.analysis),
        "systems": [
            {"name": "raw_full", "path": str(w.forecast)},
            {"name": "raw_subset", "path": str(w.forecast), "members": 4},
            {"name": "emos", "path": str(w.product), "type": "gaussian"},
            {"name": "oracle", "path": str(w.oracle), "type": "gaussian"},
        ],
        "variables": ["t2m"],
        "regions": ["global", "tropics"],
        "bootstrap": {"block_length": 3, "n": 200, "ci_level": 0.9},
        "cases": [str(w.events)],
        "land_sea_mask": str(w.static),
        "chunk_size": 5,
    }
    cfg.update(over)
    return cfg


_CACHE: dict[str, object] = {}


def evaluated_report(root: Path):
    """A full evaluation (with report and dashboard) of a small world, computed once per test
    session and shared by the evaluation, dashboard and browser tests.
    Returns ``(world, result, out_dir)``."""
    if "report" not in _CACHE:
        from enspp.evaluation.config import config_from_mapping
        from enspp.evaluation.evaluate import evaluate

        w = make_world(root / "world", n_init=12)
        cfg = config_from_mapping(config_dict(
            w, metrics=["crps", "spread_skill", "rank_histogram", "rmse", "mae", "bias", "twcrps"],
            twcrps={"thresholds": [295.0], "percentiles": [0.9]}))
        out = root / "report"
        result = evaluate(cfg, out)
        _CACHE["report"] = (w, result, out)
    return _CACHE["report"]
