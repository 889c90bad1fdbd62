"""The synthetic world's dynamics: truth, ensemble forecasts and the exact predictive law.

Latent anomalies ``Y_v`` (units of the local climatological s.d.) follow, per day ``t``,

    Y_v(t) = phi_v * A Y_v(t-1) + sqrt(1 - phi_v^2) * m(t) * xi_v(t)
    truth_v(t) = clim_v(t) + sd_v(t) * (Y_v(t) + C_v(t))

with ``A`` an eastward roll by whole grid points per latitude row, ``xi_v`` smooth unit-variance
fields independent in time (correlated across variables), ``C_v`` the catalogued events and
``m(t) = g(A^Lam (Y_z500 + C_z500)(t - Lam))`` the flow-dependent innovation amplitude, set by
the state ``Lam`` days earlier (``Lam`` the longest lead), hence known at every init that
verifies at ``t``.  Given everything known at init ``t0`` the truth at ``t0 + L`` is Gaussian:

    mu    = clim + sd * (phi^L A^L Y(t0) + C(t0 + L))
    sigma = sd * sqrt((1 - phi^2) * sum_{k=1..L} phi^(2(L-k)) * (A^(L-k) m(t0+k))^2)

The forecast distorts what it knows; see :func:`forecast_members`.  data/README.md has the
full equations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from enspp.data.synth.config import SynthConfig
from enspp.data.synth.events import Event, event_anomaly, make_events
from enspp.data.synth.physics import (
    VAR_SPECS,
    ancestry,
    grid_coords,
    roll_rows,
    shift_rows_fractional,
    smooth_noise,
    static_fields,
    zonal_shift_gp,
)

__all__ = ["World", "AnalysisChunk", "ForecastChunk", "ForecastState", "build_world", "simulate",
           "simulate_states", "forecast", "init_times", "FLOW_BETA", "MEMBER_LEAD_CORR"]

#: strength of the flow dependence of the innovation amplitude: m = exp(-beta tanh(q)) / norm
FLOW_BETA = 0.45
#: correlation of a member's perturbation between consecutive lead days
MEMBER_LEAD_CORR = 0.7
#: days simulated before the first year so the state is in its stationary regime
BURN_IN_DAYS = 40
_VAR_INDEX = {name: i for i, name in enumerate(VAR_SPECS)}
_STREAM_INNOVATION, _STREAM_MEMBERS, _STREAM_EVENTS, _STREAM_STATIC = 1, 2, 3, 4


def _flow_norm(beta: float) -> float:
    """sqrt(E[exp(-2 beta tanh(q))]) for q ~ N(0, 1), so that E[m^2] = 1."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sqrt(np.sum(w * np.exp(-2 * beta * np.tanh(x))) / np.sqrt(2 * np.pi)))


_FLOW_NORM = _flow_norm(FLOW_BETA)


@dataclass(frozen=True)
class World:
    """The fixed parts of a world: grid, geography, events, which variables to simulate."""

    config: SynthConfig
    lat: np.ndarray
    lon: np.ndarray
    lsm: np.ndarray
    orog: np.ndarray
    events: list[Event]
    names: list[str]  # simulated variables (ancestry of the asked ones), z500 first
    shift: np.ndarray  # whole grid points per day per latitude row

    @property
    def lag_days(self) -> int:
        return max(self.config.lead_days)


@dataclass(frozen=True)
class AnalysisChunk:
    days: pd.DatetimeIndex
    fields: dict[str, np.ndarray]  # name -> (day, lat, lon), physical units


@dataclass(frozen=True)
class ForecastState:
    """What a forecast from ``init`` is made of: the latent state at init and the z500 history.

    ``ztot_window[k]`` is the z500 total anomaly on ``init + k + 1 - lam`` (k = 0..lam-1),
    which fixes the flow-dependent innovation amplitude up to the longest lead.
    """

    init: pd.Timestamp
    y0: np.ndarray  # (variable, lat, lon), latent units, world.names order
    ztot_window: np.ndarray  # (lam, lat, lon)


@dataclass(frozen=True)
class ForecastChunk:
    init: pd.Timestamp
    members: dict[str, np.ndarray]  # name -> (lead, member, lat, lon), physical units
    mu: dict[str, np.ndarray]  # name -> (lead, lat, lon)
    sigma: dict[str, np.ndarray]


def build_world(config: SynthConfig) -> World:
    lat, lon = grid_coords(*config.grid)
    lsm, orog = static_fields(np.random.default_rng([config.seed, _STREAM_STATIC]), lat, lon)
    events = make_events(np.random.default_rng([config.seed, _STREAM_EVENTS]),
                         years=config.years, per_year=config.events_per_year,
                         variables=config.variables, lat=lat, lon=lon, lsm=lsm)
    return World(config=config, lat=lat, lon=lon, lsm=lsm, orog=orog, events=events,
                 names=ancestry(config.output_variables), shift=zonal_shift_gp(lat, lon.size))


