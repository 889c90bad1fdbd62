"""``enspp inspect PRODUCT`` and ``enspp validate [--deep] PRODUCT``: a product store (what
``enspp predict`` writes) is summarised and checked, through the real CLI entry."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from enspp.flows import cli
from enspp.models.product import COMPLETE_ATTR, ProductWriter, product_block

NY, NX, N_MEMBERS, QUANTILES = 4, 5, 3, (0.1, 0.5, 0.9)
INITS = np.array(["2020-01-01T00", "2020-01-02T00", "2020-01-03T00", "2020-01-04T00"],
                 dtype="datetime64[ns]")
LEADS = (24, 48)


def _attrs(forecast: str) -> dict:
    return {"Conventions": "CF-1.8", "enspp_kind": "product",
            "source": f"enspp predict, model mixed-0123456789ab, input {forecast}",
            "model_name": "mixed", "model_version": "mixed-0123456789ab", "code_version": "0.1.0",
            "distribution": "gaussian", "crps_estimator": "gaussian", "checkpoint": "best.ckpt",
            "checkpoint_sha256": "0123456789ab" + "0" * 52, "input_members": [1, 2, 3, 4],
            "member_strategy": "first", "n_input_members": 4, "n_ecc_members": N_MEMBERS,
            "quantiles": list(QUANTILES)}


def _fields(rng: np.random.Generator) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for lead in LEADS:
        mean = 270 + rng.normal(size=(1, NY, NX))
        std = 1 + rng.random(size=(1, NY, NX))
        out[lead] = {"mean": mean, "std": std,
                     "quantiles": mean[None] + np.array(QUANTILES)[:, None, None, None] - 0.5,
                     "members": mean[None] + rng.normal(size=(N_MEMBERS, 1, NY, NX))}
    return out


def make_product(path: Path, *, seed: int = 0, masked: tuple[int, int] | None = None,
                 skipped: bool = False, forecast: Path | None = None,
                 inits: np.ndarray = INITS, nan_policy: str | None = None,
                 fmt: str = "zarr") -> Path:
    """A seeded synthetic product of 4 init times, 2 init times per chunk; ``masked``: one
    point NaN in every field of the first init time (a NaN input under nan_policy 'mask');
    ``forecast``: the forecast store recorded as its input (its input digests recorded as
    predict records them); ``fmt: netcdf``: a NetCDF file, as predict writes one."""
    rng = np.random.default_rng(seed)
    grid = xr.Dataset(coords={"latitude": np.linspace(50, 47, NY),
                              "longitude": np.linspace(5, 9, NX)})
    fields = [_fields(rng) for _ in inits]
    if masked is not None:
        for per_lead in fields[0].values():
            for arr in per_lead.values():
                arr[..., masked[0], masked[1]] = np.nan
    source = forecast or path.parent / "forecast.zarr"
    attrs = _attrs(str(source)) | ({} if nan_policy is None else {"nan_policy": nan_policy})
    writer = ProductWriter(path, attrs=attrs, fmt=fmt, init_chunk=2)
    digests = {t: f"digest{i}" for i, t in enumerate(inits)}
    if forecast is not None:
        from enspp.data.store_meta import open_meta

        digests = open_meta(forecast).field_digests([("t2m", 24)], inits)
    writer.record_inputs([("t2m", 24)], {np.datetime64(t, "ns"): d for t, d in digests.items()})
    writer.write_block(product_block(fields, targets=["t2m"], inits=list(inits),
                                     quantiles=QUANTILES, grid=grid))
    if skipped:
        writer.mark_skipped([np.datetime64("2020-01-05T00", "ns")])
    return writer.finish()


def _unmark(path: Path, init: str) -> None:
    """What a predict killed after writing ``init`` but before marking it leaves."""
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.attrs[COMPLETE_ATTR] = [t for t in group.attrs[COMPLETE_ATTR] if not t.startswith(init)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(path)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_inspect_a_product_names_kind_counts_and_chunking(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr", skipped=True)
    _unmark(path, "2020-01-04")
    rc, out, err = _run(capsys, "inspect", str(path))
    assert rc == 0, err
    assert "kind        product: members (3 ECC members); distribution gaussian" in out
    assert "quantiles 0.1, 0.5, 0.9" in out
    assert "checkpoint best.ckpt (sha256 0123456789ab)" in out
    assert "init_time   3 complete, 2020-01-01T00:00:00 .. 2020-01-03T00:00:00; 1 skipped; 1 incomplete" in out
    assert "1 skipped (input fields absent from the forecast store): 2020-01-05T00:00:00" in out
    assert "1 incomplete (written but not marked complete" in out and "2020-01-04T00:00:00" in out
    assert "stale       not checked (not found or not an enspp forecast store:" in out
    assert "lead times  +24 h, +48 h" in out
    for name in ("t2m ", "t2m_mean ", "t2m_std ", "t2m_quantiles "):
        assert f"  {name}" in out
    assert "chunks      2 init times per chunk, other dims whole" in out
    rc, out, _ = _run(capsys, "inspect", "--json", str(path))
    import json

    info = json.loads(out)
    assert info["product"] == "members" and info["init_times"]["complete"] == 3
    assert info["init_times"]["skipped"] == 1 and info["init_times"]["incomplete"] == 1


def test_inspect_names_the_stale_init_times(tmp_path, capsys):
    from enspp.models.product import INPUTS_ATTR
    from enspp.pipeline.synthetic import write_stores

    stores = write_stores(tmp_path / "stores", n_init=4, n_members=3, ny=NY, nx=NX,
                          lead_hours=LEADS)
    inits = xr.open_zarr(stores.forecast)["init_time"].values
    path = make_product(tmp_path / "p.zarr", forecast=stores.forecast, inits=inits)
    rc, out, _ = _run(capsys, "inspect", str(path))
    assert rc == 0 and f"stale       0 (inputs since replaced in {stores.forecast};" in out
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    inputs = group.attrs[INPUTS_ATTR]
    inputs["digests"][str(inits[1])] = "computed-from-other-bytes"
    group.attrs[INPUTS_ATTR] = inputs
    rc, out, _ = _run(capsys, "inspect", str(path))
    assert rc == 0 and "stale       1 (" in out and out.count("2019-01-02T00:00:00") == 1
    rc, out, _ = _run(capsys, "inspect", "--forecast", str(stores.analysis), str(path))
    assert "stale       not checked (not found or not an enspp forecast store" in out


def test_inspect_a_distribution_product(tmp_path, capsys):
    rng = np.random.default_rng(1)
    grid = xr.Dataset(coords={"latitude": np.linspace(50, 47, NY),
                              "longitude": np.linspace(5, 9, NX)})
    fields = [{lead: {"mean": f[lead]["mean"], "std": f[lead]["std"]} for lead in LEADS}
              for f in (_fields(rng) for _ in INITS[:2])]
    attrs = {**_attrs("forecast store"), "n_ecc_members": 0, "quantiles": []}
    writer = ProductWriter(tmp_path / "d.zarr", attrs=attrs, fmt="zarr")
    writer.write_block(product_block(fields, targets=["t2m"], inits=list(INITS[:2]),
                                     quantiles=(), grid=grid))
    rc, out, _ = _run(capsys, "inspect", str(tmp_path / "d.zarr"))
    assert rc == 0 and "product: distribution (no ECC members)" in out
    assert "stale       not checked (no forecast store recorded)" in out
    rc, out, _ = _run(capsys, "validate", "--deep", str(tmp_path / "d.zarr"))
    assert rc == 0 and "valid product store (distribution), 2 complete init times" in out


def test_validate_deep_passes_on_a_good_product(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr", masked=(1, 2))
    rc, out, err = _run(capsys, "validate", "--deep", str(path))
    assert rc == 0, out + err
    first = out.splitlines()[0]
    assert first.startswith(f"{path}: valid product store (members), 4 complete init times")
    assert "deep check: 8 chunks read" in first  # 4 variables x 2 chunks of init times
    # a point NaN in every field (a masked input) is what nan_policy 'mask' writes: a note
    assert "note: 1 complete init time holds points that are NaN in every field" in out
    assert "problems" not in out and err == ""
    rc, out, _ = _run(capsys, "validate", str(path))
    assert rc == 0 and "chunks not read" in out


def test_masked_points_need_the_mask_policy_when_it_is_recorded(tmp_path, capsys):
    """A product records the model's nan_policy: under 'error' predict writes no NaN, so
    points NaN in every field are damage; under 'mask' (or unrecorded: older products) they
    are a note."""
    path = make_product(tmp_path / "e.zarr", masked=(1, 2), nan_policy="error")
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert "NaN in every field, but the model's pipeline.nan_policy is 'error'" in out
    path = make_product(tmp_path / "m.zarr", masked=(1, 2), nan_policy="mask")
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 0 and "NaN in every field (inputs NaN there" in out


def test_predict_records_the_nan_policy():
    from types import SimpleNamespace

    from enspp.models.product import product_attrs

    for policy in ("mask", "error"):
        meta = SimpleNamespace(spec={"name": "mixed"}, code_version="x", distribution="gaussian",
                               estimator="gaussian", member_strategy="first", data_version=None,
                               data_hash=None, pipeline={"nan_policy": policy})
        loaded = SimpleNamespace(metadata=meta, path=Path("best.ckpt"), sha256="0" * 64)
        attrs = product_attrs(loaded, members=np.arange(1, 5), source="f.zarr", version="v",
                              n_members=0, quantiles=())
        assert attrs["nan_policy"] == policy


def test_validate_deep_names_a_deleted_chunk_file(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    (path / "t2m_std" / "c" / "1" / "0" / "0" / "0").unlink()
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert f"{path}: INVALID product store" in out
    assert "problems: 1 missing" in out
    [line] = [x for x in out.splitlines() if x.startswith("  missing:")]
    assert line == (f"  missing: store {path}: variable 't2m_std', chunk 1/0/0/0 (init time "
                    "2020-01-03T00:00:00..2020-01-04T00:00:00 (2 complete)): the chunk file is "
                    "missing")
    rc, out, _ = _run(capsys, "validate", str(path))  # not read without --deep
    assert rc == 0


def test_a_chunks_init_times_are_named_first_to_last(tmp_path, capsys):
    """A catch-up predicts earlier init times after later ones, so a chunk's rows are not in
    time order: the damaged chunk's span still reads first..last."""
    path = make_product(tmp_path / "p.zarr", inits=INITS[::-1])
    (path / "t2m_std" / "c" / "0" / "0" / "0" / "0").unlink()
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert ("(init time 2020-01-03T00:00:00..2020-01-04T00:00:00 (2 complete)): the chunk file "
            "is missing") in out


