"""Zarr and NetCDF inputs: WeatherBench 2 forecasts and analyses, CF NetCDF, our own stores;
translated at the edge, lazily, and their provenance (a directory is hashed sensibly)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_store import forecast

from enspp.data.cf_readers import open_cf
from enspp.data.ingest import IngestError, ingest
from enspp.data.provenance import sha256_tree, source_file
from enspp.data.schema import select_variable
from enspp.data.store import open_store, present_fields
from enspp.data.store_meta import iter_sources
from enspp.data.store_writer import append
from enspp.data.translate import ReaderError


def wb2_forecast(n_init: int = 3, *, seed: int = 0, members: bool = True) -> xr.Dataset:
    """A WeatherBench 2 style forecast: ``time`` is the init time, ``prediction_timedelta``
    the lead, ``number`` the member, latitude increasing, long variable names."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-10, 20, 4), np.arange(0.0, 360.0, 72.0)
    dims = ("time", "prediction_timedelta") + (("number",) if members else ())
    shape = (n_init, 2) + ((3,) if members else ())
    coords = {"time": pd.date_range("2020-01-01", periods=n_init, freq="12h"),
              "prediction_timedelta": pd.to_timedelta([24, 48], unit="h"),
              "level": [500, 850], "latitude": lat, "longitude": lon}
    if members:
        coords["number"] = [0, 1, 2]
    return xr.Dataset({
        "geopotential": (dims + ("level", "latitude", "longitude"),
                         5e4 + 100 * rng.random(shape + (2, 4, 5)), {"units": "m**2 s**-2"}),
        "2m_temperature": (dims + ("latitude", "longitude"), 280 + rng.random(shape + (4, 5))),
    }, coords=coords)


def test_weatherbench_forecast_zarr_ingests_and_equals_the_source(tmp_path):
    wb = wb2_forecast()
    wb.chunk({"time": 1}).to_zarr(tmp_path / "wb.zarr")
    ds = open_cf(tmp_path / "wb.zarr")
    assert ds["t2m"].chunks is not None  # lazy: nothing loaded
    assert ds["z"].dims == ("init_time", "lead_time", "member", "level", "latitude", "longitude")
    store = tmp_path / "s.zarr"
    summary = ingest([tmp_path / "wb.zarr"], store, progress=False)
    assert len(summary.added) == 3 and summary.variables == ("t2m", "z") and summary.members == 3
    out = open_store(store).compute()
    np.testing.assert_allclose(select_variable(out, "z500").values,
                               wb["geopotential"].sel(level=500).values, rtol=1e-6)
    np.testing.assert_allclose(out["t2m"].values, wb["2m_temperature"].values, rtol=1e-6)
    (entry,) = iter_sources(store)  # a directory input is identified, not read as a file
    assert entry.name == "wb.zarr" and entry.sha256 == sha256_tree(tmp_path / "wb.zarr")[0]
    again = ingest([tmp_path / "wb.zarr"], store, progress=False)
    assert again.files_already_ingested == 1 and not again.added


def test_a_deterministic_weatherbench_forecast_is_a_one_member_ensemble(tmp_path):
    wb2_forecast(members=False).to_zarr(tmp_path / "hres.zarr")
    ds = open_cf(tmp_path / "hres.zarr")
    assert ds.sizes["member"] == 1 and ds["member"].values.tolist() == [0]


def test_weatherbench_analysis_zarr(tmp_path):
    era5 = wb2_forecast().isel(prediction_timedelta=0, number=0, drop=True)
    era5.to_zarr(tmp_path / "era5.zarr")
    summary = ingest([tmp_path / "era5.zarr"], tmp_path / "an.zarr", progress=False)
    assert summary.kind == "analysis" and len(summary.added) == 3
    out = open_store(tmp_path / "an.zarr")
    assert out["z"].dims == ("time", "level", "latitude", "longitude")
    np.testing.assert_allclose(out["t2m"].values, era5["2m_temperature"].values, rtol=1e-6)


def test_cf_netcdf_forecast_and_analysis_by_standard_name(tmp_path):
    rng = np.random.default_rng(2)
    cf = xr.Dataset(
        {"tas": (("reftime", "leadtime", "realization", "lat", "lon"),
                 280 + rng.random((2, 2, 4, 3, 4)), {"units": "K", "standard_name": "air_temperature"}),
         "ta": (("reftime", "leadtime", "realization", "plev", "lat", "lon"),
                250 + rng.random((2, 2, 4, 2, 3, 4)), {"units": "K", "standard_name": "air_temperature"})},
        coords={"reftime": ("reftime", pd.date_range("2021-03-01", periods=2, freq="D"),
                            {"standard_name": "forecast_reference_time"}),
                "leadtime": ("leadtime", [6, 12], {"units": "hours", "standard_name": "forecast_period"}),
                "realization": ("realization", [0, 1, 2, 3], {"standard_name": "realization"}),
                "plev": ("plev", [85000.0, 50000.0], {"units": "Pa", "standard_name": "air_pressure"}),
                "lat": [50.0, 49.0, 48.0], "lon": [5.0, 6.0, 7.0, 8.0]})
    cf.to_netcdf(tmp_path / "fc.nc")
    ds = open_cf(tmp_path / "fc.nc")
    assert set(ds.data_vars) == {"t2m", "t"} and ds["level"].values.tolist() == [500, 850]
    assert (ds.lead_time.values / np.timedelta64(1, "h")).tolist() == [6, 12]
    summary = ingest([tmp_path / "fc.nc"], tmp_path / "s.zarr", progress=False)
    assert len(summary.added) == 2
    np.testing.assert_allclose(select_variable(open_store(tmp_path / "s.zarr"), "t850").values,
                               cf["ta"].sel(plev=85000.0).values, rtol=1e-6)
    an = cf.isel(leadtime=0, realization=0, drop=True).rename(reftime="time")
    an["time"].attrs = {"standard_name": "time"}
    an.to_netcdf(tmp_path / "an.nc")
    out = ingest([tmp_path / "an.nc"], tmp_path / "an.zarr", progress=False)
    assert out.kind == "analysis" and len(out.added) == 2


