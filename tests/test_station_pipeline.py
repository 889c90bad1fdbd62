"""Station data through the pipeline: record features (causal), preloaded full batches, refits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from station_data import station_datasets, write_station_stores

from enspp.pipeline.config import PastErrorConfig, PipelineConfig, PipelineConfigError
from enspp.pipeline.datamodule import EnsembleDataModule
from enspp.pipeline.dataset import PreloadedBatches
from enspp.pipeline.station_features import (
    ERROR_SPREAD,
    PAST_ERROR,
    StationFeatureError,
    StationFeatures,
    past_error_features,
)

SPLIT = {"train": {"start": "2010-01-01", "end": "2010-05-31"},
         "val": {"start": "2010-06-01", "end": "2010-07-15"},
         "test": {"start": "2010-07-16", "end": "2010-12-31"}}


def _config(store_paths=None, **over) -> PipelineConfig:
    raw = {"features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                        "static": ["sin_doy", "cos_doy"], "past_error": {"spread": True}, "hres": True},
           "members": {"k": 5}, "split": SPLIT, "batches": {"batch_size": 100000, "preload": True},
           "nan_policy": "mask",
           "stores": {"forecast": "fc", "analysis": "an", "deterministic": "det"}}
    if store_paths is not None:
        raw["stores"] = {"forecast": str(store_paths.forecast), "analysis": str(store_paths.analysis),
                         "deterministic": str(store_paths.deterministic)}
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(raw)


# ------------------------------------------------------------------ the features themselves
def _series(n: int = 40, *, init_hour: int = 12, lead_hours: int = 24, seed: int = 0):
    r = np.random.default_rng(seed)
    init = (np.datetime64("2011-03-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
            + np.timedelta64(init_hour, "h"))
    valid = init + np.timedelta64(lead_hours, "h")
    return r.normal(size=n), r.normal(size=n), init, valid


def _past(mean, obs, init, valid, **kw):
    cfg = PastErrorConfig(**{k: kw.pop(k) for k in ("halflife_days", "max_age_days", "spread") if k in kw})
    return past_error_features(mean, obs, init, valid, config=cfg,
                               **{"err_scale": 1.0, "obs_mean": 0.0, "obs_scale": 1.0, **kw})


def test_past_error_features_use_nothing_after_the_init_time():
    """Changing the observation valid at time v changes no feature of a forecast initialised
    before v; the first forecast initialised at v (12 UTC +24 h: the next day's) sees it."""
    mean, obs, init, valid = _series()
    base = _past(mean, obs, init, valid, spread=True)
    assert base.shape == (40, len(PAST_ERROR) + len(ERROR_SPREAD))
    for i in (3, 20, 38):
        moved = obs.copy()
        moved[i] += 5.0
        diff = np.abs(_past(mean, moved, init, valid, spread=True) - base).max(axis=1) > 0
        assert not diff[init < valid[i]].any(), i
        assert diff[i + 1]  # init_{i+1} == valid_i: the observation at init time is known


def test_lag1_error_timing_t2m_and_precipitation():
    """12 UTC +24 h: the lag-1 error is the previous day's forecast (valid at this init time);
    00 UTC +30 h: the previous day's forecast verifies 6 h after init, so lag 1 is two days back."""
    mean, obs, init, valid = _series()
    f = _past(mean, obs, init, valid)
    err = mean - obs
    assert f[0].tolist() == [0.0, 0.0, 0.0, 0.0]  # nothing known before the first forecast
    assert f[5, 0] == pytest.approx(err[4], rel=1e-5)
    assert f[5, 1] == pytest.approx(err[3], rel=1e-5)
    assert f[5, 2] == pytest.approx(obs[4], rel=1e-5)
    w = 0.5 ** (np.arange(5)[::-1] / 5.0)  # errors 0..4, half-life 5 days, ages 4..0 days
    assert f[5, 3] == pytest.approx((w * err[:5]).sum() / w.sum(), rel=1e-5)
    mean, obs, init, valid = _series(init_hour=0, lead_hours=30)
    rain = _past(mean, obs, init, valid)
    e = mean - obs
    assert rain[5, 0] == pytest.approx(e[3], rel=1e-5) and rain[5, 1] == pytest.approx(e[2], rel=1e-5)
    assert rain[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # forecast 0 verifies after init 1


def test_error_spread_feature_is_the_weighted_mean_magnitude():
    mean, obs, init, valid = _series()
    f = _past(mean, obs, init, valid, spread=True, err_scale=2.0)
    np.testing.assert_array_equal(f[:, :4], _past(mean, obs, init, valid, err_scale=2.0))
    w = 0.5 ** (np.arange(5)[::-1] / 5.0)
    assert f[5, 4] == pytest.approx((w * np.abs(mean - obs)[:5] / 2.0).sum() / w.sum(), rel=1e-5)
    assert f[0, 4] == pytest.approx(np.sqrt(2 / np.pi), rel=1e-6)


def test_past_error_features_gaps_and_scales():
    mean, obs, init, valid = _series()
    obs[9] = np.nan  # forecast 9's error and the observation at init 10 are missing
    err = mean - obs
    f = _past(mean, obs, init, valid, err_scale=2.0, obs_mean=1.0, obs_scale=4.0)
    assert f[10, 0] == pytest.approx(err[8] / 2.0, rel=1e-5)
    assert f[10, 2] == pytest.approx((obs[8] - 1.0) / 4.0, rel=1e-5)
    stale = _past(mean, obs, init, valid, max_age_days=0.5)
    assert stale[10, 0] == 0.0 and stale[10, 2] == 0.0 and stale[11, 0] != 0.0
    with pytest.raises(StationFeatureError, match="err_scale and obs_scale > 0"):
        _past(mean, obs, init, valid, err_scale=0.0)


# ------------------------------------------------------------------ in the DataModule
def test_datamodule_serves_station_features(tmp_path):
    stores = write_station_stores(tmp_path, n_stations=2)
    dm = EnsembleDataModule(_config(stores))
    dm.setup()
    names = ("sin_doy", "cos_doy", *PAST_ERROR, *ERROR_SPREAD, "hres_dev")
    assert dm.point and dm.static_names == names and dm.grid_shape == (2, 1)
    batch = dm.preloaded(("train",))
    train = dm.split_init_times["train"]
    assert batch["static"].shape == (2 * len(train), len(names), 1, 1)
    table = dm.record_features
    i, station = 17, 1
    row = i * 2 + station  # items are dates, each holding every station
    assert int(batch["init_time"][row]) == train[i].astype(np.int64) and int(batch["x0"][row]) == station
    np.testing.assert_allclose(batch["static"][row, 2:, 0, 0].numpy(), table.at(train[i])[:, station])
    # hres_dev: (hres - mean of the K members in use) / its training std, 0 where missing
    fc, an, det = station_datasets(n_stations=2)
    members = fc["t2m"].sel(member=[1, 2, 3, 4, 5]).isel(lead_time=0).values.mean(1)
    dev = det["t2m"].isel(lead_time=0, member=0).values - members
    rows = np.isin(fc["init_time"].values, train)
    expected = dev[:, station] / np.nanstd(dev[rows, station])
    np.testing.assert_allclose(table.table[:, -1, station], np.where(np.isfinite(expected), expected, 0.0),
                               rtol=1e-5, atol=1e-6)
    assert dm.feature_scales.hres_scale.shape == (2,)


def test_features_are_causal_and_scaled_on_training_data_only(tmp_path):
    fc, an, det = station_datasets(n_stations=2)
    cfg = _config()
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an, deterministic=det)
    dm.setup()
    test = dm.split_init_times["test"]
    moved = an.copy(deep=True)
    at = np.flatnonzero(an["time"].values == test[10] + np.timedelta64(24, "h"))[0]
    moved["t2m"][at, 0] += 10.0  # an observation in the test period
    dm2 = EnsembleDataModule(cfg, forecast=fc, analysis=moved, deterministic=det)
    dm2.setup()
    for key, value in dm.feature_scales.to_dict().items():  # training statistics only
        np.testing.assert_array_equal(value, dm2.feature_scales.to_dict()[key])
    t = dm.record_features.init
    changed = np.abs(dm.record_features.table - dm2.record_features.table).max(axis=(1, 2)) > 0
    valid_at = an["time"].values[at]
    assert not changed[t < valid_at].any() and changed[t == valid_at].all()


def test_preloaded_full_and_mini_batches(tmp_path):
    stores = write_station_stores(tmp_path, n_stations=2)
    dm = EnsembleDataModule(_config(stores))
    full = list(dm.train_dataloader())
    assert len(full) == 1 and full[0]["inputs"].shape[:3] == (2 * len(dm.split_init_times["train"]), 5, 1)
    assert full[0]["inputs"] is dm.preloaded(("train",))["inputs"]  # no copy per epoch
    rows = full[0]["inputs"].shape[0]
    source = PreloadedBatches(dm.preloaded(("train",)), batch_size=64, seed=3)
    epochs = [torch.cat([b["init_time"] * 10 + b["x0"] for b in source]) for _ in range(2)]
    assert all(len(e) == rows and len(set(e.tolist())) == rows for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # a fresh order each epoch
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0]["inputs"].shape[0] == 2 * len(dm.split_init_times["val"])
    # members 1..5 (the first K perturbed), in physical units; NaN target where observed NaN
    fc = pd.Timestamp(dm.split_init_times["train"][0])
    assert fc.hour == 12
    dm.train_on(("train", "val"))
    both = next(iter(dm.train_dataloader()))
    assert both["inputs"].shape[0] == rows + val[0]["inputs"].shape[0]
    assert dm.val_dataloader() == []
    with pytest.raises(PipelineConfigError, match="splits \\['holdout'\\] are not configured"):
        dm.train_on(("train", "holdout"))


def test_training_draws_fresh_members_while_the_other_splits_keep_the_first(tmp_path):
    """members.train_draw: random, preloaded: the training rows hold K distinct perturbed
    members drawn afresh each epoch (the same epochs again from the same seed), each row's
    members a subset of the store's; validation keeps members 1..K (as with fixed draws)."""
    stores = write_station_stores(tmp_path, n_stations=2)
    plain = {"features": {"past_error": None, "hres": False}}
    fixed = EnsembleDataModule(_config(stores, **plain))
    drawn = EnsembleDataModule(_config(stores, **plain, members={"k": 5, "train_draw": "random"}))
    pool = drawn.preloaded(("train",))["inputs"]  # every perturbed member
    n_perturbed = int((drawn.store_members != 0).sum())
    assert pool.shape[1] == n_perturbed > 5
    loader = drawn.train_dataloader()
    epochs = [next(iter(loader))["inputs"] for _ in range(3)]
    assert all(e.shape == fixed.preloaded(("train",))["inputs"].shape for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    again = drawn.train_dataloader()
    torch.testing.assert_close(next(iter(again))["inputs"], epochs[0], equal_nan=True)
    rows, checked = pool.shape[0], 0
    for e in epochs:  # each row: 5 distinct members of that row's pool, in member order
        for r in range(0, rows, max(1, rows // 15)):
            got, have = e[r, :, 0, 0, 0], pool[r, :, 0, 0, 0]
            if got.isnan().any():
                continue
            pos = [int(torch.nonzero(have == v)[0]) for v in got]
            assert pos == sorted(set(pos)), (r, pos)
            checked += 1
    assert checked >= 30
    torch.testing.assert_close(next(iter(drawn.val_dataloader()))["inputs"],
                               next(iter(fixed.val_dataloader()))["inputs"], equal_nan=True)


def test_fresh_draws_mask_the_target_only_where_a_drawn_member_is_missing(tmp_path):
    """nan_policy: mask with fresh draws from a preloaded pool: a member missing at one
    station and date (member 3, station 0, day 50 of the fixture) masks that target in the
    epochs whose draw holds member 3 and in no other; the batches carry no member_nan."""
    stores = write_station_stores(tmp_path, n_stations=2)
    dm = EnsembleDataModule(_config(stores, features={"past_error": None, "hres": False},
                                    members={"k": 5, "train_draw": "random"}))
    batch = dm.preloaded(("train",))
    members = [int(m) for m in dm.store_members if m != 0]
    where = members.index(3)
    row = int(np.flatnonzero((batch["init_time"].numpy() == stores.init_times[50].astype(np.int64))
                             & (batch["x0"].numpy() == 0))[0])
    missing = batch["member_nan"][:, :, 0, 0]
    assert missing[row].tolist() == [i == where for i in range(len(members))]
    assert int(missing.sum()) == 1  # the fixture's only missing member
    pool = batch["inputs"][row, :, 0, 0, 0]
    seen = {True: 0, False: 0}
    loader = dm.train_dataloader()
    for _ in range(12):
        drawn = next(iter(loader))
        assert "member_nan" not in drawn
        got = drawn["inputs"][row, :, 0, 0, 0]
        holds = where in [int(torch.nonzero(pool == v)[0]) for v in got]
        assert bool(drawn["target"][row].isnan().all()) == holds
        seen[holds] += 1
        others = torch.ones(len(drawn["target"]), dtype=torch.bool)
        others[row] = False  # every other target as read (NaN only where observed missing)
        torch.testing.assert_close(drawn["target"][others], batch["target"][others], equal_nan=True)
    assert seen[True] and seen[False]
    fixed = EnsembleDataModule(_config(stores, features={"past_error": None, "hres": False}))
    first = fixed.preloaded(("train",))  # members 1..5 hold member 3: masked, no member_nan
    assert "member_nan" not in first and bool(first["target"][row].isnan().all())


def test_preloaded_batches_refuse_a_member_pool_without_a_draw():
    batch = {"inputs": torch.zeros(2, 4, 1, 1, 1), "target": torch.zeros(2, 1, 1, 1),
             "member_nan": torch.zeros(2, 4, 1, 1, dtype=torch.bool)}
    with pytest.raises(ValueError, match="needs draw"):
        PreloadedBatches(batch, batch_size=2)


def test_training_draws_fresh_members_when_read_per_sample(tmp_path):
    """Without preload the training dataset draws K random members per sample and epoch
    while the evaluation datasets read members 1..K."""
    stores = write_station_stores(tmp_path, n_stations=2)
    cfg = _config(stores, features={"past_error": None, "hres": False},
                  members={"k": 3, "train_draw": "random"}, batches={"preload": False})
    dm = EnsembleDataModule(cfg)
    train, val = dm.dataset("train"), dm.dataset("val")
    draws = {tuple(train._draw((0, seed))[1].tolist()) for seed in range(20)}
    assert len(draws) > 1 and all(len(d) == 3 and 0 not in d for d in draws)
    assert val._draw(0)[1].tolist() == [1, 2, 3]


@pytest.mark.parametrize("over, match", [
    ({"batches": {"preload": True, "patch_size": 8}}, "cannot draw fresh patches"),
    ({"members": {"k": 5, "strategy": "random"}, "batches": {"preload": False}}, "random' changes per sample"),
    ({"members": {"k": 5, "strategy": "all", "train_draw": "random"}}, "it has nothing to change"),
    ({"stores": {"deterministic": None}}, "features.hres needs stores.deterministic"),
    ({"features": {"variables": ["t2m", "t850"], "targets": ["t2m", "t850"]}}, "exactly one target"),
    ({"features": {"static": ["sin_doy", "height"]}}, "unknown static features \\['height'\\]"),
])
def test_config_errors(over, match):
    with pytest.raises(ValueError, match=match):
        _config(**over)


def test_grid_stores_have_no_station_features(tmp_path):
    from enspp.pipeline.synthetic import write_stores

    paths = write_stores(tmp_path, n_init=6, lead_hours=(24,), ny=4, nx=5, batch_init=6)
    cfg = PipelineConfig.model_validate({
        "stores": {"forecast": str(paths.forecast), "analysis": str(paths.analysis)},
        "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                     "past_error": {}},
        "split": {"train": {"start": "2019-01-01", "end": "2019-01-04"},
                  "val": {"start": "2019-01-05", "end": "2019-01-08"}}})
    with pytest.raises(StationFeatureError, match="station features: the forecast store has no 'station' dim"):
        EnsembleDataModule(cfg).setup()
    fc, an, _ = station_datasets(n_stations=1)
    with pytest.raises(StationFeatureError, match="needs a deterministic forecast store"):
        StationFeatures(fc, an, variable="t2m", lead_time=np.timedelta64(24, "h"), members=np.arange(1, 4),
                        features=_config().features, train_init_times=fc["init_time"].values)


def test_deterministic_store_read_only_for_hres(tmp_path):
    """A configured deterministic store that does not exist stops training only when the
    HRES feature asks for it (past-error features alone never read it)."""
    fc, an, _ = station_datasets(n_stations=2)
    missing = tmp_path / "absent-deterministic.zarr"
    cfg = _config(features={"hres": False})
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an, deterministic=missing)
    dm.setup()
    assert "hres_dev" not in dm.record_features.names
    dm_hres = EnsembleDataModule(_config(), forecast=fc, analysis=an, deterministic=missing)
    with pytest.raises(FileNotFoundError, match="absent-deterministic"):
        dm_hres.setup()
