"""data.readers / data.grib / data.point_readers / data.sources on real and written files
(station files: tests/test_station.py)."""

from __future__ import annotations

import shutil

import eccodes
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from enspp.data import schema
from enspp.data.grib import read_grib_eccodes, scan_grib
from enspp.data.grib_writer import write_grib
from enspp.data.readers import (
    ReaderError,
    open_analysis,
    open_canonical_zarr,
    open_ens_grib,
    open_weatherbench_zarr,
)
from enspp.data.sources import (
    ForecastSource,
    GribForecastSource,
    WeatherBenchSource,
    ZarrForecastSource,
    detect_kind,
    open_source,
)

STJUDE = "gridded/ecmwf_ens_stjude-storm_2013102500_10fg3_z850.grib"
ENS_FILES = [STJUDE, "gridded/ecmwf_hres_stjude-storm_2013102500_10fg3_z850.grib",
             "gridded/ecmwf_ens_2018112012_10fg6_europe.grib",
             "gridded/ecmwf_ens_2012092000_z500_096h_natlantic.grib",
             "gridded/ecmwf_ens_6members_ztu_2022071412_tiny.grib",
             "gridded/ecmwf_hres_fc_vs_analysis_2016092500/fc"]
EDA = "gridded/era5_eda_10members_z_t_500_850_20170101-02.grib"
AN_DIR = "gridded/ecmwf_hres_fc_vs_analysis_2016092500/an"
FRANKFURT = "station/ecmwf_ens_tp24_frankfurt_2007-2016.nc"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("grib-index-cache")


@pytest.fixture(scope="session")
def stjude(shared_data, cache_dir):
    return open_ens_grib(shared_data / STJUDE, cache_dir=cache_dir)


def small_forecast(rng, *, init="2020-01-01", members=3, leads=(0, 24), nlat=6, nlon=8) -> xr.Dataset:
    dims = ("init_time", "lead_time", "member", "latitude", "longitude")
    shape = (1, len(leads), members, nlat, nlon)
    return xr.Dataset(
        {"t2m": (dims, 280 + rng.standard_normal(shape), {"units": "K"}),
         "z": (dims[:3] + ("level",) + dims[3:], 5e4 + 100 * rng.standard_normal(shape[:3] + (2,) + shape[3:]),
               {"units": "m2 s-2"})},
        coords={"init_time": pd.to_datetime([init]).as_unit("ns").values,
                "lead_time": pd.to_timedelta(list(leads), unit="h").as_unit("ns").values,
                "member": np.arange(members), "level": [500, 850],
                "latitude": np.linspace(60, 30, nlat), "longitude": np.linspace(-10, 25, nlon)})


def eccodes_fields(path, short_name):
    """Independent reference: {(number, endStep): values} decoded with eccodes directly."""
    out = {}
    with open(path, "rb") as fh:
        while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
            if eccodes.codes_get(h, "shortName") == short_name:
                key = (eccodes.codes_get(h, "number"), eccodes.codes_get(h, "endStep"))
                out[key] = eccodes.codes_get_values(h).reshape(eccodes.codes_get(h, "Nj"), eccodes.codes_get(h, "Ni"))
            eccodes.codes_release(h)
    return out


# --- real ENS files -------------------------------------------------------------------------

def test_stjude_members_leads_and_values(stjude, shared_data):
    gust = stjude["10fg3"]
    assert stjude.sizes["member"] == 51 and stjude["member"].values.tolist() == list(range(51))
    assert gust.dropna("lead_time", how="all").sizes["lead_time"] == 3
    assert (stjude["lead_time"].values / np.timedelta64(1, "h")).tolist() == [72, 78, 84]
    assert gust.attrs["units"] == "m s-1" and gust.attrs["standard_name"] == "wind_speed_of_gust"
    ref = eccodes_fields(shared_data / STJUDE, "10fg3")
    assert len(ref) == 51 * 3
    values = gust.isel(init_time=0).values
    for (number, end), field in ref.items():
        lead = int(np.flatnonzero(stjude["lead_time"].values == np.timedelta64(end, "h"))[0])
        np.testing.assert_array_equal(values[lead, number], field.astype(np.float32))
    assert float(gust.max()) == pytest.approx(48.6, abs=0.05)


