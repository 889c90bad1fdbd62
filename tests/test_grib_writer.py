"""data.grib_writer: GRIB2 written with eccodes round-trips through cfgrib and our readers."""

from __future__ import annotations

from collections import Counter

import eccodes
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from enspp.data.grib import read_grib_eccodes
from enspp.data.grib_writer import BITS_PER_VALUE, GribFields, GribWriteError, write_fields, write_grib


def forecast(rng, *, nlat=32, nlon=64, inits=("2020-01-01",), members=5, leads=(0, 24, 48)) -> xr.Dataset:
    lat = np.linspace(90, -90, nlat) if nlat > 2 else np.array([10.0, 0.0])
    lon = np.arange(nlon) * (360.0 / nlon)
    shape = (len(inits), len(leads), members)
    coords = {"init_time": pd.to_datetime(list(inits)).as_unit("ns").values,
              "lead_time": pd.to_timedelta(list(leads), unit="h").as_unit("ns").values,
              "member": np.arange(members), "level": [500, 850], "latitude": lat, "longitude": lon}
    dims = ("init_time", "lead_time", "member")
    return xr.Dataset({
        "z": (dims + ("level", "latitude", "longitude"),
              50000 + 500 * rng.standard_normal(shape + (2, nlat, nlon)), {"units": "m2 s-2"}),
        "t2m": (dims + ("latitude", "longitude"), 280 + 5 * rng.standard_normal(shape + (nlat, nlon)),
                {"units": "K"}),
        "tp": (dims + ("latitude", "longitude"), 0.01 * rng.random(shape + (nlat, nlon)), {"units": "m"}),
    }, coords=coords)


def tolerance(a: np.ndarray) -> float:
    return float(np.nanmax(a) - np.nanmin(a)) / 2**BITS_PER_VALUE + 1e-6


def inventory(path) -> Counter:
    out = Counter()
    with open(path, "rb") as fh:
        while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
            out[(eccodes.codes_get(h, "shortName"), eccodes.codes_get(h, "dataType"),
                 eccodes.codes_get(h, "typeOfLevel"), eccodes.codes_get(h, "stepType"))] += 1
            eccodes.codes_release(h)
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(1)
    ds = forecast(rng)
    gust = 10 * rng.random((1, 3, 5, 32, 64))
    gust[:, 0] = np.nan  # a 3-hour max does not exist at step 0: the field is absent
    ds["10fg3"] = (("init_time", "lead_time", "member", "latitude", "longitude"), gust, {"units": "m s-1"})
    path = tmp_path_factory.mktemp("writer") / "fc.grib"
    n = write_grib(path, ds, kind="forecast")
    return ds, path, n


def test_message_count_and_keys(written):
    ds, path, n = written
    assert n == 3 * 5 * 2 + 3 * 5 + 3 * 5 + 2 * 5
    inv = inventory(path)
    assert inv[("z", "cf", "isobaricInhPa", "instant")] == 6
    assert inv[("z", "pf", "isobaricInhPa", "instant")] == 24
    assert inv[("2t", "pf", "heightAboveGround", "instant")] == 12
    assert inv[("tp", "cf", "surface", "accum")] == 3
    assert inv[("10fg3", "pf", "heightAboveGround", "max")] == 8
    with open(path, "rb") as fh:
        h = eccodes.codes_grib_new_from_file(fh)
        assert eccodes.codes_get(h, "numberOfForecastsInEnsemble") == 5
        assert eccodes.codes_get(h, "number") == 0
        eccodes.codes_release(h)


def test_round_trip_through_cfgrib(written):
    ds, path, _ = written
    for data_type, members in (("cf", [0]), ("pf", [1, 2, 3, 4])):
        got = xr.open_dataset(path, engine="cfgrib", backend_kwargs={
            "indexpath": "", "filter_by_keys": {"dataType": data_type, "typeOfLevel": "isobaricInhPa"}})
        z = got["z"].transpose(..., "isobaricInhPa", "latitude", "longitude").values
        ref = ds["z"].sel(member=members).isel(init_time=0).transpose("member", "lead_time", "level", ...).values
        ref = ref[0] if data_type == "cf" else ref
        order = np.argsort(got["isobaricInhPa"].values)
        np.testing.assert_allclose(z[..., order, :, :], ref, atol=tolerance(ds["z"].values))
        np.testing.assert_allclose(got["latitude"].values, ds["latitude"].values, atol=1e-5)  # micro-degrees


