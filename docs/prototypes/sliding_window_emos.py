"""Prototype (issue 21, "baselines as operations run them"): the classic sliding-window EMOS
(Gneiting et al. 2005), refitted for every forecast on the most recent N days, against the
static EMOS the station tables use.  Not part of the package; a measurement recorded in
docs/results.md.

Magdeburg t2m, members 1..25 (+24 h from 12 UTC): for each forecast valid on day d the
Gaussian EMOS  mean = a + b * ens_mean,  var = c^2 + d^2 * ens_var  is fitted by minimum
closed-form CRPS (L-BFGS, started from the previous day's fit) on the pairs whose
observation was known at the init time (valid on days d-N .. d-1, gaps skipped).  N is
chosen on the validation year 2011; the test years are 2012-2014-03-20.  The static EMOS of
the same form is fitted once on 2002-2011 (the stations' refit protocol).

    .venv/bin/python docs/prototypes/sliding_window_emos.py   # about a minute
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import minimize
from scipy.stats import norm

FILE = Path("../shared/data/station/ecmwf_ens_t2m_magdeburg_2002-2014.nc")
K = 25
WINDOWS = (25, 30, 40, 60, 90, 180, 365)


def crps_and_grad(p: np.ndarray, m: np.ndarray, v: np.ndarray, y: np.ndarray
                  ) -> tuple[float, np.ndarray]:
    """Mean Gaussian CRPS of (a + b m, sqrt(c^2 + d^2 v)) against y, and its gradient."""
    a, b, c, d = p
    mu, var = a + b * m, c * c + d * d * v + 1e-8
    s = np.sqrt(var)
    z = (y - mu) / s
    pdf, cdf = norm.pdf(z), norm.cdf(z)
    crps = s * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    dmu = -(2 * cdf - 1)                       # dCRPS/dmu
    ds = 2 * pdf - 1 / math.sqrt(math.pi)      # dCRPS/dsigma
    g = np.array([dmu.mean(), (dmu * m).mean(), (ds * c / s).mean(), (ds * d * v / s).mean()])
    return float(crps.mean()), g


def fit(m, v, y, start):
    res = minimize(crps_and_grad, start, args=(m, v, y), jac=True, method="L-BFGS-B")
    return res.x


def main() -> None:
    ds = xr.open_dataset(FILE)
    t = pd.DatetimeIndex(ds.time.values)
    ens = ds.t2m_ens.values[:, :K].astype(np.float64)
    obs = ds.t2m_obs.values.astype(np.float64)
    m, v = ens.mean(1), ens.var(1, ddof=1)
    ok = np.isfinite(obs) & np.isfinite(m) & np.isfinite(v)
    day = ((t - t[0]) / pd.Timedelta(days=1)).astype(int).values
    start = np.array([0.0, 1.0, 1.0, 1.0])
    val, test = (t.year == 2011) & ok, (t >= "2012-01-01") & ok
    static = fit(m[ok & (t.year <= 2011)], v[ok & (t.year <= 2011)], obs[ok & (t.year <= 2011)], start)
    fitted_on_train = fit(m[ok & (t.year <= 2010)], v[ok & (t.year <= 2010)],
                          obs[ok & (t.year <= 2010)], start)
    crps_static_val = crps_and_grad(fitted_on_train, m[val], v[val], obs[val])[0]
    crps_static_test = crps_and_grad(static, m[test], v[test], obs[test])[0]
    print("| EMOS | val 2011 | test 2012-2014 |\n|---|---:|---:|")
    print(f"| static (fit 2002-2010 for val, 2002-2011 for test) | {crps_static_val:.4f} | "
          f"{crps_static_test:.4f} |")
    for n in WINDOWS:
        scores = {"val": [], "test": []}
        p = start
        for i in np.flatnonzero(val | test):
            train = ok & (day >= day[i] - n) & (day <= day[i] - 1)
            p = fit(m[train], v[train], obs[train], p)
            scores["val" if val[i] else "test"].append(
                crps_and_grad(p, m[i:i + 1], v[i:i + 1], obs[i:i + 1])[0])
        print(f"| sliding window, last {n} days | {np.mean(scores['val']):.4f} | "
              f"{np.mean(scores['test']):.4f} |", flush=True)


if __name__ == "__main__":
    main()