def test_our_own_store_as_input_keeps_absent_fields_absent(tmp_path):
    src = tmp_path / "src.zarr"
    ds = forecast(["2020-01-01", "2020-01-02"])
    ds["t2m"] = ds["t2m"].where(ds.init_time == np.datetime64("2020-01-01", "ns"))
    append(src, ds)
    summary = ingest([src], tmp_path / "copy.zarr", progress=False)
    assert len(summary.added) == 2
    xr.testing.assert_identical(present_fields(tmp_path / "copy.zarr"), present_fields(src))
    xr.testing.assert_identical(open_store(tmp_path / "copy.zarr").compute().drop_attrs(),
                                open_store(src).compute().drop_attrs())


@pytest.mark.parametrize("real", ["storm", "magdeburg", "magdeburg_obs"])
def test_a_store_exported_to_netcdf_or_given_as_zarr_ingests_back_the_same(tmp_path, shared_data, real):
    """`xr.open_zarr(store).to_netcdf(f)` then `enspp ingest f`, and the store itself as
    input: the same data, coordinates (member labels, station metadata) and absent fields,
    for a gridded store with absent fields and for station stores (whose gaps are NaN)."""
    from test_station import MAGDEBURG, MAGDEBURG_OPTIONS

    src = tmp_path / "src.zarr"
    if real == "storm":  # z850 only at +78 h: the other leads are absent
        ingest([shared_data / "gridded" / "ecmwf_ens_stjude-storm_2013102500_10fg3_z850.grib"],
               src, progress=False)
    else:
        ingest([shared_data / MAGDEBURG], src, progress=False, station=MAGDEBURG_OPTIONS,
               kind="analysis" if real == "magdeburg_obs" else "forecast")
    nc = tmp_path / "export.nc"
    xr.open_zarr(src).to_netcdf(nc)
    for given in (nc, src):
        out = tmp_path / f"from_{given.suffix[1:]}.zarr"
        summary = ingest([given], out, progress=False)
        assert summary.added and not summary.failed
        xr.testing.assert_identical(present_fields(out), present_fields(src))
        xr.testing.assert_identical(open_store(out).compute().drop_attrs(),
                                    open_store(src).compute().drop_attrs())


def test_a_zarr_with_unknown_dims_is_refused_naming_them(tmp_path):
    odd = xr.Dataset({"t2m": (("time", "ensemble_id", "y", "x"), np.zeros((2, 3, 4, 5)),
                              {"units": "K"})},
                     coords={"time": pd.date_range("2020-01-01", periods=2)})
    odd.to_zarr(tmp_path / "odd.zarr")
    with pytest.raises(ReaderError, match=r"odd\.zarr: dims \['ensemble_id', 'x', 'y'\] are not "
                                          r"ones enspp knows"):
        open_cf(tmp_path / "odd.zarr")
    with pytest.raises(IngestError, match=r"dims \['ensemble_id', 'x', 'y'\]"):
        ingest([tmp_path / "odd.zarr"], tmp_path / "s.zarr", progress=False)


def test_a_directory_is_identified_by_its_metadata_and_file_sizes(tmp_path):
    wb2_forecast().to_zarr(tmp_path / "a.zarr")
    first = source_file(tmp_path / "a.zarr")
    assert first.size == sum(p.stat().st_size for p in (tmp_path / "a.zarr").rglob("*") if p.is_file())
    assert source_file(tmp_path / "a.zarr") == first  # the same store: the same identity
    wb2_forecast(seed=1).to_zarr(tmp_path / "b.zarr")
    assert source_file(tmp_path / "b.zarr").sha256 != first.sha256


