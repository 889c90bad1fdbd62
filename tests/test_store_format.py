"""The store format (schema 2): fields absent or present, stores that grow by variables and
lead times, commits that cost the same at any store size, a kill at every write, the
migration of schema-1 stores, and damaged chunks named on read and by ``validate --deep``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from test_store import digest, forecast

from enspp.data.store import (
    StoreError,
    StoreReadError,
    checked_array,
    field_present,
    is_store,
    open_store,
    present_fields,
    validate_store,
)
from enspp.data.store_meta import iter_sources, open_meta
from enspp.data.store_template import FAULT_ENV, Faults
from enspp.data.store_writer import append


def with_lead(ds: xr.Dataset, hours: int, seed: int) -> xr.Dataset:
    """``ds`` at one more lead time (other values)."""
    rng = np.random.default_rng(seed)
    extra = ds.isel(lead_time=[0]).assign_coords(
        lead_time=pd.to_timedelta([hours], unit="h").as_unit("ns").values)
    extra = extra.copy(data={k: (v.values + rng.standard_normal(v.shape)).astype("f4")
                             for k, v in extra.data_vars.items()})
    return extra


def growth(seed: int = 1) -> xr.Dataset:
    """A second input for a store holding ``forecast(["2020-01-01"])``: a new init time, a
    new lead time (+48 h, for both init times) and a new variable (msl); the fields the store
    already has are absent (NaN everywhere) in it."""
    base = forecast(["2020-01-01", "2020-01-02"], seed=seed)
    ds = xr.concat([base, with_lead(base, 48, seed)], dim="lead_time")
    old = (ds.init_time == np.datetime64("2020-01-01", "ns")) & (ds.lead_time < np.timedelta64(48, "h"))
    ds["z"] = ds["z"].where(~old)
    ds["t2m"] = ds["t2m"].where(~old)
    ds["msl"] = (100_000 + ds["t2m"]).astype("f4").assign_attrs(units="Pa")
    return ds


# -- absent fields, and stores that grow by variables and lead times ----------------------

def test_a_store_grows_by_records_lead_times_and_variables(tmp_path):
    store = tmp_path / "s.zarr"
    first = forecast(["2020-01-01"])
    append(store, first)
    second = growth()
    result = append(store, second)
    assert result.added == ("2020-01-02T00:00:00",)
    assert result.extended == ("2020-01-01T00:00:00",)
    out = open_store(store).compute()
    assert [int(h) for h in out.lead_time.values / np.timedelta64(1, "h")] == [0, 24, 48]
    assert set(out.data_vars) == {"z", "t2m", "msl"}
    xr.testing.assert_equal(out[["z", "t2m"]].sel(init_time=["2020-01-01"], lead_time=first.lead_time),
                            first[["z", "t2m"]])
    xr.testing.assert_equal(out.sel(init_time=["2020-01-02"]), second.sel(init_time=["2020-01-02"])[list(out.data_vars)])
    present = present_fields(store)
    assert present["msl"].values.tolist() == [[False, False, True], [True, True, True]]
    assert present["t2m"].values.tolist() == [[True, True, True], [True, True, True]]
    assert field_present(present, "z500").values.tolist() == present["z"].values.tolist()
    # msl of the first init time at 0/24 h is absent: NaN on read, and not an error
    assert out["msl"].sel(init_time="2020-01-01").isel(lead_time=[0, 1]).isnull().all()
    before = digest(store)
    again = append(store, second)  # the same bytes again: nothing to do
    assert not again.changed and digest(store) == before
    assert validate_store(store).ok


def test_a_lead_time_added_before_the_others_reads_in_order(tmp_path):
    store = tmp_path / "s.zarr"
    ds = forecast(["2020-01-01", "2020-01-02"], leads=(24, 48))
    append(store, ds)
    early = with_lead(ds, 12, seed=5)
    append(store, early)
    out = open_store(store)
    assert list(out.lead_time.values / np.timedelta64(1, "h")) == [12, 24, 48]
    np.testing.assert_array_equal(out["t2m"].sel(lead_time="12h").values,
                                  early["t2m"].isel(lead_time=0).values)


def test_a_field_from_other_bytes_is_refused_and_the_store_unchanged(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(["2020-01-01"]))
    before = digest(store)
    other = forecast(["2020-01-01"], seed=9)[["t2m"]]
    with pytest.raises(StoreError, match=r"init_time 2020-01-01T00:00:00 is already complete in "
                                         r"store .* from other bytes \(<in-memory dataset>\) for "
                                         r"variable 't2m', \+0 h"):
        append(store, other)
    assert digest(store) == before


def test_a_record_without_any_field_is_not_added(tmp_path):
    store = tmp_path / "s.zarr"
    ds = forecast(["2020-01-01", "2020-01-02"])
    ds = ds.where(ds.init_time == np.datetime64("2020-01-01", "ns"))
    result = append(store, ds)
    assert result.added == ("2020-01-01T00:00:00",)
    assert open_store(store).sizes["init_time"] == 1


# -- commits that do not grow with the store ----------------------------------------------

def _writes_of_one_append(store: Path, init: str) -> int:
    Faults.total = 0
    append(store, forecast([init], seed=7))
    return Faults.total


def test_appending_one_init_time_writes_the_same_files_at_any_store_size(tmp_path):
    """The files one append writes (data chunks, bookkeeping chunks, template) do not depend
    on how many init times the store holds: nothing rewritten grows with the store."""
    small, large = tmp_path / "small.zarr", tmp_path / "large.zarr"
    days = pd.date_range("2000-01-01", periods=600, freq="D").strftime("%Y-%m-%d")
    append(small, forecast(days[:3]))
    append(large, forecast(days))  # more records than one bookkeeping chunk holds (512)
    sizes = []
    for store in (small, large):
        n = _writes_of_one_append(store, "2030-01-01")
        sizes.append(n)
        root = json.loads((store / "zarr.json").read_text())
        assert len(json.dumps(root)) < 20_000  # the root file holds no per-record list
    assert sizes[0] == sizes[1], sizes


# -- a kill at every write ----------------------------------------------------------------

def _visible(store: Path) -> dict[str, xr.DataArray]:
    """Every field a reader sees: (variable) -> values where present."""
    ds = open_store(store).compute()
    present = present_fields(store)
    return {v: ds[v].where(present[v]) for v in ds.data_vars}


def _kill_at(store: Path, k: int, ds: xr.Dataset) -> bool:
    """Append ``ds`` in a forked child killed by SIGKILL at its ``k``-th write; True if killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ[FAULT_ENV] = str(k)
        try:
            append(store, ds)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.parametrize("seeded", [
    pytest.param(False, id="new-store", marks=pytest.mark.slow), pytest.param(True, id="growing-store")])
