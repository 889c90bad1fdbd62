"""data.store / data.store_writer: layout, idempotent atomic appends, refusals, recovery, lock."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from enspp.data import store_writer
from enspp.data.lock import StoreLockedError, lock_path, store_lock
from enspp.data.schema import SchemaError
from enspp.data.store import (
    SCHEMA_VERSION,
    StoreError,
    StoreMismatchError,
    open_store,
    record_dim,
    to_store_layout,
    validate_store,
)
from enspp.data.store_writer import append


def forecast(inits, *, members=3, seed=0, nlat=6, nlon=8, leads=(0, 24), levels=(500, 850),
             units="K") -> xr.Dataset:
    """A small canonical forecast (z on levels, t2m at the surface; t2m about 280 K, or
    7 degC with ``units="degC"``)."""
    rng = np.random.default_rng(seed)
    it = pd.to_datetime(list(inits)).as_unit("ns").values
    shape = (len(it), len(leads), members)
    coords = {"init_time": it, "lead_time": pd.to_timedelta(list(leads), unit="h").as_unit("ns").values,
              "member": np.arange(members), "level": np.array(levels),
              "latitude": np.linspace(60, 30, nlat), "longitude": np.linspace(0, 14, nlon)}
    dims = ("init_time", "lead_time", "member")
    return xr.Dataset({
        "z": (dims + ("level", "latitude", "longitude"),
              (50000 + 100 * rng.standard_normal(shape + (len(levels), nlat, nlon))).astype("f4"),
              {"units": "m2 s-2"}),
        "t2m": (dims + ("latitude", "longitude"),
                ((7 if units == "degC" else 280) + rng.standard_normal(shape + (nlat, nlon)))
                .astype("f4"), {"units": units}),
    }, coords=coords)


def analysis(times, *, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t = pd.to_datetime(list(times)).as_unit("ns").values
    return xr.Dataset({"t2m": (("time", "latitude", "longitude"),
                               (280 + rng.standard_normal((len(t), 4, 5))).astype("f4"), {"units": "K"})},
                      coords={"time": t, "latitude": [40.0, 39.0, 38.0, 37.0],
                              "longitude": [0.0, 1.0, 2.0, 3.0, 4.0]})


def digest(store: Path) -> dict[str, str]:
    """Content of a store, file by file."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


INITS = ["2020-01-01", "2020-01-02", "2020-01-03"]


def test_a_variable_on_levels_added_to_a_surface_store_keeps_the_store(tmp_path):
    """A parameter on pressure levels ingested into a store of surface fields (the
    one-file-per-parameter archive, file by file): the new ``level`` coordinate is added and
    the store stays a store (an xarray append rewrote its root attributes, after which no
    command opened it)."""
    from enspp.data.store import read_root_attrs
    from enspp.data.store_meta import open_meta

    store = tmp_path / "s.zarr"
    ds = forecast(INITS)
    append(store, ds[["t2m"]])
    attrs = read_root_attrs(store)
    append(store, ds[["z"]])
    assert read_root_attrs(store) == attrs
    out = open_store(store)
    xr.testing.assert_equal(out[["z", "t2m"]].compute(), ds)
    assert open_meta(store).kind == "forecast"


def test_append_roundtrip_layout_and_attributes(tmp_path):
    from enspp.data.store_meta import iter_sources

    ds = forecast(INITS)
    result = append(tmp_path / "s.zarr", ds)
    assert result.added == ("2020-01-01T00:00:00", "2020-01-02T00:00:00", "2020-01-03T00:00:00")
    out = open_store(tmp_path / "s.zarr")
    xr.testing.assert_equal(out[["z", "t2m"]].compute(), ds)
    assert out["z"].chunks is not None
    # one init time, one lead time per chunk; all members, levels and the full grid in it
    assert out["z"].encoding["chunks"] == (1, 1, 3, 2, 6, 8)
    codecs = zarr.open_array(tmp_path / "s.zarr" / "t2m").metadata.codecs
    assert [type(c).__name__ for c in codecs] == ["BytesCodec", "BloscCodec", "Crc32cCodec"]
    assert out.attrs["enspp_kind"] == "forecast"
    assert out.attrs["enspp_schema_version"] == SCHEMA_VERSION
    assert out.attrs["Conventions"] == "CF-1.10"
    assert "provenance" not in out.attrs and "enspp_complete" not in out.attrs
    (source,) = iter_sources(tmp_path / "s.zarr")
    assert source.path == "<in-memory dataset>" and len(source.sha256) == 64
    assert source.records == list(result.added) and set(source.fields) == {"z", "t2m"}
    assert validate_store(tmp_path / "s.zarr").complete == 3


