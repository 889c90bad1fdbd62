"""models.predict: the product store (layout, CF attributes, provenance, ECC members), NetCDF,
tiles vs whole fields, idempotent and repairable appends, NaN policy and bad input."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from predict_data import NX, NY, K, loader_moments, make_checkpoint, make_stores, pipeline_config

from enspp.models.checkpoint import CheckpointMismatchError, file_sha256
from enspp.models.predict import PredictError, _static, predict, tiling
from enspp.models.product import ProductError, open_product
from enspp.pipeline.align import open_dataset
from enspp.pipeline.members import MemberSelectionError

QUANTILES = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    paths = make_stores(d / "stores")
    pipe = pipeline_config(paths)
    return {"dir": d, "paths": paths, "pipe": pipe,
            "raw": make_checkpoint(d / "raw.ckpt", pipe),
            "perturbed": make_checkpoint(d / "perturbed.ckpt", pipe, perturb=0.05)}


def _inits(world, n=2):
    return list(open_dataset(world["paths"].forecast).init_time.values[:n])


def test_product_layout_attrs_and_raw_reproduction(world, tmp_path):
    out = predict(world["raw"], world["paths"].forecast, out=tmp_path / "p.zarr",
                  init_times=_inits(world), quantiles=QUANTILES, n_members=K)
    ds = open_product(out)
    assert set(ds.data_vars) == {"t2m", "t2m_mean", "t2m_std", "t2m_quantiles"}
    assert ds["t2m"].dims == ("init_time", "lead_time", "member", "latitude", "longitude")
    assert ds["t2m_mean"].dims == ("init_time", "lead_time", "latitude", "longitude")
    assert ds["t2m_quantiles"].dims == ("init_time", "lead_time", "quantile", "latitude",
                                        "longitude")
    assert ds.sizes == {"init_time": 2, "lead_time": 1, "member": K, "quantile": 3,
                        "latitude": NY, "longitude": NX}
    assert ds["t2m"].attrs["units"] == "K" and ds["t2m"].attrs["standard_name"] == "air_temperature"
    assert ds["t2m_mean"].attrs["standard_name"] == "air_temperature"
    assert "standard_name" not in ds["t2m_std"].attrs and ds["t2m_std"].attrs["units"] == "K"
    a = ds.attrs
    assert a["Conventions"].startswith("CF") and a["distribution"] == "gaussian"
    assert a["crps_estimator"] == "gaussian" and a["input_members"] == [1, 2, 3, 4, 5]
    assert a["checkpoint_sha256"] == file_sha256(world["raw"])
    assert a["model_version"].startswith("mixed-") and len(a["enspp_complete"]) == 2
    # an untrained mixed model is the raw ensemble: mean/std and ECC members = raw members
    fc = open_dataset(world["paths"].forecast)
    raw = fc["t2m"].sel(init_time=ds.init_time, lead_time=ds.lead_time, member=[1, 2, 3, 4, 5])
    np.testing.assert_allclose(ds["t2m_mean"], raw.mean("member"), rtol=1e-5)
    np.testing.assert_allclose(ds["t2m_std"], raw.std("member", ddof=1), rtol=1e-3)
    ranks = lambda x: np.argsort(np.argsort(x, axis=2), axis=2)  # noqa: E731
    np.testing.assert_array_equal(ranks(ds["t2m"].values), ranks(raw.transpose(*ds["t2m"].dims).values))


def test_ecc_members_have_predicted_mean_and_spread(world, tmp_path):
    m = 40
    out = predict(world["perturbed"], world["paths"].forecast, out=tmp_path / "p.zarr",
                  init_times=_inits(world, 1), quantiles=QUANTILES, n_members=m)
    ds = open_product(out).load()
    mean, std = ds["t2m_mean"], ds["t2m_std"]
    # ECC-Q levels i/(M+1) are symmetric: the member mean is the predictive mean up to rounding,
    # the member std the predictive std times the std of the M normal quantiles (~0.96 at M=40)
    np.testing.assert_allclose(ds["t2m"].mean("member"), mean, atol=1e-3 * float(std.mean()))
    ratio = ds["t2m"].std("member", ddof=1) / std
    assert 0.9 < float(ratio.min()) and float(ratio.max()) < 1.05
    np.testing.assert_allclose(ds["t2m_quantiles"].sel(quantile=0.5), mean, rtol=1e-6)
    assert (ds["t2m_quantiles"].diff("quantile") > 0).all()


def test_netcdf_on_request(world, tmp_path):
    out = predict(world["raw"], world["paths"].forecast, out=tmp_path / "p.nc", fmt="netcdf",
                  init_times=_inits(world), quantiles=QUANTILES, n_members=3)
    assert out.is_file() and not (tmp_path / ".p.nc.partial").exists()
    with xr.open_dataset(out) as ds:
        assert ds.sizes["member"] == 3 and ds.sizes["init_time"] == 2
        assert ds.attrs["enspp_kind"] == "product" and "history" in ds.attrs


def test_tiles_match_a_whole_field_pass(world, tmp_path):
    pipe = pipeline_config(world["paths"], batches={"patch_size": 12})
    assert tiling(pipe, grid_shape=(NY, NX)) == (12, 3)
    assert tiling(pipeline_config(world["paths"]), grid_shape=(NY, NX)) == (None, 0)
    tiled_ckpt = make_checkpoint(tmp_path / "tiled.ckpt", pipe, perturb=0.05)
    whole = open_product(predict(world["perturbed"], world["paths"].forecast,
                                 out=tmp_path / "w.zarr", init_times=_inits(world, 1))).load()
    tiled = open_product(predict(tiled_ckpt, world["paths"].forecast, out=tmp_path / "t.zarr",
                                 init_times=_inits(world, 1))).load()
    for v in ("t2m_mean", "t2m_std"):
        err = np.abs(tiled[v] - whole[v]) / whole["t2m_std"]
        assert float(err.max()) < 0.05, (v, float(err.max()))
    # the perturbed model is not the raw ensemble, so the comparison tests the tiling
    raw = open_dataset(world["paths"].forecast)["t2m"].sel(
        init_time=whole.init_time, lead_time=whole.lead_time, member=[1, 2, 3, 4, 5])
    assert float(np.abs(whole["t2m_mean"] - raw.mean("member")).max()) > 0.05


def test_product_is_the_plain_modules_product(world, tmp_path, monkeypatch):
    """predict's inference paths (oneDNN's fused and transposed convolutions, 1x1
    convolutions for the per-point layers) write the product that the plain modules write,
    to float32 rounding: every field, ECC members included."""
    from enspp.models import unet

    inits = _inits(world, 2)
    fast = open_product(predict(world["perturbed"], world["paths"].forecast,
                                out=tmp_path / "fast.zarr", init_times=inits,
                                quantiles=QUANTILES)).load()
    monkeypatch.setattr(unet, "FUSED_CONV_GELU", False)
    plain = open_product(predict(world["perturbed"], world["paths"].forecast,
                                 out=tmp_path / "plain.zarr", init_times=inits,
                                 quantiles=QUANTILES)).load()
    assert set(fast.data_vars) == set(plain.data_vars) and "t2m" in fast.data_vars
    scale = float(plain["t2m_std"].mean())
    for name in fast.data_vars:
        np.testing.assert_allclose(fast[name].values, plain[name].values, rtol=1e-5,
                                   atol=1e-5 * scale, err_msg=name)


def test_gaussian_only_whole_field_product_is_the_test_loaders(world, tmp_path):
    """``fields=("mean", "std")`` with ``whole_fields``: the two moments alone, as the training
    pipeline's test loader computes them (the synthetic experiment's product)."""
    pipe = pipeline_config(world["paths"], batches={"patch_size": 12, "batch_size": 2})
    ckpt = make_checkpoint(tmp_path / "patches.ckpt", pipe, perturb=0.5)
    reference = loader_moments(ckpt, pipe)
    inits, store = list(reference.init_time.values), world["paths"].forecast
    assert len(inits) >= 2
    out = predict(ckpt, store, out=tmp_path / "g.zarr", init_times=inits, fields=("mean", "std"),
                  whole_fields=True)
    got = open_product(out).load()
    assert set(got.data_vars) == {"t2m_mean", "t2m_std"} and set(got.coords) == set(reference.coords)
    assert got.sizes == reference.sizes
    for name, coord in reference.coords.items():
        np.testing.assert_array_equal(got[name].values, coord.values)
    for v in reference.data_vars:
        assert got[v].dims == reference[v].dims and got[v].dtype == np.float32
        np.testing.assert_allclose(got[v].values, reference[v].values, rtol=1e-6)
    assert float(got["t2m_std"].min()) > 0.1 and 250 < float(got["t2m_mean"].mean()) < 300
    a = got.attrs
    assert a["n_ecc_members"] == 0 and a["quantiles"] == [] and "ensemble_method" not in a
    assert a["distribution"] == "gaussian" and a["checkpoint_sha256"] == file_sha256(ckpt)
    # the full product holds the same moments; tiles (this patch-trained model's default) do not
    full = open_product(predict(ckpt, store, out=tmp_path / "f.zarr", init_times=inits,
                                quantiles=QUANTILES, n_members=3, whole_fields=True)).load()
    assert {"t2m", "t2m_quantiles"} <= set(full.data_vars) and full.attrs["n_ecc_members"] == 3
    for v in ("t2m_mean", "t2m_std"):
        np.testing.assert_array_equal(full[v].values, got[v].values)
    tiled = open_product(predict(ckpt, store, out=tmp_path / "t.zarr", init_times=inits,
                                 fields=("std", "mean"))).load()
    assert max(float(np.abs(tiled[v] - got[v]).max()) for v in ("t2m_mean", "t2m_std")) > 2e-3
    # appending the full fields to the moments-only product: another product
    with pytest.raises(ProductError, match="n_ecc_members"):
        predict(ckpt, store, out=out, init_times=inits, whole_fields=True)


def _snapshot(path: Path) -> xr.Dataset:
    with xr.open_zarr(path, consolidated=True) as ds:
        return ds.load()


def test_repredict_is_idempotent_and_repairs_a_killed_append(world, tmp_path):
    out, store, ckpt = tmp_path / "p.zarr", world["paths"].forecast, world["perturbed"]
    first, second = _inits(world)
    predict(ckpt, store, out=out, init_times=[first], quantiles=QUANTILES, n_members=7)
    predict(ckpt, store, out=out, init_times=[second], quantiles=QUANTILES, n_members=7)
    reference = _snapshot(out)
    assert list(reference.init_time.values) == [first, second]
    predict(ckpt, store, out=out, init_times=[second], quantiles=QUANTILES, n_members=7)
    again = _snapshot(out)
    xr.testing.assert_identical(again, reference)
    assert again.attrs == reference.attrs
    # a run killed while appending `second`: one array is short, `second` not complete
    group = zarr.open_group(out, mode="r+")
    group["t2m_std"].resize((1, *group["t2m_std"].shape[1:]))
    group.attrs["enspp_complete"] = [str(first)]
    predict(ckpt, store, out=out, init_times=[second], quantiles=QUANTILES, n_members=7)
    xr.testing.assert_identical(_snapshot(out), reference)
    # a killed first write leaves only the hidden partial store, removed by the next run
    (tmp_path / ".q.zarr.partial").mkdir()
    predict(ckpt, store, out=tmp_path / "q.zarr", init_times=[first], quantiles=QUANTILES,
            n_members=7)
    assert not (tmp_path / ".q.zarr.partial").exists()


def test_product_chunks_are_checksummed_and_a_flipped_byte_is_caught(world, tmp_path):
    """Products carry the stores' crc32c codec on every data variable (appends keep it), so
    one flipped byte in a product chunk is a read error, not a silently wrong value."""
    from zarr.codecs import Crc32cCodec

    out, store, ckpt = tmp_path / "p.zarr", world["paths"].forecast, world["perturbed"]
    first, second = _inits(world)
    predict(ckpt, store, out=out, init_times=[first], quantiles=QUANTILES, n_members=7)
    predict(ckpt, store, out=out, init_times=[second], quantiles=QUANTILES, n_members=7)
    group = zarr.open_group(out, mode="r")
    for name in ("t2m", "t2m_mean", "t2m_std", "t2m_quantiles"):
        assert any(isinstance(c, Crc32cCodec) for c in group[name].metadata.codecs), name
    # a first write of several init times at once (one block) is checksummed too
    block = tmp_path / "block.zarr"
    predict(ckpt, store, out=block, init_times=[first, second], quantiles=QUANTILES, n_members=7)
    group = zarr.open_group(block, mode="r")
    for name in ("t2m", "t2m_mean", "t2m_std", "t2m_quantiles"):
        assert any(isinstance(c, Crc32cCodec) for c in group[name].metadata.codecs), name
    # the appended init time's chunk (a small field: both init times share one chunk)
    per_chunk = zarr.open_group(out, mode="r")["t2m_mean"].chunks[0]
    assert per_chunk > 1
    chunk = out / "t2m_mean" / "c" / str(1 // per_chunk) / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    ds = open_product(out)
    ds["t2m_std"].load()  # the other variables read
    with pytest.raises(ValueError, match="checksum"):
        ds["t2m_mean"].isel(init_time=1).load()


def test_existing_product_of_another_run_is_refused(world, tmp_path):
    out = tmp_path / "p.zarr"
    predict(world["raw"], world["paths"].forecast, out=out, init_times=_inits(world, 1),
            quantiles=QUANTILES, n_members=3)
    with pytest.raises(ProductError, match="n_ecc_members"):
        predict(world["raw"], world["paths"].forecast, out=out, init_times=_inits(world, 1),
                quantiles=QUANTILES, n_members=4)
    with pytest.raises(ProductError, match="checkpoint_sha256"):
        predict(world["perturbed"], world["paths"].forecast, out=out,
                init_times=_inits(world, 1), quantiles=QUANTILES, n_members=3)
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(ProductError, match="not a Zarr product store"):
        predict(world["raw"], world["paths"].forecast, out=tmp_path / "file.zarr")
    (tmp_path / "other.zarr").mkdir()
    with pytest.raises(ProductError, match="not a"):
        predict(world["raw"], world["paths"].forecast, out=tmp_path / "other.zarr")
    with pytest.raises(ProductError, match="not an enspp product store"):
        predict(world["raw"], world["paths"].forecast, out=world["paths"].forecast)
    with pytest.raises(ProductError, match="not an enspp product store"):
        open_product(world["paths"].forecast)
    with pytest.raises(FileNotFoundError):
        open_product(tmp_path / "missing.zarr")


def test_nan_inputs_follow_the_pipeline_policy(world, tmp_path):
    ds = open_dataset(world["paths"].forecast).load()
    ds["t"][:, :, :, 1, 2, 3] = np.nan  # t850 NaN at one point
    init = _inits(world, 1)
    with pytest.raises(PredictError, match=r"inputs \['t850@48h'\] have missing values \(NaN\) "
                       r"at init time .*: values inside the field are missing \(NaN in the source"):
        predict(world["raw"], ds, out=tmp_path / "e.zarr", init_times=init)
    mask_pipe = pipeline_config(world["paths"], nan_policy="mask",
                                features={"variables": ["t850", "t2m"], "targets": ["t2m"]})
    ckpt = make_checkpoint(tmp_path / "mask.ckpt", mask_pipe)
    out = open_product(predict(ckpt, ds, out=tmp_path / "m.zarr", init_times=init)).load()
    assert np.isnan(out["t2m_mean"].values[0, 0, 2, 3]) and np.isnan(out["t2m"].values[0, 0, :, 2, 3]).all()
    assert np.isfinite(out["t2m_mean"]).sum() == NY * NX - 1


def test_bad_requests_name_the_problem(world, tmp_path):
    ckpt, store = world["raw"], world["paths"].forecast
    with pytest.raises(PredictError, match="fmt"):
        predict(ckpt, store, out=tmp_path / "p", fmt="grib")
    with pytest.raises(PredictError, match="n_members"):
        predict(ckpt, store, out=tmp_path / "p", n_members=0)
    with pytest.raises(PredictError, match="quantiles"):
        predict(ckpt, store, out=tmp_path / "p", quantiles=(0.5, 0.1))
    for fields in (("members", "quantiles"), ("mean", "std", "median"), "mean"):
        with pytest.raises(PredictError, match="fields must be of .* include 'mean' and 'std'"):
            predict(ckpt, store, out=tmp_path / "p", fields=fields)
    with pytest.raises(PredictError, match="1999-01-01"):
        predict(ckpt, store, out=tmp_path / "p", init_times=["1999-01-01"])
    with pytest.raises(FileNotFoundError, match="static"):
        predict(ckpt, store, out=tmp_path / "p", static=tmp_path / "nope.nc")
    empty = open_dataset(store).isel(init_time=slice(0, 0))
    with pytest.raises(PredictError, match="no .*init times"):
        predict(ckpt, empty, out=tmp_path / "p")
    with pytest.raises(PredictError, match=r"static features \['snow'\]"):
        _static(["lsm", "snow"], np.zeros((6, 2, 2), np.float32), 0.0, 1.0)
    no48 = open_dataset(store).sel(lead_time=[np.timedelta64(24, "h")])
    with pytest.raises(PredictError, match="lead time 48 h"):
        predict(ckpt, no48, out=tmp_path / "p")


def test_store_mismatch_and_too_few_members(world, tmp_path):
    ckpt, ds = world["raw"], open_dataset(world["paths"].forecast)
    with pytest.raises(CheckpointMismatchError, match="variables.*t850"):
        predict(ckpt, ds.drop_vars("t"), out=tmp_path / "p")
    with pytest.raises(CheckpointMismatchError, match="grid: .*longitude"):
        predict(ckpt, ds.isel(longitude=slice(0, NX - 1)), out=tmp_path / "p")
    with pytest.raises(CheckpointMismatchError, match="K=5"):
        predict(ckpt, ds.isel(member=slice(0, 3)), out=tmp_path / "p")
    with pytest.raises(MemberSelectionError, match="members.k = 5"):
        predict(ckpt, ds.isel(member=slice(0, 5)), out=tmp_path / "p")  # 4 perturbed members
    with pytest.raises(CheckpointMismatchError, match=r"analysis.zarr is an analysis store "
                       r"\(dims .*\), not an ensemble forecast store"):
        predict(ckpt, world["paths"].analysis, out=tmp_path / "p")


def test_a_run_directory_stands_for_its_best_checkpoint(world, tmp_path, capsys):
    """``--checkpoint`` takes a run directory of ``enspp train`` (its checkpoints/best.ckpt,
    the same product); a directory without one is one line naming it."""
    import shutil

    from enspp.flows.cli import main

    run = tmp_path / "runs" / "20260101-000000-s0"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(world["raw"], run / "checkpoints" / "best.ckpt")
    init = str(_inits(world, 1)[0])[:13]
    args = ["predict", "--store", str(world["paths"].forecast), "--init-time", init]
    assert main([*args, "--checkpoint", str(run), "--out", str(tmp_path / "a.zarr")]) == 0
    assert main([*args, "--checkpoint", str(world["raw"]), "--out", str(tmp_path / "b.zarr")]) == 0
    a, b = open_product(tmp_path / "a.zarr").load(), open_product(tmp_path / "b.zarr").load()
    xr.testing.assert_equal(a, b)
    assert a.attrs["checkpoint_sha256"] == b.attrs["checkpoint_sha256"]
    assert a.attrs["checkpoint"] == "best.ckpt"
    capsys.readouterr()
    assert main([*args, "--checkpoint", str(tmp_path / "runs"), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs is a directory without checkpoints/best.ckpt" in err


@pytest.mark.parametrize("value", ["yesterday", "2019-13-01", "2019-01-0x", "", "9999-01-01"])
def test_an_init_time_that_is_not_a_date_is_one_line_naming_the_option(world, tmp_path, capsys,
                                                                       value):
    """``--init-time`` that does not parse (or lies beyond the nanosecond range): one line
    naming the option and the value, no traceback, nothing written."""
    from enspp.flows.cli import main

    out = tmp_path / "p.zarr"
    assert main(["predict", "--checkpoint", str(world["raw"]), "--store",
                 str(world["paths"].forecast), "--init-time", value, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"enspp predict: error: --init-time {value!r}: not a date/time"), err
    assert not out.exists()


def test_absent_input_fields_skip_the_init_time_never_filled(world, tmp_path):
    """A forecast store that lacks an input field at one init time (recorded as absent):
    predict skips that init time and says so in one line, whatever ``nan_policy`` (the field
    is not filled); when every init time asked for lacks a field, one clear error."""
    import logging

    from enspp.data.progress import LOGGER
    from enspp.data.store import present_fields
    from enspp.data.store_writer import append

    ds = open_dataset(world["paths"].forecast).isel(init_time=slice(0, 3)).load()
    init = ds.init_time.values[1]
    ds["t"].loc[{"init_time": init, "lead_time": np.timedelta64(48, "h")}] = np.nan
    store = tmp_path / "fc.zarr"
    append(store, ds.drop_encoding(), kind="forecast")
    assert present_fields(store)["t"].values.tolist() == [[True, True], [True, False], [True, True]]
    mask_pipe = pipeline_config(world["paths"], nan_policy="mask",
                                features={"variables": ["t850", "t2m"], "targets": ["t2m"]})
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    try:
        for name, ckpt in (("error", world["raw"]),
                           ("mask", make_checkpoint(tmp_path / "mask.ckpt", mask_pipe))):
            lines.clear()
            out = open_product(predict(ckpt, store, out=tmp_path / f"{name}.zarr",
                                       quantiles=QUANTILES, progress=False))
            assert out.init_time.values.tolist() == ds.init_time.values[[0, 2]].tolist(), name
            assert bool(np.isfinite(out["t2m_mean"]).all()), name
            said = [line for line in lines if "skipped because" in line]
            assert len(said) == 1 and said[0].startswith(
                "predict: 1 of 3 init times skipped because input fields are absent from "
                f"{store}"), lines
            assert f"{str(init)[:16]} (t850@48h)" in said[0]
            assert "(1 skipped: input fields absent)" in lines[-1]
            assert out.attrs["enspp_skipped"] == [str(init)]  # recorded in the product
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    with pytest.raises(PredictError, match=r"^predict: 1 of 1 init time skipped because input "
                       r"fields are absent .*\(t850@48h\)$"):
        predict(world["raw"], store, out=tmp_path / "none.zarr", init_times=[init])


def test_a_netcdf_product_records_skipped_init_times_and_is_extended(world, tmp_path):
    """``fmt: netcdf``: the init times skipped for want of input fields are recorded in the
    file as in a Zarr product (inspect, validate and the flows read them), and a predict into
    an existing file extends it (the skipped one tried again) instead of replacing it with
    the new init times alone."""
    from enspp.data.store_writer import append
    from enspp.models.predict import PredictError
    from enspp.models.product import INPUTS_ATTR, read_product_attrs, read_product_state

    ds = open_dataset(world["paths"].forecast).isel(init_time=slice(0, 3)).load()
    inits = list(ds.init_time.values)
    ds["t"].loc[{"init_time": inits[1], "lead_time": np.timedelta64(48, "h")}] = np.nan
    store = tmp_path / "fc.zarr"
    append(store, ds.drop_encoding(), kind="forecast")
    kw = dict(quantiles=QUANTILES, n_members=3, progress=False)
    out = predict(world["raw"], store, out=tmp_path / "p.nc", fmt="netcdf",
                  init_times=inits[:2], **kw)
    state = read_product_state(out)
    assert state.skipped == (str(inits[1])[:19],) and list(state.init_times) == [inits[0]]
    with open_product(out) as got:
        assert got.attrs["enspp_skipped"] == [str(inits[1])]
    predict(world["raw"], store, out=out, fmt="netcdf", init_times=inits[1:], **kw)
    zarr_out = predict(world["raw"], store, out=tmp_path / "p.zarr", init_times=inits, **kw)
    with open_product(out) as got, open_product(zarr_out) as want:
        assert list(got.init_time.values) == [inits[0], inits[2]]
        assert got.attrs["enspp_skipped"] == want.attrs["enspp_skipped"] == [str(inits[1])]
        xr.testing.assert_allclose(got.load().drop_attrs(), want.load().drop_attrs())
    assert read_product_state(out).skipped == read_product_state(zarr_out).skipped
    # the file records what each init time was computed from, as the Zarr product does
    inputs = read_product_attrs(out)[INPUTS_ATTR]
    assert inputs and inputs == read_product_attrs(zarr_out)[INPUTS_ATTR]
    # a predict whose init times are all skipped fails, and the file it extends records them
    again = predict(world["raw"], store, out=tmp_path / "q.nc", fmt="netcdf",
                    init_times=inits[:1], **kw)
    with pytest.raises(PredictError, match="input fields absent|skipped"):
        predict(world["raw"], store, out=again, fmt="netcdf", init_times=inits[1:2], **kw)
    assert read_product_state(again).skipped == (str(inits[1])[:19],)
    assert list(read_product_state(again).init_times) == [inits[0]]


def test_blocks_of_init_times_write_the_store_one_at_a_time_writes(world, tmp_path, monkeypatch):
    """Small fields are written in blocks of init times (one append per block); the store is
    the one init-time-at-a-time writes make, also when a block mixes stored and new init
    times (stored ones rewritten in place, new ones appended)."""
    import enspp.models.predict as P

    store, ckpt = world["paths"].forecast, world["perturbed"]
    inits = _inits(world, n=4)
    kw = dict(quantiles=QUANTILES, n_members=5)
    monkeypatch.setattr(P, "WRITE_BLOCK_VALUES", 1)  # one init time per write
    predict(ckpt, store, out=tmp_path / "one.zarr", init_times=inits, **kw)
    monkeypatch.setattr(P, "WRITE_BLOCK_VALUES", 10**9)  # one write for all
    predict(ckpt, store, out=tmp_path / "block.zarr", init_times=inits[1:2], **kw)
    predict(ckpt, store, out=tmp_path / "block.zarr", init_times=inits, **kw)
    one, block = _snapshot(tmp_path / "one.zarr"), _snapshot(tmp_path / "block.zarr")
    assert sorted(block.init_time.values) == sorted(inits)
    xr.testing.assert_identical(block.sortby("init_time").drop_attrs(), one.drop_attrs())
    assert sorted(open_product(tmp_path / "block.zarr").init_time.values) == sorted(inits)
    # a product chunked one init time each (as written before products were chunked in
    # blocks) keeps its chunking when extended, and holds the same
    monkeypatch.setattr(P, "PRODUCT_CHUNK_VALUES", 1)
    predict(ckpt, store, out=tmp_path / "old.zarr", init_times=inits[:1], **kw)
    monkeypatch.undo()
    predict(ckpt, store, out=tmp_path / "old.zarr", init_times=inits, **kw)
    assert zarr.open_group(tmp_path / "old.zarr", mode="r")["t2m_mean"].chunks[0] == 1
    assert zarr.open_group(tmp_path / "one.zarr", mode="r")["t2m_mean"].chunks[0] > 1
    xr.testing.assert_identical(_snapshot(tmp_path / "old.zarr").drop_attrs(), one.drop_attrs())


@contextlib.contextmanager
def dying_at_a_chunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside: a process killed at its first chunk write (zarr's local store writes a chunk
    to a temporary file and renames it into place: the rename fails)."""
    replace = Path.replace

    def dies_at_a_chunk(self: Path, target: Any) -> Any:
        if f"{os.sep}c{os.sep}" in str(target):
            raise OSError("killed")
        return replace(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "replace", dies_at_a_chunk)
        yield