def test_round_trip_through_reader(written):
    ds, path, _ = written
    back = read_grib_eccodes(path)
    assert back.attrs["enspp_absent_fields"] == ["10fg3@0h"]
    for name in ds.data_vars:
        np.testing.assert_allclose(back[name].values, ds[name].values, atol=tolerance(ds[name].values))
    np.testing.assert_array_equal(back["member"].values, np.arange(5))
    # the window of the gust ends at the lead time (69-72 style ranges)
    assert back["lead_time"].values.tolist() == ds["lead_time"].values.tolist()


def test_large_grid_and_append(tmp_path, rng):
    ds = forecast(rng, nlat=181, nlon=360, members=2, leads=(0,))[["t2m"]]
    path = tmp_path / "big.grib"
    assert write_grib(path, ds, kind="forecast") == 2
    later = ds.assign_coords(init_time=ds.init_time + np.timedelta64(1, "D"))
    assert write_grib(path, later, kind="forecast", append=True) == 2
    back = read_grib_eccodes(path)
    assert back.sizes["init_time"] == 2 and back.sizes["latitude"] == 181 and back.sizes["longitude"] == 360
    np.testing.assert_allclose(back["t2m"].isel(init_time=1).values, ds["t2m"].isel(init_time=0).values,
                               atol=tolerance(ds["t2m"].values))


def test_analysis_with_and_without_members(tmp_path, rng):
    times = pd.date_range("2017-01-01", periods=2, freq="12h").as_unit("ns")
    lat, lon = np.linspace(60, -60, 9), np.arange(0, 360, 30.0)
    an = xr.Dataset({"t": (("time", "member", "level", "latitude", "longitude"),
                           250 + rng.standard_normal((2, 3, 2, 9, 12)), {"units": "K"}),
                     "msl": (("time", "member", "latitude", "longitude"),
                             1000 + rng.standard_normal((2, 3, 9, 12)), {"units": "hPa"})},
                    coords={"time": times, "member": [0, 1, 2], "level": [500, 850],
                            "latitude": lat, "longitude": lon})
    path = tmp_path / "an.grib"
    assert write_grib(path, an, kind="analysis") == 2 * 3 * 2 + 2 * 3
    assert {k[1] for k in inventory(path)} == {"an"}
    back = read_grib_eccodes(path)
    assert "time" in back.dims and back.sizes["member"] == 3
    np.testing.assert_allclose(back["msl"].values, an["msl"].values * 100, atol=tolerance(an["msl"].values * 100))
    single = an.isel(member=0, drop=True)
    write_grib(tmp_path / "an1.grib", single, kind="analysis")
    assert "member" not in read_grib_eccodes(tmp_path / "an1.grib").dims


def test_degc_converted_to_kelvin(tmp_path, rng):
    ds = forecast(rng, members=1, leads=(0,))[["t2m"]]
    ds["t2m"] = (ds["t2m"] - 273.15).assign_attrs(units="degC")
    write_grib(tmp_path / "c.grib", ds, kind="forecast")
    back = read_grib_eccodes(tmp_path / "c.grib")
    assert back["t2m"].attrs["units"] == "K"
    np.testing.assert_allclose(back["t2m"].values, ds["t2m"].values + 273.15, atol=0.01)


@pytest.mark.parametrize("case, match", [
    ("kind", "kind must be"),
    ("missing_dim", "needs dim 'member'"),
    ("unknown_var", "no GRIB encoding"),
    ("irregular", "regular lat/lon"),
    ("one_lat", "at least 2 latitudes"),
    ("partial_nan", "partly NaN"),
    ("half_hour", "whole hours"),
    ("bad_units", "GRIB needs 'K'"),
    ("level_on_surface", "single-level variable"),
    ("extra_dim", "unsupported dims"),
    ("window", "window cannot end"),
])
def test_write_errors(tmp_path, rng, case, match):
    ds = forecast(rng, members=2, leads=(0, 6))
    kind = "forecast"
    if case == "kind":
        kind = "hindcast"
    elif case == "missing_dim":
        ds = ds.isel(member=0, drop=True)
    elif case == "unknown_var":
        ds["cape"] = ds["t2m"].assign_attrs(units="J kg-1")
    elif case == "irregular":
        ds = ds.assign_coords(longitude=np.sort(rng.random(64)) * 300)
    elif case == "one_lat":
        ds = ds.isel(latitude=[0])
    elif case == "partial_nan":
        ds["t2m"][0, 0, 0, 0, 0] = np.nan
    elif case == "half_hour":
        ds = ds.assign_coords(lead_time=pd.to_timedelta([0, 90], unit="min").as_unit("ns").values)
    elif case == "bad_units":
        ds["t2m"].attrs["units"] = "degF"
    elif case == "level_on_surface":
        ds["t2m"] = ds["t2m"].expand_dims(level=[500], axis=3)
    elif case == "extra_dim":
        ds["t2m"] = ds["t2m"].expand_dims(quantile=[0.5])
    elif case == "window":
        ds = ds[["t2m"]].rename(t2m="10fg3").assign_attrs()
        ds["10fg3"].attrs["units"] = "m s-1"
    with pytest.raises(GribWriteError, match=match):
        write_grib(tmp_path / "x.grib", ds, kind=kind)


