"""Prototype (issue 21, Frankfurt tp24 K = 5): is a censored shifted gamma (CSG) EMOS
(Scheuerer and Hamill 2015) a better anchor than the zero-censored logistic EMOS the service
fits?  Not part of the package; a measurement whose result is recorded in docs/results.md.

Both distributions get the same predictors of the first K perturbed members (P1..PK): the
members' mean, the fraction of members with precipitation (> 0.1 mm) and their mean absolute
difference (MAD); both are fitted by minimum closed-form CRPS (scipy L-BFGS-B from a few
starts) on 2007-2010 and scored on 2011 (validation, which would choose) and on the test
years 2012-2016 (init dates).  The closed forms are checked against numerical integration of
``(F(x) - 1{y <= x})^2`` before anything is fitted.

    .venv/bin/python docs/prototypes/frankfurt_csg_emos.py   # ~1-2 min on one core
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import integrate, optimize, special

DATA = Path(__file__).parents[2] / "../shared/data/station/ecmwf_ens_tp24_frankfurt_2007-2016.nc"
K = 5
SPLITS = {"train": ("2007-01-01", "2010-12-31"), "val": ("2011-01-01", "2011-12-31"),
          "test": ("2012-01-01", "2016-12-31")}


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def crps_csg(y: np.ndarray, *, k: np.ndarray, theta: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of max(G - delta, 0), G ~ Gamma(shape k, scale theta), delta >= 0
    (Scheuerer and Hamill 2015, eq. 5)."""
    yt = (y + delta) / theta
    ct = delta / theta
    fk_y, fk1_y = special.gammainc(k, yt), special.gammainc(k + 1, yt)
    fk_c, fk1_c = special.gammainc(k, ct), special.gammainc(k + 1, ct)
    f2k_c = special.gammainc(2 * k, 2 * ct)
    beta = np.exp(special.betaln(0.5, k + 0.5))
    return (theta * yt * (2 * fk_y - 1) - theta * ct * fk_c ** 2
            + theta * k * (1 + 2 * fk_c * fk1_c - fk_c ** 2 - 2 * fk1_y)
            - theta * k / np.pi * beta * (1 - f2k_c))


def crps_clogistic(y: np.ndarray, *, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of a logistic(loc, scale) censored at 0 (the service's formula,
    ``models.losses.crps_censored_logistic``, in float64)."""
    z = (np.maximum(y, 0.0) - loc) / scale
    low = -loc / scale
    return np.maximum(-y, 0.0) + scale * (_softplus(z) + _softplus(-z) - 1.0 - _softplus(low)
                                          + special.expit(low))


def _crps_numerical(cdf, y: float, top: float) -> float:
    """CRPS of a distribution on [0, inf) with ``cdf`` (including the mass at 0)."""
    below = integrate.quad(lambda x: cdf(x) ** 2, 0.0, y, epsabs=1e-13, limit=200)[0] if y > 0 else 0.0
    above = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, top, epsabs=1e-13, limit=200)[0]
    return below + above


def check_closed_forms() -> float:
    """Largest absolute difference of both closed forms from numerical integration."""
    worst = 0.0
    for k, theta, delta, y in ((0.4, 3.0, 0.5, 0.0), (2.5, 1.2, 0.1, 3.7), (0.8, 6.0, 1.5, 12.0)):
        def cdf(x, k=k, theta=theta, delta=delta):
            return special.gammainc(k, (x + delta) / theta)
        num = _crps_numerical(cdf, y, top=400.0)
        worst = max(worst, abs(num - float(crps_csg(np.array(y), k=np.array(k), theta=np.array(theta),
                                                    delta=np.array(delta)))))
    for loc, scale, y in ((-1.0, 1.5, 0.0), (2.0, 0.7, 3.3), (0.5, 2.0, 9.0)):
        def cdf(x, loc=loc, scale=scale):
            return special.expit((x - loc) / scale)
        num = _crps_numerical(cdf, y, top=200.0)
        worst = max(worst, abs(num - float(crps_clogistic(np.array(y), loc=np.array(loc),
                                                          scale=np.array(scale)))))
    return worst


def predictors(ens: np.ndarray) -> np.ndarray:
    """(n, 3): members' mean, fraction with > 0.1 mm, mean absolute difference."""
    mad = np.abs(ens[:, :, None] - ens[:, None, :]).mean(axis=(1, 2))
    return np.stack([ens.mean(axis=1), (ens > 0.1).mean(axis=1), mad], axis=1)


def csg_params(p: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """Mean mu = softplus(a + b mean + c pop), std sigma = softplus(d + e MAD + f sqrt(mu))
    of the uncensored gamma; shift delta = softplus(g)."""
    mu = _softplus(p[0] + p[1] * x[:, 0] + p[2] * x[:, 1]) + 1e-3
    sigma = _softplus(p[3] + p[4] * x[:, 2] + p[5] * np.sqrt(mu)) + 1e-3
    return {"k": (mu / sigma) ** 2, "theta": sigma ** 2 / mu, "delta": _softplus(p[6])}


def clog_params(p: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """loc = a + b mean + c pop, scale = softplus(d + e MAD)."""
    return {"loc": p[0] + p[1] * x[:, 0] + p[2] * x[:, 1],
            "scale": _softplus(p[3] + p[4] * x[:, 2]) + 1e-3}


def fit(crps, params, x: np.ndarray, y: np.ndarray, starts: list[np.ndarray]) -> np.ndarray:
    """Minimum mean CRPS over a few L-BFGS-B starts."""
    def loss(p):
        v = crps(y, **params(p, x)).mean()
        return float(v) if np.isfinite(v) else 1e9
    best = None
    for p0 in starts:
        r = optimize.minimize(loss, p0, method="L-BFGS-B", options={"maxiter": 5000})
        r = optimize.minimize(loss, r.x, method="Nelder-Mead",
                              options={"maxiter": 20000, "xatol": 1e-8, "fatol": 1e-10})
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def main() -> int:
    worst = check_closed_forms()
    print(f"closed forms vs numerical integration: largest difference {worst:.2e}")
    if worst > 1e-6:
        return 1
    ds = xr.open_dataset(DATA)
    members = [f"P{i}" for i in range(1, K + 1)]
    data = {}
    for name, (a, b) in SPLITS.items():
        part = ds.sel(time=slice(a, b))
        ens = part["tp24_ens"].sel(member=members).values.astype("f8")
        obs = part["tp24_obs"].values.astype("f8")
        ok = np.isfinite(obs) & np.isfinite(ens).all(axis=1)
        data[name] = (predictors(ens[ok]), obs[ok])
    x, y = data["train"]
    csg = fit(crps_csg, csg_params, x, y,
              [np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.5, -1.0]), np.array([-1.0, 0.5, 2.0, 0.5, 0.5, 0.0, 0.0])])
    clog = fit(crps_clogistic, clog_params, x, y,
               [np.array([0.0, 1.0, 0.0, 0.0, 1.0]), np.array([-1.0, 0.8, 1.0, 0.5, 0.5])])
    print(f"K = {K} (members {members[0]}..{members[-1]}); CRPS in mm, closed form")
    print(f"{'split':6s} {'n':>5s} {'CSG EMOS':>9s} {'cens. logistic EMOS':>20s}")
    for name, (xs, ys) in data.items():
        a = crps_csg(ys, **csg_params(csg, xs)).mean()
        b = crps_clogistic(ys, **clog_params(clog, xs)).mean()
        print(f"{name:6s} {len(ys):5d} {a:9.4f} {b:20.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