def test_stjude_z850_only_at_78h(stjude):
    z850 = schema.select_variable(stjude, "z850").isel(init_time=0)
    present = ~np.isnan(z850).all(["member", "latitude", "longitude"])
    assert (stjude["lead_time"].values[present.values] / np.timedelta64(1, "h")).tolist() == [78]
    assert stjude.attrs["enspp_absent_fields"] == ["z@72h", "z@84h"]


def test_cache_dir_holds_the_indexes(stjude, cache_dir, shared_data):
    assert list(cache_dir.glob("*.idx"))
    assert not list((shared_data / "gridded").glob("*.idx"))


@pytest.mark.parametrize("rel", ENS_FILES)
def test_every_member_file_opens_and_equals_eccodes_path(shared_data, cache_dir, rel):
    ds = open_ens_grib(shared_data / rel, cache_dir=cache_dir)
    fast = read_grib_eccodes(shared_data / rel)
    schema.validate(fast, kind="forecast", allow_nan=True)
    assert set(ds.data_vars) == set(fast.data_vars)
    assert ds.attrs == fast.attrs
    for name in fast.data_vars:
        assert ds[name].dims == fast[name].dims
        np.testing.assert_array_equal(ds[name].values, fast[name].values)
        assert ds[name].attrs == fast[name].attrs
    xr.testing.assert_equal(ds.coords.to_dataset(), fast.coords.to_dataset())


def test_pf_only_file_has_members_1_to_50(shared_data, cache_dir):
    ds = open_ens_grib(shared_data / "gridded/ecmwf_ens_2018112012_10fg6_europe.grib", cache_dir=cache_dir)
    assert ds["member"].values.tolist() == list(range(1, 51))
    assert (ds["lead_time"].values / np.timedelta64(1, "h")).tolist() == [60, 66, 72]


# --- analyses -------------------------------------------------------------------------------

def test_hres_analyses_from_several_files(shared_data, cache_dir):
    an = open_analysis(shared_data / AN_DIR, cache_dir=cache_dir)
    assert an.sizes["time"] == 13 and an["level"].values.tolist() == [500, 850]
    assert set(an.data_vars) == {"t", "u", "v", "w", "msl", "u10", "v10", "pv"}
    assert an["pv"].attrs["grib_type_of_level"] == "theta" and an["pv"].attrs["grib_level"] == 320
    fast = read_grib_eccodes(shared_data / AN_DIR)
    for name in fast.data_vars:
        np.testing.assert_array_equal(an[name].values, fast[name].values)


def test_eda_is_an_analysis_ensemble(shared_data, cache_dir):
    an = open_analysis(shared_data / EDA, cache_dir=cache_dir)
    assert an.sizes["member"] == 10 and an.sizes["time"] == 4
    assert an["longitude"].values[[0, -1]].tolist() == [0, 357] and an.sizes["latitude"] == 61
    fast = read_grib_eccodes(shared_data / EDA)
    np.testing.assert_array_equal(an["z"].values, fast["z"].values)
    with pytest.raises(ReaderError, match="holds analysis messages"):
        open_ens_grib(shared_data / EDA)


