"""models.train with the exact EMOS fit: EMOS runs, anchored networks in seed ensembles and
refits (station stores through the service path)."""

from __future__ import annotations

import pytest
import torch
from station_data import write_station_stores

from enspp.models.checkpoint import load_checkpoint
from enspp.models.config import ModelConfig, TrainConfig
from enspp.models.emos import emos_chunk, fit_emos
from enspp.models.train import train
from enspp.pipeline.config import PipelineConfig
from enspp.pipeline.datamodule import EnsembleDataModule

SPLIT = {"train": {"start": "2010-01-01", "end": "2010-05-31"},
         "val": {"start": "2010-06-01", "end": "2010-07-15"},
         "test": {"start": "2010-07-16", "end": "2010-12-31"}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_station_stores(tmp_path_factory.mktemp("stations"), n_stations=2)


def _pipeline(stores) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "stores": {"forecast": str(stores.forecast), "analysis": str(stores.analysis)},
        "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                     "static": ["sin_doy", "cos_doy"]},
        "members": {"k": 5}, "split": SPLIT, "batches": {"batch_size": 100000, "preload": True},
        "nan_policy": "mask"})


def _cfg(**kw) -> TrainConfig:
    base = dict(max_epochs=30, learning_rate=0.05, early_stopping_patience=5, progress_bar=False,
                weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def test_emos_run_is_the_exact_fit_seeds_ignored_refit_on_train_and_val(stores, tmp_path):
    pipe = _pipeline(stores)
    result = train(pipe, ModelConfig(name="emos_local"), _cfg(seeds=3, refit=True, run_id="e"),
                   workdir=tmp_path)
    assert result.epochs == 0 and result.best_checkpoint.name == "refit.ckpt"
    refit = load_checkpoint(result.best_checkpoint).model
    assert refit.spec.seeds == 1 and not hasattr(refit, "members")
    dm = EnsembleDataModule(pipe)
    dm.setup()
    ref = type(refit)(refit.spec)
    fit_emos(ref, [emos_chunk(ref, dm.preloaded(("train", "val")))])
    torch.testing.assert_close(refit.params, ref.params, rtol=1e-5, atol=1e-6)
    selected = load_checkpoint(result.selection_checkpoint).model
    val = dm.preloaded(("val",))
    with torch.no_grad():
        assert result.best_score == pytest.approx(float(selected.loss(selected(val), val["target"])), rel=1e-5)


def test_seed_ensemble_members_keep_their_anchor_unless_an_epoch_beats_it(stores, tmp_path):
    pipe = _pipeline(stores)
    emos = train(pipe, ModelConfig(name="emos_local"), _cfg(run_id="emos"), workdir=tmp_path)
    opts = {"hidden": [8], "anchor": "emos_local"}
    # a learning rate that wrecks every epoch: each member stays its anchor, the refit too
    bad = train(pipe, ModelConfig(name="mlp", options=opts),
                _cfg(seeds=2, refit=True, learning_rate=50.0, run_id="bad"), workdir=tmp_path)
    assert bad.best_epochs == (0, 0) and bad.best_score == pytest.approx(emos.best_score, rel=1e-5)
    net = load_checkpoint(bad.best_checkpoint).model
    for member in net.members:
        assert float(member.out.weight.detach().abs().max()) == 0.0
        assert float(member.anchor.params.abs().max()) > 0.0  # fitted on train + val
    good = train(pipe, ModelConfig(name="mlp", options=opts), _cfg(seeds=2, run_id="good"), workdir=tmp_path)
    assert good.best_score <= emos.best_score + 1e-6


def test_an_exact_fit_from_some_training_init_times_is_their_fit(stores, tmp_path):
    """batches.exact_fit_init_times on preloaded station data: the EMOS run is the exact fit
    of the rows of those init times (evenly spread, first and last included) alone, built
    here by selecting the rows; the train line says so."""
    import logging

    import numpy as np

    base = _pipeline(stores)
    pipe = base.model_copy(update={"batches": base.batches.model_copy(
        update={"exact_fit_init_times": 40})})
    dm = EnsembleDataModule(pipe)
    dm.setup()
    times = dm.split_init_times["train"]
    assert len(times) > 100
    keep = np.unique(np.round(np.linspace(0, len(times) - 1, 40)).astype(np.int64))
    assert np.array_equal(np.flatnonzero(dm.exact_fit_keep()), keep)
    from enspp.data.progress import LOGGER

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    LOGGER.addHandler(handler)
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    try:
        result = train(pipe, ModelConfig(name="emos_local"), _cfg(run_id="sub"), workdir=tmp_path)
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    got = load_checkpoint(result.best_checkpoint).model
    batch = dm.preloaded(("train",))
    kept = torch.from_numpy(times[keep].astype("datetime64[ns]").astype(np.int64))
    rows = torch.isin(batch["init_time"], kept)
    assert int(rows.sum()) == 40 * 2  # two stations
    ref = type(got)(got.spec)
    fit_emos(ref, [emos_chunk(ref, {k: v[rows] for k, v in batch.items()})])
    torch.testing.assert_close(got.params, ref.params, rtol=1e-5, atol=1e-6)
    full = type(got)(got.spec)
    fit_emos(full, [emos_chunk(full, batch)])
    assert not torch.allclose(full.params, ref.params, rtol=1e-3, atol=1e-4)
    assert any("from 40 of" in r and "training init times, evenly spread" in r for r in records), records