def test_a_kill_at_every_write_is_finished_by_a_rerun(tmp_path, seeded):
    """Kill the append at each of its writes in turn: the store then reads as a subset of
    the finished one (never a partial or uncommitted field), ``validate`` finds nothing
    inconsistent, and re-running the same append gives exactly the finished store."""
    first = forecast(["2020-01-01"])
    second = growth()
    seed, clean = tmp_path / "seed.zarr", tmp_path / "clean.zarr"
    if seeded:
        append(seed, first)
        append(clean, first)
    Faults.total = 0
    append(clean, second)
    writes = Faults.total
    assert writes > 10
    finished = _visible(clean)
    for k in range(1, writes + 1):
        store = tmp_path / f"k{k}.zarr"
        if seeded:
            shutil.copytree(seed, store)
        assert _kill_at(store, k, second), f"the child was not killed at write {k}"
        if is_store(store) and open_meta(store).complete.any():
            for var, seen in _visible(store).items():  # what is visible is finished data
                mine = finished[var].sel({d: seen[d] for d in seen.dims if d in ("init_time", "lead_time")})
                assert bool(((seen == mine) | seen.isnull()).all()), (k, var)
        append(store, second)
        for var, done in _visible(store).items():
            xr.testing.assert_identical(done, finished[var])
        xr.testing.assert_identical(present_fields(store), present_fields(clean))
        assert validate_store(store).ok, (k, validate_store(store).summary())
        shutil.rmtree(store)


# -- schema version 1 ---------------------------------------------------------------------

def make_v1_store(path: Path, ds: xr.Dataset, source_name: str = "a.grib") -> None:
    """A store as enspp wrote it before schema 2 (bookkeeping in the root attributes)."""
    from zarr.codecs import BloscCodec

    enc = {"init_time": {"units": "seconds since 1970-01-01", "dtype": "int64", "chunks": (4096,)}}
    for name, var in ds.data_vars.items():
        enc[name] = {"chunks": (1, 1) + var.shape[2:], "fill_value": np.float32(np.nan),
                     "compressors": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True, encoding=enc)
    keys = [str(np.datetime_as_string(t, unit="s")) for t in ds.init_time.values]
    group = zarr.open_group(path, mode="r+", use_consolidated=True)
    group.attrs.update({"enspp_kind": "forecast", "enspp_schema_version": 1,
                        "enspp_complete": keys,
                        "provenance": {"created": "2026-01-01T00:00:00Z", "updated": "x",
                                       "reader": "enspp 0.1",
                                       "sources": [{"path": f"/in/{source_name}", "name": source_name,
                                                    "sha256": "ab" * 32, "bytes": 10,
                                                    "reader": "enspp 0.1", "ingested": "x",
                                                    "records": keys}]}})
    zarr.consolidate_metadata(path)


