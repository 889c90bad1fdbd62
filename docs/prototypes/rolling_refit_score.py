"""Magdeburg t2m, K = 25: the 2012-2014 test years predicted by a yearly rolling refit
(configs/experiments/magdeburg_t2m_rolling.yaml: each year by the fit on every year before
it), stitched and scored against the fixed split's fit over the same init times.  Not part
of the package: it reads the experiment's test products and the analysis store and prints
closed-form Gaussian CRPS (properscoring) per year and over the three years.

    .venv/bin/python docs/prototypes/rolling_refit_score.py [--prefix magdeburg_t2m_rolling]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import properscoring
import xarray as xr

from enspp.models.product import open_product

WORK = Path(__file__).parents[2] / "enspp-work" / "magdeburg"
YEARS = {"2012": "", "2013": "_y2013", "2014": "_y2014"}


def crps_per_forecast(product: Path, truth: xr.DataArray) -> dict[np.datetime64, float]:
    """Closed-form Gaussian CRPS of every forecast of ``product`` that has an observation."""
    ds = open_product(product)
    valid = (ds.init_time + ds.lead_time).squeeze("lead_time", drop=True)
    obs = truth.sel(time=valid.values).values.ravel()
    mu = ds["t2m_mean"].values.ravel()
    sd = ds["t2m_std"].values.ravel()
    ok = np.isfinite(obs) & np.isfinite(mu)
    crps = properscoring.crps_gaussian(obs[ok], mu[ok], sd[ok])
    return dict(zip(valid.values[ok], crps))


def _year(t: np.datetime64) -> str:
    return str(t)[:4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="magdeburg_t2m_rolling",
                        help="the experiment's name (its run ids: <prefix>-k25-<system>)")
    args = parser.parse_args()
    truth = xr.open_zarr(WORK / "stores" / "analysis.zarr")["t2m"].squeeze(drop=True).load()
    products = WORK / "stores" / "products"
    print("system      year  fixed split  rolling refit  forecasts (valid times in both)")
    for system in ("mixed", "emos_local"):
        fixed = crps_per_forecast(products / f"{args.prefix}-k25-{system}.zarr", truth)
        rolled: dict[np.datetime64, float] = {}
        for y, suffix in YEARS.items():  # each year from the fit on the years before it
            mine = crps_per_forecast(products / f"{args.prefix}-k25-{system}{suffix}.zarr", truth)
            rolled.update({t: c for t, c in mine.items() if _year(t) == y})
        # the rolling fits' test splits lose the forecast across each new year (its init
        # time lies in the year before): both are scored where both have a forecast
        common = sorted(set(fixed) & set(rolled))
        for y in [*YEARS, "all"]:
            ts = [t for t in common if y in (_year(t), "all")]
            f = float(np.mean([fixed[t] for t in ts]))
            r = float(np.mean([rolled[t] for t in ts]))
            print(f"{system:<11} {y:<4}  {f:.4f}       {r:.4f}         {len(ts)}"
                  + (f"  ({100 * (r / f - 1):+.1f} %)" if y == "all" else ""))

if __name__ == "__main__":
    main()
