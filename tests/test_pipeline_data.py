"""The pipeline over dask-backed stores: alignment, grids, statistics, batches, NaN policy,
stations, determinism and workers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from enspp.pipeline import (
    EnsembleDataModule,
    GridMismatchError,
    InputNaNError,
    MemberSelectionError,
    NormStats,
    PipelineConfig,
    SplitError,
    StatsMismatchError,
    align,
)
from enspp.pipeline.align import AlignmentError
from enspp.pipeline.synthetic import analysis_dataset, forecast_dataset, static_dataset, write_stores

NY, NX = 12, 20


def _zarr(ds: xr.Dataset, path, time_dim: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.chunk({d: (1 if d == time_dim else -1) for d in ds.dims}).to_zarr(path, mode="w")
        return xr.open_zarr(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_stores(tmp_path_factory.mktemp("stores"), n_init=20, ny=NY, nx=NX, n_members=7)


def _cfg(**kw) -> PipelineConfig:
    base = {"features": {"variables": ["z500", "t850", "t2m"], "targets": ["t2m"],
                         "input_lead_times": [0]},
            "members": {"k": 3}, "batches": {"patch_size": 8, "batch_size": 3, "seed": 5}}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return PipelineConfig.from_dict(base)


def test_batches_follow_the_contract(stores):
    dm = EnsembleDataModule(_cfg(), forecast=stores.forecast, analysis=stores.analysis,
                            static=stores.static)
    assert dm.channels == ("z500@48h", "t850@48h", "t2m@48h", "z500@0h", "t850@0h", "t2m@0h")
    assert dm.target_channels == (2,) and dm.targets == ("t2m",) and dm.n_members == 3
    assert dm.grid_shape == (NY, NX) and len(dm.static_names) == 8
    b = next(iter(dm.train_dataloader()))
    assert b["inputs"].shape == (3, 3, 6, 8, 8) and b["inputs"].dtype == torch.float32
    assert b["static"].shape == (3, 8, 8, 8) and b["target"].shape == (3, 1, 8, 8)
    for k in ("init_time", "lead_time", "y0", "x0"):
        assert b[k].dtype == torch.int64 and b[k].shape == (3,)
    assert (b["lead_time"] == 48 * 3600 * 10**9).all()
    assert b["static"].abs().max() <= 2.0  # O(1)-scaled
    # physical units and the right chunk: compare with the store read directly
    fc = xr.open_zarr(stores.forecast)
    i, y0, x0 = (int(b[k][0]) for k in ("init_time", "y0", "x0"))
    ref = fc["t"].sel(init_time=np.datetime64(i, "ns"), lead_time=np.timedelta64(48, "h"),
                      level=850).isel(member=slice(1, 4), latitude=slice(y0, y0 + 8),
                                      longitude=slice(x0, x0 + 8)).values
    np.testing.assert_array_equal(b["inputs"][0, :, 1].numpy(), ref)
    an = xr.open_zarr(stores.analysis)
    tref = an["t2m"].sel(time=np.datetime64(i, "ns") + np.timedelta64(48, "h")).isel(
        latitude=slice(y0, y0 + 8), longitude=slice(x0, x0 + 8)).values
    np.testing.assert_array_equal(b["target"][0, 0].numpy(), tref)
    # whole fields for test
    t = next(iter(dm.test_dataloader()))
    assert t["inputs"].shape[-2:] == (NY, NX) and int(t["y0"][0]) == 0


def test_deterministic_given_seed_and_fresh_per_epoch(stores):
    cfg = _cfg(members={"strategy": "random"})

    def epochs(n):
        dm = EnsembleDataModule(cfg, forecast=stores.forecast, analysis=stores.analysis)
        loader = dm.train_dataloader()
        return [[(b["init_time"].tolist(), b["y0"].tolist(), b["x0"].tolist(),
                  b["inputs"][:, :, 0, 0, 0].tolist()) for b in loader] for _ in range(n)]

    a, b = epochs(2), epochs(2)
    assert a == b
    assert a[0] != a[1]


def test_workers_read_their_own_handles(stores):
    cfg = _cfg(batches={"num_workers": 2})
    dm = EnsembleDataModule(cfg, forecast=stores.forecast, analysis=stores.analysis)
    serial = EnsembleDataModule(_cfg(), forecast=stores.forecast, analysis=stores.analysis)
    got = [b["inputs"] for b in dm.train_dataloader()]
    ref = [b["inputs"] for b in serial.train_dataloader()]
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_statistics_lazy_train_only_and_file_checked(stores, tmp_path):
    path = tmp_path / "stats.nc"
    dm = EnsembleDataModule(_cfg(stores={"statistics": str(path)}), forecast=stores.forecast,
                            analysis=stores.analysis)
    s = dm.stats
    assert path.exists() and s.channels == dm.channels
    assert s.channel_mean_local.shape == (6, NY, NX) and s.target_mean.shape == (1,)
    fc = xr.open_zarr(stores.forecast)
    train = dm.split_init_times["train"]
    expected = fc["t2m"].sel(init_time=train, lead_time=np.timedelta64(48, "h")).values
    np.testing.assert_allclose(s.channel_mean[2], expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(s.channel_std_local[2], expected.std(axis=(0, 1)), rtol=1e-3)
    assert str(pd.Timestamp(s.train_end)) < str(pd.Timestamp(dm.split_init_times["val"][0]))
    # the file is reused when it matches ...
    again = EnsembleDataModule(_cfg(stores={"statistics": str(path)}), forecast=stores.forecast,
                               analysis=stores.analysis)
    assert again.stats.hash == s.hash
    # ... and refused when the store/configuration differ
    other = EnsembleDataModule(_cfg(stores={"statistics": str(path)},
                                    features={"input_lead_times": [24]}),
                               forecast=stores.forecast, analysis=stores.analysis)
    with pytest.raises(StatsMismatchError, match="does not match the store"):
        other.setup()
    d = s.to_dict()
    assert NormStats.from_dict(d).hash == s.hash


def test_a_foreign_file_at_the_statistics_path_is_refused_and_kept(stores, tmp_path):
    """``pipeline.stores.statistics`` naming someone else's NetCDF (a typo): refused with its
    own error, which is no StatsMismatchError (stale statistics are recomputed, this is not),
    and the file is left byte for byte."""
    from enspp.pipeline.stats import NotStatisticsError

    path = tmp_path / "my_climatology.nc"
    xr.Dataset({"t2m_clim": ("x", np.arange(5.0))}, attrs={"title": "mine"}).to_netcdf(path)
    before = path.read_bytes()
    dm = EnsembleDataModule(_cfg(stores={"statistics": str(path)}), forecast=stores.forecast,
                            analysis=stores.analysis)
    with pytest.raises(NotStatisticsError, match="not an enspp statistics file") as e:
        dm.setup()
    assert not isinstance(e.value, StatsMismatchError) and "\n" not in str(e.value)
    assert path.read_bytes() == before


def test_constant_field_has_positive_std(tmp_path):
    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    fc = forecast_dataset(init_times=inits, lead_hours=(48,), n_members=4, ny=4, nx=5)
    fc["t2m"][:] = 280.0
    an = analysis_dataset(times=pd.date_range("2020-01-01", periods=20, freq="1D"), ny=4, nx=5)
    an["t2m"][:] = 280.0
    dm = EnsembleDataModule(_cfg(members={"k": 2}, features={"input_lead_times": []}),
                            forecast=_zarr(fc, tmp_path / "f.zarr", "init_time"),
                            analysis=_zarr(an, tmp_path / "a.zarr", "time"))
    s = dm.stats
    assert np.all(s.channel_std > 0) and np.all(s.channel_std_local > 0)
    assert np.all(s.target_std_local > 0)


def test_missing_analyses_drop_samples_and_are_reported(tmp_path):
    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    fc = _zarr(forecast_dataset(init_times=inits, lead_hours=(0, 48), n_members=4, ny=4, nx=5),
               tmp_path / "f.zarr", "init_time")
    times = pd.date_range("2020-01-01", periods=20, freq="1D").delete([4, 7])
    an = _zarr(analysis_dataset(times=times, ny=4, nx=5), tmp_path / "a.zarr", "time")
    al = align(fc, an, lead_time=np.timedelta64(48, "h"))
    assert al.n_dropped == 2 and len(al.init_times) == 14
    assert set(al.dropped.astype("datetime64[D]").astype(str)) == {"2020-01-03", "2020-01-06"}
    assert "2 dropped for want of an analysis" in al.report()
    assert np.all(np.isin(al.valid_times, an.time.values))
    with pytest.raises(AlignmentError, match=r"lead time 24 h is not in the forecast store.*\[0, 48\]"):
        align(fc, an, lead_time=np.timedelta64(24, "h"))
    with pytest.raises(AlignmentError, match="the analysis has no 'time' dim"):
        align(fc, an.rename(time="when"), lead_time=np.timedelta64(48, "h"))


def test_grid_mismatch_names_both_grids_unless_regrid(tmp_path):
    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    fc = _zarr(forecast_dataset(init_times=inits, lead_hours=(48,), n_members=4, ny=6, nx=8),
               tmp_path / "f.zarr", "init_time")
    an = _zarr(analysis_dataset(times=pd.date_range("2020-01-01", periods=20, freq="1D"),
                                ny=11, nx=15), tmp_path / "a.zarr", "time")
    cfg = _cfg(members={"k": 2}, features={"input_lead_times": []}, batches={"patch_size": None})
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an)
    with pytest.raises(GridMismatchError, match=r"forecast 6x8 grid, latitude 70..30.*analysis "
                       r"11x15 grid.*set pipeline.regrid"):
        dm.setup()
    cfg2 = PipelineConfig.from_dict({**cfg.model_dump(mode="json"), "regrid": "linear"})
    dm2 = EnsembleDataModule(cfg2, forecast=fc, analysis=an)
    b = next(iter(dm2.train_dataloader()))
    assert b["target"].shape == (3, 1, 6, 8) and torch.isfinite(b["target"]).all()
    assert dm2.stats.target_mean_local.shape == (1, 6, 8)
    # static fields on another grid are refused too
    dm3 = EnsembleDataModule(cfg, forecast=fc, analysis=fc.isel(lead_time=0, member=0).rename(
        init_time="time").drop_vars("lead_time"), static=static_dataset(ny=3, nx=3))
    with pytest.raises(GridMismatchError, match="static fields 3x3 grid"):
        dm3.setup()


def _lon_field(lon: np.ndarray) -> xr.DataArray:
    """A global field whose value is ``1000 + longitude in 0..360`` (a jump at 0 E)."""
    lat = np.array([10.0, 0.0, -10.0])
    return xr.DataArray(np.broadcast_to(1000.0 + lon % 360, (3, len(lon))).copy(),
                        dims=("latitude", "longitude"), coords={"latitude": lat, "longitude": lon})


@pytest.mark.parametrize("source, target", [
    (np.arange(0.0, 360.0, 10.0), np.array([-180.0, -175.0, -170.0, -4.0, 0.0, 170.0, 175.0, 176.0])),
    (np.arange(-180.0, 180.0, 10.0), np.array([180.0, 185.0, 190.0, 356.0, 0.0, 170.0, 175.0, 176.0])),
])
def test_regrid_wraps_longitudes_both_ways(source, target):
    """0..360 onto -180..180 and the reverse: 170 E, 170 W (= 190 E) and points across the
    seams (180 and 0) read the right source columns, for nearest and linear."""
    from enspp.pipeline.align import regrid_like

    da = _lon_field(source)
    lat = np.array([5.0, -10.0])
    near = regrid_like(da, latitude=lat, longitude=target, method="nearest")
    lin = regrid_like(da, latitude=lat, longitude=target, method="linear")
    # 180 E, 185 E, 190 E (170 W), 356 E (4 W, between 350 and 360 = 0), 0, 170 E, 175 E, 176 E
    np.testing.assert_allclose(lin.values[0], [1180, 1185, 1190, 1350 + 0.6 * (1000 - 1350),
                                               1000, 1170, 1175, 1176])
    np.testing.assert_allclose(near.values[0, [0, 2, 3, 4, 5, 7]], [1180, 1190, 1000, 1000, 1170, 1180])
    np.testing.assert_array_equal(lin.longitude.values, target)
    np.testing.assert_array_equal(near.latitude.values, lat)
    assert np.isfinite(lin.values).all()


def test_regrid_refuses_points_outside_the_source():
    """A regional source (one crossing the date line included) is read where it covers the
    target; a target point beyond it is refused in one line rather than NaN or edge-copied."""
    from enspp.pipeline.align import regrid_like

    dateline = _lon_field(np.array([160.0, 170.0, 180.0, -170.0, -160.0]))
    out = regrid_like(dateline, latitude=np.array([0.0]), longitude=np.array([175.0, 185.0, -175.0]),
                      method="linear")
    np.testing.assert_allclose(out.values[0], [1175, 1185, 1185])
    # half a spacing beyond the edge reads the edge (cell centres vs nodes)
    edge = regrid_like(dateline, latitude=np.array([14.0]), longitude=np.array([155.0]), method="linear")
    np.testing.assert_allclose(edge.values, [[1160]])
    with pytest.raises(GridMismatchError, match=r"^pipeline.regrid: the analysis .*longitudes "
                       r"-150..150 \(2 values\) lie outside"):
        regrid_like(dateline, latitude=np.array([0.0]), longitude=np.array([150.0, 175.0, -150.0]),
                    method="nearest")
    with pytest.raises(GridMismatchError, match=r"latitudes 20 lie outside"):
        regrid_like(dateline, latitude=np.array([20.0]), longitude=np.array([170.0]), method="linear")


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_regrid_trains_a_0_360_forecast_on_a_pm180_analysis(method):
    """The forecast on 0..330 E, the analysis on the same points as -180..150: the training
    targets are the analysis at each forecast point (east of 180 E too)."""
    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    lon360 = np.arange(12) * 30.0
    fc = forecast_dataset(init_times=inits, lead_hours=(48,), n_members=4, ny=3, nx=12)
    fc = fc.assign_coords(longitude=lon360)
    an = analysis_dataset(times=pd.date_range("2020-01-01", periods=20, freq="1D"), ny=3, nx=12)
    an = an.assign_coords(longitude=(lon360 + 180) % 360 - 180).sortby("longitude")
    an["t2m"] = an["t2m"] * 0 + (200.0 + (an.longitude % 360) / 10)
    cfg = _cfg(members={"k": 2}, features={"input_lead_times": []},
               batches={"patch_size": None}, regrid=method)
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an)
    dm.setup("fit")
    t = next(iter(dm.val_dataloader()))["target"]
    np.testing.assert_allclose(t[0, 0].numpy(), np.broadcast_to(200 + lon360 / 10, (3, 12)),
                               rtol=1e-6)
    # an analysis covering only part of the forecast grid is refused at setup, in one line
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an.isel(longitude=slice(0, 8)))
    with pytest.raises(GridMismatchError, match="pipeline.regrid: the analysis .* does not cover"):
        dm.setup("fit")


def test_k_larger_than_members_and_empty_split(stores):
    dm = EnsembleDataModule(_cfg(members={"k": 7}), forecast=stores.forecast,
                            analysis=stores.analysis)
    with pytest.raises(MemberSelectionError, match=r"k = 7 is larger than the 6 perturbed .*0-based|numbered from 0"):
        dm.setup()
    dm = EnsembleDataModule(_cfg(split={"train": [2019, 2019], "test": [2030, 2031]}),
                            forecast=stores.forecast, analysis=stores.analysis)
    with pytest.raises(SplitError, match="split 'test'.*selects no data"):
        dm.setup()
    with pytest.raises(ValueError, match="split 'val' is not configured"):
        EnsembleDataModule(_cfg(split={"train": [2019, 2019]}), forecast=stores.forecast,
                           analysis=stores.analysis).dataset("val")
    with pytest.raises(ValueError, match="stores.forecast and pipeline.stores.analysis"):
        EnsembleDataModule(_cfg())


def _nan_stores(tmp_path):
    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    fc = forecast_dataset(init_times=inits, lead_hours=(48,), n_members=4, ny=4, nx=5)
    fc["t2m"][:, :, :, 1, 2] = np.nan
    an = analysis_dataset(times=pd.date_range("2020-01-01", periods=20, freq="1D"), ny=4, nx=5)
    return (_zarr(fc, tmp_path / "f.zarr", "init_time"), _zarr(an, tmp_path / "a.zarr", "time"))


def test_nan_inputs_error_by_default(tmp_path):
    fc, an = _nan_stores(tmp_path)
    cfg = _cfg(members={"k": 2}, features={"input_lead_times": []}, batches={"patch_size": None})
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an)
    with pytest.raises(InputNaNError, match=r"input t2m@48h \(member 1, 0-based\) has 1 missing "
                       r"values \(NaN\) at init time 2020-01-\d\d.*: values inside the field are missing"):
        next(iter(dm.train_dataloader()))


def test_nan_inputs_masked_on_request(tmp_path):
    fc, an = _nan_stores(tmp_path)
    cfg = _cfg(members={"k": 2}, features={"input_lead_times": []}, batches={"patch_size": None},
               nan_policy="mask")
    dm = EnsembleDataModule(cfg, forecast=fc, analysis=an)
    b = next(iter(dm.train_dataloader()))
    assert torch.isfinite(b["inputs"]).all()
    assert torch.isnan(b["target"][:, 0, 1, 2]).all() and torch.isfinite(b["target"][:, 0, 0, 0]).all()
    np.testing.assert_allclose(b["inputs"][0, 0, 2, 1, 2].item(), dm.stats.channel_mean_local[2, 1, 2])


def test_station_data_rows_are_stations_times_dates(tmp_path):
    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    fc = forecast_dataset(init_times=inits, lead_hours=(24,), n_members=6, ny=0, nx=0, stations=9)
    fc = fc.assign_coords(latitude=("station", np.linspace(40, 60, 9)),
                          longitude=("station", np.linspace(0, 20, 9)))
    an = analysis_dataset(times=pd.date_range("2020-01-01", periods=20, freq="1D"), ny=0, nx=0,
                          stations=9)
    cfg = _cfg(members={"k": 5}, features={"input_lead_times": [], "target_lead_time": 24},
               batches={"batch_size": 2})
    dm = EnsembleDataModule(cfg, forecast=_zarr(fc, tmp_path / "f.zarr", "init_time"),
                            analysis=_zarr(an, tmp_path / "a.zarr", "time"))
    assert dm.grid_shape == (9, 1) and dm.stats.channel_mean_local.shape == (3, 9, 1)
    b = next(iter(dm.train_dataloader()))
    assert b["inputs"].shape == (18, 5, 3, 1, 1) and b["target"].shape == (18, 1, 1, 1)
    assert b["x0"][:9].tolist() == list(range(9)) and (b["y0"] == 0).all()
    assert b["static"].shape == (18, 8, 1, 1)
    st = int(b["x0"][4])
    ref = fc["t2m"].sel(init_time=np.datetime64(int(b["init_time"][4]), "ns")).isel(
        lead_time=0, member=slice(1, 6), station=st).values
    np.testing.assert_allclose(b["inputs"][4, :, 2, 0, 0].numpy(), ref)


def test_tiles_for_inference(stores):
    dm = EnsembleDataModule(_cfg(batches={"tile_size": 8, "tile_overlap": 2}),
                            forecast=stores.forecast, analysis=stores.analysis)
    ds = dm.dataset("test")
    n_tiles = len(ds.tiles)
    assert n_tiles > 1 and len(ds) == n_tiles * len(dm.split_init_times["test"])
    items = [ds[i] for i in range(n_tiles)]
    assert {(int(it["y0"][0]), int(it["x0"][0])) for it in items} == \
        {(sy.start, sx.start) for sy, sx in ds.tiles}


def test_in_memory_datasets_read_like_stores(stores):
    """Datasets without a store path go through xarray; the batches equal the zarr path's."""
    cfg = _cfg(members={"strategy": "explicit", "explicit": [0, 6, 2]})
    fc = xr.open_zarr(stores.forecast).load()
    an = xr.open_zarr(stores.analysis).load()
    fc.encoding.pop("source", None)
    an.encoding.pop("source", None)
    mem = EnsembleDataModule(cfg, forecast=fc, analysis=an)
    disk = EnsembleDataModule(cfg, forecast=stores.forecast, analysis=stores.analysis)
    a, b = next(iter(mem.train_dataloader())), next(iter(disk.train_dataloader()))
    assert set(mem._reader.strategies.values()) == {"xarray"}
    assert set(disk._reader.strategies.values()) == {"chunks"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("source", ["zarr", "memory"])
def test_block_cache_batches_equal_uncached(stores, source):
    """``batches.cache_mb``: decoded chunks kept after the first read; every batch equals the
    uncached one (random member draws and patches, targets included), a second epoch decodes
    nothing, and the reader hands out copies (editing one leaves the cache intact)."""
    cfg = _cfg(members={"strategy": "random"})
    cached_cfg = _cfg(members={"strategy": "random"}, batches={"cache_mb": 64})
    if source == "memory":
        fc, an = xr.open_zarr(stores.forecast).load(), xr.open_zarr(stores.analysis).load()
        fc.encoding.pop("source", None)
        an.encoding.pop("source", None)
    else:
        fc, an = stores.forecast, stores.analysis
    plain = EnsembleDataModule(cfg, forecast=fc, analysis=an)
    cached = EnsembleDataModule(cached_cfg, forecast=fc, analysis=an)
    for epoch in range(2):
        got, ref = list(cached.train_dataloader()), list(plain.train_dataloader())
        assert len(got) == len(ref) > 0
        for g, r in zip(got, ref):
            for k in r:
                torch.testing.assert_close(g[k], r[k])
        cache = cached._reader.cache
        if epoch == 0:
            misses, used = cache.misses, cache.used
            assert misses > 0 and 0 < used <= 64 * 2**20 and cache.kept == misses
        else:
            assert cache.misses == misses and cache.used == used and cache.hits > 0
    assert plain._reader.cache.kept == 0 and plain._reader.cache.full and not cache.full
    assert not any(b.flags.writeable for b in cache._kept.values())
    for g, r in zip(cached.test_dataloader(), plain.test_dataloader()):  # whole fields
        torch.testing.assert_close(g["inputs"], r["inputs"])
        torch.testing.assert_close(g["target"], r["target"])
    reader, init = cached._reader, cached.split_init_times["train"][0]
    region = {"latitude": slice(2, 6), "longitude": slice(0, 8)}
    valid = init + np.timedelta64(48, "h")
    first = reader.read_inputs(init, members=np.array([3, 1]), region=region)
    target = reader.read_targets(valid, region=region)
    want, want_t = first.copy(), target.copy()
    first[:] = 0.0
    target[:] = 0.0
    np.testing.assert_array_equal(reader.read_inputs(init, members=np.array([3, 1]), region=region), want)
    np.testing.assert_array_equal(reader.read_targets(valid, region=region), want_t)


def test_block_cache_budget_and_worker_copies(stores):
    """A budget smaller than any chunk keeps nothing and reads as before (through the
    working set of recent chunks, whose size stays bounded); a pickled reader (a DataLoader
    worker) starts with its own empty cache."""
    import pickle

    tiny = EnsembleDataModule(_cfg(batches={"cache_mb": 1e-4}), forecast=stores.forecast,
                              analysis=stores.analysis)
    ref = EnsembleDataModule(_cfg(), forecast=stores.forecast, analysis=stores.analysis)
    for g, r in zip(tiny.train_dataloader(), ref.train_dataloader()):
        torch.testing.assert_close(g["inputs"], r["inputs"])
        torch.testing.assert_close(g["target"], r["target"])
    cache = tiny._reader.cache
    # the first chunk that did not fit marked the cache full; nothing was kept after it
    assert cache.used == 0 and cache.full and cache.kept == 0 and cache.misses > 0
    assert len(cache._lru) <= cache.recent and not cache._pins
    worker = pickle.loads(pickle.dumps(tiny._reader))
    assert worker._h == {} and worker.cache is not cache and worker.cache.misses == 0
    with pytest.raises(ValueError, match="cache_mb"):
        _cfg(batches={"cache_mb": -1})


def test_samples_needing_an_absent_field_are_skipped_and_counted(tmp_path):
    """A store records fields its source did not provide as absent (schema 2 presence): t2m
    at +0 h of one init time, t (t850) at every lead of another, the analysis' t2m at the
    valid time of a third.  The DataModule skips exactly those samples, whatever
    ``nan_policy`` (an absent field is never filled), and says so in one line."""
    import logging

    from enspp.data.store import present_fields
    from enspp.data.store_writer import append

    inits = pd.date_range("2020-01-01", periods=16, freq="1D")
    fc = forecast_dataset(init_times=inits, lead_hours=(0, 48), n_members=4, ny=4, nx=5)
    fc["t2m"].loc[{"init_time": inits[3], "lead_time": pd.Timedelta(0)}] = np.nan
    fc["t"].loc[{"init_time": inits[7]}] = np.nan
    an = analysis_dataset(times=pd.date_range("2020-01-01", periods=20, freq="1D"), ny=4, nx=5)
    an["t2m"].loc[{"time": inits[10] + pd.Timedelta(hours=48)}] = np.nan
    append(tmp_path / "f.zarr", fc, kind="forecast")
    append(tmp_path / "a.zarr", an, kind="analysis")
    presence = present_fields(tmp_path / "f.zarr")
    assert not presence["t2m"].values[3, 0] and presence["t2m"].values[3, 1]
    assert not presence["t"].values[7].any() and presence["t"].values.sum() == 2 * 16 - 2
    skipped = {inits[i].to_datetime64() for i in (3, 7, 10)}

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("enspp.pipeline.datamodule")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for policy in ("error", "mask"):
            lines.clear()
            cfg = _cfg(members={"k": 2}, batches={"patch_size": None}, nan_policy=policy,
                       split={"fractions": [0.6, 0.2, 0.2]})
            dm = EnsembleDataModule(cfg, forecast=tmp_path / "f.zarr", analysis=tmp_path / "a.zarr")
            dm.setup()
            assert len(dm.alignment.init_times) == 13, policy
            assert not skipped & set(dm.alignment.init_times), policy
            kept = np.concatenate(list(dm.split_init_times.values()))
            seen = set()
            for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
                for b in loader:
                    assert torch.isfinite(b["inputs"]).all() and torch.isfinite(b["target"]).all()
                    seen |= set(b["init_time"].numpy().astype("datetime64[ns]"))
            assert seen == set(kept), policy
            said = [line for line in lines if "absent" in line]
            assert len(said) == 1, lines
            assert ("3 skipped because a field they need is absent from the stores "
                    "(init times 2020-01-04 00:00:00, 2020-01-08 00:00:00, 2020-01-11") in said[0]
        # both leads post-processed: still one line (at +0 h the analysis lacks the valid
        # time of 2020-01-13)
        lines.clear()
        cfg = _cfg(members={"k": 2}, batches={"patch_size": None},
                   features={"input_lead_times": [], "target_lead_times": [0, 48]})
        dm = EnsembleDataModule(cfg, forecast=tmp_path / "f.zarr", analysis=tmp_path / "a.zarr")
        dm.setup()
        kept = np.concatenate(list(dm.split_init_times.values()))
        assert not (skipped | {inits[12].to_datetime64()}) & set(kept)
        said = [line for line in lines if "alignment" in line]
        assert len(said) == 1 and "12 init times with every lead aligned" in said[0], lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