def test_reused_handles_do_not_leak_keys_between_writes(tmp_path, rng):
    """Encoders are cached between calls: writing A, then B (other members, dates, variables),
    then A again gives A's bytes again, and B reads back as B."""
    a = forecast(rng, inits=("2020-01-01 00:00",), members=3, leads=(0, 24))
    b = forecast(rng, inits=("2021-06-02 12:00", "2021-06-03 00:00"), members=2, leads=(6,))
    write_grib(tmp_path / "a1.grib", a, kind="forecast")
    write_grib(tmp_path / "b.grib", b, kind="forecast")
    write_grib(tmp_path / "a2.grib", a, kind="forecast")
    assert (tmp_path / "a1.grib").read_bytes() == (tmp_path / "a2.grib").read_bytes()
    back = read_grib_eccodes(tmp_path / "b.grib")
    assert back["init_time"].values.tolist() == b["init_time"].values.tolist()
    np.testing.assert_array_equal(back["member"].values, [0, 1])
    for name in b.data_vars:
        np.testing.assert_allclose(back[name].values, b[name].values, atol=tolerance(b[name].values))


def test_failed_write_leaves_no_partial_file(tmp_path, rng):
    """Every check runs before the file is opened: no new file, an appended file unchanged."""
    ds = forecast(rng, members=2, leads=(0, 6))
    bad = ds.copy()
    bad["10fg3"] = ds["t2m"].assign_attrs(units="m s-1")  # a 3 h window cannot end at step 0
    with pytest.raises(GribWriteError, match="window cannot end"):
        write_grib(tmp_path / "new.grib", bad, kind="forecast")
    assert not (tmp_path / "new.grib").exists()
    path = tmp_path / "old.grib"
    write_grib(path, ds, kind="forecast")
    before = path.read_bytes()
    with pytest.raises(GribWriteError, match="window cannot end"):
        write_grib(path, bad, kind="forecast", append=True)
    assert path.read_bytes() == before


def test_write_fields_is_write_grib_without_xarray(tmp_path, rng):
    """The array path gives the same bytes as the Dataset path; a shape that does not match
    the coordinates is refused before anything is written."""
    ds = forecast(rng, members=3, leads=(24, 48))
    write_grib(tmp_path / "ds.grib", ds[["z", "t2m"]], kind="forecast")
    common = dict(times=pd.DatetimeIndex(ds.init_time.values), lead_hours=[24, 48], members=[0, 1, 2])
    z = GribFields(name="z", values=ds["z"].values, levels=[500, 850], units="m2 s-2", **common)
    t2m = GribFields(name="t2m", values=ds["t2m"].values[:, :, :, None], units="K", **common)
    n = write_fields(tmp_path / "arrays.grib", [z, t2m], kind="forecast",
                     latitude=ds.latitude.values, longitude=ds.longitude.values)
    assert n == 2 * 3 * 2 + 2 * 3
    assert (tmp_path / "arrays.grib").read_bytes() == (tmp_path / "ds.grib").read_bytes()
    bad = GribFields(name="t2m", values=ds["t2m"].values, units="K", **common)  # no level axis
    with pytest.raises(GribWriteError, match="do not match"):
        write_fields(tmp_path / "bad.grib", [bad], kind="forecast", latitude=ds.latitude.values,
                     longitude=ds.longitude.values)
    assert not (tmp_path / "bad.grib").exists()
