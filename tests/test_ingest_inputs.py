"""Ingest of what users bring: files split by parameter, later variables, bad directories,
implausible values, other centres, unwritable stores, and ``enspp inspect``."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import eccodes
import numpy as np
import pytest
import xarray as xr
from test_store import digest, forecast

from enspp.data.grib_writer import write_grib
from enspp.data.ingest import IngestError, ingest
from enspp.data.ingest_grib import decode_grib
from enspp.data.store import StoreError, open_store, present_fields
from enspp.data.store_meta import iter_sources
from enspp.data.store_writer import append
from enspp.flows.cli import main

HRES = "gridded/ecmwf_hres_fc_vs_analysis_2016092500"


def grib(path: Path, ds: xr.Dataset, kind: str = "forecast") -> Path:
    write_grib(path, ds, kind=kind)
    return path


def edit_messages(src: Path, dst: Path, edit) -> Path:
    """Copy ``src`` to ``dst`` message by message, ``edit(handle)`` applied to each."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while (h := eccodes.codes_grib_new_from_file(fin)) is not None:
            edit(h)
            eccodes.codes_write(h, fout)
            eccodes.codes_release(h)
    return dst


# -- one dataset split over many files ----------------------------------------------------

def test_one_file_per_parameter_merges_into_one_store(tmp_path, shared_data):
    an = shared_data / HRES / "an"
    store = tmp_path / "an.zarr"
    summary = ingest(an, store, kind="analysis", progress=False)
    assert summary.variables == ("msl", "pv", "t", "u", "u10", "v", "v10", "w")
    assert len(summary.added) == 13 and summary.files == 8
    out = open_store(store).compute()
    for f in sorted(an.glob("*.grib")):
        one = decode_grib(f, kind="analysis")
        for name in one.data_vars:
            xr.testing.assert_equal(out[name], one[name].transpose(*out[name].dims))
    before = digest(store)
    again = ingest(an, store, kind="analysis", progress=False)
    assert again.files_already_ingested == 8 and "store unchanged" in again.line()
    assert digest(store) == before


def test_a_later_ingest_adds_variables_to_existing_times(tmp_path, shared_data):
    an = shared_data / HRES / "an"
    store = tmp_path / "an.zarr"
    ingest([an / "t_pl.grib"], store, kind="analysis", progress=False)
    more = ingest([an / "u_pl.grib", an / "msl_sfc.grib"], store, kind="analysis", progress=False)
    assert more.added == () and len(more.extended) == 13
    assert "13 extended with new fields" in more.line()
    out = open_store(store)
    assert set(out.data_vars) == {"t", "u", "msl"}
    assert all(bool(present_fields(store)[v].all()) for v in ("t", "u", "msl"))
    xr.testing.assert_equal(out["msl"].compute(),
                            decode_grib(an / "msl_sfc.grib", kind="analysis")["msl"])


def test_hres_forecast_directory_and_the_storm_files(tmp_path, shared_data):
    fc = ingest(shared_data / HRES / "fc", tmp_path / "fc.zarr", progress=False)
    assert fc.variables == ("msl", "pv", "t", "tp", "u", "u10", "v", "v10", "w")
    assert fc.members == 1 and len(fc.added) == 1
    lead = open_store(tmp_path / "fc.zarr").lead_time.values / np.timedelta64(1, "h")
    assert lead.tolist() == [0, 120]
    hres = shared_data / "gridded" / "ecmwf_hres_stjude-storm_2013102500_10fg3_z850.grib"
    storm = ingest([hres], tmp_path / "hres.zarr", progress=False)
    assert storm.variables == ("10fg3", "z")
    assert present_fields(tmp_path / "hres.zarr")["z"].values.tolist() == [[False, True, False]]


def test_a_directory_mixing_two_grids_is_refused_naming_both(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    a = grib(d / "a.grib", forecast(["2020-01-01"]))
    b = grib(d / "b.grib", forecast(["2020-01-02"], nlat=7))
    store = tmp_path / "s.zarr"
    with pytest.raises(IngestError, match=rf"{re.escape(str(b))} does not match "
                                          rf"{re.escape(str(a))}: grids \(latitude\) differ"):
        ingest(d, store, progress=False)
    assert not store.exists() or not any(store.iterdir())


def test_a_variable_in_other_units_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(["2020-01-01"]))
    before = digest(store)
    other = forecast(["2020-01-02"], units="degC")
    with pytest.raises(StoreError, match=r"does not match store .*: units of 't2m' differ "
                                         r"\(degC vs K\)"):
        append(store, other)
    assert digest(store) == before