def test_coordinates_carry_cf_attributes_and_the_store_exports_to_netcdf(tmp_path):
    append(tmp_path / "s.zarr", forecast(INITS[:2]))
    raw = xr.open_zarr(tmp_path / "s.zarr")
    assert {k: raw["latitude"].attrs[k] for k in ("units", "standard_name", "axis")} == {
        "units": "degrees_north", "standard_name": "latitude", "axis": "Y"}
    assert raw["longitude"].attrs["units"] == "degrees_east" and raw["longitude"].attrs["axis"] == "X"
    assert raw["level"].attrs["units"] == "hPa" and raw["level"].attrs["axis"] == "Z"
    assert raw["lead_time"].attrs["standard_name"] == "forecast_period"
    assert raw["lead_time"].encoding["units"] == "seconds"
    assert raw["init_time"].attrs["standard_name"] == "forecast_reference_time"
    assert raw["member"].attrs["standard_name"] == "realization"
    nc = tmp_path / "s.nc"
    raw.to_netcdf(nc)  # every attribute is a plain value
    back = xr.open_dataset(nc)
    assert back.attrs["Conventions"] == "CF-1.10"
    xr.testing.assert_equal(back["t2m"].load(), raw["t2m"].load())


def test_reappend_same_data_is_a_no_op(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS))
    before = digest(store)
    result = append(store, forecast(INITS))
    assert not result.changed and len(result.skipped) == 3
    assert "unchanged" in result.message()
    assert digest(store) == before


def test_append_new_init_times_extends_the_store(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:2], seed=1))
    result = append(store, forecast(INITS[2:], seed=2))
    assert result.added == ("2020-01-03T00:00:00",)
    out = open_store(store).load()
    assert out.sizes["init_time"] == 3
    np.testing.assert_array_equal(out["t2m"].isel(init_time=2).values,
                                  forecast(INITS[2:], seed=2)["t2m"].isel(init_time=0).values)
    from enspp.data.store_meta import iter_sources

    assert len(list(iter_sources(store))) == 2


def test_out_of_order_init_time_reads_sorted(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[1:], seed=1))
    append(store, forecast(INITS[:1], seed=2))
    out = open_store(store)
    assert list(out["init_time"].values) == list(pd.to_datetime(INITS).as_unit("ns").values)
    validate_store(store)


@pytest.mark.parametrize("change, what", [
    (dict(members=4), "members differ"),
    (dict(nlat=7), "grids (latitude) differ"),
    (dict(levels=(500, 700)), "levels (hPa) differ"),
    (dict(units="degC"), "units of 't2m' differ"),
])
def test_mismatch_is_refused_naming_both_and_store_unchanged(tmp_path, change, what):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:1]))
    before = digest(store)
    with pytest.raises(StoreMismatchError, match=re.escape(what)) as err:
        append(store, forecast(INITS[1:2], **change))
    assert "store" in str(err.value) and "in-memory dataset" in str(err.value)
    assert digest(store) == before


def test_nan_and_unknown_units_refused_before_touching_the_store(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:1]))
    before = digest(store)
    bad = forecast(INITS[1:2])
    bad["t2m"][0, 0, 0, 0, 0] = np.nan
    with pytest.raises(SchemaError, match="NaN"):
        append(store, bad)
    with pytest.raises(SchemaError, match="unknown units"):
        append(store, forecast(INITS[1:2], units="furlongs"))
    assert digest(store) == before
    assert append(store, bad, allow_nan=True).added == ("2020-01-02T00:00:00",)


def test_nan_in_dask_backed_input_is_refused(tmp_path):
    bad = forecast(INITS[:1])
    bad["t2m"][0, 0, 0, 0, 0] = np.nan
    with pytest.raises(SchemaError, match="holds NaN"):
        append(tmp_path / "s.zarr", bad.chunk({"init_time": 1}))