def init_times(config: SynthConfig) -> pd.DatetimeIndex:
    days = pd.date_range(f"{config.years[0]}-01-01", f"{config.years[1]}-12-31", freq="D")
    return days[np.isin(days.day_of_week, config.init_weekdays)]


def flow_multiplier(ztot_lagged: np.ndarray, shift: np.ndarray, lag_days: int) -> np.ndarray:
    """m(t) from the z500 latent anomaly ``lag_days`` earlier, advected to day t."""
    q = roll_rows(ztot_lagged, shift * lag_days)
    return np.exp(-FLOW_BETA * np.tanh(q)) / _FLOW_NORM


def _innovations(world: World, rng_key: int, n_days: int) -> np.ndarray:
    """xi(day, var, lat, lon): unit-variance smooth fields, correlated with their parent."""
    seed = world.config.seed
    xi: dict[str, np.ndarray] = {}
    for name in world.names:
        spec = VAR_SPECS[name]
        rng = np.random.default_rng([seed, _STREAM_INNOVATION, rng_key, _VAR_INDEX[name]])
        own = smooth_noise(rng, (n_days,), lat=world.lat, lon=world.lon, scale_deg=spec.scale_deg)
        if spec.parent is not None:
            c = spec.parent_corr
            own = c * xi[spec.parent] + np.sqrt(1 - c**2) * own
        xi[name] = own
    return np.stack([xi[n] for n in world.names], axis=1)


def simulate(world: World) -> Iterator[AnalysisChunk | ForecastChunk]:
    """Run the world year by year, yielding the analyses of each year, then its forecasts."""
    for item in simulate_states(world):
        yield item if isinstance(item, AnalysisChunk) else forecast(world, item)


def simulate_states(world: World) -> Iterator[AnalysisChunk | ForecastState]:
    """Run the world year by year, yielding the analyses of each year, then the states its
    forecasts start from (:func:`forecast` turns one into members and oracle; states are
    independent of each other, so they can be computed in any order or process)."""
    cfg = world.config
    inits = init_times(cfg)
    lam = world.lag_days
    first = pd.Timestamp(f"{cfg.years[0]}-01-01")
    last = inits[-1] + pd.Timedelta(days=lam) if len(inits) else pd.Timestamp(f"{cfg.years[1]}-12-31")
    phi = np.array([VAR_SPECS[n].phi for n in world.names])[:, None, None]
    innov = np.sqrt(1 - phi**2)
    # stationary start: Y ~ N(0, 1) smooth fields, m = 1 during the burn-in history
    rng0 = np.random.default_rng([cfg.seed, _STREAM_INNOVATION, 0])
    y = np.stack([
        smooth_noise(rng0, (), lat=world.lat, lon=world.lon, scale_deg=VAR_SPECS[n].scale_deg)
        for n in world.names])
    start = first - pd.Timedelta(days=BURN_IN_DAYS)
    ztot_hist = [np.zeros_like(y[0])] * lam  # Y_z500 + C_z500 of the lam days before `start`
    blocks = [(start, first - pd.Timedelta(days=1))]
    for year in range(cfg.years[0], last.year + 1):
        blocks.append((max(first, pd.Timestamp(f"{year}-01-01")),
                       min(last, pd.Timestamp(f"{year}-12-31"))))
    for b, (b0, b1) in enumerate(blocks):
        days = pd.date_range(b0, b1, freq="D")
        xi = _innovations(world, b0.year * 10 + (b == 0), len(days))
        ytot = np.empty((len(days), len(world.names), *y.shape[1:]))
        y_block = np.empty_like(ytot)
        for i, day in enumerate(days):
            m = flow_multiplier(ztot_hist[-lam], world.shift, lam)
            y = phi * roll_rows(y, world.shift) + innov * m * xi[i]
            y_block[i] = y
            ytot[i] = y + event_anomaly(world.events, day, world.names, lat=world.lat, lon=world.lon)
            ztot_hist.append(ytot[i, 0])
        # history aligned with the block: ztot_ext[j] is the z500 total anomaly on days[0] - lam + j
        ztot_ext = np.stack(ztot_hist[-(len(days) + lam):])
        ztot_hist = ztot_hist[-lam:]
        if b == 0:
            continue
        yield AnalysisChunk(days=days, fields={
            n: _to_physical(world, n, ytot[:, j], days) for j, n in enumerate(world.names)
            if n in cfg.output_variables})
        for init in inits[(inits >= days[0]) & (inits <= days[-1])]:
            i0 = (init - days[0]).days
            yield ForecastState(init=init, y0=y_block[i0].copy(),
                                ztot_window=ztot_ext[i0 + 1: i0 + lam + 1].copy())