def test_netcdf_analysis(tmp_path, rng):
    ds = xr.Dataset({"t": (("valid_time", "pressure_level", "lat", "lon"), 250 + rng.random((2, 2, 3, 4)),
                           {"units": "K"}),
                     "msl": (("valid_time", "lat", "lon"), 1000 + rng.random((2, 3, 4)), {"units": "hPa"})},
                    coords={"valid_time": pd.date_range("2020-01-01", periods=2, freq="6h"),
                            "pressure_level": [850, 500], "lat": [50.0, 40.0, 30.0], "lon": [0.0, 1, 2, 3]})
    ds.to_netcdf(tmp_path / "an.nc")
    an = open_analysis(tmp_path / "an.nc")
    assert an["t"].dims == ("time", "level", "latitude", "longitude")
    assert an["level"].values.tolist() == [500, 850]
    np.testing.assert_allclose(an["msl"].values, ds["msl"].values * 100, rtol=1e-6)
    assert an["msl"].attrs["units"] == "Pa"
    ds[["msl"]].rename(valid_time="step").to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(ReaderError, match="bad.nc: an analysis needs a 'time'"):
        open_analysis(tmp_path / "bad.nc")


# --- Zarr -----------------------------------------------------------------------------------

def test_weatherbench_zarr(tmp_path, rng):
    wb = xr.Dataset(
        {"geopotential": (("time", "prediction_timedelta", "number", "level", "latitude", "longitude"),
                          5e4 + rng.random((2, 2, 3, 2, 4, 5)), {"units": "m**2 s**-2"}),
         "2m_temperature": (("time", "prediction_timedelta", "number", "latitude", "longitude"),
                            280 + rng.random((2, 2, 3, 4, 5)))},
        coords={"time": pd.date_range("2020-01-01", periods=2, freq="12h"),
                "prediction_timedelta": pd.to_timedelta([0, 24], unit="h"), "number": [0, 1, 2],
                "level": [500, 850], "latitude": [-10.0, 0, 10, 20], "longitude": [0.0, 1, 2, 3, 4]})
    wb.to_zarr(tmp_path / "wb.zarr")
    ds = open_weatherbench_zarr(tmp_path / "wb.zarr")
    assert set(ds.data_vars) == {"z", "t2m"} and ds["t2m"].attrs["units"] == "K"
    assert ds["z"].dims == ("init_time", "lead_time", "member", "level", "latitude", "longitude")
    np.testing.assert_allclose(schema.select_variable(ds, "z500").values,
                               wb["geopotential"].sel(level=500).values, rtol=1e-6)
    src = open_source(tmp_path / "wb.zarr")
    assert isinstance(src, WeatherBenchSource) and src.open().sizes["member"] == 3


def test_canonical_zarr(tmp_path, rng):
    ds = small_forecast(rng).assign_attrs(enspp_kind="forecast")
    ds.to_zarr(tmp_path / "ours.zarr")
    back = open_canonical_zarr(tmp_path / "ours.zarr")
    xr.testing.assert_allclose(back.load(), ds)
    src = open_source(tmp_path / "ours.zarr")
    assert isinstance(src, ZarrForecastSource) and isinstance(src, ForecastSource)
    ds.assign_attrs(enspp_kind="hindcast").to_zarr(tmp_path / "bad.zarr")
    with pytest.raises(ReaderError, match="bad.zarr: attribute enspp_kind='hindcast'"):
        open_canonical_zarr(tmp_path / "bad.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ReaderError, match="empty.zarr: not a readable Zarr store"):
        open_weatherbench_zarr(tmp_path / "empty.zarr")


# --- sources and detection ------------------------------------------------------------------

def test_open_source_and_detect_kind(shared_data, tmp_path):
    src = open_source(shared_data / STJUDE)
    assert isinstance(src, GribForecastSource) and isinstance(src, ForecastSource)
    assert detect_kind(shared_data / STJUDE) == "forecast"
    assert detect_kind(shared_data / AN_DIR) == "analysis"
    assert open_source(shared_data / AN_DIR, kind="analysis").open().sizes["time"] == 13
    shutil.copy(shared_data / AN_DIR / "msl_sfc.grib", tmp_path / "an.grib")
    shutil.copy(shared_data / "gridded/ecmwf_hres_fc_vs_analysis_2016092500/fc/msl_sfc.grib", tmp_path / "fc.grib")
    with pytest.raises(ReaderError, match="cannot tell forecast from analysis"):
        detect_kind(tmp_path)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ReaderError, match="x.txt: unknown format"):
        open_source(tmp_path / "x.txt")
    with pytest.raises(ReaderError, match="mix formats"):
        open_source([tmp_path / "an.grib", shared_data / FRANKFURT])