def test_other_bytes_for_a_complete_init_time_are_refused(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:1], seed=1))
    with pytest.raises(StoreError, match="already complete.*refusing to overwrite"):
        append(store, forecast(INITS[:1], seed=2))


def test_kind_mismatch_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:1]))
    with pytest.raises(StoreError, match="holds analysis data but store"):
        append(store, analysis(["2020-01-01"]))
    with pytest.raises(StoreError, match="holds forecast data; refusing"):
        append(store, analysis(["2020-01-01"]), kind="analysis")


def test_analysis_store(tmp_path):
    store = tmp_path / "a.zarr"
    append(store, analysis(["2020-01-01T00", "2020-01-01T12"]))
    append(store, analysis(["2020-01-02T00"], seed=3))
    out = open_store(store)
    assert record_dim(out.attrs["enspp_kind"]) == "time"
    assert out.sizes["time"] == 3 and out["t2m"].encoding["chunks"] == (1, 4, 5)


def test_interrupted_append_hides_partial_data_and_rerun_repairs(tmp_path, monkeypatch):
    ds = forecast(INITS, seed=4)
    clean, store = tmp_path / "clean.zarr", tmp_path / "s.zarr"
    append(clean, ds)
    real_commit = store_writer.StoreWriter._commit_unit

    def commit_first_then_crash(self, group, commits, rows):
        first = [c for c in commits if int(c[1][0]) == rows[0]]
        real_commit(self, group, first, rows[:1])
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(store_writer.StoreWriter, "_commit_unit", commit_first_then_crash)
    with pytest.raises(RuntimeError):
        append(store, ds)  # every field written, one record committed, then the crash
    monkeypatch.setattr(store_writer.StoreWriter, "_commit_unit", real_commit)
    partial = open_store(store)
    assert partial.sizes["init_time"] == 1  # the unfinished ones are hidden
    full = open_store(store, complete_only=False)
    assert full.sizes["init_time"] == 3 and full["complete"].values.tolist() == [True, False, False]
    report = validate_store(store)
    assert len(report.incomplete) == 2 and "interrupted" in report.summary()
    # the same state while an ingest holds the store (validate beside a running ingest): its
    # work in flight, reported as such, not problems; the lock itself is not touched
    from enspp.data.lock import store_lock

    with store_lock(store):
        busy = validate_store(store)
    assert busy.ok and busy.writer == os.getpid() and busy.in_flight
    assert f"being written by an ingest (pid {os.getpid()})" in busy.summary()
    assert validate_store(store).writer is None  # released: an interrupted ingest again
    result = append(store, ds)
    assert result.repaired == ("2020-01-02T00:00:00", "2020-01-03T00:00:00")
    xr.testing.assert_identical(open_store(store).load().drop_attrs(),
                                open_store(clean).load().drop_attrs())


def test_uncommitted_template_extension_is_rolled_back(tmp_path):
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:1]))
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    group["z"].resize((5, *group["z"].shape[1:]))  # a writer died after resizing
    (store / "z" / "zarr.json.0123.partial").write_text("torn")
    assert open_store(store).sizes["init_time"] == 1
    append(store, forecast(INITS[1:2]))
    assert zarr.open_group(store, mode="r", use_consolidated=False)["z"].shape[0] == 2
    assert not list(store.rglob("*.partial"))
    validate_store(store)


def test_interrupted_creation_is_started_afresh(tmp_path):
    from enspp.data.store_template import NEW_MARKER

    store = tmp_path / "s.zarr"
    forecast(INITS[:1]).to_zarr(store, zarr_format=3, consolidated=False)  # no enspp attributes
    (store / NEW_MARKER).touch()  # what a creation killed before its commit leaves
    with pytest.raises(StoreError, match="not an enspp store"):
        open_store(store)
    append(store, forecast(INITS[:2]))
    assert open_store(store).sizes["init_time"] == 2
    assert not (store / NEW_MARKER).exists()