def test_a_write_that_dies_at_a_chunk_leaves_the_stored_init_times(world, tmp_path, monkeypatch):
    """A product chunk of a small field spans several init times and is replaced whole (zarr
    writes a temporary file and renames it): a run that dies at a chunk leaves the init
    times already stored as they were, and running again completes the product, identical to
    one written in one go; a rewrite of scattered stored init times leaves it identical."""
    store, ckpt = world["paths"].forecast, world["perturbed"]
    inits = _inits(world, n=4)
    kw = dict(quantiles=QUANTILES, n_members=5)
    out = tmp_path / "p.zarr"
    predict(ckpt, store, out=out, init_times=inits[:2], **kw)
    assert zarr.open_group(out, mode="r")["t2m_mean"].chunks[0] >= len(inits)
    before = open_product(out).load()
    with pytest.raises(OSError, match="killed"), dying_at_a_chunk(monkeypatch):
        predict(ckpt, store, out=out, init_times=inits, **kw)
    xr.testing.assert_identical(open_product(out).load(), before)
    predict(ckpt, store, out=out, init_times=inits, **kw)
    predict(ckpt, store, out=tmp_path / "whole.zarr", init_times=inits, **kw)
    whole = _snapshot(tmp_path / "whole.zarr")
    xr.testing.assert_identical(_snapshot(out), whole)
    predict(ckpt, store, out=out, init_times=[inits[3], inits[0], inits[2]], **kw)
    xr.testing.assert_identical(_snapshot(out), whole)