# --- several files, lazily ------------------------------------------------------------------

def test_many_files_combined_lazily(tmp_path, rng):
    a, b = small_forecast(rng, init="2020-01-01"), small_forecast(rng, init="2020-01-02", leads=(0, 24, 48))
    write_grib(tmp_path / "a.grib", a, kind="forecast")
    write_grib(tmp_path / "b.grib", b, kind="forecast")
    ds = open_ens_grib(str(tmp_path / "*.grib"), cache_dir=tmp_path / "cache")
    assert ds["t2m"].chunks is not None  # dask-backed
    assert ds.sizes["init_time"] == 2 and ds.sizes["lead_time"] == 3
    assert ds.attrs["enspp_absent_fields"] == ["t2m@48h", "z@48h"]
    fast = read_grib_eccodes(tmp_path)
    for name in ("t2m", "z"):
        np.testing.assert_array_equal(ds[name].values, fast[name].values)
    assert not list(tmp_path.glob("*.idx"))
    # one file per variable
    write_grib(tmp_path / "v_t2m.grb", a[["t2m"]], kind="forecast")
    write_grib(tmp_path / "v_z.grb", a[["z"]], kind="forecast")
    per_var = open_ens_grib([tmp_path / "v_t2m.grb", tmp_path / "v_z.grb"])
    np.testing.assert_array_equal(per_var["z"].values, read_grib_eccodes(tmp_path / "a.grib")["z"].values)


