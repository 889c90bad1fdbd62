"""Prototype (issue 21, Frankfurt tp24 K = 5): does a network anchored on the censored shifted
gamma (CSG) EMOS beat the same network anchored on the zero-censored logistic EMOS?  Not part
of the package; a measurement recorded in docs/results.md (next to frankfurt_csg_emos.py,
whose EMOS fits and closed forms it reuses).

Both anchors are the EMOS fits of ``frankfurt_csg_emos.py`` (members P1..P5; predictors:
mean, fraction > 0.1 mm, mean absolute difference).  The network (one hidden layer of 32,
GELU) reads the standardised predictors and the day of year (sin, cos) and adds a residual to
each of the anchor's linear predictors; its last layer starts at zero, so at initialisation it
is its EMOS.  Full-batch AdamW (lr 0.01, weight decay 1e-4), early stopping on 2011
(patience 50), ``SEEDS`` seeds; the test CRPS is that of the distribution whose parameters are
the seeds' mean (each seed is also reported).  The CSG's CRPS needs the gradient of the
regularised incomplete gamma function in its shape, which torch lacks: a custom autograd
function supplies it by central differences (checked against torch's gradient in x and
against finite differences in the shape).

    .venv/bin/python docs/prototypes/frankfurt_csg_network.py   # a few minutes on one core
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))
import frankfurt_csg_emos as emos  # noqa: E402

SEEDS = 5
torch.set_default_dtype(torch.float64)


class GammaInc(torch.autograd.Function):
    """P(a, x), regularised lower incomplete gamma, differentiable in a and x."""

    @staticmethod
    def forward(ctx, a, x):
        ctx.save_for_backward(a, x)
        return torch.special.gammainc(a, x)

    @staticmethod
    def backward(ctx, g):
        a, x = ctx.saved_tensors
        h = 1e-5 * a.clamp(min=1e-2)
        da = (torch.special.gammainc(a + h, x) - torch.special.gammainc(a - h, x)) / (2 * h)
        dx = torch.exp((a - 1) * torch.log(x.clamp(min=1e-300)) - x - torch.lgamma(a))
        return g * da, g * dx


def gammainc(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return GammaInc.apply(a, x)


def crps_csg(y, *, k, theta, delta):
    """Closed-form CRPS of max(G - delta, 0), G ~ Gamma(k, theta) (torch twin of
    ``frankfurt_csg_emos.crps_csg``)."""
    yt, ct = (y + delta) / theta, delta / theta
    fk_y, fk1_y = gammainc(k, yt), gammainc(k + 1, yt)
    fk_c, fk1_c = gammainc(k, ct), gammainc(k + 1, ct)
    f2k_c = gammainc(2 * k, 2 * ct)
    beta = torch.exp(torch.lgamma(torch.tensor(0.5)) + torch.lgamma(k + 0.5) - torch.lgamma(k + 1))
    return (theta * yt * (2 * fk_y - 1) - theta * ct * fk_c ** 2
            + theta * k * (1 + 2 * fk_c * fk1_c - fk_c ** 2 - 2 * fk1_y)
            - theta * k / math.pi * beta * (1 - f2k_c))


def crps_clog(y, *, loc, scale):
    sp = torch.nn.functional.softplus
    z = (y.clamp(min=0) - loc) / scale
    low = -loc / scale
    return (-y).clamp(min=0) + scale * (sp(z) + sp(-z) - 1 - sp(low) + torch.sigmoid(low))


def csg_dist(p, x, r):
    """The CSG parameters from EMOS coefficients ``p`` and residuals ``r`` (n, 3)."""
    sp = torch.nn.functional.softplus
    mu = sp(p[0] + p[1] * x[:, 0] + p[2] * x[:, 1] + r[:, 0]) + 1e-3
    sigma = sp(p[3] + p[4] * x[:, 2] + p[5] * torch.sqrt(mu) + r[:, 1]) + 1e-3
    delta = sp(p[6] + r[:, 2])
    return {"k": (mu / sigma) ** 2, "theta": sigma ** 2 / mu, "delta": delta}


def clog_dist(p, x, r):
    sp = torch.nn.functional.softplus
    return {"loc": p[0] + p[1] * x[:, 0] + p[2] * x[:, 1] + r[:, 0],
            "scale": sp(p[3] + p[4] * x[:, 2] + r[:, 1]) + 1e-3}


def check_gradients() -> float:
    """Largest relative error of GammaInc's gradients (vs torch in x, vs differences in a)."""
    a = torch.tensor([0.3, 1.7, 6.0], requires_grad=True)
    x = torch.tensor([0.2, 2.5, 4.0], requires_grad=True)
    gammainc(a, x).sum().backward()
    xr_ = x.detach().clone().requires_grad_(True)
    torch.special.gammainc(a.detach(), xr_).sum().backward()
    worst = float(((x.grad - xr_.grad).abs() / xr_.grad.abs()).max())
    h = 1e-6
    num = (torch.special.gammainc(a.detach() + h, x.detach())
           - torch.special.gammainc(a.detach() - h, x.detach())) / (2 * h)
    return max(worst, float(((a.grad - num).abs() / num.abs()).max()))