def _rebuild_per_init(store: Path, ds: xr.Dataset) -> None:
    """``store`` written again from ``ds``, one source per init time (as one GRIB file per
    forecast run is ingested): an init time's fields keep their source id while its values
    stay the same."""
    import shutil

    from enspp.data.store_writer import append

    shutil.rmtree(store, ignore_errors=True)
    for i in range(ds.sizes["init_time"]):
        append(store, ds.isel(init_time=[i]), kind="forecast")


def test_an_init_time_computed_from_replaced_inputs_is_stale_and_rewritten_whole(
        world, tmp_path, monkeypatch):
    """The product records what each init time was computed from (a digest of the forecast
    store's source ids of the model's input fields): after the store is rebuilt with one init
    time's fields from other bytes, exactly that one is stale; predicting it again unmarks it
    first, so a rewrite killed half-way leaves it incomplete (never a mix of old and new
    fields), and the rerun completes it with the new values."""
    from enspp.data.store import open_store
    from enspp.models.product import INPUTS_ATTR, stale_init_times

    original = open_store(world["paths"].forecast).isel(init_time=slice(0, 3)).load()
    store, out, ckpt = tmp_path / "fc.zarr", tmp_path / "p.zarr", world["perturbed"]
    _rebuild_per_init(store, original)
    inits = list(original.init_time.values)
    kw = dict(quantiles=QUANTILES, n_members=5)
    predict(ckpt, store, out=out, init_times=inits, **kw)
    recorded = zarr.open_group(out, mode="r").attrs[INPUTS_ATTR]
    assert sorted(map(tuple, recorded["fields"])) == [("t2m", 48), ("t850", 48), ("z500", 48)]
    assert sorted(recorded["digests"]) == [str(t) for t in inits]
    assert stale_init_times(out, store) == set()
    before = open_product(out).load()

    changed = original.copy(deep=True)
    changed["t2m"][dict(init_time=1)] += 3.0
    _rebuild_per_init(store, changed)
    assert stale_init_times(out, store) == {str(inits[1])[:19]}

    with pytest.raises(OSError, match="killed"), dying_at_a_chunk(monkeypatch):
        predict(ckpt, store, out=out, init_times=[inits[1]], **kw)
    left = open_product(out)
    assert list(left.init_time.values) == [inits[0], inits[2]]  # not complete, not mixed
    predict(ckpt, store, out=out, init_times=[inits[1]], **kw)
    assert stale_init_times(out, store) == set()
    after = open_product(out).load()
    fresh = predict(ckpt, store, out=tmp_path / "fresh.zarr", init_times=inits, **kw)
    xr.testing.assert_identical(after, open_product(fresh).load())
    assert not np.allclose(after["t2m_mean"].sel(init_time=inits[1]),
                           before["t2m_mean"].sel(init_time=inits[1]))
    xr.testing.assert_equal(after.sel(init_time=[inits[0], inits[2]]),  # values, not attrs
                            before.sel(init_time=[inits[0], inits[2]]))