def test_a_large_weatherbench_store_is_ingested_chunk_by_chunk(tmp_path):
    """An input of 50 MB is read one field (1 MB) at a time: the ingest's peak of traced
    memory is a few fields per thread, a fraction of the input (loading it would take all of
    it at once)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    lat, lon = np.linspace(-90, 90, 181), np.arange(0.0, 360.0, 1.0)
    shape = (24, 2, 4, lat.size, lon.size)
    wb = xr.Dataset(
        {"2m_temperature": (("time", "prediction_timedelta", "number", "latitude", "longitude"),
                            (280 + rng.standard_normal(shape)).astype("f4"), {"units": "K"})},
        coords={"time": pd.date_range("2020-01-01", periods=24, freq="12h"),
                "prediction_timedelta": pd.to_timedelta([24, 48], unit="h"),
                "number": np.arange(4), "latitude": lat, "longitude": lon})
    wb.chunk({"time": 1, "prediction_timedelta": 1}).to_zarr(tmp_path / "wb.zarr")
    size = wb["2m_temperature"].nbytes
    del wb
    tracemalloc.start()
    try:
        summary = ingest([tmp_path / "wb.zarr"], tmp_path / "s.zarr", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(summary.added) == 24
    assert peak < size / 4, (peak, size)


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_a_damaged_chunk_in_a_zarr_input_is_one_line_and_nothing_of_it_is_written(tmp_path, capsys,
                                                                                  codec):
    """A chunk of a WeatherBench 2 input cut short (a broken copy): the input is refused in one
    line naming it, the variable, the init time of the chunk and why, like any unreadable input;
    the other inputs land, nothing of the damaged one does."""
    from zarr.codecs import GzipCodec

    from enspp.flows.cli import main

    enc = {"2m_temperature": {"compressors": [GzipCodec()]}} if codec == "gzip" else {}
    wb2_forecast().chunk({"time": 1}).to_zarr(tmp_path / "bad.zarr", encoding=enc)
    chunk = tmp_path / "bad.zarr" / "2m_temperature" / "c" / "1" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    good = wb2_forecast()
    good = good.assign_coords(time=good["time"] + np.timedelta64(3, "D"))  # other init times
    good.to_zarr(tmp_path / "good.zarr")
    why = (r"variable 't2m' \(init_time 2020-01-01T12:00\): a chunk cannot be read: "
           + (r"corrupt chunk \(cannot be decompressed: Zstd" if codec == "zstd"
              else r"cannot be decoded \(EOFError: "))
    store = tmp_path / "s.zarr"
    with pytest.raises(IngestError, match=re.escape(str(tmp_path / "bad.zarr")) + ": " + why):
        ingest([tmp_path / "good.zarr", tmp_path / "bad.zarr"], store, progress=False)
    assert not store.exists()
    assert main(["ingest", str(tmp_path / "bad.zarr"), "--store", str(store), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(f"bad\\.zarr: {why}", err), err
    assert len(err.strip().splitlines()) == 2, err  # the refusal and the input's line
    assert not store.exists()
    summary = ingest([tmp_path / "good.zarr", tmp_path / "bad.zarr"], store, progress=False,
                     on_error="skip")
    assert [f for f, _ in summary.failed] == [str(tmp_path / "bad.zarr")]
    assert [e.name for e in iter_sources(store)] == ["good.zarr"]
    np.testing.assert_array_equal(open_store(store)["init_time"].values, good["time"].values)


def test_a_weatherbench_store_with_no_init_times_or_a_negative_lead_is_refused(tmp_path):
    wb2_forecast().isel(time=slice(0, 0)).to_zarr(tmp_path / "notime.zarr")
    with pytest.raises(ReaderError, match=r"notime\.zarr: holds no init times \(dim 'time' is empty\)$"):
        open_cf(tmp_path / "notime.zarr")
    era5 = wb2_forecast().isel(prediction_timedelta=0, number=0, drop=True)
    era5.isel(time=slice(0, 0)).to_zarr(tmp_path / "notime_an.zarr")
    with pytest.raises(ReaderError, match=r"notime_an\.zarr: holds no times \(dim 'time' is empty\)$"):
        open_cf(tmp_path / "notime_an.zarr")
    neg = wb2_forecast().assign_coords(prediction_timedelta=pd.to_timedelta([-24, 24], unit="h"))
    neg.to_zarr(tmp_path / "neglead.zarr")
    with pytest.raises(ReaderError, match=r"neglead\.zarr: lead time -24 h \(dim 'prediction_timedelta'\) "
                                          r"is negative; a forecast's lead times are >= 0$"):
        open_cf(tmp_path / "neglead.zarr")
    with pytest.raises(IngestError, match=r"neglead\.zarr: lead time -24 h"):
        ingest([tmp_path / "neglead.zarr"], tmp_path / "s.zarr", progress=False)


def test_an_analysis_whose_time_reads_as_an_init_time_says_why(tmp_path):
    an = wb2_forecast().isel(prediction_timedelta=0, number=0, drop=True)
    an["time"].attrs = {"standard_name": "forecast_reference_time"}
    an.to_netcdf(tmp_path / "an.nc")
    why = r"dim 'time' is an init time by its standard_name 'forecast_reference_time'"
    with pytest.raises(ReaderError, match=rf"an\.nc: a forecast needs 'lead_time' \(dims .*; {why}\); an "
                                          r"analysis\? its time dim must read as 'time'"):
        open_cf(tmp_path / "an.nc")
    with pytest.raises(ReaderError, match=rf"holds forecasts \(dims .*; {why}\), expected an analysis$"):
        open_cf(tmp_path / "an.nc", kind="analysis")