# --- bad input ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def truncated(shared_data, tmp_path_factory):
    data = (shared_data / STJUDE).read_bytes()
    path = tmp_path_factory.mktemp("bad") / "half.grib"
    path.write_bytes(data[: len(data) // 2 + 1000])  # half way, inside a message
    return path


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
def test_truncated_grib(truncated, reader):
    with pytest.raises(ReaderError, match="half.grib: corrupt or truncated GRIB"):
        reader(truncated)


def test_truncated_at_message_boundary_is_caught(shared_data, tmp_path):
    data = (shared_data / STJUDE).read_bytes()
    first = len(data) // 204  # equal-sized messages
    (tmp_path / "cut.grib").write_bytes(data[: first + 10])
    with pytest.raises(ReaderError, match="cut.grib: corrupt or truncated|cut.grib: truncated"):
        scan_grib(tmp_path / "cut.grib")


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
def test_non_grib_file(tmp_path, reader):
    (tmp_path / "text.grib").write_text("this is plain text\n" * 10)
    with pytest.raises(ReaderError, match="text.grib: not a GRIB file"):
        reader(tmp_path / "text.grib")
    (tmp_path / "fake.grib").write_bytes(b"GRIB" + bytes(200))
    with pytest.raises(ReaderError, match="fake.grib: not a GRIB file, or corrupt"):
        reader(tmp_path / "fake.grib")


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
def test_missing_members_in_one_init_time(tmp_path, rng, reader):
    write_grib(tmp_path / "a.grib", small_forecast(rng, members=11), kind="forecast")
    write_grib(tmp_path / "b.grib", small_forecast(rng, init="2020-01-02", members=9), kind="forecast")
    with pytest.raises(ReaderError, match=r"b.grib: missing members .* init 2020-01-02.* 9 of 11 members"):
        reader(tmp_path)


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
def test_duplicate_init_times_across_files(tmp_path, rng, reader):
    ds = small_forecast(rng)
    write_grib(tmp_path / "a.grib", ds, kind="forecast")
    write_grib(tmp_path / "b.grib", ds, kind="forecast")
    with pytest.raises(ReaderError, match=r"b.grib: duplicate field .* already read from .*a.grib"):
        reader([tmp_path / "a.grib", tmp_path / "b.grib"])


def test_different_grids(tmp_path, rng):
    write_grib(tmp_path / "a.grib", small_forecast(rng), kind="forecast")
    write_grib(tmp_path / "b.grib", small_forecast(rng, init="2020-01-02", nlat=5), kind="forecast")
    with pytest.raises(ReaderError, match="b.grib: grid 8x5 .* differs from 8x6"):
        read_grib_eccodes(tmp_path)


def _write_custom(path, *, short_name="2t", missing=False, sample="regular_ll_sfc_grib2",
                  keys=(), messages=({},)):
    """Messages written with eccodes directly: NaN points (bitmap), a foreign parameter, odd
    grids or keys; ``messages`` holds the keys that differ between the messages."""
    h = eccodes.codes_grib_new_from_samples(sample)
    eccodes.codes_set(h, "setLocalDefinition", 1)
    eccodes.codes_set(h, "localDefinitionNumber", 1)
    eccodes.codes_set(h, "productDefinitionTemplateNumber", 1)
    eccodes.codes_set(h, "type", "cf")
    eccodes.codes_set(h, "shortName", short_name)
    for key, value in keys:
        eccodes.codes_set(h, key, value)
    values = np.linspace(270, 290, eccodes.codes_get(h, "numberOfPoints"))
    if missing:
        eccodes.codes_set(h, "bitmapPresent", 1)
        eccodes.codes_set(h, "missingValue", 9999)
        values[:10] = 9999
    with open(path, "wb") as fh:
        for extra in messages:
            m = eccodes.codes_clone(h)
            for key, value in extra.items():
                eccodes.codes_set(m, key, value)
            eccodes.codes_set_values(m, values)
            eccodes.codes_write(m, fh)
            eccodes.codes_release(m)
    eccodes.codes_release(h)


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
@pytest.mark.parametrize("case, match", [
    ("reduced", "on a 'reduced_gg' grid; only regular_ll"),
    ("theta", "'pv' on several non-pressure levels \\[\\('theta', 320\\), \\('theta', 330\\)\\]"),
])
def test_unsupported_grib_layouts(tmp_path, reader, case, match):
    if case == "reduced":
        _write_custom(tmp_path / "x.grib", sample="reduced_gg_sfc_grib2")
    else:
        _write_custom(tmp_path / "x.grib", short_name="pv", keys=[("typeOfLevel", "theta")],
                      messages=({"level": 320}, {"level": 330}))
    with pytest.raises(ReaderError, match=f"x.grib: .*{match}"):
        reader(tmp_path / "x.grib")


def test_step_in_seconds(tmp_path):
    _write_custom(tmp_path / "s.grib", messages=({"stepUnits": "s", "step": 90}, {"stepUnits": "s", "step": 1800}))
    ds = read_grib_eccodes(tmp_path / "s.grib")
    assert (ds["lead_time"].values / np.timedelta64(1, "s")).tolist() == [90, 1800]


def test_unsupported_split_across_files(tmp_path, rng):
    both = xr.concat([small_forecast(rng), small_forecast(rng, init="2020-01-02")], dim="init_time")
    write_grib(tmp_path / "a.grib", both.isel(lead_time=[0]), kind="forecast")
    write_grib(tmp_path / "b.grib", both.isel(init_time=[1], lead_time=[1]), kind="forecast")
    with pytest.raises(ReaderError, match="overlapping time sets across files"):
        open_ens_grib(tmp_path)
    assert read_grib_eccodes(tmp_path).attrs["enspp_absent_fields"] == ["t2m@24h", "z@24h"]


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
def test_nan_fields(tmp_path, reader):
    _write_custom(tmp_path / "nan.grib", missing=True)
    with pytest.raises(ReaderError, match="nan.grib: 1 field.* missing \\(NaN\\).*10 missing points"):
        reader(tmp_path / "nan.grib")
    ds = reader(tmp_path / "nan.grib", allow_nan=True)
    assert int(np.isnan(ds["t2m"].values).sum()) == 10


@pytest.mark.parametrize("reader", [open_ens_grib, read_grib_eccodes])
def test_unknown_units(tmp_path, reader):
    _write_custom(tmp_path / "cape.grib", short_name="cape")
    with pytest.raises(ReaderError, match="cape.grib: variable 'cape' is in unknown units 'J kg\\*\\*-1'"):
        reader(tmp_path / "cape.grib")


def test_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.grib"):
        read_grib_eccodes(tmp_path / "nowhere.grib")
    with pytest.raises(ReaderError, match="matches no files"):
        read_grib_eccodes(str(tmp_path / "*.grib"))
    with pytest.raises(ReaderError, match="holds no GRIB files"):
        read_grib_eccodes(tmp_path)
    with pytest.raises(ReaderError, match="no input files"):
        read_grib_eccodes([])


def test_netcdf_and_source_errors(tmp_path, shared_data, rng):
    (tmp_path / "junk.nc").write_bytes(b"not netcdf at all")
    with pytest.raises(ReaderError, match="junk.nc: not a readable GRIB or NetCDF"):
        open_analysis(tmp_path / "junk.nc")
    with pytest.raises(ReaderError, match="mixes GRIB and non-GRIB"):
        open_analysis([shared_data / AN_DIR / "msl_sfc.grib", tmp_path / "junk.nc"])
    coords = {"time": pd.date_range("2020-01-01", periods=2), "lat": [1.0, 0.0], "lon": [0.0, 1.0]}
    xr.Dataset({"t": (("time", "lat", "lon", "x"), np.ones((2, 2, 2, 1)), {"units": "K"})},
               coords=coords).to_netcdf(tmp_path / "extra.nc")
    with pytest.raises(ReaderError, match="extra.nc: variable 't' has dims .* outside the canonical"):
        open_analysis(tmp_path / "extra.nc")
    xr.Dataset({"t": (("time", "lat", "lon"), np.ones((2, 2, 2)))}, coords=coords).to_netcdf(tmp_path / "nounits.nc")
    with pytest.raises(ReaderError, match="nounits.nc: variable 't' has no units"):
        open_analysis(tmp_path / "nounits.nc")
    small_forecast(rng).drop_attrs().to_zarr(tmp_path / "plain.zarr")
    with pytest.raises(ReaderError, match="plain.zarr: variable '.*' has no 'units'"):
        open_canonical_zarr(tmp_path / "plain.zarr")
    with pytest.raises(FileNotFoundError, match="nothere.zarr"):
        open_canonical_zarr(tmp_path / "nothere.zarr")
    with pytest.raises(FileNotFoundError, match="nothere.grib"):
        open_source(tmp_path / "nothere.grib")
    with pytest.raises(ReaderError, match="no paths given"):
        open_source([])
    with pytest.raises(ReaderError, match="give one weatherbench path at a time"):  # foreign Zarr
        open_source([tmp_path / "plain.zarr", tmp_path / "plain.zarr"])


def test_analysis_with_several_steps(tmp_path):
    _write_custom(tmp_path / "an.grib", keys=[("productDefinitionTemplateNumber", 0), ("type", "an")],
                  messages=({"step": 0}, {"step": 6}))
    fast = read_grib_eccodes(tmp_path / "an.grib")  # valid times
    assert fast.sizes["time"] == 2 and "lead_time" not in fast.dims
    with pytest.raises(ReaderError, match="an.grib: analysis messages with several steps"):
        open_analysis(tmp_path / "an.grib")
