"""A yearly rolling refit, stitched and scored against the fixed split's fit over the same
init times.  Not part of the package: it reads an experiment's test products and the
analysis store and prints the closed-form CRPS of the products' distribution per year and
over all test years.

* ``--station magdeburg`` (t2m, K = 25, Gaussian; configs/experiments/magdeburg_t2m_rolling.yaml):
  2012 by the fixed split's fit, 2013 and 2014 each by the fit on every year before it;
* ``--station frankfurt`` (tp24, K = 5, zero-censored logistic;
  configs/experiments/frankfurt_tp24_rolling.yaml): 2012 by the fixed split's fit, 2013 ..
  2016 each by the fit on every year before it.

    .venv/bin/python docs/prototypes/rolling_refit_score.py [--station frankfurt] [--prefix NAME]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

from enspp.evaluation.kernels import crps_censored_kernel, crps_gaussian_kernel
from enspp.models.product import open_product

WORK = Path(__file__).parents[2] / "enspp-work"
STATIONS = {
    "magdeburg": {"work": "magdeburg", "prefix": "magdeburg_t2m_rolling", "k": 25,
                  "variable": "t2m", "years": ("2012", "2013", "2014")},
    "frankfurt": {"work": "frankfurt", "prefix": "frankfurt_tp24_rolling", "k": 5,
                  "variable": "tp24", "years": ("2012", "2013", "2014", "2015", "2016")},
}


def crps_per_forecast(product: Path, truth: xr.DataArray, variable: str
                      ) -> dict[np.datetime64, float]:
    """Closed-form CRPS of every forecast of ``product`` that has an observation (the
    product's own distribution: Gaussian from mean/std, censored logistic from loc/scale)."""
    ds = open_product(product)
    valid = (ds.init_time + ds.lead_time).squeeze("lead_time", drop=True)
    obs = truth.sel(time=valid.values).values.ravel()
    dist = ds.attrs.get("distribution", "gaussian")
    if dist == "gaussian":
        a, b = ds[f"{variable}_mean"].values.ravel(), ds[f"{variable}_std"].values.ravel()
    elif dist == "censored_logistic":
        a, b = ds[f"{variable}_loc"].values.ravel(), ds[f"{variable}_scale"].values.ravel()
    else:
        raise SystemExit(f"{product}: distribution {dist!r} is not scored here")
    ok = np.isfinite(obs) & np.isfinite(a)
    if dist == "gaussian":
        crps = crps_gaussian_kernel(a[ok], b[ok], obs[ok])
    else:
        crps = crps_censored_kernel(a[ok], b[ok], obs[ok], 0.0, family="logistic")
    return dict(zip(valid.values[ok], crps))


def _year(t: np.datetime64) -> str:
    return str(t)[:4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--station", choices=sorted(STATIONS), default="magdeburg")
    parser.add_argument("--prefix", default=None,
                        help="the experiment's name (its run ids: <prefix>-k<K>-<system>)")
    args = parser.parse_args()
    st = STATIONS[args.station]
    prefix, k, var, years = args.prefix or st["prefix"], st["k"], st["variable"], st["years"]
    work = WORK / st["work"]
    truth = xr.open_zarr(work / "stores" / "analysis.zarr")[var].squeeze(drop=True).load()
    products = work / "stores" / "products"
    print("system      year  fixed split  rolling refit  forecasts (valid times in both)")
    for system in ("mixed", "emos_local"):
        fixed = crps_per_forecast(products / f"{prefix}-k{k}-{system}.zarr", truth, var)
        rolled: dict[np.datetime64, float] = {}
        for y in years:  # each year from the fit on the years before it
            suffix = "" if y == years[0] else f"_y{y}"
            mine = crps_per_forecast(products / f"{prefix}-k{k}-{system}{suffix}.zarr", truth, var)
            rolled.update({t: c for t, c in mine.items() if _year(t) == y})
        # the rolling fits' test splits may lose a forecast across each new year (with valid
        # dates, its init time lies in the year before): both are scored where both have one
        common = sorted(set(fixed) & set(rolled))
        for y in [*years, "all"]:
            ts = [t for t in common if y in (_year(t), "all")]
            f = float(np.mean([fixed[t] for t in ts]))
            r = float(np.mean([rolled[t] for t in ts]))
            print(f"{system:<11} {y:<4}  {f:.4f}       {r:.4f}         {len(ts)}"
                  + (f"  ({100 * (r / f - 1):+.1f} %)" if y == "all" else ""))


if __name__ == "__main__":
    main()