def test_validate_deep_names_a_corrupt_chunk(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    chunk = path / "t2m" / "c" / "0" / "0" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1 and "problems: 1 corrupt" in out
    assert f"corrupt: store {path}: variable 't2m', chunk 0/0/0/0/0 (init time " in out
    assert "checksum" in out


def test_validate_deep_names_nan_in_a_complete_init_time(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    arr = zarr.open_group(path, mode="r+", use_consolidated=False)["t2m_mean"]
    arr[1, 0, 2, 3] = np.nan  # one value of one field: no masked input explains it
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1 and "problems: 1 nan" in out
    assert (f"  nan: store {path}: variable 't2m_mean' at init time 2020-01-02T00:00:00 (marked "
            "complete) is NaN at 1 point in some of its values only") in out
    arr[1] = np.nan  # a whole field NaN
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert "variable 't2m_mean' at init time 2020-01-02T00:00:00 (marked complete) holds only NaN" in out
    arr[1, 1] = np.full((NY, NX), 270.0)  # the second lead finite again
    arr[1, 0] = np.where(np.arange(NX) == 0, np.nan, 270.0) * np.ones((NY, 1))  # a column NaN
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1 and "is NaN at 4 points in some of its values only" in out


def test_validate_deep_names_nan_in_one_field_only(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    arr = zarr.open_group(path, mode="r+", use_consolidated=False)["t2m_std"]
    arr[3, :, 0, 0] = np.nan  # every lead of one point, in one field only
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert (f"  nan: store {path}: variable 't2m_std' at init time 2020-01-04T00:00:00 (marked "
            "complete) is NaN at 1 point where the other fields hold values") in out


def test_an_incomplete_init_time_is_a_note_not_an_error(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    _unmark(path, "2020-01-04")
    arr = zarr.open_group(path, mode="r+", use_consolidated=False)["t2m_mean"]
    arr[3] = np.nan  # what an unfinished write may hold: not checked
    rc, out, err = _run(capsys, "validate", "--deep", str(path))
    assert rc == 0, out + err
    assert "valid product store (members), 3 complete init times" in out
    assert (f"{path}: note: 1 incomplete init time (written but not marked complete: a killed "
            "predict; hidden from readers, the next predict over them redoes them): "
            "2020-01-04T00:00:00") in out


def test_attributes_and_coordinate_are_checked(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.attrs[COMPLETE_ATTR] = [*group.attrs[COMPLETE_ATTR], "2021-06-01T00:00:00", "soon"]
    group.attrs["n_ecc_members"] = "three"
    rc, out, _ = _run(capsys, "validate", str(path))
    assert rc == 1
    assert f"attribute: store {path}: attribute 'enspp_complete': 'soon' is not a time" in out
    assert f"attribute: store {path}: attribute 'n_ecc_members' is 'three', not an integer" in out
    assert (f"inconsistent: store {path}: init time 2021-06-01T00:00:00 is marked complete but "
            "the init_time coordinate does not hold it") in out


def test_a_damaged_init_time_coordinate_is_one_line(tmp_path, capsys):
    path = make_product(tmp_path / "p.zarr")
    for chunk in (path / "init_time" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    rc, _, err = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert err.startswith(f"enspp validate: error: store {path}: the init_time coordinate "
                          "cannot be read") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["inspect", "validate"])
def test_forecast_stores_are_still_told_apart(tmp_path, capsys, command):
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", '
                                                   '"attributes": {"enspp_kind": "other"}}')
    rc, _, err = _run(capsys, command, str(tmp_path / "x.zarr"))
    assert rc == 1 and err.count("\n") == 1


def _rewrite(path: Path, change) -> None:
    """Write the NetCDF product at ``path`` again, as ``change(dataset)`` returns it."""
    with xr.open_dataset(path) as ds:
        ds = change(ds.load())
    ds.to_netcdf(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def test_a_netcdf_product_is_inspected_and_validated(tmp_path, capsys):
    """predict's ``fmt: netcdf`` writes the product whole from its complete init times:
    inspect and validate read it as a product (init times, lead times, variables; --deep
    every value)."""
    path = make_product(tmp_path / "p.nc", masked=(1, 2), fmt="netcdf")
    rc, out, err = _run(capsys, "inspect", str(path))
    assert rc == 0, err
    assert f"store       {path} (NetCDF file)" in out
    assert "kind        product: members (3 ECC members); distribution gaussian" in out
    assert "init_time   4 complete, 2020-01-01T00:00:00 .. 2020-01-04T00:00:00; 0 skipped" in out
    assert "lead times  +24 h, +48 h" in out
    for name in ("t2m ", "t2m_mean ", "t2m_std ", "t2m_quantiles "):
        assert f"  {name}" in out
    assert "on disk     0 B" not in out
    rc, out, _ = _run(capsys, "inspect", "--json", str(path))
    import json

    info = json.loads(out)
    assert info["format"] == "netcdf" and info["input_members"] == [1, 2, 3, 4]
    assert info["init_times"]["complete"] == 4 and info["problems"] == []
    assert info["bytes_on_disk"] == path.stat().st_size
    rc, out, err = _run(capsys, "validate", "--deep", str(path))
    assert rc == 0, out + err
    assert out.startswith(f"{path}: valid NetCDF product (members), 4 init times, variables "
                          "['t2m', 't2m_mean', 't2m_quantiles', 't2m_std']; deep check: every "
                          "value read")
    assert "note: 1 complete init time holds points that are NaN in every field" in out
    rc, out, _ = _run(capsys, "validate", str(path))
    assert rc == 0 and "values not read (--deep reads every one)" in out
    # a list of one went through NetCDF as a scalar: still a list
    _rewrite(path, lambda ds: ds.assign_attrs(input_members=[3]))
    rc, out, _ = _run(capsys, "validate", str(path))
    assert rc == 0, out


def test_validate_deep_names_a_damaged_chunk_of_a_netcdf_product(tmp_path, capsys):
    """A NetCDF product's variables are chunked as the Zarr product's (2 init times here)
    with a Fletcher-32 checksum per chunk: one bit flipped inside the stored values of the
    first chunk of t2m is a read error naming the variable and its init times, not wrong
    numbers."""
    path = make_product(tmp_path / "p.nc", fmt="netcdf")
    with xr.open_dataset(path) as ds:
        assert all(ds[v].encoding["fletcher32"] and ds[v].encoding["chunksizes"][0] == 2
                   for v in ds.data_vars)
        first = ds["t2m"].values[:2].astype("<f4").tobytes()  # the first chunk as stored
    raw = bytearray(path.read_bytes())
    at = raw.find(first)
    assert at > 0 and raw.find(first, at + 1) == -1
    raw[at + len(first) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1 and "problems: 1 corrupt" in out, out
    assert (f"corrupt: file {path}: variable 't2m' (init time 2020-01-01T00:00:00.."
            "2020-01-02T00:00:00 (2 complete)) cannot be read: RuntimeError: NetCDF: HDF error; "
            "a chunk's checksum or compression does not match: the file is damaged" in out), out


def test_validate_names_what_a_netcdf_product_lacks(tmp_path, capsys, monkeypatch):
    path = make_product(tmp_path / "p.nc", fmt="netcdf")

    def damage(ds):
        ds["t2m_mean"][1, 0, 2, 3] = np.nan  # one value of one field
        return ds.drop_vars("t2m_std").assign_attrs(n_ecc_members="three")

    _rewrite(path, damage)
    rc, out, _ = _run(capsys, "validate", str(path))
    assert rc == 1 and out.startswith(f"{path}: INVALID NetCDF product")
    assert f"  attribute: file {path}: attribute 'n_ecc_members' is 'three', not an integer" in out
    assert (f"  inconsistent: file {path}: variable 't2m_std' is missing (the attributes call "
            "for it)") in out
    assert "nan:" not in out  # values are read with --deep only
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    assert rc == 1
    assert (f"  nan: file {path}: variable 't2m_mean' at init time 2020-01-02T00:00:00 (marked "
            "complete) is NaN at 1 point in some of its values only") in out
    # a block that does not read back (damaged compression) names the variable and init times
    import enspp.models.product as product

    def unreadable(ds, name, start, stop):
        if name == "t2m":
            raise RuntimeError("NetCDF: HDF error")
        return np.asarray(ds[name].isel(init_time=slice(start, stop)).values)

    monkeypatch.setattr(product, "read_file_rows", unreadable)
    rc, out, _ = _run(capsys, "validate", "--deep", str(path))
    for first, last in (("01", "02"), ("03", "04")):  # read chunk by chunk (2 init times)
        assert rc == 1 and (f"  corrupt: file {path}: variable 't2m' (init time 2020-01-{first}T"
                            f"00:00:00..2020-01-{last}T00:00:00 (2 complete)) cannot be read: "
                            "RuntimeError: NetCDF: HDF error") in out


@pytest.mark.parametrize("command", ["inspect", "validate"])
def test_a_truncated_netcdf_product_is_one_line_naming_it(tmp_path, capsys, command):
    path = make_product(tmp_path / "p.nc", fmt="netcdf")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rc, out, err = _run(capsys, command, str(path))
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"enspp {command}: error: {path}: cannot be read as a NetCDF file "
                          "(truncated or damaged?): ")
    # a NetCDF file that is no product (a static file) is named as such
    xr.Dataset({"lsm": ("x", np.zeros(3))}).to_netcdf(tmp_path / "static.nc")
    rc, _, err = _run(capsys, command, str(tmp_path / "static.nc"))
    assert rc == 1 and err == (f"enspp {command}: error: {tmp_path / 'static.nc'} is a NetCDF "
                               "file but not an enspp product (its attribute enspp_kind is "
                               "None, not 'product')\n")


def test_a_netcdf_product_records_skipped_and_stale_init_times_as_a_zarr_one(tmp_path, capsys):
    """A NetCDF product records the init times skipped for want of inputs and what each
    init time was computed from (as JSON text: NetCDF holds no nested attribute), read back
    through the one reader: inspect, validate and whoever completes a product (the predict
    flow, the cached validation products) see the same as for the Zarr product."""
    import json

    from enspp.flows.tasks import recorded_init_times
    from enspp.models.product import (
        INPUTS_ATTR,
        SKIPPED_ATTR,
        read_product_attrs,
        read_product_state,
    )
    from enspp.models.product_file import JSON_ATTRS
    from enspp.pipeline.synthetic import write_stores

    assert set(JSON_ATTRS) == {SKIPPED_ATTR, INPUTS_ATTR}
    stores = write_stores(tmp_path / "stores", n_init=4, n_members=3, ny=NY, nx=NX,
                          lead_hours=LEADS)
    inits = xr.open_zarr(stores.forecast)["init_time"].values
    paths = {suffix: make_product(tmp_path / f"p.{suffix}", forecast=stores.forecast,
                                  inits=inits, skipped=True, fmt=fmt)
             for suffix, fmt in (("zarr", "zarr"), ("nc", "netcdf"))}
    # an init time computed from other bytes than the store's now: stale
    group = zarr.open_group(paths["zarr"], mode="r+", use_consolidated=False)
    inputs = group.attrs[INPUTS_ATTR]
    inputs["digests"][str(inits[1])] = "computed-from-other-bytes"
    group.attrs[INPUTS_ATTR] = inputs

    def stale(ds):
        recorded = json.loads(ds.attrs[INPUTS_ATTR])
        recorded["digests"][str(inits[1])] = "computed-from-other-bytes"
        return ds.assign_attrs({INPUTS_ATTR: json.dumps(recorded)})

    _rewrite(paths["nc"], stale)
    zarr_attrs, nc_attrs = (read_product_attrs(paths[f]) for f in ("zarr", "nc"))
    for key in ("enspp_complete", SKIPPED_ATTR, INPUTS_ATTR):
        assert nc_attrs[key] == zarr_attrs[key], key
    assert nc_attrs[SKIPPED_ATTR] == ["2020-01-05T00:00:00.000000000"]
    states = [read_product_state(paths[f]) for f in ("zarr", "nc")]
    assert states[0].skipped == states[1].skipped == ("2020-01-05T00:00:00",)
    assert states[1].problems == ()
    done, skipped, stale_keys = recorded_init_times(paths["nc"], stores.forecast)
    assert (done, skipped, stale_keys) == recorded_init_times(paths["zarr"], stores.forecast)
    assert stale_keys == {"2019-01-02T00:00:00"} and skipped == {"2020-01-05T00:00:00"}
    assert len(done) == 3
    for path in paths.values():
        rc, out, err = _run(capsys, "inspect", str(path))
        assert rc == 0, err
        assert "1 skipped (input fields absent from the forecast store): 2020-01-05T00:00:00" in out
        assert "stale       1 (" in out and out.count("2019-01-02T00:00:00") == 1
        rc, out, _ = _run(capsys, "validate", str(path))
        assert rc == 0 and ("note: 1 init time skipped (input fields absent from the forecast "
                            "store): 2020-01-05T00:00:00") in out
    # recorded text that does not parse is named, as a Zarr product's wrong attribute is
    _rewrite(paths["nc"], lambda ds: ds.assign_attrs({SKIPPED_ATTR: "[2020-01-05"}))
    rc, out, _ = _run(capsys, "validate", str(paths["nc"]))
    assert rc == 1 and (f"attribute: file {paths['nc']}: attribute 'enspp_skipped' is not a "
                        "list of init times") in out


def test_a_netcdf_product_is_extended_as_a_zarr_one(tmp_path):
    """A NetCDF product is written whole, but a write into an existing one stages its init
    times first: it is extended (init times rewritten in place, new ones added, a skipped one
    written at last leaves the skipped list) instead of replaced by the new init times
    alone; another product's file, a Zarr store where a file is asked for (and the other
    way round) or a damaged file are one line naming it, before anything is written."""
    from enspp.models.product import ProductError, open_product, read_product_state

    rng = np.random.default_rng(0)
    grid = xr.Dataset(coords={"latitude": np.linspace(50, 47, NY),
                              "longitude": np.linspace(5, 9, NX)})
    fields = [_fields(rng) for _ in INITS]

    def write(path, rows, *, fmt="netcdf", skip=(), attrs=None):
        writer = ProductWriter(path, attrs=attrs or _attrs("fc.zarr"), fmt=fmt, init_chunk=2)
        writer.record_inputs([("t2m", 24)], {INITS[r]: f"d{r}" for r in (*rows, *skip)})
        writer.write_block(product_block([fields[r] for r in rows], targets=["t2m"],
                                         inits=[INITS[r] for r in rows], quantiles=QUANTILES,
                                         grid=grid))
        if skip:
            writer.mark_skipped([INITS[r] for r in skip])
        return writer.finish()

    def read(path):
        with open_product(path) as ds:
            return ds.load()

    path = write(tmp_path / "p.nc", [0, 1], skip=[3])
    assert read_product_state(path).skipped == ("2020-01-04T00:00:00",)
    write(path, [1, 2, 3])
    whole = write(tmp_path / "whole.nc", [0, 1, 2, 3])
    got, want = read(path), read(whole)
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())
    for key in ("enspp_inputs", "input_members", "quantiles"):
        assert got.attrs[key] == want.attrs[key], key
    assert "enspp_skipped" not in got.attrs and not (tmp_path / ".p.nc.partial").exists()
    with pytest.raises(ProductError, match=r"holds another product: its checkpoint_sha256 is"):
        write(path, [0], attrs={**_attrs("fc.zarr"), "checkpoint_sha256": "f" * 64})
    with pytest.raises(ProductError, match=r"is a directory, not a NetCDF product file \(a Zarr "
                                           r"product: predict.fmt zarr extends it\)"):
        write(make_product(tmp_path / "z.zarr"), [0])
    with pytest.raises(ProductError, match=r"exists and is not a Zarr product store \(a NetCDF "
                                           r"file: predict.fmt netcdf extends it\)"):
        write(path, [0], fmt="zarr")
    xr.testing.assert_identical(read(path), got)  # untouched
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ProductError, match=r"cannot be read as a NetCDF file \(truncated or "
                                           r"damaged\?\): .*; remove it or write to another --out"):
        write(path, [0])


def test_readers_during_appends_always_see_a_product(tmp_path):
    """Predict appending init times (one per call, as the predict flow does) while readers
    poll: the root attributes are never lost (xarray's append used to replace them with
    the block's, empty ones), open_product and evaluate's open_dataset never fail, and
    only init times marked complete are handed out."""
    import json
    import threading

    from enspp.evaluation.systems import open_dataset
    from enspp.models.product import open_product

    rng = np.random.default_rng(3)
    grid = xr.Dataset(coords={"latitude": np.linspace(50, 47, NY),
                              "longitude": np.linspace(5, 9, NX)})
    path = tmp_path / "p.zarr"
    inits = np.arange("2020-01-01T00", "2020-01-25T00", np.timedelta64(1, "D"),
                      dtype="datetime64[ns]")

    def write(init):
        writer = ProductWriter(path, attrs=_attrs("forecast store"), fmt="zarr", init_chunk=2)
        writer.write_block(product_block([_fields(rng)], targets=["t2m"], inits=[init],
                                         quantiles=QUANTILES, grid=grid))

    write(inits[0])
    stop, problems, polls = threading.Event(), [], [0]

    def read():
        while not stop.is_set():
            polls[0] += 1
            try:
                attrs = json.loads((path / "zarr.json").read_text())["attributes"]
            except (OSError, ValueError):  # replaced while read
                continue
            if attrs.get("enspp_kind") != "product" or COMPLETE_ATTR not in attrs:
                problems.append(f"root attributes {sorted(attrs)}")
            try:
                for ds in (open_product(path), open_dataset(path)):
                    done = set(np.asarray(ds.attrs[COMPLETE_ATTR], dtype="datetime64[ns]"))
                    if not set(ds.init_time.values) <= done:
                        problems.append("an init time not marked complete was handed out")
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                problems.append(f"{type(e).__name__}: {e}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for init in inits[1:]:
            write(init)
    finally:
        stop.set()
        reader.join()
    assert polls[0] > 10
    assert not problems, problems[:5]
    assert open_product(path).sizes["init_time"] == len(inits)