def test_errors_about_many_files_are_summarised(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(30):
        (d / f"note{i:02d}.grib").write_text("not a weather file\n")
    with pytest.raises(IngestError) as err:
        ingest(d, tmp_path / "s.zarr", progress=False)
    text = str(err.value)
    lines = text.splitlines()
    # one problem of 30 files: told once, naming the first two and counting the rest
    assert lines[0].startswith("30 of the inputs refused") and len(lines) == 2
    assert lines[1].startswith(f"  {d / 'note00.grib'}, {d / 'note01.grib'} and 28 more files: ")
    assert lines[1].endswith("unknown format (not GRIB, NetCDF or Zarr)") and len(text) < 1000


def test_a_mixed_directory_is_told_in_a_few_lines_one_per_problem(tmp_path, shared_data, capsys):
    """The real gridded directory (an analysis ensemble among forecasts, three grids):
    `enspp ingest` prints a line per problem, each naming its files, and counts the rest."""
    store = tmp_path / "all.zarr"
    assert main(["ingest", str(shared_data / "gridded"), "--store", str(store), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("enspp ingest: error: 5 of the inputs refused, store")
    assert "left unchanged" in err[0] and 3 <= len(err) <= 5
    assert any(line.startswith("  /") and line.endswith(
        "/era5_eda_10members_z_t_500_850_20170101-02.grib holds analysis data but the other "
        "inputs hold forecast data") for line in err)
    assert any(" does not match " in line and "grids (latitude) differ (41 values 75..35 vs 46 "
               "values 65..20)" in line for line in err)
    assert err[-1].startswith("  and ") and all(len(line) < 450 for line in err)
    assert not store.exists() or not any(store.iterdir())


# -- implausible values --------------------------------------------------------------------

def _shift_reference(h: int, delta: float) -> None:
    """Rewrite a GRIB 2 message's reference value (section 5, octets 12-15) as a corrupted
    byte would: every decoded value moves by ``delta``."""
    if eccodes.codes_get(h, "shortName") != "2t":
        return
    msg = bytearray(eccodes.codes_get_message(h))
    at = eccodes.codes_get(h, "offsetSection5") + 11
    ref = np.frombuffer(bytes(msg[at:at + 4]), dtype=">f4")[0]
    msg[at:at + 4] = np.array([ref + delta], dtype=">f4").tobytes()
    new = eccodes.codes_new_from_message(bytes(msg))
    eccodes.codes_set_values(h, eccodes.codes_get_values(new))
    eccodes.codes_release(new)


def test_a_shifted_reference_value_is_refused_naming_variable_member_and_step(tmp_path):
    good = grib(tmp_path / "good.grib", forecast(["2020-01-01"]))
    bad = edit_messages(good, tmp_path / "flipped.grib", lambda h: _shift_reference(h, -170.0))
    store = tmp_path / "s.zarr"
    pattern = (r"flipped\.grib: variable 't2m' \(K\) at init_time 2020-01-01T00:00, step \+0 h, "
               r"member 0: values 10\d\.\d+\.\.11\d\.\d+ outside the plausible range 150\.\.350 K")
    with pytest.raises(IngestError, match=pattern):
        ingest([bad], store, progress=False)
    assert not store.exists() or not any(store.iterdir())
    ok = ingest([bad], store, progress=False, bounds={"t2m": (50.0, 350.0)})  # overridden
    assert len(ok.added) == 1


def test_a_field_of_1e30_is_refused(tmp_path, capsys):
    ds = forecast(["2020-01-01"])
    ds["t2m"][0, 1, 2] = 1e30
    bad = grib(tmp_path / "huge.grib", ds)
    store = tmp_path / "s.zarr"
    assert main(["ingest", str(bad), "--store", str(store), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"huge\.grib: variable 't2m' \(K\) at init_time 2020-01-01T00:00, step "
                     r"\+24 h, member 2: values .*\.\.1e\+30 outside the plausible range", err), err
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("data: {bounds: {t2m: null}}\n")  # the check switched off for t2m
    assert main(["ingest", str(bad), "--store", str(store), "--quiet", "--config", str(cfg)]) == 0
    cfg.write_text("data: {bounds: {t2m: [300, 200]}}\n")
    assert main(["validate", str(cfg)]) == 1
    assert "lower bound 300.0 is not below the upper bound 200.0" in capsys.readouterr().err


def test_default_bounds_by_variable_and_units():
    from enspp.data.field_checks import bounds_for

    assert bounds_for("t2m", "K") == (150.0, 350.0)
    assert bounds_for("t2m", "degC") == pytest.approx((-123.15, 76.85))
    assert bounds_for("tp", "m") == (0.0, 5.0) and bounds_for("tp24", "mm")[0] == 0.0
    assert bounds_for("unknown_wind", "m s-1") == (-250.0, 250.0)
    assert bounds_for("t2m", "K", {"t2m": None}) is None
    assert bounds_for("sd", "m") is None  # no bound known: not checked


def test_negative_precipitation_is_refused(tmp_path):
    ds = forecast(["2020-01-01"])[["t2m"]].rename(t2m="tp")
    ds["tp"] = (ds["tp"] * 0 + 0.001).assign_attrs(units="m")
    ds["tp"][0, 0, 1, 0, 0] = -0.5
    with pytest.raises(ValueError, match=r"variable 'tp' \(m\) .* member 1: values -0\.5\.\.0\.001 "
                                         r"outside the plausible range 0\.\.5 m"):
        append(tmp_path / "s.zarr", ds)


# -- centres and the store's directory -----------------------------------------------------

def test_a_file_from_another_centre_is_refused_unless_allowed(tmp_path):
    ecmf = grib(tmp_path / "ecmf.grib", forecast(["2020-01-01"]))
    ncep = edit_messages(grib(tmp_path / "tmp.grib", forecast(["2020-01-02"], seed=4)),
                         tmp_path / "kwbc.grib", lambda h: eccodes.codes_set(h, "centre", "kwbc"))
    store = tmp_path / "s.zarr"
    ingest([ecmf], store, progress=False)
    before = digest(store)
    with pytest.raises(IngestError, match=r"kwbc\.grib comes from centre\(s\) kwbc but store .* "
                                          r"holds data from ecmf; refusing to mix"):
        ingest([ncep], store, progress=False)
    assert digest(store) == before
    ingest([ncep], store, progress=False, allow_mixed_centres=True)
    assert json.loads((store / "zarr.json").read_text())["attributes"]["enspp_centres"] == "ecmf kwbc"
    assert sorted(s.centre for s in iter_sources(store)) == ["ecmf", "kwbc"]


def test_an_unwritable_store_directory_says_so(tmp_path, monkeypatch):
    from enspp.data import lock

    store = tmp_path / "ro" / "s.zarr"
    real_open = lock.os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", read_only)
    with pytest.raises(StoreError, match=r"the store's directory .*ro is not writable "
                                         r"\(Read-only file system\)"):
        append(store, forecast(["2020-01-01"]))
    monkeypatch.undo()
    append(store, forecast(["2020-01-01"]))
    monkeypatch.setattr("os.access", lambda p, mode: False)
    with pytest.raises(StoreError, match="the store's directory is not writable"):
        append(store, forecast(["2020-01-02"]))


# -- inspect ------------------------------------------------------------------------------

def test_inspect_shows_what_a_store_holds(tmp_path, shared_data, capsys):
    storm = shared_data / "gridded" / "ecmwf_ens_stjude-storm_2013102500_10fg3_z850.grib"
    store = tmp_path / "ens.zarr"
    ingest([storm], store, progress=False)
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    assert "kind        forecast (schema version 2, CF-1.10)" in out
    assert "lead times  +72 h, +78 h, +84 h" in out
    assert "members     51 (0..50; control included)" in out
    assert re.search(r"z +m2 s-2, levels \[850\] hPa; Geopotential; 1 field; absent: 72h x1, 84h x1", out)
    assert "regular lat/lon 31 x 48, 0.75 x 0.75 deg" in out
    assert "1 source (661.0 kB read), centres ecmf" in out
    assert main(["inspect", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variables"]["z"]["absent"] == {"72h": 1, "84h": 1}
    assert info["records"]["complete"] == 1 and info["members"]["count"] == 51
    assert info["bytes_on_disk"] > 0 and info["provenance"]["centres"] == ["ecmf"]
    assert main(["inspect", str(tmp_path / "nope.zarr")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_inspect_counts_missing_init_times(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    append(store, forecast(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-06"]))
    from enspp.data.inspect import inspect_store

    rec = inspect_store(store)["records"]
    assert rec["frequency"] == "24 h" and rec["missing"] == 2
    assert rec["missing_examples"] == ["2020-01-03T00:00", "2020-01-05T00:00"]


# -- the pipeline skips samples that need an absent field ----------------------------------

def test_alignment_skips_init_times_with_absent_fields(tmp_path):
    from test_store import analysis

    from enspp.pipeline.align import align

    fc = forecast(["2020-01-01", "2020-01-02", "2020-01-03"], leads=(24, 48), nlat=4, nlon=5)
    fc = fc.assign_coords(latitude=[40.0, 39.0, 38.0, 37.0], longitude=[0.0, 1.0, 2.0, 3.0, 4.0])
    fc["t2m"] = fc["t2m"].where(~((fc.init_time == np.datetime64("2020-01-02", "ns"))
                                  & (fc.lead_time == np.timedelta64(24, "h"))))
    append(tmp_path / "fc.zarr", fc)
    append(tmp_path / "an.zarr", analysis(["2020-01-03", "2020-01-04", "2020-01-05"]))
    f, a = open_store(tmp_path / "fc.zarr"), open_store(tmp_path / "an.zarr")
    lead = np.timedelta64(48, "h")
    plain = align(f, a, lead_time=lead)
    assert len(plain.init_times) == 3
    both = align(f, a, lead_time=lead, input_lead_times=(np.timedelta64(24, "h"),),
                 variables=("t2m", "z500"), targets=("t2m",))
    assert [str(t)[:10] for t in both.init_times] == ["2020-01-01", "2020-01-03"]
    assert len(both.absent) == 1 and "1 skipped because a field they need is absent" in both.report()
    only48 = align(f, a, lead_time=lead, variables=("t2m",), targets=("t2m",))
    assert len(only48.init_times) == 3  # the absent field is at +24 h, not needed here


def test_inspect_a_twice_weekly_schedule(tmp_path):
    from enspp.data.inspect import format_inspect, inspect_store

    store = tmp_path / "s.zarr"
    append(store, forecast(["2020-01-06", "2020-01-09", "2020-01-13", "2020-01-16"]))
    info = inspect_store(store)
    assert info["records"]["steps"] == ["3 days", "4 days"] and info["records"]["missing"] == 0
    assert "in steps of 3 days and 4 days" in format_inspect(info)


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    """`enspp inspect STORE | head -1`: the reader closing the pipe is not an error."""
    store = tmp_path / "s.zarr"
    append(store, forecast(["2020-01-01"]))
    proc = subprocess.Popen([sys.executable, "-m", "enspp.flows.cli", "inspect", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_a_forecast_given_as_analyses_is_refused_unless_at_step_0(tmp_path, capsys):
    """``--kind analysis`` on forecast messages at later steps would store a +24 h forecast
    as the analysis of its valid time: refused with one line naming the file (by the ingest
    and by the reader); forecast fields at step 0 are the analysis they start from and are
    taken as analyses."""
    from enspp.data.readers import open_grib
    from enspp.data.translate import ReaderError

    fc = forecast(["2020-01-01T00"], members=1, leads=(0, 24))
    path = grib(tmp_path / "hres_fc.grib", fc)
    with pytest.raises(IngestError, match=r"hres_fc.grib: holds forecast messages \(dataType "
                                          r"\[.*\], steps \+24 h\), expected analyses"):
        ingest([path], tmp_path / "an.zarr", kind="analysis", progress=False)
    with pytest.raises(ReaderError, match="steps \\+24 h\\), expected analyses"):
        open_grib([path], kind="analysis")
    assert not (tmp_path / "an.zarr").exists()
    assert main(["ingest", str(path), "--store", str(tmp_path / "an.zarr"), "--kind",
                 "analysis"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("enspp ingest: error: 1 of the inputs refused") and \
        "hres_fc.grib: holds forecast messages" in err  # one line per refused input
    step0 = grib(tmp_path / "step0.grib", fc.isel(lead_time=[0]))
    ingest([step0], tmp_path / "an0.zarr", kind="analysis", progress=False)
    an = open_store(tmp_path / "an0.zarr")
    assert an.sizes["time"] == 1 and str(an.time.values[0])[:13] == "2020-01-01T00"
    np.testing.assert_allclose(an["t2m"].values[0], fc["t2m"].values[0, 0, 0], atol=0.01)
    assert open_grib([step0], kind="analysis").sizes["time"] == 1


def test_field_stats_of_an_empty_input_is_not_a_numpy_error():
    """No records: no fields (as the numpy path says, chunked or not); no points: one line."""
    from enspp.data.field_checks import field_stats
    from enspp.data.schema import SchemaError

    da = xr.DataArray(np.zeros((0, 2, 3, 4)), dims=("init_time", "lead_time", "latitude", "longitude"),
                      name="t2m")
    for given in (da, da.chunk()):
        st = field_stats(given)
        assert st.minimum.shape == st.n_nan.shape == (0, 2) and st.points == 12
    none = xr.DataArray(np.zeros((3, 1, 0)), dims=("init_time", "member", "station"), name="t2m")
    for given in (none, none.chunk()):
        with pytest.raises(SchemaError, match=r"^variable 't2m' holds no values \(dim 'station' is empty\)$"):
            field_stats(given)