def _to_physical(world: World, name: str, latent: np.ndarray, days: pd.DatetimeIndex) -> np.ndarray:
    clim, sd = VAR_SPECS[name].climate(world.lat[:, None], world.lon[None, :], world.lsm,
                                       world.orog, np.asarray(days.day_of_year))
    return clim + sd * latent


def oracle_latent(world: World, y0: np.ndarray, ztot_window: np.ndarray, init: pd.Timestamp,
                  lead_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Latent mean and s.d. of the truth ``lead_days`` after ``init`` given the state at init.

    ``ztot_window[k]`` is the z500 total anomaly on ``init + k + 1 - lam`` (k = 0..lam-1).
    """
    lam = world.lag_days
    phi = np.array([VAR_SPECS[n].phi for n in world.names])[:, None, None]
    valid = init + pd.Timedelta(days=lead_days)
    mu = phi**lead_days * roll_rows(y0, world.shift * lead_days) + event_anomaly(
        world.events, valid, world.names, lat=world.lat, lon=world.lon)
    var = np.zeros_like(y0)
    for k in range(1, lead_days + 1):
        m = flow_multiplier(ztot_window[k - 1], world.shift, lam)
        var = var + phi ** (2 * (lead_days - k)) * roll_rows(m, world.shift * (lead_days - k))[None] ** 2
    return mu, np.sqrt((1 - phi**2) * var)


def forecast_members(world: World, name: str, mu: np.ndarray, sd: np.ndarray,
                     z: np.ndarray, lead_days: int) -> np.ndarray:
    """Latent member anomalies of one variable at one lead: the forecast's error model.

    member = S_L( D( mu + kappa(lat) * sd * z_m ) ) + bias,  with z_0 = 0 (the control),
    D(a) = k tanh(a / k) (k differs for positive and negative anomalies: extremes damped) and
    S_L a westward shift by ``lag * lead_days`` of the true daily motion (features too slow).
    The bias (latent units) is added by the caller (it depends on the valid day).
    """
    spec = VAR_SPECS[name]
    a = mu[None] + spec.kappa(world.lat)[:, None] * sd[None] * z
    d = np.where(a > 0, spec.damp_pos * np.tanh(a / spec.damp_pos),
                 spec.damp_neg * np.tanh(a / spec.damp_neg))
    return shift_rows_fractional(d, -spec.lag * world.shift * lead_days)


def forecast(world: World, state: ForecastState) -> ForecastChunk:
    """Members (the forecast's error model) and oracle of one init; deterministic in the seed."""
    init, y0, ztot_window = state.init, state.y0, state.ztot_window
    cfg = world.config
    n_pert = cfg.n_perturbed
    out_vars = cfg.output_variables
    members: dict[str, list[np.ndarray]] = {n: [] for n in out_vars}
    mus: dict[str, list[np.ndarray]] = {n: [] for n in out_vars}
    sigmas: dict[str, list[np.ndarray]] = {n: [] for n in out_vars}
    ordinal = int((init - pd.Timestamp("1950-01-01")).days)
    pert = {}
    for name in out_vars:
        rng = np.random.default_rng([cfg.seed, _STREAM_MEMBERS, ordinal, _VAR_INDEX[name]])
        w = smooth_noise(rng, (len(cfg.lead_days), n_pert), lat=world.lat, lon=world.lon,
                         scale_deg=VAR_SPECS[name].scale_deg)
        z = np.empty_like(w)
        z[0] = w[0]
        r = MEMBER_LEAD_CORR
        for j in range(1, len(cfg.lead_days)):
            steps = cfg.lead_days[j] - cfg.lead_days[j - 1]
            rj = r**steps
            z[j] = rj * z[j - 1] + np.sqrt(1 - rj**2) * w[j]
        pert[name] = np.concatenate([np.zeros((len(cfg.lead_days), 1, *z.shape[2:])), z], axis=1)
    for j, lead in enumerate(cfg.lead_days):
        mu_l, sd_l = oracle_latent(world, y0, ztot_window, init, lead)
        valid = init + pd.Timedelta(days=lead)
        doy = np.asarray([valid.day_of_year])
        for name in out_vars:
            v = world.names.index(name)
            spec = VAR_SPECS[name]
            clim, sd = spec.climate(world.lat[:, None], world.lon[None, :], world.lsm, world.orog, doy)
            bias = spec.bias_field(world.lat[:, None], world.lsm, world.orog, doy)
            lat_members = forecast_members(world, name, mu_l[v], sd_l[v], pert[name][j], lead)
            members[name].append((clim + sd * (lat_members + bias)).astype(np.float32))
            mus[name].append((clim[0] + sd[0] * mu_l[v]).astype(np.float32))
            sigmas[name].append((sd[0] * sd_l[v]).astype(np.float32))
    return ForecastChunk(init=init,
                         members={n: np.stack(x) for n, x in members.items()},
                         mu={n: np.stack(x) for n, x in mus.items()},
                         sigma={n: np.stack(x) for n, x in sigmas.items()})
