"""Pure parts of the pipeline: splits, member choice, tiles, channel names, statistics I/O."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from enspp.pipeline.config import MembersConfig, Period, SplitConfig
from enspp.pipeline.features import channel_leads, channel_names, doy_encoding, parse_channel, target_channels
from enspp.pipeline.members import MemberSelectionError, check_members, choose_members
from enspp.pipeline.splits import SplitError, period_init_times, resolve_periods, split_init_times
from enspp.pipeline.stats import NormStats, NotStatisticsError, StatsMismatchError, floor_std
from enspp.pipeline.tiles import blend_weights, stitch, tile_slices

H48 = np.timedelta64(48, "h")


def _inits(start: str, end: str) -> np.ndarray:
    return pd.date_range(start, end, freq="1D").values.astype("datetime64[ns]")


def test_default_split_follows_the_paper_years():
    periods = resolve_periods(_inits("1999-01-01", "2017-12-31"), config=SplitConfig())
    assert (periods["train"].start, periods["train"].end) == (dt.date(1999, 1, 1), dt.date(2013, 12, 31))
    assert (periods["val"].start, periods["val"].end) == (dt.date(2014, 1, 1), dt.date(2015, 12, 31))
    assert (periods["test"].start, periods["test"].end) == (dt.date(2016, 1, 1), dt.date(2017, 12, 31))


def test_default_split_by_days_for_short_data_and_errors():
    inits = _inits("2020-01-01", "2020-01-20")
    periods = resolve_periods(inits, config=SplitConfig(), max_lead=H48)
    assert periods["train"].start == dt.date(2020, 1, 1)
    assert periods["train"].end < periods["val"].start <= periods["val"].end < periods["test"].start
    assert {k: len(v) for k, v in split_init_times(inits, periods=periods, max_lead=H48).items()} \
        == {"train": 10, "val": 2, "test": 2}
    only_train = resolve_periods(_inits("2020-01-01", "2020-01-05"),
                                 config=SplitConfig(fractions=(1.0, 0.0, 0.0)))
    assert list(only_train) == ["train"]
    with pytest.raises(SplitError, match="no init times"):
        resolve_periods(np.array([], dtype="datetime64[ns]"), config=SplitConfig())
    with pytest.raises(SplitError, match="nothing is left for training"):
        resolve_periods(_inits("2020-01-01", "2020-01-02"), config=SplitConfig())


def test_no_valid_time_crosses_splits_and_gap():
    inits = _inits("2020-01-01", "2020-03-31")
    periods = {"train": Period(start=dt.date(2020, 1, 1), end=dt.date(2020, 1, 31)),
               "val": Period(start=dt.date(2020, 2, 1), end=dt.date(2020, 2, 29)),
               "test": Period(start=dt.date(2020, 3, 1), end=dt.date(2020, 3, 31))}
    out = split_init_times(inits, periods=periods, max_lead=H48, gap_days=3)
    for name, p in periods.items():
        valid = out[name] + H48
        assert out[name].min() >= np.datetime64(p.start)
        assert valid.max() < np.datetime64(p.end) + np.timedelta64(1, "D")
    assert out["train"].max() == np.datetime64("2020-01-29")
    # the gap: val starts more than 3 days after the end of train
    assert out["val"].min() == np.datetime64("2020-02-04")
    assert out["test"].min() == np.datetime64("2020-03-04")


def test_split_selecting_no_data_is_an_error():
    inits = _inits("2020-01-01", "2020-01-31")
    periods = {"train": Period(start=dt.date(2020, 1, 1), end=dt.date(2020, 1, 20)),
               "test": Period(start=dt.date(2021, 1, 1), end=dt.date(2021, 12, 31))}
    with pytest.raises(SplitError, match=r"split 'test' \(2021-01-01..2021-12-31\) selects no data"):
        split_init_times(inits, periods=periods, max_lead=H48)


def test_members_first_random_explicit_all():
    avail = np.arange(11)
    assert choose_members(avail, config=MembersConfig(k=5)).tolist() == [1, 2, 3, 4, 5]
    rnd = MembersConfig(k=4, strategy="random")
    a = choose_members(avail, config=rnd, rng=np.random.default_rng(1))
    b = choose_members(avail, config=rnd, rng=np.random.default_rng(1))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 4 and 0 not in a
    draws = {tuple(choose_members(avail, config=rnd, rng=np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 1
    ex = MembersConfig(strategy="explicit", explicit=(0, 7, 3))
    assert choose_members(avail, config=ex).tolist() == [0, 7, 3]
    assert choose_members(avail, config=MembersConfig(strategy="all")).tolist() == list(range(11))
    # perturbed-only stores (members 1..50, no control)
    assert choose_members(np.arange(1, 51), config=MembersConfig(k=3)).tolist() == [1, 2, 3]


def test_member_errors_state_numbering():
    with pytest.raises(MemberSelectionError, match=r"members.k = 11 is larger than the 10 perturbed "
                       r"members present \(1..10.*numbered from 0, the control is member 0"):
        check_members(np.arange(11), config=MembersConfig(k=11))
    with pytest.raises(MemberSelectionError, match=r"members.explicit \[11\] not in the store.*0..10"):
        check_members(np.arange(11), config=MembersConfig(strategy="explicit", explicit=(1, 11)))
    with pytest.raises(MemberSelectionError, match="needs a seeded numpy Generator"):
        choose_members(np.arange(11), config=MembersConfig(k=2, strategy="random"))


def test_channels():
    leads = channel_leads(target_lead_time=48, input_lead_times=(0, 24, 48))
    assert leads == (48, 0, 24)
    ch = channel_names(["z500", "t2m"], leads)
    assert ch[:2] == ("z500@48h", "t2m@48h") and ch[-1] == "t2m@24h"
    assert target_channels(["z500", "t2m"], ["t2m"]) == (1,)
    assert parse_channel("10fg3@72h") == ("10fg3", 72)
    with pytest.raises(ValueError, match="not of the form"):
        parse_channel("t2m48h")
    s, c = doy_encoding(np.datetime64("2020-01-01T00"))
    assert s == pytest.approx(0.0) and c == pytest.approx(1.0)


@pytest.mark.parametrize("shape, tile, overlap", [((50, 70), 16, 4), ((16, 16), 32, 0),
                                                  ((33, 17), 8, 3)])
def test_tiles_cover_and_stitch_exactly(shape, tile, overlap, rng):
    slices = tile_slices(shape, tile=tile, overlap=overlap)
    cover = np.zeros(shape, int)
    for sy, sx in slices:
        cover[sy, sx] += 1
    assert cover.min() >= 1
    field = rng.standard_normal((2, *shape)).astype(np.float32)
    out = stitch([field[:, sy, sx] for sy, sx in slices], slices, shape=shape, overlap=overlap)
    np.testing.assert_allclose(out, field, rtol=1e-5, atol=1e-5)
    w = blend_weights((tile, tile), overlap=overlap)
    assert w.min() > 0 and w.max() == 1.0


@pytest.mark.parametrize("shape, tile, overlap", [((50, 70), 16, 4), ((16, 16), 32, 0),
                                                  ((33, 17), 8, 3), ((20, 20), 10, 0),
                                                  ((21, 9), 7, 1)])
def test_tiles_own_every_point_once(shape, tile, overlap):
    """Each grid point lies in the owned window of exactly one tile (an exact fit over
    overlapping tiles counts it once), and that window lies inside its tile."""
    from enspp.pipeline.tiles import owned_windows

    slices = tile_slices(shape, tile=tile, overlap=overlap)
    windows = owned_windows(shape, tile=tile, overlap=overlap)
    assert sorted(windows) == sorted((sy.start, sx.start) for sy, sx in slices)
    cover = np.zeros(shape, int)
    for sy, sx in slices:
        wy, wx = windows[(sy.start, sx.start)]
        assert 0 <= wy.start < wy.stop <= sy.stop - sy.start
        assert 0 <= wx.start < wx.stop <= sx.stop - sx.start
        cover[sy.start + wy.start:sy.start + wy.stop, sx.start + wx.start:sx.start + wx.stop] += 1
    assert (cover == 1).all()
    assert owned_windows(shape, tile=None) == {(0, 0): (slice(0, shape[0]), slice(0, shape[1]))}


def test_tile_errors():
    assert tile_slices((10, 12), tile=None) == [(slice(0, 10), slice(0, 12))]
    with pytest.raises(ValueError, match="more than twice the overlap"):
        tile_slices((10, 10), tile=4, overlap=2)
    with pytest.raises(ValueError, match="got 1 tiles for 2"):
        stitch([np.zeros((2, 2))], [(slice(0, 2), slice(0, 2))] * 2, shape=(2, 2), overlap=0)
    with pytest.raises(ValueError, match="do not cover"):
        stitch([np.zeros((2, 2))], [(slice(0, 2), slice(0, 2))], shape=(4, 4), overlap=0)


def _stats(c: int = 2) -> NormStats:
    r = np.random.default_rng(0)
    return NormStats(channels=tuple(f"v{i}@48h" for i in range(c)), targets=("v0",),
                     channel_mean=r.random(c), channel_std=r.random(c) + 1,
                     channel_mean_local=r.random((c, 3, 4)), channel_std_local=r.random((c, 3, 4)) + 1,
                     target_mean=r.random(1), target_std=r.random(1) + 1,
                     target_mean_local=r.random((1, 3, 4)), target_std_local=r.random((1, 3, 4)) + 1,
                     train_start="2020-01-01", train_end="2020-06-01", source_hash="abc")


def test_normstats_dict_and_file_roundtrip(tmp_path):
    s = _stats()
    d = s.to_dict()
    assert d["channel_mean_local"].shape == (2, 3, 4) and d["channels"].tolist() == ["v0@48h", "v1@48h"]
    assert NormStats.from_dict(d).hash == s.hash
    for suffix in (".nc", ".zarr"):
        back = NormStats.from_file(s.to_file(tmp_path / f"stats{suffix}"), expected_source_hash="abc")
        assert back.hash == s.hash and back.grid_shape == (3, 4)
    with pytest.raises(StatsMismatchError, match="does not match the store"):
        NormStats.from_file(tmp_path / "stats.nc", expected_source_hash="other")
    with pytest.raises(StatsMismatchError, match="were modified"):
        NormStats.from_dict({**d, "channel_mean": d["channel_mean"] + 1})
    with pytest.raises(StatsMismatchError, match="lack the keys"):
        NormStats.from_dict({"channels": d["channels"]})
    with pytest.raises(FileNotFoundError):
        NormStats.from_file(tmp_path / "none.nc")
    import xarray as xr
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "other.nc")
    # someone else's file: its own error, not a mismatch (stale statistics may be replaced)
    with pytest.raises(NotStatisticsError, match="not an enspp statistics file") as e:
        NormStats.from_file(tmp_path / "other.nc")
    assert not isinstance(e.value, StatsMismatchError)
    assert str(tmp_path / "other.nc") in str(e.value) and "nothing was changed" in str(e.value)


def test_normstats_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """Statistics are written beside their path and renamed in: a write that dies leaves the
    earlier file (or none) and no temporary file; a reader never meets half a file."""
    import xarray as xr

    s = _stats()
    for suffix, method in ((".nc", "to_netcdf"), (".zarr", "to_zarr")):
        path = tmp_path / f"stats{suffix}"
        s.to_file(path)
        before = NormStats.from_file(path).hash
        real = getattr(xr.Dataset, method)

        def dies(self, target, *args, real=real, **kwargs):
            real(self, target, *args, **kwargs)  # the whole file written, then the disk fails
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(xr.Dataset, method, dies)
        other = NormStats.from_dict({**{k: v for k, v in s.to_dict().items() if k != "hash"},
                                     "source_hash": "newer data"})
        with pytest.raises(OSError, match="No space left"):
            other.to_file(path)
        monkeypatch.undo()
        assert NormStats.from_file(path).hash == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_std_floor():
    out = floor_std(np.array([0.0, np.nan, -1.0, 2.0]), np.array([1e4, 0.0, 0.0, 1.0]))
    assert np.all(out > 0) and out[3] == 2.0 and out[0] == pytest.approx(1e-2)


def test_period_init_times_by_init_date_and_split_samples_by_valid_time():
    """A split's period: predict/evaluate take every init time of its dates; a training sample
    also needs its valid time inside (the last two days' runs at +48 h are not samples)."""
    inits = _inits("2020-01-01", "2020-01-10")
    period = Period(start=dt.date(2020, 1, 3), end=dt.date(2020, 1, 8))
    got = period_init_times(inits, period)
    assert [str(t)[:10] for t in got] == [f"2020-01-0{d}" for d in range(3, 9)]
    samples = split_init_times(inits, periods={"test": period}, max_lead=H48)["test"]
    assert set(samples) <= set(got) and len(got) - len(samples) == 2


def test_day_of_year_encoding_of_many_valid_times_equals_each_ones():
    """``doy_encodings`` (a point group's static planes at predict) gives, bit for bit, the
    encoding the training pipeline computes for each valid time: sin/cos of
    2 pi (day of year - 1 + hour / 24) / 365.25, here from the standard library."""
    import math

    import pandas as pd

    from enspp.pipeline.features import doy_encoding, doy_encodings

    times = pd.date_range("1999-12-30", "2001-01-02T18", freq="6h").values
    sin, cos = doy_encodings(times)
    for t, s, c in zip(times, sin, cos):
        d = pd.Timestamp(t).to_pydatetime()
        phase = 2 * math.pi * (d.timetuple().tm_yday - 1 + d.hour / 24) / 365.25
        assert (s, c) == (math.sin(phase), math.cos(phase)) == doy_encoding(t), d