@pytest.mark.parametrize("foreign", ["files", "zarr"])
def test_a_directory_that_is_not_a_store_is_refused_untouched(tmp_path, foreign):
    """A non-empty directory that is neither a store nor one being created (someone's files,
    another tool's Zarr store) is refused in one line and left exactly as it was; it used to
    be emptied as if it were an interrupted creation."""
    store = tmp_path / "mine"
    if foreign == "files":
        (store / "sub").mkdir(parents=True)
        (store / "thesis.tex").write_text("precious")
        (store / "sub" / "data.csv").write_text("1,2")
    else:
        forecast(INITS[:1]).to_zarr(store, zarr_format=3, consolidated=False)
    before = sorted((str(p.relative_to(store)), p.read_bytes() if p.is_file() else b"")
                    for p in store.rglob("*"))
    with pytest.raises(StoreError, match=r"holds files and is not an enspp store .*"
                                         r"give a new or empty directory"):
        append(store, forecast(INITS[:2]))
    after = sorted((str(p.relative_to(store)), p.read_bytes() if p.is_file() else b"")
                   for p in store.rglob("*"))
    assert after == before
    empty = tmp_path / "empty"
    empty.mkdir()
    append(empty, forecast(INITS[:1]))  # an empty directory is a new store
    assert open_store(empty).sizes["init_time"] == 1


def test_lock_refuses_a_second_writer_clearly(tmp_path):
    store = tmp_path / "s.zarr"
    with store_lock(store):
        with pytest.raises(StoreLockedError, match=r"locked by another enspp process \(pid \d+\)"):
            append(store, forecast(INITS[:1]), lock_timeout=0)
    append(store, forecast(INITS[:1]), lock_timeout=0)


def test_lock_wait_is_reported(tmp_path):
    store = tmp_path / "s.zarr"
    told = []
    with store_lock(store):
        with pytest.raises(StoreLockedError):
            with store_lock(store, timeout=0.2, on_wait=told.append):
                pass
    assert told and "waiting" in told[0]


