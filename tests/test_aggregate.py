"""Latitude weights, region masks, mergeable sums: chunked == one-shot, numpy == dask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import enspp.evaluation as ev

LAT = xr.DataArray(np.linspace(90, -90, 19), dims="latitude")
LON = xr.DataArray(np.arange(0, 360, 20.0), dims="longitude")


@pytest.mark.parametrize("method", ["cos", "area"])
def test_latitude_weights_mean_one_and_order_free(method):
    w = ev.latitude_weights(LAT, method=method)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    asc = ev.latitude_weights(LAT[::-1], method=method)
    np.testing.assert_allclose(asc.values[::-1], w.values)
    assert w.sel(latitude=0).item() == w.max().item()


def test_area_weights_are_band_areas():
    lat = xr.DataArray(np.arange(-89.5, 90, 1.0), dims="latitude")  # cell centres of 1 deg bands
    w = ev.latitude_weights(lat, method="area")
    exact = np.sin(np.deg2rad(lat + 0.5)) - np.sin(np.deg2rad(lat - 0.5))
    np.testing.assert_allclose(w.values, exact / exact.mean(), rtol=1e-12)
    # fraction of the sphere between 20S and 20N is sin(20 deg)
    trop = w.where(np.abs(lat) < 20, 0).sum() / w.sum()
    assert trop.item() == pytest.approx(np.sin(np.deg2rad(20)), rel=1e-12)


def test_pole_rows_weight():
    w = ev.latitude_weights(LAT, method="area")
    assert 0 < w.sel(latitude=90).item() < w.sel(latitude=80).item()
    assert ev.latitude_weights(LAT, method="cos").sel(latitude=90).item() == pytest.approx(0, abs=1e-12)


def test_region_masks():
    m = ev.region_mask(LAT, LON, "tropics")
    assert m.sum().item() == 5 * LON.size  # rows 20, 10, 0, -10, -20: edges included
    m = ev.region_mask(xr.DataArray(np.linspace(90, -90, 181), dims="latitude"),
                       xr.DataArray(np.arange(0, 360, 1.0), dims="longitude"), "tropics")
    assert m.any("longitude").sum().item() == 41
    n = ev.region_mask(LAT, LON, "extratropics_n")
    s = ev.region_mask(LAT, LON, "extratropics_s")
    assert not (n & s).any() and n.sum().item() == s.sum().item()


def test_region_longitude_wrap_and_conventions():
    box = ev.Region(name="across0", lat_min=40, lat_max=60, lon_min=-30, lon_max=30)
    m360 = ev.region_mask(LAT, LON, box)
    lons = LON.values[m360.any("latitude").values]
    np.testing.assert_array_equal(np.sort(lons), [0, 20, 340])
    lon180 = xr.DataArray(np.arange(-180, 180, 20.0), dims="longitude")
    m180 = ev.region_mask(LAT, lon180, box)
    np.testing.assert_array_equal(np.sort(lon180.values[m180.any("latitude").values]), [-20, 0, 20])
    fiji = ev.region_mask(LAT, LON, "fiji")  # 170E..170W crosses the dateline
    np.testing.assert_array_equal(LON.values[fiji.any("latitude").values], [180])


def test_region_weights_and_errors():
    w = ev.region_weights(LAT, LON, "nw_europe")
    mask = ev.region_mask(LAT, LON, "nw_europe")
    assert (w.where(~mask, 0) == 0).all() and mask.sum().item() > 0
    full = ev.latitude_weights(LAT) * xr.ones_like(LON)
    assert (w.where(mask) == full.where(mask)).sum().item() == mask.sum().item()
    assert w.attrs["region"] == "nw_europe"
    with pytest.raises(ev.RegionError, match="unknown region"):
        ev.region_weights(LAT, LON, "atlantis")
    with pytest.raises(ev.RegionError, match="contains no point"):
        ev.region_weights(LAT, LON, ev.Region(name="tiny", lat_min=41, lat_max=42, lon_min=1, lon_max=2))
    with pytest.raises(ValueError, match="lat_min < lat_max"):
        ev.Region(name="upside", lat_min=10, lat_max=-10)
    with pytest.raises(ValueError, match="outside -180..360"):
        ev.Region(name="far", lon_min=-200)
    with pytest.raises(ev.RegionError, match="unknown latitude weighting"):
        ev.latitude_weights(LAT, method="gauss")
    with pytest.raises(ev.RegionError, match="strictly monotonic"):
        ev.latitude_weights(xr.DataArray([0.0, 10.0, 5.0], dims="latitude"))
    with pytest.raises(ev.RegionError, match="outside -90..90"):
        ev.latitude_weights(xr.DataArray([0.0, 100.0], dims="latitude"))
    with pytest.raises(ev.RegionError, match="non-empty 1-D"):
        ev.latitude_weights(xr.DataArray(np.zeros((2, 2)), dims=("a", "b")))
    with pytest.raises(ev.RegionError, match="sum to zero"):
        ev.latitude_weights(xr.DataArray([90.0], dims="latitude"), method="cos")


# ----------------------------------------------------------------- sums
def _world(rng, n_init=9, nan=True):
    dims = ("init_time", "lead_time", "member", "latitude", "longitude")
    coords = {"init_time": pd.date_range("2020-01-01", periods=n_init, freq="D").values,
              "lead_time": pd.to_timedelta([24, 48], unit="h").values,
              "latitude": LAT.values, "longitude": LON.values}
    x = rng.normal(size=(n_init, 2, 5, LAT.size, LON.size)).astype(np.float32)
    y = rng.normal(size=(n_init, 2, LAT.size, LON.size))
    if nan:
        y[2, 0, 3, :4] = np.nan
        x[4, 1, :, 5, 6] = np.nan
    fc = xr.DataArray(x, dims=dims, coords=coords, name="t2m")
    ob = xr.DataArray(y, dims=[d for d in dims if d != "member"],
                      coords={k: v for k, v in coords.items()}, name="t2m")
    return fc, ob


REDUCE = ["init_time", "latitude", "longitude"]


def test_chunked_equals_one_shot(rng):
    fc, ob = _world(rng)
    w = ev.region_weights(LAT, LON, "extratropics_n")
    one = ev.crps_ensemble(fc, ob, reduce_dims=REDUCE, weights=w)
    sums = ev.accumulate_over_chunks(
        lambda sl: ev.crps_ensemble(fc.isel(init_time=sl), ob.isel(init_time=sl)),
        fc.sizes["init_time"], chunk_size=4, reduce_dims=REDUCE, weights=w)
    chunked = ev.finalize_sums(sums)
    np.testing.assert_allclose(chunked.values, one.values, rtol=0, atol=1e-10)
    assert sums["count"].sum().item() == np.isfinite(ev.crps_ensemble(fc, ob).values).sum()
    assert chunked.attrs["estimator"] == "fair"


def test_dask_sums_equal_numpy(rng):
    fc, ob = _world(rng)
    w = ev.latitude_weights(LAT)
    one = ev.crps_ensemble(fc, ob, reduce_dims=REDUCE, weights=w)
    lazy = ev.sums_over(
        [ev.crps_ensemble(fc.chunk({"init_time": 1}).isel(init_time=slice(i, i + 3)),
                          ob.chunk({"init_time": 1}).isel(init_time=slice(i, i + 3)))
         for i in range(0, 9, 3)],
        reduce_dims=REDUCE, weights=w)
    assert lazy["weighted_sum"].chunks is not None
    np.testing.assert_allclose(ev.finalize_sums(lazy).compute().values, one.values, atol=1e-10)


def test_weighted_mean_nan_renormalises():
    s = xr.DataArray([1.0, np.nan, 3.0], dims="x")
    w = xr.DataArray([1.0, 5.0, 3.0], dims="x")
    assert ev.weighted_mean(s, reduce_dims=["x"], weights=w).item() == pytest.approx(10 / 4)
    assert np.isnan(ev.weighted_mean(s * np.nan, reduce_dims=["x"]).item())
    assert ev.weighted_mean(s, reduce_dims=None) is s


def test_sums_errors(rng):
    s = xr.DataArray(rng.normal(size=(3, 4)), dims=("a", "b"))
    with pytest.raises(ev.AggregationError, match="weights have dims"):
        ev.score_sums(s, reduce_dims=["a"], weights=xr.DataArray(np.ones(2), dims="c"))
    with pytest.raises(ev.AggregationError, match="weights contain NaN"):
        ev.score_sums(s, reduce_dims=["a"], weights=xr.DataArray([1.0, np.nan, 1.0], dims="a"))
    with pytest.raises(ev.AggregationError, match="at least one"):
        ev.merge_sums()
    with pytest.raises(ev.AggregationError, match="lacks variables"):
        ev.merge_sums(xr.Dataset({"weighted_sum": s}))
    a = ev.score_sums(s, reduce_dims=["a"])
    b = ev.score_sums(s, reduce_dims=["b"])
    with pytest.raises(ev.AggregationError, match="was reduced over"):
        ev.merge_sums(a, b)
    with pytest.raises(ev.AggregationError, match="chunk_size"):
        ev.accumulate_over_chunks(lambda sl: s, 3, chunk_size=0, reduce_dims=["a"])
    with pytest.raises(ev.AggregationError, match="nothing to accumulate"):
        ev.accumulate_over_chunks(lambda sl: s, 0, chunk_size=1, reduce_dims=["a"])


def test_observation_at_valid_time(rng):
    fc, _ = _world(rng, n_init=3, nan=False)
    times = pd.date_range("2020-01-01", periods=8, freq="D").values
    ana = xr.DataArray(np.arange(8.0), dims="time", coords={"time": times})
    obs = ev.observation_at_valid_time(ana, fc.init_time, fc.lead_time)
    assert obs.dims == ("init_time", "lead_time")
    np.testing.assert_array_equal(obs.values, [[1, 2], [2, 3], [3, 4]])
    with pytest.raises(ev.AggregationError, match="lacks 1 valid time"):
        ev.observation_at_valid_time(ana.isel(time=slice(0, 4)), fc.init_time, fc.lead_time)
    with pytest.raises(ev.AggregationError, match="has no 'time' dim"):
        ev.observation_at_valid_time(ana.rename(time="t"), fc.init_time, fc.lead_time)


@pytest.mark.slow
def test_distributed_cluster_matches(rng):
    distributed = pytest.importorskip("distributed")
    fc, ob = _world(rng)
    w = ev.latitude_weights(LAT)
    one = ev.crps_ensemble(fc, ob, reduce_dims=REDUCE, weights=w)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        sums = ev.accumulate_over_chunks(
            lambda sl: ev.crps_ensemble(fc.chunk({"init_time": 1}).isel(init_time=sl),
                                        ob.chunk({"init_time": 1}).isel(init_time=sl)),
            9, chunk_size=3, reduce_dims=REDUCE, weights=w)
    np.testing.assert_allclose(ev.finalize_sums(sums).values, one.values, atol=1e-10)
