"""Prototype (issue 21, Magdeburg t2m K = 25): is a distribution-free output, a Bernstein
quantile network (Bremnes 2020), better than the Gaussian the networks predict?  Not part of
the package; a measurement recorded in docs/results.md.

Both networks read the same nine predictors of members 1..25 and the observations known at
the init time: the members' mean (standardised) and log spread (standardised), the day of
year (sin, cos), the latest and second-latest known error of the members' mean, the latest
observation, and the exponentially weighted mean error and mean absolute error (half-life 5
days) of the errors known at the init time (``err_*`` divided by the training error std;
unknown values 0, as ``pipeline.station_features`` does; here without its 3-day age limit).
A network is two hidden layers of 64 (GELU) whose last layer starts at zero:

* Gaussian: mean = members' mean + a, std = members' std x 1.6 x exp(b) (closed-form CRPS);
* Bernstein of degree d: the quantile function Q(tau) = sum_j theta_j B_j,d(tau), theta
  increasing (cumulative softplus), centred on the members' mean and scaled by 1.6 x their
  std; trained on the mean pinball loss over 99 levels (x2: the CRPS of the quantile
  function, Gneiting and Ranjan 2011), scored on 1000 levels (within 1e-4 of the integral).

Full-batch AdamW (lr 0.01, weight decay 1e-4), early stopping on 2011 (patience 50, up to
1000 epochs), trained on 2002-2010, 5 seeds; the Gaussian's parameters and the quantile
networks' quantiles are averaged over the seeds.  Scores in degC on 2011 (validation) and
2012-2014-03-20 (test).

    .venv/bin/python docs/prototypes/magdeburg_quantile_network.py   # about a minute
"""

from __future__ import annotations

import math
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

FILE = Path("../shared/data/station/ecmwf_ens_t2m_magdeburg_2002-2014.nc")
K, SEEDS, HIDDEN = 25, 5, 64
TRAIN_LEVELS, SCORE_LEVELS = 99, 1000


def predictors() -> tuple[dict[str, tuple[torch.Tensor, ...]], float]:
    ds = xr.open_dataset(FILE)
    t = pd.DatetimeIndex(ds.time.values)
    ens = ds.t2m_ens.values[:, :K].astype(np.float64)  # forc.1 .. forc.25
    obs = ds.t2m_obs.values.astype(np.float64)
    m, s = ens.mean(1), ens.std(1, ddof=1)
    err = pd.Series(m - obs, index=t)
    days = pd.date_range(t[0], t[-1], freq="D")
    full = err.reindex(days)
    known = t - pd.Timedelta(days=1)  # 12 UTC +24 h: the error valid at the init time

    def ewm(x: pd.Series) -> np.ndarray:
        return x.ewm(halflife="5D", times=x.index, ignore_na=True).mean().reindex(known).values

    train = (t.year >= 2002) & (t.year <= 2010)
    ok = np.isfinite(obs) & np.isfinite(m)
    esd = np.nanstd(err.values[train & ok])

    def z(x: np.ndarray) -> np.ndarray:
        return np.nan_to_num((x - np.nanmean(x[train & ok])) / np.nanstd(x[train & ok]))

    doy = 2 * np.pi * t.day_of_year.values / 365.25
    x = np.stack([z(m), z(np.log(s)), np.sin(doy), np.cos(doy),
                  np.nan_to_num(err.reindex(known).values / esd),
                  np.nan_to_num(err.reindex(t - pd.Timedelta(days=2)).values / esd),
                  z(pd.Series(obs, index=t).reindex(known).values),
                  np.nan_to_num(ewm(full) / esd),
                  np.nan_to_num(ewm(full.abs()) / esd, nan=math.sqrt(2 / math.pi))], 1)
    ym, ys = np.nanmean(obs[train & ok]), np.nanstd(obs[train & ok])
    parts = {"train": train, "val": t.year == 2011, "test": t >= "2012-01-01"}
    out = {}
    for name, sel in parts.items():
        sel = sel & ok
        out[name] = tuple(torch.tensor(a[sel], dtype=torch.float32)
                          for a in (x, (m - ym) / ys, s / ys, (obs - ym) / ys))
    return out, float(ys)