def test_open_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not an enspp store"):
        open_store(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        append(tmp_path / "file", forecast(INITS[:1]))


def test_validate_store_errors(tmp_path):
    with pytest.raises(StoreError, match="not a Zarr store"):
        validate_store(tmp_path)
    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:1]))
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["enspp_schema_version"] = 99
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="schema version 99"):
        validate_store(store)
    with pytest.raises(StoreError, match="schema version 99; this enspp reads versions 1, 2"):
        open_store(store)
    del meta["attributes"]["enspp_kind"]
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="'enspp_kind' is missing"):
        validate_store(store)
    meta["attributes"]["enspp_kind"] = "product"
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="enspp_kind 'product': not a forecast or analysis store"):
        validate_store(store)
    (store / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot read zarr.json"):
        validate_store(store)


def test_to_store_layout_errors_and_record_dim():
    ds = forecast(INITS[:1]).expand_dims(ensemble=[0])
    with pytest.raises(SchemaError, match="not canonical"):
        to_store_layout(ds, kind="forecast")
    static = forecast(INITS[:1]).assign(orog=(("latitude", "longitude"), np.zeros((6, 8), "f4")))
    with pytest.raises(SchemaError, match="'orog' has no 'init_time' dim"):
        to_store_layout(static, kind="forecast")
    with pytest.raises(StoreError, match="unknown store kind"):
        record_dim("observation")


def test_lock_lives_beside_the_store_and_survives_its_creation(tmp_path):
    # A lock file inside the store was wiped when the store was created (to_zarr mode "w")
    # while held, so a second writer could take a fresh lock at the same time.
    store = tmp_path / "fc.zarr"
    held = lock_path(store)
    assert held.parent == tmp_path and not held.is_relative_to(store)
    append(store, forecast(INITS[:1]), lock_timeout=0)  # creates the store under the lock
    assert held.exists()
    assert not any(p.name.endswith(".lock") for p in store.rglob("*"))


def test_is_store_rejects_a_product_store(tmp_path):
    from enspp.data.store import is_store

    store = tmp_path / "fc.zarr"
    append(store, forecast(INITS[:1]))
    assert is_store(store)
    product = tmp_path / "p.zarr"
    xr.Dataset({"t2m_mean": ("x", np.zeros(2, "f4"))}).to_zarr(product)
    meta = json.loads((product / "zarr.json").read_text())
    meta["attributes"].update({"enspp_kind": "product", "enspp_complete": []})
    (product / "zarr.json").write_text(json.dumps(meta))
    assert not is_store(product)


def test_direct_chunk_write_stores_the_bytes_zarr_would(tmp_path):
    """The ingest's whole-chunk writer (encode here, checksum, file replace) against zarr's
    own array write: identical chunk files, and zarr reads the values back exactly."""
    from enspp.data.store_template import ChunkWriter, compressors

    rng = np.random.default_rng(3)
    block = (rng.standard_normal((1, 1, 3, 2, 7, 9)) * 40 + 5000).astype(np.float32)
    arrays = []
    for name in ("direct", "zarr"):
        arrays.append(zarr.create_array(tmp_path / f"{name}.zarr", shape=(2, 4, 3, 2, 7, 9),
                                        chunks=(1, 1, 3, 2, 7, 9), dtype="f4",
                                        compressors=compressors(),
                                        fill_value=np.float32(np.nan), zarr_format=3))
    direct, reference = arrays
    writer = ChunkWriter.for_array(direct)
    assert writer is not None and writer.fits(block) and writer.checksum
    writer.write(block, 1, 2)
    reference[1:2, 2:3] = block
    key = Path("c/1/2/0/0/0/0")
    assert (tmp_path / "direct.zarr" / key).read_bytes() == (tmp_path / "zarr.zarr" / key).read_bytes()
    np.testing.assert_array_equal(direct[1:2, 2:3], block)
    assert np.isnan(direct[0]).all()  # nothing else written
    # anything but one whole chunk of this codec layout goes through zarr's own write
    assert not writer.fits(block[:, :, :2]) and not writer.fits(block.astype(np.float64))
    other = zarr.create_array(tmp_path / "zstd.zarr", shape=(2, 4, 3, 2, 7, 9),
                              chunks=(1, 1, 3, 2, 7, 9), dtype="f4", zarr_format=3,
                              compressors=[zarr.codecs.ZstdCodec()])
    assert ChunkWriter.for_array(other) is None
    # a schema-1 store's arrays (Blosc without the checksum) are written as zarr would too
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(2, 4, 3, 2, 7, 9),
                              chunks=(1, 1, 3, 2, 7, 9), dtype="f4", zarr_format=3,
                              compressors=compressors()[:1], fill_value=np.float32(np.nan))
    plain_writer = ChunkWriter.for_array(plain)
    assert plain_writer is not None and not plain_writer.checksum
    plain_writer.write(block, 0, 0)
    np.testing.assert_array_equal(plain[0:1, 0:1], block)
    # a store other than a local directory: the same bytes, through the store's own set
    memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(2, 4, 3, 2, 7, 9),
                               chunks=(1, 1, 3, 2, 7, 9), dtype="f4",
                               compressors=compressors(),
                               fill_value=np.float32(np.nan), zarr_format=3)
    ChunkWriter.for_array(memory).write(block, 1, 2)
    np.testing.assert_array_equal(memory[1:2, 2:3], block)
    assert list(tmp_path.rglob("*.partial")) == []


def test_point_chunk_written_whole_matches_zarr(tmp_path):
    """A point store's block of records: a chunk without a file is built (NaN beside the
    rows) and written whole, byte for byte what zarr writes; a chunk that has a file is
    merged by zarr, keeping the rows already there; the edge chunk too."""
    from enspp.data.store_template import ChunkWriter, compressors
    from enspp.data.store_writer import _write_block

    rng = np.random.default_rng(5)
    da = xr.DataArray(rng.standard_normal((6, 1, 3, 2)).astype(np.float32),
                      dims=("init_time", "lead_time", "member", "station"))
    arrays = [zarr.create_array(tmp_path / f"{n}.zarr", shape=(10, 1, 3, 2), chunks=(4, 1, 3, 2),
                                dtype="f4", compressors=compressors(), zarr_format=3,
                                fill_value=np.float32(np.nan)) for n in ("direct", "zarr")]
    direct, reference = arrays
    writer = ChunkWriter.for_array(direct)
    assert writer is not None and writer.chunk_shape == (4, 1, 3, 2)
    steps = [(np.array([0, 1]), np.array([4, 6])),  # a new chunk, two of its rows
             (np.array([2]), np.array([5])),  # the same chunk again: merged
             (np.array([3, 4]), np.array([8, 9]))]  # the edge chunk (2 of its 4 rows exist)
    for idx, rows in steps:
        assert _write_block(direct, writer, da, "init_time", idx, rows, 0, 0) == 4 * 6 * len(idx)
        reference.oindex[(rows, [0])] = da.values[idx]
    for key in ("c/1/0/0/0", "c/2/0/0/0"):
        assert (tmp_path / "direct.zarr" / key).read_bytes() == \
            (tmp_path / "zarr.zarr" / key).read_bytes()
    np.testing.assert_array_equal(direct[:], reference[:])
    assert np.isnan(direct[:4]).all() and np.isnan(direct[7]).all()
    np.testing.assert_array_equal(direct[[4, 5, 6, 8, 9], 0], da.values[[0, 2, 1, 3, 4], 0])