def test_a_schema_1_store_is_read_as_it_is_and_migrated_once(tmp_path, capsys):
    store = tmp_path / "old.zarr"
    ds = forecast(["2020-01-01", "2020-01-02"])
    make_v1_store(store, ds)
    xr.testing.assert_equal(open_store(store)[["z", "t2m"]].compute(), ds)
    report = validate_store(store)
    assert report.version == 1 and "migrates it to version 2" in report.summary()
    before = digest(store)
    with pytest.raises(StoreError, match="already complete"):  # refused: nothing migrated
        append(store, forecast(["2020-01-02"], seed=5))
    assert digest(store) == before
    result = append(store, forecast(["2020-01-03"], seed=3))
    assert result.added == ("2020-01-03T00:00:00",)
    assert "migrated from schema version 1 to 2" in result.notes[0]
    assert "migrated" in capsys.readouterr().err
    assert json.loads((store / "zarr.json").read_text())["attributes"]["enspp_schema_version"] == 2
    out = open_store(store).compute()
    assert out.sizes["init_time"] == 3
    xr.testing.assert_equal(out[["z", "t2m"]].isel(init_time=[0, 1]), ds)
    assert sorted(s.name for s in iter_sources(store)) == ["<in-memory dataset>", "a.grib"]
    assert validate_store(store).ok
    again = append(store, forecast(["2020-01-04"], seed=4))
    assert again.notes == ()  # migrated once


# -- damaged chunks ------------------------------------------------------------------------

@pytest.fixture
def small_store(tmp_path) -> Path:
    store = tmp_path / "s.zarr"
    append(store, forecast(["2020-01-01", "2020-01-02", "2020-01-03"]))
    return store


def test_a_corrupt_chunk_is_named_on_read(small_store):
    chunk = small_store / "t2m" / "c" / "1" / "1" / "0" / "0" / "0"
    rng = np.random.default_rng(0)
    chunk.write_bytes(rng.integers(0, 256, chunk.stat().st_size, dtype=np.uint8).tobytes())
    ds = open_store(small_store)
    assert np.isfinite(ds["t2m"].isel(init_time=0).values).all()  # other chunks read fine
    pattern = (r"store .*s\.zarr: variable 't2m', chunk 1/1/0/0/0 \(init_time 2020-01-02T00:00, "
               r"lead_time \+24 h\): corrupt chunk")
    with pytest.raises(StoreReadError, match=pattern):
        ds["t2m"].load()
    with pytest.raises(StoreReadError, match=pattern):
        checked_array(small_store, "t2m")[1:2, 1]
    report = validate_store(small_store, deep=True)
    assert not report.ok and report.counts == {"corrupt": 1}
    assert "chunk 1/1/0/0/0" in report.summary()


def test_a_flipped_byte_is_caught_by_the_checksum(small_store):
    chunk = small_store / "z" / "c" / "2" / "0" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreReadError, match="checksum mismatch"):
        open_store(small_store)["z"].load()


def test_a_missing_chunk_is_named_on_read_not_read_as_nan(small_store):
    (small_store / "z" / "c" / "0" / "1" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreReadError, match=r"variable 'z', chunk 0/1/0/0/0/0 \(init_time "
                                             r"2020-01-01T00:00, lead_time \+24 h\): the chunk "
                                             r"file is missing although its field was ingested"):
        open_store(small_store)["z"].mean().compute()
    report = validate_store(small_store, deep=True)
    assert report.counts == {"missing": 1}


def test_validate_deep_on_a_sound_store(small_store, capsys):
    from enspp.flows.cli import main

    report = validate_store(small_store, deep=True)
    assert report.ok and report.chunks_checked == 3 * 2 * 2
    assert main(["validate", str(small_store), "--deep"]) == 0
    assert "deep check: 12 chunks read" in capsys.readouterr().out
    assert main(["validate", str(small_store)]) == 0  # says what it did not check
    assert capsys.readouterr().out.rstrip().endswith("; chunks not read (--deep decodes every one)")


def test_validate_reports_inconsistent_bookkeeping(small_store, capsys):
    from enspp.flows.cli import main

    (entry,) = list((small_store / "enspp" / "sources").glob("*.json"))
    entry.unlink()  # a committed field whose source is not recorded
    report = validate_store(small_store)
    assert not report.ok and report.counts["inconsistent"] == 3 * 2 * 2
    assert "which the provenance log does not hold" in report.summary()
    assert main(["validate", str(small_store)]) == 1
    assert "INVALID forecast store" in capsys.readouterr().out


@pytest.mark.slow
def test_a_kill_at_every_write_of_a_real_multi_file_ingest(tmp_path, shared_data):
    """The same for ``enspp ingest`` of one GRIB file per parameter (the HRES analyses):
    killed at each of its writes, re-running it gives the store of an uninterrupted run."""
    from enspp.data.ingest import ingest

    an = shared_data / "gridded" / "ecmwf_hres_fc_vs_analysis_2016092500" / "an"
    clean = tmp_path / "clean.zarr"
    Faults.total = 0
    ingest(an, clean, kind="analysis", progress=False)
    writes = Faults.total
    finished = _visible(clean)
    for k in range(1, writes + 1):
        store = tmp_path / f"k{k}.zarr"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.environ[FAULT_ENV] = str(k)
            try:
                ingest(an, store, kind="analysis", progress=False)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), k
        ingest(an, store, kind="analysis", progress=False)
        for var, done in _visible(store).items():
            xr.testing.assert_identical(done, finished[var])
        assert validate_store(store).ok, (k, validate_store(store).summary())
        shutil.rmtree(store)