def bernstein(tau: torch.Tensor, degree: int) -> torch.Tensor:
    return torch.stack([comb(degree, j) * tau**j * (1 - tau) ** (degree - j)
                        for j in range(degree + 1)], -1)


def levels(n: int) -> torch.Tensor:
    return (torch.arange(n) + 0.5) / n


def pinball_crps(q: torch.Tensor, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    d = y[:, None] - q
    return 2 * torch.maximum(tau * d, (tau - 1) * d).mean()


def gaussian_crps(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = (y - mu) / sigma
    n = torch.distributions.Normal(0.0, 1.0)
    return (sigma * (z * (2 * n.cdf(z) - 1) + 2 * n.log_prob(z).exp() - 1 / math.sqrt(math.pi))).mean()


class Net(torch.nn.Module):
    def __init__(self, degree: int | None) -> None:
        super().__init__()
        self.degree = degree
        n_out = 2 if degree is None else degree + 1
        self.f = torch.nn.Sequential(torch.nn.Linear(9, HIDDEN), torch.nn.GELU(),
                                     torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.GELU(),
                                     torch.nn.Linear(HIDDEN, n_out))
        torch.nn.init.zeros_(self.f[-1].weight)
        torch.nn.init.zeros_(self.f[-1].bias)

    def forward(self, x, m, s):
        o = self.f(x)
        if self.degree is None:
            return m + o[:, 0], 1.6 * s * torch.exp(o[:, 1]) + 1e-3
        base = torch.linspace(-2.5, 2.5, self.degree + 1)
        steps = torch.nn.functional.softplus(o[:, 1:] + math.log(math.e - 1)) * (base[1] - base[0])
        first = o[:, :1] + base[0]
        theta = torch.cat([first, first + torch.cumsum(steps, 1)], 1)
        return m[:, None] + 1.6 * s[:, None] * theta  # Bernstein coefficients


def score(net: Net, part: tuple[torch.Tensor, ...], n_levels: int) -> torch.Tensor:
    x, m, s, y = part
    if net.degree is None:
        return gaussian_crps(*net(x, m, s), y)
    tau = levels(n_levels)
    return pinball_crps(net(x, m, s) @ bernstein(tau, net.degree).T, y, tau)


def fit(degree: int | None, seed: int, data) -> Net:
    torch.manual_seed(seed)
    net = Net(degree)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=1e-4)
    best, state, wait = math.inf, None, 0
    for _ in range(1000):
        opt.zero_grad()
        score(net, data["train"], TRAIN_LEVELS).backward()
        opt.step()
        with torch.no_grad():
            v = score(net, data["val"], SCORE_LEVELS).item()
        if v < best - 1e-6:
            best, state, wait = v, {k: p.clone() for k, p in net.state_dict().items()}, 0
        elif (wait := wait + 1) > 50:
            break
    net.load_state_dict(state)
    return net


def ensemble_crps(nets: list[Net], part) -> float:
    x, m, s, y = part
    with torch.no_grad():
        if nets[0].degree is None:
            mus, sigmas = zip(*(n(x, m, s) for n in nets))
            return gaussian_crps(torch.stack(mus).mean(0), torch.stack(sigmas).mean(0), y).item()
        tau = levels(SCORE_LEVELS)
        q = torch.stack([n(x, m, s) @ bernstein(tau, n.degree).T for n in nets]).mean(0)
        return pinball_crps(q, y, tau).item()


def main() -> None:
    torch.set_num_threads(1)
    data, scale = predictors()
    print("| output | val CRPS (degC) | test CRPS (degC) |\n|---|---:|---:|")
    for degree in (None, 4, 8, 12):
        nets = [fit(degree, seed, data) for seed in range(SEEDS)]
        name = "Gaussian" if degree is None else f"Bernstein quantiles, degree {degree}"
        print(f"| {name} | {ensemble_crps(nets, data['val']) * scale:.4f} | "
              f"{ensemble_crps(nets, data['test']) * scale:.4f} |")


if __name__ == "__main__":
    main()
