"""``train.precision: bf16-mixed`` on the CPU: the networks under bfloat16 autocast give the
float32 distribution (the ensemble moments, the head and the CRPS stay in float32 on
physical-unit inputs of ~285 K and ~5.5e4 m2 s-2, where bfloat16 alone would be off by ~1 K),
and a training run through the real pipeline matches the float32 one."""

from __future__ import annotations

import pytest
import torch
from predict_data import SMALL_MIXED, make_stores, pipeline_config

from enspp.models.base import build_model
from enspp.models.config import ConfigError, ModelConfig, TrainConfig, parse_section
from enspp.models.train import build_spec, train
from enspp.pipeline import EnsembleDataModule


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("bf16"))


@pytest.mark.parametrize("name,options", [("mixed", SMALL_MIXED), ("unet", {}), ("mlp", {})])
def test_bf16_autocast_keeps_the_distribution(stores, name, options):
    dm = EnsembleDataModule(pipeline_config(stores, batches={"batch_size": 4}))
    dm.setup("fit")
    spec = build_spec(dm, ModelConfig(name=name, options=options), n_members=dm.n_members,
                      grid_shape=dm.grid_shape)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # a trained-like network: outputs that depend on every layer
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(dm.train_dataloader()))
    assert float(batch["inputs"].abs().max()) > 200  # physical units reach the network
    with torch.no_grad():
        ref = model(batch)
        ref_loss = model.loss(ref, batch["target"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            loss = model.loss(out, batch["target"])
    assert out["mu"].dtype == out["sigma"].dtype == loss.dtype == torch.float32
    sigma = ref["sigma"]
    assert float(((out["mu"] - ref["mu"]).abs() / sigma).max()) < 0.01
    assert float(((out["sigma"] - sigma).abs() / sigma).max()) < 0.02
    assert abs(float(loss) - float(ref_loss)) < 0.01 * float(ref_loss)
    # the control: the same inputs rounded to bfloat16 move the mean by far more
    rounded = {**batch, "inputs": batch["inputs"].bfloat16().float()}
    with torch.no_grad():
        coarse = model(rounded)
    assert float(((coarse["mu"] - ref["mu"]).abs() / sigma).max()) > 0.05


def test_bf16_mixed_training_run_matches_float32(stores, tmp_path):
    cfg = pipeline_config(stores, batches={"batch_size": 4, "patch_size": 12})
    scores = {}
    for precision in ("32-true", "bf16-mixed"):
        result = train(cfg, ModelConfig(name="mixed", options=SMALL_MIXED),
                       TrainConfig(max_epochs=2, precision=precision, progress_bar=False,
                                   run_id=precision, learning_rate=0.01),
                       workdir=tmp_path)
        assert result.best_checkpoint.is_file() and result.epochs == 2
        scores[precision] = result.best_score
    assert abs(scores["bf16-mixed"] - scores["32-true"]) < 0.02 * scores["32-true"], scores


def test_precision_choices():
    assert parse_section({"train": {"precision": "bf16-mixed"}}, "train", TrainConfig).precision \
        == "bf16-mixed"
    with pytest.raises(ConfigError, match=r"enspp.yaml: train.precision: Input should be "):
        parse_section({"train": {"precision": "bf16"}}, "train", TrainConfig, source="enspp.yaml")
    with pytest.raises(ConfigError, match=r"train.precision: '16-mixed' needs a CUDA"):
        parse_section({"train": {"precision": "16-mixed"}}, "train", TrainConfig)
    assert parse_section({"train": {"precision": "16-mixed", "accelerator": "cuda"}}, "train",
                         TrainConfig).precision == "16-mixed"