def test_chunk_file_write_is_atomic(tmp_path, monkeypatch):
    """A chunk file is replaced whole: a failed write keeps the old bytes and leaves no
    temporary file behind."""
    from enspp.data import store_meta

    target = tmp_path / "a" / "c" / "0"
    store_meta.write_file_atomic(target, b"old")
    store_meta.write_file_atomic(target, b"new bytes", tmp_dir=tmp_path / "tmp")
    assert target.read_bytes() == b"new bytes"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_meta.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store_meta.write_file_atomic(target, b"never seen", tmp_dir=tmp_path / "tmp")
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in target.parent.iterdir()) == ["0"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_template_metadata_is_what_xarray_would_write(tmp_path):
    """The template's data arrays are created through zarr directly; their metadata must be
    exactly what ``xarray.Dataset.to_zarr`` writes for the same dataset and encoding."""
    from enspp.data.store_template import compressors, coord_dataset, coord_encoding

    ds = forecast(INITS[:2])
    append(tmp_path / "s.zarr", ds)
    ref = tmp_path / "ref.zarr"
    encoding = coord_encoding(["init_time", "lead_time"], rec="init_time")
    for name, var in ds.data_vars.items():
        encoding[name] = {"chunks": (1, 1) + var.shape[2:], "compressors": compressors(),
                          "fill_value": np.float32(np.nan)}
    ref_ds = ds.assign_coords(coord_dataset({k: ds[k] for k in ds.coords}, rec="init_time").coords)
    ref_ds.to_zarr(ref, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
    for name in ["z", "t2m", "init_time", "lead_time", "member", "level", "latitude", "longitude"]:
        ours = json.loads((tmp_path / "s.zarr" / name / "zarr.json").read_text())
        theirs = json.loads((ref / name / "zarr.json").read_text())
        assert ours == theirs, name


@pytest.mark.parametrize("opener", ["open_store", "open_checked"])
def test_an_ingest_committing_between_the_metadata_reads_is_read_again(tmp_path, monkeypatch,
                                                                        opener):
    """open_store/open_checked read the root metadata twice (bookkeeping, then xarray): an
    ingest committing in between gave "conflicting sizes for dimension 'init_time'"; the
    pair is read again from the new root document."""
    import enspp.data.store as store_mod
    import enspp.data.store_meta as store_meta

    store = tmp_path / "s.zarr"
    append(store, forecast(INITS[:2], seed=1))
    real = store_meta.open_meta
    calls = []

    def open_meta_then_commit(root, attrs=None):
        meta = real(root, attrs)
        calls.append(1)
        if calls == [1]:  # an ingest commits right after the reader's first bookkeeping read
            monkeypatch.setattr(store_meta, "open_meta", real)
            append(store, forecast(INITS[2:], seed=2))
            monkeypatch.setattr(store_meta, "open_meta", open_meta_then_commit)
        return meta

    monkeypatch.setattr(store_meta, "open_meta", open_meta_then_commit)
    ds = getattr(store_mod, opener)(store)
    assert len(calls) == 2 and ds.sizes["init_time"] == 3
    third = ds["t2m"].sel(init_time=np.datetime64(INITS[2], "ns")).values
    np.testing.assert_array_equal(third, forecast(INITS[2:], seed=2)["t2m"].isel(init_time=0).values)