def fit_network(crps, dist, p, data, *, seed):
    torch.manual_seed(seed)
    xs, fs, ys = data["train"]
    net = torch.nn.Sequential(torch.nn.Linear(fs.shape[1], 32), torch.nn.GELU(), torch.nn.Linear(32, 3))
    torch.nn.init.zeros_(net[2].weight)
    torch.nn.init.zeros_(net[2].bias)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=1e-4)
    xv, fv, yv = data["val"]
    best, best_state, wait = math.inf, None, 0
    for _ in range(1000):
        opt.zero_grad()
        loss = crps(ys, **dist(p, xs, net(fs))).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            v = float(crps(yv, **dist(p, xv, net(fv))).mean())
        if v < best - 1e-6:
            best, best_state, wait = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
        else:
            wait += 1
            if wait >= 50:
                break
    net.load_state_dict(best_state)
    return net, best


def main() -> int:
    worst = max(emos.check_closed_forms(), check_gradients())
    print(f"closed forms and gradients checked: largest error {worst:.1e}")
    if worst > 1e-5:
        return 1
    ds = xr.open_dataset(emos.DATA)
    members = [f"P{i}" for i in range(1, emos.K + 1)]
    raw = {}
    for name, (a, b) in emos.SPLITS.items():
        part = ds.sel(time=slice(a, b))
        ens = part["tp24_ens"].sel(member=members).values.astype("f8")
        obs = part["tp24_obs"].values.astype("f8")
        ok = np.isfinite(obs) & np.isfinite(ens).all(axis=1)
        doy = part["time"].dt.dayofyear.values[ok]
        x = emos.predictors(ens[ok])
        season = np.stack([np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)], axis=1)
        raw[name] = (x, season, obs[ok])
    x, _, y = raw["train"]
    p_csg = emos.fit(emos.crps_csg, emos.csg_params, x, y,
                     [np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.5, -1.0]),
                      np.array([-1.0, 0.5, 2.0, 0.5, 0.5, 0.0, 0.0])])
    p_clog = emos.fit(emos.crps_clogistic, emos.clog_params, x, y,
                      [np.array([0.0, 1.0, 0.0, 0.0, 1.0]), np.array([-1.0, 0.8, 1.0, 0.5, 0.5])])
    mean, std = x.mean(axis=0), x.std(axis=0)  # training data only
    data = {k: (torch.tensor(xk), torch.tensor(np.concatenate([(xk - mean) / std, s], axis=1)),
                torch.tensor(yk)) for k, (xk, s, yk) in raw.items()}
    print(f"K = {emos.K} (members {members[0]}..{members[-1]}); CRPS in mm, closed form")
    for label, crps, dist, p in (("CSG", crps_csg, csg_dist, torch.tensor(p_csg)),
                                 ("censored logistic", crps_clog, clog_dist, torch.tensor(p_clog))):
        zero = {k: torch.zeros(len(v[2]), 3) for k, v in data.items()}
        anchor = {k: float(crps(v[2], **dist(p, v[0], zero[k])).mean()) for k, v in data.items()}
        nets = [fit_network(crps, dist, p, data, seed=s) for s in range(SEEDS)]
        scores = {}
        for k, (xk, fk, yk) in data.items():
            with torch.no_grad():
                r = torch.stack([n(fk) for n, _ in nets]).mean(0)
                scores[k] = float(crps(yk, **dist(p, xk, r)).mean())
                each = [float(crps(yk, **dist(p, xk, n(fk))).mean()) for n, _ in nets]
            if k == "test":
                print(f"  {label}: per-seed test " + " ".join(f"{e:.4f}" for e in each))
        print(f"{label:18s} EMOS val {anchor['val']:.4f} test {anchor['test']:.4f} | network "
              f"({SEEDS} seeds) val {scores['val']:.4f} test {scores['test']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
