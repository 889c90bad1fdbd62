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


def crps_by_year(product: Path, truth: xr.DataArray) -> dict[str, tuple[float, int]]:
    """Mean closed-form Gaussian CRPS and the number of init times per test year."""
    ds = open_product(product)
    valid = (ds.init_time + ds.lead_time).squeeze("lead_time", drop=True)
    obs = truth.sel(time=valid.values).values.ravel()
    mu = ds["t2m_mean"].values.ravel()
    sd = ds["t2m_std"].values.ravel()
    years = ds.init_time.dt.year.values.astype(str)
    out = {}
    for y in YEARS:
        ok = (years == y) & np.isfinite(obs) & np.isfinite(mu)
        if ok.any():
            out[y] = (float(properscoring.crps_gaussian(obs[ok], mu[ok], sd[ok]).mean()),
                      int(ok.sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="magdeburg_t2m_rolling",
                        help="the experiment's name (its run ids: <prefix>-k25-<system>)")
    args = parser.parse_args()
    truth = xr.open_zarr(WORK / "stores" / "analysis.zarr")["t2m"].squeeze(drop=True).load()
    products = WORK / "stores" / "products"
    print("system      year  fixed split  rolling refit  init times")
    for system in ("mixed", "emos_local"):
        fixed = crps_by_year(products / f"{args.prefix}-k25-{system}.zarr", truth)
        rolled = {y: crps_by_year(products / f"{args.prefix}-k25-{system}{suffix}.zarr",
                                  truth)[y] for y, suffix in YEARS.items()}
        for y in YEARS:
            print(f"{system:<11} {y}  {fixed[y][0]:.4f}       {rolled[y][0]:.4f}         "
                  f"{rolled[y][1]}")
        n = sum(rolled[y][1] for y in YEARS)
        assert n == sum(fixed[y][1] for y in YEARS)  # the same init times
        f = sum(fixed[y][0] * fixed[y][1] for y in YEARS) / n
        r = sum(rolled[y][0] * rolled[y][1] for y in YEARS) / n
        print(f"{system:<11} all   {f:.4f}       {r:.4f}         {n}  ({100 * (r / f - 1):+.1f} %)")


if __name__ == "__main__":
    main()
