"""models.checkpoint: round trip, metadata, buffers, corrupt files, store mismatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_data import NX, NY, K, make_checkpoint, make_stores, pipeline_config

from enspp.models.checkpoint import (
    METADATA_KEY,
    MODEL_PREFIX,
    CheckpointMismatchError,
    CorruptCheckpointError,
    check_store_compatible,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
)
from enspp.pipeline.align import open_dataset
from enspp.pipeline.datamodule import EnsembleDataModule


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    paths = make_stores(d / "stores")
    pipe = pipeline_config(paths)
    return {"paths": paths, "pipe": pipe,
            "ckpt": make_checkpoint(d / "m.ckpt", pipe, perturb=0.05)}


def _batch(pipe):
    dm = EnsembleDataModule(pipe)
    return next(iter(dm.val_dataloader()))


def test_round_trip_same_outputs_metadata_and_buffers(world):
    loaded = load_checkpoint(world["ckpt"])
    again = load_checkpoint(world["ckpt"])
    batch = _batch(world["pipe"])
    with torch.inference_mode():
        a, b = loaded.model(batch), again.model(batch)
    for key in ("mu", "sigma"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert torch.isfinite(a[key]).all()
    meta = loaded.metadata
    fc = open_dataset(world["paths"].forecast)
    np.testing.assert_allclose(meta.latitude, fc.latitude.values)
    np.testing.assert_allclose(meta.longitude, fc.longitude.values)
    assert meta.n_members == K and meta.member_strategy == "first"
    assert meta.variables == ("z500", "t850", "t2m") and meta.levels == (500, 850)
    assert meta.channels == ("z500@48h", "t850@48h", "t2m@48h") and meta.targets == ("t2m",)
    assert meta.estimator == "gaussian" and meta.distribution == "gaussian"
    assert meta.data_version.startswith("sha256:") and len(meta.data_hash) == 64
    assert meta.code_version and meta.pipeline["members"]["k"] == K
    buffers = dict(loaded.model.named_buffers())
    assert {"norm.channel_mean", "norm.channel_std_local", "norm.target_std"} <= set(buffers)
    assert "norm.channel_mean" not in dict(loaded.model.named_parameters())
    assert buffers["norm.channel_mean_local"].shape == (3, NY, NX)
    raw, _ = read_checkpoint(world["ckpt"])
    assert "model.norm.channel_std_local" in raw["state_dict"] and METADATA_KEY in raw


def test_loaded_model_holds_the_checkpoint_weights_and_its_hash(world):
    """The checkpoint's tensors become the model's parameters and buffers (float32, the
    anchor still frozen and sharing the model's normalisation); the hash is the file's."""
    loaded = load_checkpoint(world["ckpt"])
    assert loaded.sha256 == file_sha256(world["ckpt"])
    raw, _ = read_checkpoint(world["ckpt"])
    state = loaded.model.state_dict()
    for key, value in raw["state_dict"].items():
        torch.testing.assert_close(state[key[len(MODEL_PREFIX):]], value, rtol=0, atol=0)
    params = dict(loaded.model.named_parameters())
    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == torch.float32
               for p in params.values())
    assert params["out.weight"].requires_grad and not params["anchor.params"].requires_grad
    assert loaded.model.anchor.norm is loaded.model.norm
    assert not loaded.model.training


@pytest.mark.parametrize("damage", ["truncated", "random", "not_lightning", "no_metadata",
                                    "not_mapping", "lacks_keys", "bad_version", "bad_spec",
                                    "bad_weights"])
def test_corrupt_checkpoints_name_the_file(world, tmp_path, damage):
    path = tmp_path / f"{damage}.ckpt"
    good = world["ckpt"].read_bytes()
    raw = torch.load(world["ckpt"], weights_only=True)
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, path)
    elif damage == "no_metadata":
        torch.save({"state_dict": raw["state_dict"]}, path)
    elif damage == "not_mapping":
        torch.save({**raw, METADATA_KEY: [1, 2]}, path)
    elif damage == "lacks_keys":
        torch.save({**raw, METADATA_KEY: {"metadata_version": raw[METADATA_KEY]["metadata_version"]}},
                   path)
    elif damage == "bad_spec":
        spec = {**raw[METADATA_KEY]["spec"], "name": "transformer"}
        torch.save({**raw, METADATA_KEY: {**raw[METADATA_KEY], "spec": spec}}, path)
    elif damage == "bad_version":
        torch.save({**raw, METADATA_KEY: {**raw[METADATA_KEY], "metadata_version": 99}}, path)
    else:
        state = {k: v for k, v in raw["state_dict"].items() if "encoder" not in k}
        torch.save({**raw, "state_dict": state}, path)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_store_mismatches_are_named(world):
    meta = load_checkpoint(world["ckpt"]).metadata
    fc = open_dataset(world["paths"].forecast)
    check_store_compatible(meta, fc)
    with pytest.raises(CheckpointMismatchError, match=r"variables: .*\['t850'\]"):
        check_store_compatible(meta, fc.drop_vars("t"))
    with pytest.raises(CheckpointMismatchError, match="grid: .* 15 latitude points.*16"):
        check_store_compatible(meta, fc.isel(latitude=slice(1, None)))
    shifted = fc.assign_coords(longitude=fc.longitude + 0.5)
    with pytest.raises(CheckpointMismatchError, match="grid: longitude .* 0.5 deg"):
        check_store_compatible(meta, shifted)
    with pytest.raises(CheckpointMismatchError, match="K: .*K=5 .* only 4"):
        check_store_compatible(meta, fc.isel(member=slice(0, 4)))
    points = fc.isel(latitude=0, drop=True)
    with pytest.raises(CheckpointMismatchError, match="grid: .*no 'latitude'"):
        check_store_compatible(meta, points)
