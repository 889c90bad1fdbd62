"""Seasonal EMOS baselines of the station experiment: the sliding-window EMOS and its choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enspp.flows.experiment_point import (
    PointData,
    PointDataError,
    point_batch,
    point_stats,
    predict_point,
    window_emos,
)
from enspp.models import ModelSpec, build_model
from enspp.models.emos import emos_chunk, fit_emos


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seasonal_station(n: int = 500, seed: int = 0, amplitude: float = 3.0) -> PointData:
    """Daily 12 UTC +24 h forecasts whose bias follows the season (``amplitude`` cos(doy), out of phase with the signal)."""
    r = np.random.default_rng(seed)
    init = np.datetime64("2010-01-01T12", "ns") + np.arange(n) * np.timedelta64(1, "D")
    doy = 2 * np.pi * np.arange(n) / 365.25
    z = 10 + 8 * np.sin(doy) + 2 * r.standard_normal(n)
    obs = z + r.standard_normal(n)
    members = (z + amplitude * np.cos(doy))[:, None] + 0.5 * r.standard_normal((n, 11))
    return PointData(variable="t2m", units="degC", station="x", members=members.astype(np.float32),
                     observation=obs.astype(np.float32), init_time=init, lead_time=np.timedelta64(24, "h"))


def test_window_emos_is_each_windows_exact_fit_and_causal() -> None:
    data = seasonal_station()
    sel = np.arange(1, 6)
    train = np.arange(500) < 300
    stats = point_stats(data.members[train][:, sel], data.observation[train], "t2m@24h", "t2m")
    targets = np.arange(500) >= 400
    pred = window_emos(data, sel, targets, days=30, stats=stats, channel="t2m@24h", distribution="gaussian")
    assert pred["mu"].shape == (100,)
    # target 450 (init day 450 12 UTC): its window is the forecasts valid on days 421..450
    i = 450
    rows = np.arange(i - 30, i)  # valid at init + 24 h: days 421..450 are valid <= init day 450
    spec = ModelSpec(name="emos_global", channels=("t2m@24h",), targets=("t2m",), target_channels=(0,),
                     static_names=(), n_members=5, grid_shape=(1, 1), stats=stats)
    alone = build_model(spec)
    fit_emos(alone, [emos_chunk(alone, point_batch(data.members[rows][:, sel], data.observation[rows],
                                                   np.zeros((30, 0), np.float32), data.init_time[rows],
                                                   data.lead_time))])
    one = predict_point([alone], point_batch(data.members[[i]][:, sel], data.observation[[i]],
                                             np.zeros((1, 0), np.float32), data.init_time[[i]], data.lead_time))
    assert pred["mu"][i - 400] == pytest.approx(one["mu"][0], rel=1e-5)
    assert pred["sigma"][i - 400] == pytest.approx(one["sigma"][0], rel=1e-4)
    # nothing valid after the init time is used: change every later observation and member
    later = data.init_time >= data.init_time[i]
    obs, mem = data.observation.copy(), data.members.copy()
    obs[later] += 50.0
    mem[later & (np.arange(500) != i)] -= 20.0
    changed = PointData(data.variable, data.units, data.station, mem, obs, data.init_time, data.lead_time)
    again = window_emos(changed, sel, targets, days=30, stats=stats, channel="t2m@24h", distribution="gaussian")
    assert again["mu"][i - 400] == pytest.approx(pred["mu"][i - 400], rel=1e-6)


def test_window_emos_follows_a_seasonal_bias_and_refuses_bad_windows() -> None:
    data = seasonal_station(n=900, seed=1)
    sel = np.arange(1, 6)
    train = np.arange(900) < 500
    stats = point_stats(data.members[train][:, sel], data.observation[train], "t2m@24h", "t2m")
    test = np.arange(900) >= 600
    window = window_emos(data, sel, test, days=30, stats=stats, channel="t2m@24h", distribution="gaussian")
    spec = ModelSpec(name="emos_global", channels=("t2m@24h",), targets=("t2m",), target_channels=(0,),
                     static_names=(), n_members=5, grid_shape=(1, 1), stats=stats)
    static = build_model(spec)
    nothing = np.zeros((500, 0), np.float32)
    fit_emos(static, [emos_chunk(static, point_batch(data.members[train][:, sel], data.observation[train], nothing,
                                                     data.init_time[train], data.lead_time))])
    fixed = predict_point([static], point_batch(data.members[test][:, sel], data.observation[test],
                                                np.zeros((300, 0), np.float32), data.init_time[test], data.lead_time))
    y = data.observation[test]
    err_window = np.mean(np.abs(window["mu"] - y))
    err_fixed = np.mean(np.abs(fixed["mu"] - y))
    assert err_window < 0.75 * err_fixed, (err_window, err_fixed)
    with pytest.raises(PointDataError, match="days > 0"):
        window_emos(data, sel, test, days=0, stats=stats, channel="c", distribution="gaussian")
    first = np.zeros(900, bool)
    first[0] = True
    with pytest.raises(PointDataError, match="no earlier observed forecast"):
        window_emos(data, sel, first, days=30, stats=stats, channel="t2m@24h", distribution="gaussian")