def test_one_writer_of_a_product_at_a_time(world, tmp_path, monkeypatch):
    """Predicts into one product (the CLI beside the predict flow) take turns on the
    product's lock: two at once both complete it, identical to one run; one that cannot get
    the lock in time refuses, naming the product."""
    from concurrent.futures import ThreadPoolExecutor

    import enspp.models.predict as P
    from enspp.data.lock import StoreLockedError, store_lock

    store, ckpt = world["paths"].forecast, world["perturbed"]
    inits, kw = _inits(world, n=4), dict(quantiles=QUANTILES, n_members=5, progress=False)
    out = tmp_path / "p.zarr"
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(predict, ckpt, store, out=out, init_times=part, **kw)
                for part in (inits[:2], inits[2:])]
        for run in runs:
            run.result()
    predict(ckpt, store, out=tmp_path / "one.zarr", init_times=inits, **kw)
    xr.testing.assert_equal(open_product(out).load().sortby("init_time"),
                            open_product(tmp_path / "one.zarr").load())
    monkeypatch.setattr(P, "PRODUCT_LOCK_TIMEOUT", 0.2)
    with store_lock(out), pytest.raises(StoreLockedError, match="p.zarr"):
        predict(ckpt, store, out=out, init_times=inits[:1], **kw)


def test_read_group_is_bounded_by_the_input_size():
    """predict reads several init times at once only while their inputs stay small: a global
    0.25 deg grid (721 x 1440, K = 5, 3 channels) is read one init time at a time, so the
    memory of a predict does not grow with the number of init times (scale walk)."""
    from enspp.models.predict import READ_GROUP, read_group_size

    assert read_group_size(721 * 1440 * 5 * 3) == 1
    assert read_group_size(32 * 64 * 5 * 3) == READ_GROUP
    assert 1 <= read_group_size(181 * 360 * 5 * 3) < READ_GROUP
    assert read_group_size(0) == READ_GROUP
