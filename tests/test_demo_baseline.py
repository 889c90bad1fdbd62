"""The demo's EMOS baseline taken from the registered network's anchor: the same exact fit as
training ``emos_local`` on the same data, and only when the anchor is that fit."""

from __future__ import annotations

import torch
from station_data import write_station_stores

from enspp.flows.demo import write_anchor_checkpoint
from enspp.models.checkpoint import load_checkpoint
from enspp.models.config import ModelConfig, TrainConfig
from enspp.models.train import train
from enspp.pipeline.config import PipelineConfig

SPLIT = {"train": {"start": "2010-01-01", "end": "2010-05-31"},
         "val": {"start": "2010-06-01", "end": "2010-07-15"},
         "test": {"start": "2010-07-16", "end": "2010-12-31"}}


def _pipeline(stores, **features) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "stores": {"forecast": str(stores.forecast), "analysis": str(stores.analysis)},
        "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                     "static": ["sin_doy", "cos_doy"], **features},
        "members": {"k": 5}, "split": SPLIT, "batches": {"batch_size": 100000, "preload": True},
        "nan_policy": "mask"})


def test_the_anchor_checkpoint_is_the_exact_emos_fit(tmp_path):
    stores = write_station_stores(tmp_path / "stores", n_stations=2)
    pipe = _pipeline(stores)
    cfg = TrainConfig(max_epochs=2, learning_rate=0.01, progress_bar=False)
    net = train(pipe, ModelConfig(name="mlp", options={"hidden": [8]}),
                cfg.model_copy(update={"run_id": "net"}), workdir=tmp_path)
    emos = train(pipe, ModelConfig(name="emos_local"), cfg.model_copy(update={"run_id": "emos"}),
                 workdir=tmp_path)
    out = write_anchor_checkpoint(net.best_checkpoint, tmp_path / "baseline.ckpt", pipe)
    assert out is not None
    got, want = load_checkpoint(out), load_checkpoint(emos.best_checkpoint)
    assert got.metadata.spec["name"] == "emos_local" and type(got.model) is type(want.model)
    torch.testing.assert_close(got.model.params, want.model.params, rtol=1e-6, atol=1e-7)
    # another split, a raw-anchored network or a refit: not the baseline's fit
    other = _pipeline(stores).model_copy(update={"split": _pipeline(stores).split.model_copy(
        update={"train": _pipeline(stores).split.val})})
    assert write_anchor_checkpoint(net.best_checkpoint, tmp_path / "x.ckpt", other) is None
    raw = train(pipe, ModelConfig(name="mlp", options={"hidden": [8], "anchor": "raw"}),
                cfg.model_copy(update={"run_id": "raw"}), workdir=tmp_path)
    assert write_anchor_checkpoint(raw.best_checkpoint, tmp_path / "y.ckpt", pipe) is None
    refit = train(pipe, ModelConfig(name="mlp", options={"hidden": [8]}),
                  cfg.model_copy(update={"run_id": "refit", "refit": True}), workdir=tmp_path)
    assert write_anchor_checkpoint(refit.best_checkpoint, tmp_path / "z.ckpt", pipe) is None
