"""data.station: station NetCDF files and CSV tables, the real files and generated layouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from enspp.data.ingest import IngestError, ingest
from enspp.data.sources import StationSource, detect_format, open_source
from enspp.data.station import StationOptions, open_station
from enspp.data.store import open_store
from enspp.data.translate import ReaderError

MAGDEBURG = "station/ecmwf_ens_t2m_magdeburg_2002-2014.nc"
FRANKFURT = "station/ecmwf_ens_tp24_frankfurt_2007-2016.nc"
#: the two files' conventions, as the shipped experiment configs state them (data.station)
MAGDEBURG_OPTIONS = StationOptions(
    variable="t2m", units="degC", time="valid", hour=12, lead_time=24, control="forc.CTRL",
    station={"id": "10361", "name": "Magdeburg", "latitude": 52.1, "longitude": 11.6, "elevation": 76})
FRANKFURT_OPTIONS = StationOptions(
    variable="tp24", units="mm", time="init", hour=0, lead_time=30, control="CTR", deterministic="tp_hres",
    station={"id": "10637", "name": "Frankfurt/Main", "latitude": 50.05, "longitude": 8.6, "elevation": 100})


def test_magdeburg(shared_data):
    d = open_station(shared_data / MAGDEBURG, MAGDEBURG_OPTIONS)
    fc, obs, det = d.forecast, d.observations, d.deterministic
    assert fc["t2m"].dims == ("init_time", "lead_time", "member", "station")
    assert fc.sizes["member"] == 51 and fc["member"].values.tolist() == list(range(51))
    assert fc["member_label"].values[0] == "forc.CTRL" and fc["member_label"].values[7] == "forc.7"
    raw = xr.load_dataset(shared_data / MAGDEBURG)
    # member 7 is the file's column forc.7, the control its last column
    np.testing.assert_array_equal(fc["t2m"].values[:, 0, 7, 0], raw["t2m_ens"].sel(member="forc.7").values)
    np.testing.assert_array_equal(fc["t2m"].values[:, 0, 0, 0], raw["t2m_ens"].sel(member="forc.CTRL").values)
    assert fc["t2m"].attrs["units"] == "degC" and obs["t2m"].attrs["units"] == "degC"
    assert list(fc["lead_time"].values) == [np.timedelta64(24, "h")]
    # the rows are the verifying dates (12 UTC): the runs start at 12 UTC the day before
    assert pd.Timestamp(fc["init_time"].values[0]) == pd.Timestamp("2002-01-01T12")
    np.testing.assert_array_equal(obs["time"].values, fc["init_time"].values + np.timedelta64(24, "h"))
    assert float(obs["t2m"].max()) == pytest.approx(36.8, abs=0.05)
    assert pd.Timestamp(obs["time"][int(np.nanargmax(obs["t2m"].values[:, 0]))].values).strftime("%Y-%m") == "2007-07"
    assert fc["station"].values.tolist() == ["10361"] and float(fc["latitude"][0]) == 52.1
    assert str(fc["station_name"].values[0]) == "Magdeburg" and float(fc["elevation"][0]) == 76
    assert det.sizes["member"] == 1 and int(det["t2m"].isnull().sum()) == 2
    np.testing.assert_array_equal(det["t2m"].values[:, 0, 0, 0], raw["t2m_hres"].values)
    assert int(fc["t2m"].isnull().sum()) > 0  # gaps are NaN, accepted


def test_frankfurt(shared_data):
    d = open_station(shared_data / FRANKFURT, FRANKFURT_OPTIONS)
    fc, obs = d.forecast, d.observations
    assert list(fc["lead_time"].values) == [np.timedelta64(30, "h")]
    assert pd.Timestamp(fc["init_time"].values[0]) == pd.Timestamp("2007-01-06T00")
    assert fc["tp24"].attrs["units"] == "mm" and fc["member_label"].values[:2].tolist() == ["CTR", "P1"]
    assert float(obs["tp24"].max()) == pytest.approx(50.0, abs=0.5)
    raw = xr.load_dataset(shared_data / FRANKFURT)
    np.testing.assert_array_equal(d.deterministic["tp24"].values[:, 0, 0, 0], raw["tp_hres"].values)
    src = open_source(shared_data / FRANKFURT, station=FRANKFURT_OPTIONS)
    assert isinstance(src, StationSource)
    xr.testing.assert_identical(src.observations(), obs)
    assert detect_format(shared_data / FRANKFURT) == "station"


def _multi_station(path, *, cf: bool = True):
    """Three stations, a multi-model ensemble (CMCG, GFS, UKMO), CF timing coordinates."""
    rng = np.random.default_rng(0)
    init = pd.date_range("2011-01-01T00", periods=5, freq="1D")
    ens = rng.normal(280.0, 2.0, (5, 3, 3)).astype(np.float32)  # time, member, station
    coords = {"time": init, "member": ["CMCG", "GFS", "UKMO"], "station": ["A1", "B2", "C3"],
              "latitude": ("station", [47.0, 48.5, 46.2]), "longitude": ("station", [-122.3, -123.0, -121.9]),
              "elevation": ("station", [10.0, 250.0, 31.0])}
    if cf:
        coords["forecast_reference_time"] = ("time", init)
        coords["forecast_period"] = ((), 48.0, {"units": "hours"})
    ds = xr.Dataset({"t2m_ens": (("time", "member", "station"), ens, {"units": "K"}),
                     "t2m_obs": (("time", "station"), ens.mean(1) + 1.0, {"units": "K"})}, coords=coords)
    ds.to_netcdf(path)
    return ens


def test_many_stations_multi_model_and_cf_timing(tmp_path):
    ens = _multi_station(tmp_path / "m.nc")
    d = open_station(tmp_path / "m.nc")  # the file states everything: no options
    fc = d.forecast
    assert fc["station"].values.tolist() == ["A1", "B2", "C3"]
    np.testing.assert_allclose(fc["latitude"].values, [47.0, 48.5, 46.2])
    # no control: the models are members 1..3 in file order, their names kept
    assert fc["member"].values.tolist() == [1, 2, 3]
    assert fc["member_label"].values.tolist() == ["CMCG", "GFS", "UKMO"]
    assert list(fc["lead_time"].values) == [np.timedelta64(48, "h")]
    np.testing.assert_array_equal(fc["t2m"].values[:, 0, 1, 2], ens[:, 1, 2])
    np.testing.assert_array_equal(d.observations["time"].values,
                                  fc["init_time"].values + np.timedelta64(48, "h"))
    assert d.deterministic is None
    # a control named by the options becomes member 0
    d2 = open_station(tmp_path / "m.nc", StationOptions(control="GFS"))
    assert d2.forecast["member_label"].values.tolist() == ["GFS", "CMCG", "UKMO"]
    np.testing.assert_array_equal(d2.forecast["t2m"].values[:, 0, 0, 2], ens[:, 1, 2])


def _bma_table(path, *, drop: str | None = None):
    """ensembleBMA layout: one row per date and station, member columns, dates YYYYMMDDHH."""
    rng = np.random.default_rng(1)
    rows = []
    for day in pd.date_range("2003-01-01", periods=6):
        for sid, lat, lon in (("KSEA", 47.4, -122.3), ("KPDX", 45.6, -122.6)):
            if day.day == 3 and sid == "KPDX":
                continue  # a missing row
            rows.append({"date": day.strftime("%Y%m%d00"), "station": sid, "latitude": lat,
                         "longitude": lon, "elevation": 100.0, "obs": rng.normal(5),
                         "CMCG": rng.normal(5), "GFS": rng.normal(5), "UKMO": rng.normal(5)})
    table = pd.DataFrame(rows)
    if drop:
        table = table.drop(columns=drop)
    table.to_csv(path, index=False)
    return table


BMA = StationOptions(variable="t2m", units="degC", time="valid", lead_time=48,
                     columns={"time": "date", "time_format": "%Y%m%d%H", "members": ["CMCG", "GFS", "UKMO"],
                              "observation": "obs", "station": "station", "latitude": "latitude",
                              "longitude": "longitude", "elevation": "elevation"})


def test_csv_table_ensemblebma_layout(tmp_path):
    table = _bma_table(tmp_path / "srft.csv")
    d = open_station(tmp_path / "srft.csv", BMA)
    fc, obs = d.forecast, d.observations
    assert fc["station"].values.tolist() == ["KSEA", "KPDX"]
    np.testing.assert_allclose(fc["longitude"].values, [-122.3, -122.6])
    assert fc["member"].values.tolist() == [1, 2, 3] and fc.sizes["init_time"] == 6
    # valid dates at 00 UTC, +48 h: the runs started two days earlier
    assert pd.Timestamp(fc["init_time"].values[0]) == pd.Timestamp("2002-12-30")
    row = table.iloc[4]  # 2003-01-03 KSEA (KPDX has no row that day)
    assert row["date"] == "2003010300" and row["station"] == "KSEA"
    got = fc["t2m"].sel(init_time="2003-01-01", station="KSEA").values[0]
    np.testing.assert_allclose(got, row[["CMCG", "GFS", "UKMO"]].to_numpy(float), rtol=1e-6)
    assert np.isnan(fc["t2m"].sel(init_time="2003-01-01", station="KPDX").values).all()
    assert float(obs["t2m"].sel(time="2003-01-03", station="KSEA")) == pytest.approx(row["obs"], rel=1e-6)


def test_csv_missing_member_column_is_refused_naming_it(tmp_path):
    _bma_table(tmp_path / "srft.csv", drop="GFS")
    with pytest.raises(ReaderError, match=r"srft.csv: member column 'GFS' is missing"):
        open_station(tmp_path / "srft.csv", BMA)


def test_csv_ingests_into_stores(tmp_path):
    _bma_table(tmp_path / "srft.csv")
    s = ingest([tmp_path / "srft.csv"], tmp_path / "fc.zarr", kind="forecast", station=BMA, progress=False)
    assert s.ok and len(s.added) == 6
    ingest([tmp_path / "srft.csv"], tmp_path / "an.zarr", kind="analysis", station=BMA, progress=False)
    fc, an = open_store(tmp_path / "fc.zarr"), open_store(tmp_path / "an.zarr")
    expected = open_station(tmp_path / "srft.csv", BMA)
    np.testing.assert_array_equal(fc["t2m"].values, expected.forecast["t2m"].values)
    np.testing.assert_array_equal(an["t2m"].values, expected.observations["t2m"].values)
    assert fc["station"].values.tolist() == ["KSEA", "KPDX"] and "latitude" in fc.coords
    with pytest.raises(IngestError, match="srft.csv: the file holds no deterministic"):
        ingest([tmp_path / "srft.csv"], tmp_path / "det.zarr", kind="forecast", station=BMA,
               station_part="deterministic", progress=False)


@pytest.mark.parametrize("change, match", [
    ({"lead_time": None}, "the lead time is not stated: set data.station.lead_time"),
    ({"time": None}, "say what the rows' time is: data.station.time"),
    ({"units": None}, "t2m_ens has no units: set data.station.units"),
    ({"control": "CTRL"}, "data.station.control 'CTRL' is not among the member labels"),
    ({"station": None}, "holds one station without a 'station' dim: set data.station.station"),
    ({"ensemble": "t2m_members"}, "no variable 't2m_members' \\(ensemble"),
    ({"deterministic": "hres"}, "no variable 'hres' \\(deterministic"),
    ({"units": "K"}, None),
])
def test_netcdf_options_errors(tmp_path, change, match):
    time = pd.date_range("2010-01-01", periods=3)
    xr.Dataset({"t2m_ens": (("time", "member"), np.ones((3, 2), np.float32)),
                "t2m_obs": ("time", np.ones(3, np.float32))},
               coords={"time": time, "member": ["CTR", "P1"]}).to_netcdf(tmp_path / "s.nc")
    base = dict(variable="t2m", units="degC", time="init", lead_time=24, control="CTR",
                station={"id": "1"})
    opts = StationOptions(**{**base, **change})
    if match is None:  # another unit is read as given (K): no error
        assert open_station(tmp_path / "s.nc", opts).forecast["t2m"].attrs["units"] == "K"
        return
    with pytest.raises(ReaderError, match=match):
        open_station(tmp_path / "s.nc", opts)


def test_stated_timing_must_agree_and_dates_need_midnight(tmp_path):
    _multi_station(tmp_path / "m.nc")
    with pytest.raises(ReaderError, match="lead time 48 h differs from data.station.lead_time 24 h"):
        open_station(tmp_path / "m.nc", StationOptions(lead_time=24))
    with pytest.raises(ReaderError, match="rows are init times .* data.station.time is 'valid'"):
        open_station(tmp_path / "m.nc", StationOptions(time="valid"))
    with pytest.raises(ReaderError, match="holds a station dim"):
        open_station(tmp_path / "m.nc", StationOptions(station={"id": "x"}))
    time = pd.date_range("2010-01-01T06", periods=3)
    xr.Dataset({"t2m_ens": (("time", "member"), np.ones((3, 2), np.float32), {"units": "K"})},
               coords={"time": time, "member": [0, 1]}).to_netcdf(tmp_path / "h.nc")
    with pytest.raises(ReaderError, match="hour is set but the rows' times are not dates at 00 UTC"):
        open_station(tmp_path / "h.nc", StationOptions(time="init", hour=12, lead_time=6, station={"id": "1"}))
    d = open_station(tmp_path / "h.nc", StationOptions(time="init", lead_time=6, station={"id": "1"}))
    assert d.forecast["member"].values.tolist() == [0, 1] and d.observations is None


def test_csv_errors(tmp_path):
    _bma_table(tmp_path / "t.csv")
    with pytest.raises(ReaderError, match="needs data.station.columns"):
        open_station(tmp_path / "t.csv", StationOptions(variable="t2m"))
    table = pd.read_csv(tmp_path / "t.csv")
    pd.concat([table, table.iloc[:1]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ReaderError, match="dup.csv: 1 duplicate rows for one date and station"):
        open_station(tmp_path / "dup.csv", BMA)
    bad = BMA.model_copy(update={"columns": BMA.columns.model_copy(update={"time_format": "%d.%m.%Y"})})
    with pytest.raises(ReaderError, match="column 'date' does not parse as times"):
        open_station(tmp_path / "t.csv", bad)
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        open_station(tmp_path / "nothere.csv", BMA)


def test_the_readme_station_quickstart_through_the_cli(shared_data, tmp_path, capsys):
    """README's station quickstart: the Magdeburg file's conventions in enspp.yaml's
    data.station, ingested by `enspp ingest --config` as forecast, observations and HRES,
    then `enspp inspect --json`; values equal the file's."""
    import json

    from enspp.flows.cli import main

    cfg = tmp_path / "magdeburg.yaml"
    cfg.write_text(
        "data:\n"
        "  station: {variable: t2m, units: degC, time: valid, hour: 12, lead_time: 24, control: forc.CTRL,\n"
        "            station: {id: '10361', name: Magdeburg, latitude: 52.1, longitude: 11.6, elevation: 76}}\n")
    f = str(shared_data / MAGDEBURG)
    ens, obs, hres = tmp_path / "ens.zarr", tmp_path / "obs.zarr", tmp_path / "hres.zarr"
    assert main(["ingest", f, "--store", str(ens), "--config", str(cfg), "--quiet"]) == 0
    assert main(["ingest", f, "--store", str(obs), "--kind", "analysis", "--config", str(cfg),
                 "--quiet"]) == 0
    assert main(["ingest", f, "--store", str(hres), "--deterministic", "--config", str(cfg),
                 "--quiet"]) == 0
    # without the options the file's timing is unknown: refused, naming the option
    assert main(["ingest", f, "--store", str(tmp_path / "no.zarr"), "--quiet"]) == 1
    assert "data.station.lead_time" in capsys.readouterr().err
    assert main(["inspect", "--json", str(ens)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "forecast" and info["lead_times_hours"] == [24]
    assert info["members"] == {"count": 51, "numbers": "0..50", "control": True}
    assert info["grid"]["type"] == "stations" and info["grid"]["names"] == ["10361"]
    assert info["grid"]["station_names"] == ["Magdeburg"]
    assert (info["grid"]["latitude"], info["grid"]["longitude"]) == ([52.1, 52.1], [11.6, 11.6])
    assert main(["inspect", str(ens)]) == 0
    assert "stations    1 (10361 Magdeburg), latitude 52.1, longitude 11.6, elevation 76\n" in \
        capsys.readouterr().out
    assert info["variables"]["t2m"]["units"] == "degC"
    # the two rows without any member are not records: inspect names them as missing
    assert info["records"]["complete"] == 4459 and info["records"]["missing"] == 2
    raw = xr.load_dataset(shared_data / MAGDEBURG)
    fc = open_store(ens)
    day = pd.Timestamp("2007-07-15T12")  # verifying 2007-07-16 12 UTC, the row of 2007-07-16
    np.testing.assert_array_equal(
        fc["t2m"].sel(init_time=day, member=7).values[0, 0],
        raw["t2m_ens"].sel(time="2007-07-16", member="forc.7").values)
    np.testing.assert_array_equal(open_store(obs)["t2m"].sel(time=day + pd.Timedelta("24h")).values[0],
                                  raw["t2m_obs"].sel(time="2007-07-16").values)
    np.testing.assert_array_equal(open_store(hres)["t2m"].sel(init_time=day).values[0, 0, 0],
                                  raw["t2m_hres"].sel(time="2007-07-16").values)
    # running it again changes nothing
    assert main(["ingest", f, "--store", str(ens), "--config", str(cfg), "--quiet"]) == 0
    assert "0 init times added" in capsys.readouterr().out


def test_member_transform_biases_and_shrinks_the_ensemble(shared_data):
    """data.station.transform (the biased-Magdeburg stress test): members + offset, their
    departure from the ensemble mean x spread; observations untouched."""
    plain = open_station(shared_data / MAGDEBURG, MAGDEBURG_OPTIONS)
    opts = MAGDEBURG_OPTIONS.model_copy(update={"transform": {"offset": 8.0, "spread": 0.3}})
    biased = open_station(shared_data / MAGDEBURG, StationOptions.model_validate(opts.model_dump()))
    a = plain.forecast["t2m"].values.astype(np.float64)
    b = biased.forecast["t2m"].values.astype(np.float64)
    mean = a.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(b, mean + 8.0 + 0.3 * (a - mean), rtol=0, atol=2e-5, equal_nan=True)
    np.testing.assert_allclose(np.nanmean(b - a), 8.0, atol=1e-3)
    xr.testing.assert_identical(biased.observations, plain.observations)


def _gappy(path):
    """Two stations, 8 daily rows, the control and 4 perturbed members (seeded): row 2 has no
    member anywhere; row 5 only the control at station A; row 6 lacks member 3 at station B;
    row 7 has no member at station A (a station gap: every member alike, not reported); the
    observations lack row 3 at both stations."""
    rng = np.random.default_rng(3)
    ens = rng.normal(5.0, 2.0, (8, 5, 2)).astype(np.float32)  # time, member, station
    ens[2] = np.nan
    ens[5, :4, 0] = np.nan  # the perturbed members; the control (last column) stays
    ens[6, 3, 1] = np.nan
    ens[7, :, 0] = np.nan
    obs = rng.normal(5.0, 2.0, (8, 2)).astype(np.float32)
    obs[3] = np.nan
    time = pd.date_range("2012-04-20", periods=8, freq="1D")
    xr.Dataset({"t2m_ens": (("time", "member", "station"), ens, {"units": "degC"}),
                "t2m_obs": (("time", "station"), obs, {"units": "degC"})},
               coords={"time": time, "member": ["p1", "p2", "p3", "p4", "CTRL"],
                       "station": ["A", "B"], "latitude": ("station", [52.1, 48.0]),
                       "longitude": ("station", [11.6, 2.3])}).to_netcdf(path)
    return ens, time


def test_ingest_reports_rows_left_out_and_init_times_missing_members(tmp_path, capsys):
    """A row without any member is not a record (as before): the summary now says how many
    rows were left out and why, and how many init times hold only some members; `enspp
    inspect` counts the latter.  The store holds what it held before."""
    import json

    from enspp.flows.cli import main

    ens, time = _gappy(tmp_path / "gappy.nc")
    opts = StationOptions(variable="t2m", time="valid", hour=12, lead_time=24, control="CTRL")
    s = ingest([tmp_path / "gappy.nc"], tmp_path / "fc.zarr", kind="forecast", station=opts,
               progress=False)
    init = [f"2012-04-{d:02d}T12" for d in range(19, 27)]  # the valid dates' runs, a day before
    assert len(s.added) == 7
    assert s.left_out == (f"{init[2]}:00:00",)
    assert s.members_missing == (f"{init[5]}:00:00", f"{init[6]}:00:00")
    line = s.line()
    assert f"; 1 init time left out (every member missing: {init[2]}); " in line
    assert line.endswith(f"; 2 init times with members missing (only some members hold "
                         f"values: {init[5]}, {init[6]})")
    # the store's content is unchanged: every row but the empty one, values as in the file
    fc = open_store(tmp_path / "fc.zarr")["t2m"]
    keep = [i for i in range(8) if i != 2]
    np.testing.assert_array_equal(fc["init_time"].values,
                                  (time[keep] - pd.Timedelta("12h")).values.astype("datetime64[ns]"))
    np.testing.assert_array_equal(fc.values[:, 0, 0], ens[keep, 4])  # the control is member 0
    np.testing.assert_array_equal(fc.values[:, 0, 1:], ens[keep, :4])
    # the observations: a row without any is left out of the analysis store, and said so
    an = ingest([tmp_path / "gappy.nc"], tmp_path / "an.zarr", kind="analysis", station=opts,
                progress=False)
    assert len(an.added) == 7 and an.members_missing == ()
    assert an.line().endswith("; 1 time left out (every value missing: 2012-04-23T12)")
    # through the CLI: the printed line and `enspp inspect`
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data:\n  station: {variable: t2m, time: valid, hour: 12, lead_time: 24, "
                   "control: CTRL}\n")
    assert main(["ingest", str(tmp_path / "gappy.nc"), "--store", str(tmp_path / "cli.zarr"),
                 "--config", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 init time left out (every member missing: 2012-04-21T12)" in out
    assert "2 init times with members missing" in out
    assert main(["inspect", "--json", str(tmp_path / "cli.zarr")]) == 0
    t2m = json.loads(capsys.readouterr().out)["variables"]["t2m"]
    assert t2m["members_missing"] == 2
    assert t2m["members_missing_examples"] == [f"{init[5]}:00", f"{init[6]}:00"]
    assert main(["inspect", str(tmp_path / "cli.zarr")]) == 0
    assert (f"2 init times with members missing (only some members hold values), e.g. "
            f"{init[5]}:00, {init[6]}:00") in capsys.readouterr().out


def test_ingest_while_the_file_is_held_open_in_the_process(shared_data, tmp_path):
    """A station file that the process holds open (a notebook's xr.open_dataset) is ingested:
    netCDF-C/HDF5 kill the process when a NetCDF-4 file held open is opened from its path
    again after a second handle closed (both real files do it), so the reader opens an image
    of its bytes.  Run in a child process: without the image it dies of SIGSEGV."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import xarray as xr
        from enspp.data.ingest import ingest
        from enspp.data.station import StationOptions
        held = xr.open_dataset({str(shared_data / MAGDEBURG)!r})
        held.load()  # reads the member labels (variable-length strings) through the handle
        opts = StationOptions.model_validate({MAGDEBURG_OPTIONS.model_dump()!r})
        for i in range(2):  # two ingests: every open (the format check, the read) twice
            s = ingest([{str(shared_data / MAGDEBURG)!r}], {str(tmp_path)!r} + f"/s{{i}}.zarr",
                       progress=False, station=opts)
            print(len(s.added))
        print(str(held["member"].values[0]))  # the handle held still reads
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["4459", "4459", "forc.1"]


def test_station_file_read_from_its_path_above_the_image_limit(shared_data, monkeypatch):
    """Files above the image limit are opened from their path: the same data."""
    from enspp.data import station

    image = open_station(shared_data / MAGDEBURG, MAGDEBURG_OPTIONS)
    monkeypatch.setattr(station, "IMAGE_LIMIT_BYTES", 0)
    monkeypatch.setattr(station.open_netcdf, "__kwdefaults__", {"image_limit": 0})
    from_path = open_station(shared_data / MAGDEBURG, MAGDEBURG_OPTIONS)
    xr.testing.assert_identical(image.forecast, from_path.forecast)
    xr.testing.assert_identical(image.observations, from_path.observations)


def test_several_station_files_read_in_threads(shared_data, tmp_path):
    """Eight NetCDF station files in one ingest, read by two threads: the image opens hold
    xarray's netCDF/HDF5 lock (without it two threads inside netCDF-C crashed the process:
    SIGSEGV, bus error or double free).  Run in a child process."""
    import subprocess
    import sys
    import textwrap

    raw = xr.load_dataset(shared_data / MAGDEBURG)
    files = []
    for i in range(8):
        f = tmp_path / f"part{i}.nc"
        raw.isel(time=slice(100 * i, 100 * (i + 1))).to_netcdf(f)
        files.append(str(f))
    script = textwrap.dedent(f"""
        from enspp.data.ingest import ingest
        from enspp.data.station import StationOptions
        opts = StationOptions.model_validate({MAGDEBURG_OPTIONS.model_dump()!r})
        s = ingest({files!r}, {str(tmp_path / "s.zarr")!r}, progress=False, station=opts,
                   workers=2)
        print(len(s.added))
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.split()[-1] == "800"


def test_a_second_station_file_appends_to_the_store(shared_data, tmp_path):
    """Station files ingested one after another (the daily case): the store's station ids,
    read back as numpy StringDType, are compared with the file's (a TypeError traceback
    before); a file of another station is refused naming both."""
    raw = xr.load_dataset(shared_data / MAGDEBURG)
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    raw.isel(time=slice(0, 100)).to_netcdf(a)
    raw.isel(time=slice(100, 250)).to_netcdf(b)
    store = tmp_path / "s.zarr"
    ingest([a], store, progress=False, station=MAGDEBURG_OPTIONS)
    s = ingest([b], store, progress=False, station=MAGDEBURG_OPTIONS)
    assert len(s.added) == 150
    fc = open_store(store)
    assert fc.sizes["init_time"] == 250 and fc["station"].values.tolist() == ["10361"]
    np.testing.assert_array_equal(
        fc["t2m"].values[:, 0, 7, 0],
        raw["t2m_ens"].sel(member="forc.7").values[:250])
    other = MAGDEBURG_OPTIONS.model_copy(update={"station": MAGDEBURG_OPTIONS.station.model_copy(
        update={"id": "99999"})})
    c = tmp_path / "c.nc"
    raw.isel(time=slice(250, 260)).to_netcdf(c)
    with pytest.raises(IngestError, match=r"station.* differ \(1 value.*99999.* vs .*10361"):
        ingest([c], store, progress=False, station=other)
    assert open_store(store).sizes["init_time"] == 250


def test_stations_and_a_grid_never_share_a_store(shared_data, tmp_path):
    """A station file into a gridded store, a grid into a station store, or both in one
    ingest: refused naming both layouts, the store as it was (a station file used to add its
    dims to a grid store, and a grid a traceback to a station store)."""
    from enspp.data.store import StoreMismatchError
    from enspp.data.store_writer import append

    part = open_station(shared_data / MAGDEBURG, MAGDEBURG_OPTIONS).forecast.isel(
        init_time=slice(0, 5))
    it = part["init_time"].values
    grid = xr.Dataset(
        {"t2m": (("init_time", "lead_time", "member", "latitude", "longitude"),
                 np.full((5, 1, 3, 2, 3), 7.0, "f4"), {"units": "degC"})},
        coords={"init_time": it, "lead_time": part["lead_time"].values, "member": [0, 1, 2],
                "latitude": [50.0, 49.0], "longitude": [8.0, 9.0, 10.0]})
    for first, second, mine, theirs in ((grid, part, "stations", "a grid"),
                                        (part, grid, "a grid", "stations")):
        store = tmp_path / f"{mine[0]}.zarr"
        append(store, first)
        before = open_store(store).load()
        with pytest.raises(StoreMismatchError, match=rf"layouts differ \({mine} vs {theirs}\)"):
            append(store, second)
        xr.testing.assert_identical(open_store(store).load(), before)


_CSV_HEAD = "date,station,latitude,longitude,elevation,obs,CMCG,GFS,UKMO\n"


@pytest.mark.parametrize("rows, match", [
    # a coordinate out of range, empty or not a number: the column, the line, the station, the rule
    (["2003010100,KSEA,999,-122.3,100,5.2,1,2,3"],
     r"t\.csv: column 'latitude' holds 999 on line 2 \(station KSEA\); a latitude is a number in -90\.\.90$"),
    (["2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3", "2003010200,KSEA,,-122.3,100,5.2,1,2,3"],
     r"column 'latitude' is empty on line 3 \(station KSEA\); a latitude is a number"),
    (["2003010100,KSEA,47.4,abc,100,5.2,1,2,3"],
     r"column 'longitude' holds 'abc' on line 2 \(station KSEA\); a longitude is a number in -180\.\.360"),
    (["2003010100,KSEA,47.4,-122.3,-9999,5.2,1,2,3", "2003010200,KSEA,47.4,-122.3,-9999,5.2,1,2,3"],
     r"column 'elevation' holds -9999 on line 2 \(station KSEA; 1 more lines like it\); an? elevation"),
    # one station, two latitudes: refused, not the first row silently
    (["2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3", "2003010200,KSEA,48.4,-122.3,100,5.2,1,2,3"],
     r"station KSEA has latitude 47\.4 on line 2 but 48\.4 on line 3 \(column 'latitude'; one "
     r"latitude per station\)"),
    # dates: an empty cell names its line; an unparseable one its value, one line of pandas
    (["2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3", ",KSEA,47.4,-122.3,100,5.2,1,2,3"],
     r"column 'date' \(time\) is empty on line 3$"),
    (["2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3", "xx,KSEA,47.4,-122.3,100,5.2,1,2,3"],
     r"""column 'date' does not parse as times with format '%Y%m%d%H': 'xx' on line 3 \(time """
     r"""data "xx" doesn't match format "%Y%m%d%H"\)$"""),
    # a header and no rows
    ([], r"t\.csv: holds no rows \(a header only\)$"),
])
def test_csv_bad_cells_are_refused_in_one_line(tmp_path, rows, match):
    (tmp_path / "t.csv").write_text(_CSV_HEAD + "".join(r + "\n" for r in rows))
    with pytest.raises(ReaderError, match=match) as e:
        open_station(tmp_path / "t.csv", BMA)
    assert "\n" not in str(e.value)


def test_csv_duplicate_member_column_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text(_CSV_HEAD.replace("UKMO", "UKMO,GFS")
                                    + "2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3,4\n")
    with pytest.raises(ReaderError, match=r"t\.csv: column 'GFS' is in the header 2 times"):
        open_station(tmp_path / "t.csv", BMA)
    # a repeated column the options do not use is harmless
    (tmp_path / "u.csv").write_text(_CSV_HEAD.replace("UKMO", "UKMO,note,note")
                                    + "2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3,a,b\n")
    assert open_station(tmp_path / "u.csv", BMA).forecast.sizes["member"] == 3


def test_csv_station_coordinates_are_kept_per_station(tmp_path):
    (tmp_path / "t.csv").write_text(
        _CSV_HEAD + "2003010100,KSEA,47.4,-122.3,100,5.2,1,2,3\n"
        "2003010100,KPDX,45.6,237.4,-20,5.2,1,2,3\n2003010200,KSEA,47.40,-122.3,100.0,5.2,1,2,3\n")
    fc = open_station(tmp_path / "t.csv", BMA).forecast
    assert fc["station"].values.tolist() == ["KSEA", "KPDX"]
    np.testing.assert_array_equal(fc["latitude"].values, [47.4, 45.6])
    np.testing.assert_array_equal(fc["longitude"].values, [-122.3, 237.4])
    np.testing.assert_array_equal(fc["elevation"].values, [100, -20])


def test_a_negative_lead_time_in_a_station_file_is_refused(tmp_path):
    time = pd.date_range("2010-01-01", periods=3)
    xr.Dataset({"t2m_ens": (("time", "member"), np.ones((3, 2), np.float32), {"units": "K"})},
               coords={"time": time, "member": [0, 1],
                       "lead_time": ((), -24.0, {"units": "hours"})}).to_netcdf(tmp_path / "s.nc")
    with pytest.raises(ReaderError, match=r"s\.nc: lead_time is -24 h, not a lead time >= 0"):
        open_station(tmp_path / "s.nc", StationOptions(time="init", station={"id": "1"}))
