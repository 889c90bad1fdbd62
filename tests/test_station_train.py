"""Station models through models.train (Lightning): seed ensembles, per-member early stopping,
refit on training + validation, prediction and evaluation of station products."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from station_data import write_station_stores

from enspp.evaluation.config import EvaluateConfig
from enspp.evaluation.evaluate import evaluate
from enspp.models.base import ModelSpec, build_model
from enspp.models.checkpoint import load_checkpoint
from enspp.models.config import ModelConfig, TrainConfig
from enspp.models.ensemble import SeedEnsemble
from enspp.models.predict import predict
from enspp.models.product import open_product
from enspp.models.train import train
from enspp.pipeline.config import PipelineConfig
from enspp.pipeline.datamodule import EnsembleDataModule

SPLIT = {"train": {"start": "2010-01-01", "end": "2010-05-31"},
         "val": {"start": "2010-06-01", "end": "2010-07-15"},
         "test": {"start": "2010-07-16", "end": "2010-12-31"}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_station_stores(tmp_path_factory.mktemp("stations"), n_stations=2)


def _pipeline(stores, **features) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "stores": {"forecast": str(stores.forecast), "analysis": str(stores.analysis),
                   "deterministic": str(stores.deterministic)},
        "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                     "static": ["sin_doy", "cos_doy"], **features},
        "members": {"k": 5}, "split": SPLIT, "batches": {"batch_size": 100000, "preload": True},
        "nan_policy": "mask"})


def _train_config(**kw) -> TrainConfig:
    base = dict(max_epochs=60, learning_rate=0.05, early_stopping_patience=5,
                early_stopping_min_delta=1e-6, progress_bar=False, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def test_seed_ensemble_combines_parameters_and_trains_members_independently(stores):
    dm = EnsembleDataModule(_pipeline(stores))
    dm.setup()
    from enspp.models.train import build_spec

    spec = build_spec(dm, ModelConfig(name="mlp", options={"hidden": [8]}), n_members=5,
                      grid_shape=dm.grid_shape, seeds=3)
    ens = build_model(spec)
    assert isinstance(ens, SeedEnsemble) and len(ens.members) == 3
    batch = dm.preloaded(("train",))
    outs = ens.member_outputs(batch)
    combined = ens(batch)
    for key in ("mu", "sigma"):
        torch.testing.assert_close(combined[key], torch.stack([o[key] for o in outs]).mean(0))
    # the training loss is the sum of the members' losses: each member gets its own gradient
    for m in ens.members:  # move the members off their raw-ensemble start
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ens.training_loss(batch).backward()
    alone = build_model(dataclasses.replace(spec, seeds=1))
    alone.load_state_dict(ens.members[1].state_dict())
    alone.loss(alone(batch), batch["target"]).backward()
    for a, b in zip(alone.parameters(), ens.members[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    # a checkpoint's spec round-trips the seed count (older specs lack it: one network)
    assert ModelSpec.from_dict(spec.to_dict()).seeds == 3
    old = spec.to_dict()
    del old["seeds"]
    assert ModelSpec.from_dict(old).seeds == 1


def test_refit_members_are_fits_on_train_and_val_for_their_own_epochs(stores, tmp_path):
    """Each member stops at its own best validation epoch; the refit member i is exactly a
    fresh model from seed ``seed + i`` trained full-batch on train + val for that many epochs."""
    pipe = _pipeline(stores, past_error={"spread": True})
    cfg = _train_config(seeds=2, refit=True, seed=7, run_id="refit")
    # a network with the raw-ensemble head (EMOS is fitted exactly, without epochs or seeds)
    model_cfg = ModelConfig(name="mlp", options={"hidden": [8], "anchor": "raw"})
    result = train(pipe, model_cfg, cfg, workdir=tmp_path)
    assert result.best_checkpoint.name == "refit.ckpt" and result.selection_checkpoint.name == "best.ckpt"
    assert len(result.best_epochs) == 2 and all(1 <= e < 60 for e in result.best_epochs)
    refit = load_checkpoint(result.best_checkpoint)
    meta = refit.metadata
    assert meta.training["refit"] and meta.training["best_epochs"] == list(result.best_epochs)
    assert meta.training["fit_splits"] == ["train", "val"] and meta.stations == ("S0", "S1")
    assert set(meta.feature_scales) == {"err_scale", "obs_mean", "obs_scale"}
    dm = EnsembleDataModule(pipe)
    dm.setup()
    both = dm.preloaded(("train", "val"))
    for i, epochs in enumerate(result.best_epochs):
        torch.manual_seed(7 + i)
        model = build_model(dataclasses.replace(refit.model.spec, seeds=1))
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
        for _ in range(epochs):
            loss = model.loss(model(both), both["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for a, b in zip(model.state_dict().values(), refit.model.members[i].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the selection score is the combined early-stopped model's validation CRPS
    selected = load_checkpoint(result.selection_checkpoint)
    val = dm.preloaded(("val",))
    with torch.no_grad():
        score = float(selected.model.loss(selected.model(val), val["target"]))
    assert result.best_score == pytest.approx(score, rel=1e-5)
    with pytest.raises(ValueError, match="cannot be resumed"):
        train(pipe, model_cfg, cfg, workdir=tmp_path, resume=result.best_checkpoint)


def test_station_model_predicts_and_evaluates(stores, tmp_path, monkeypatch):
    """A station mixed model with record features: the product equals the model's output on
    the pipeline's test batches (all init times in one forward pass; the same product as one
    pass per init time), and evaluate scores it (closed-form CRPS) beside the raw ensembles;
    it beats the biased raw ensemble."""
    import enspp.models.predict as predict_module

    pipe = _pipeline(stores, past_error={"spread": True}, hres=True)
    result = train(pipe, ModelConfig(name="mixed", options={"embed_dim": 8, "encoder_hidden": [8]}),
                   _train_config(seeds=2, learning_rate=0.01, max_epochs=80, run_id="mixed"),
                   workdir=tmp_path)
    dm = EnsembleDataModule(pipe)
    dm.setup()
    test = dm.split_init_times["test"]
    out = tmp_path / "product.zarr"
    passes = []
    run_points = predict_module._run_points
    monkeypatch.setattr(predict_module, "_run_points",
                        lambda *a, **kw: passes.append(len(kw["inits"])) or run_points(*a, **kw))
    predict(result.best_checkpoint, stores.forecast, out=out, init_times=test, n_members=4)
    assert passes == [len(test)]
    monkeypatch.setattr(predict_module, "POINT_GROUP", 1)
    predict(result.best_checkpoint, stores.forecast, out=tmp_path / "one.zarr", init_times=test,
            n_members=4)
    assert len(passes) == 1 + len(test)
    prod, one = open_product(out), open_product(tmp_path / "one.zarr")
    for v in prod.data_vars:
        np.testing.assert_allclose(one[v].values, prod[v].values, rtol=1e-5, atol=1e-5)
    assert prod["t2m_mean"].dims == ("init_time", "lead_time", "station")
    assert prod.attrs["input_members"] == [1, 2, 3, 4, 5]
    # the station file's units (degC), not the schema's canonical K
    assert {prod[v].attrs["units"] for v in ("t2m", "t2m_mean", "t2m_std")} == {"degC"}
    model = load_checkpoint(result.best_checkpoint).model
    batch = dm.preloaded(("test",))
    with torch.no_grad():
        expected = model(batch)["mu"][:, 0, 0, 0].numpy().reshape(len(test), 2)
    np.testing.assert_allclose(prod["t2m_mean"].values[:, 0, :], expected, rtol=1e-5, atol=1e-5)
    cfg = EvaluateConfig.model_validate({
        "systems": [{"name": "raw_full", "path": str(stores.forecast)},
                    {"name": "raw_subset", "path": str(stores.forecast), "members": [1, 2, 3, 4, 5]},
                    {"name": "mixed", "path": str(out), "type": "gaussian"}],
        "truth": str(stores.analysis), "variables": ["t2m"],
        "period": {"start": "2010-07-16", "end": "2010-12-31"}, "crps_estimator": "standard",
        "metrics": ["crps", "rmse", "spread_skill", "rank_histogram", "twcrps"], "bootstrap": {"n": 50}})
    res = evaluate(cfg, tmp_path / "report")
    crps = res.scores["t2m"]["crps_all"].sel(region="global")
    assert float(crps.sel(system="mixed")) < 0.8 * float(crps.sel(system="raw_full"))
    assert (tmp_path / "report" / "index.html").is_file()
    assert res.variables["t2m"].crps_map.dims == ("system", "lead_time", "station")
    shutil.rmtree(out)


@pytest.mark.slow
def test_magdeburg_model_by_the_commands(shared_data, tmp_path, capsys):
    """The Magdeburg file through the commands a user runs: `enspp ingest`, `enspp train` (a
    network with record features, 2 seeds, refit), the registry, `enspp predict` and `enspp
    evaluate`; the product is the checkpoint's output and beats the raw ensemble."""
    import yaml

    from enspp.evaluation.report import read_scores
    from enspp.flows.cli import main
    from enspp.models.registry import current_version, register_if_better

    f = str(shared_data / "station/ecmwf_ens_t2m_magdeburg_2002-2014.nc")
    cfg = {
        "data": {"station": {"variable": "t2m", "units": "degC", "time": "valid", "hour": 12,
                             "lead_time": 24, "control": "forc.CTRL",
                             "station": {"id": "10361", "latitude": 52.1, "longitude": 11.6,
                                         "elevation": 76}}},
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr", "analysis": "stores/analysis.zarr"},
                     "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24,
                                  "static": ["sin_doy", "cos_doy"], "past_error": {"spread": True}},
                     "members": {"k": 10},
                     "split": {"train": [2002, 2010], "val": [2011, 2011],
                               "test": {"start": "2012-01-01", "end": "2014-12-31"}},
                     "batches": {"batch_size": 100000, "preload": True}, "nan_policy": "mask"},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"max_epochs": 20, "learning_rate": 0.01, "seeds": 2, "refit": True,
                  "early_stopping_patience": 5, "progress_bar": False, "run_id": "mlp"},
        "evaluate": {"systems": [{"name": "raw_full", "path": "stores/forecast.zarr"},
                                 {"name": "raw_subset", "path": "stores/forecast.zarr", "members": 10},
                                 {"name": "mlp", "path": "stores/products/mlp.zarr", "type": "gaussian"}],
                     "truth": "stores/analysis.zarr", "variables": ["t2m"], "split": "test",
                     "crps_estimator": "standard", "missing": "skip", "metrics": ["crps"],
                     "bootstrap": {"n": 20}},
    }
    path = tmp_path / "enspp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for kind in ("forecast", "analysis"):
        assert main(["ingest", f, "--store", str(tmp_path / f"stores/{kind}.zarr"), "--kind", kind,
                     "--config", str(path), "--quiet"]) == 0
    assert main(["train", "--config", str(path)]) == 0
    ckpt = tmp_path / "runs/mlp/checkpoints/refit.ckpt"
    assert ckpt.is_file() and str(ckpt) in capsys.readouterr().out
    decision = register_if_better(tmp_path / "registry", ckpt, score=0.09, metric="val/crps_gaussian")
    assert decision.registered and current_version(tmp_path / "registry").version == decision.version
    product = tmp_path / "stores/products/mlp.zarr"
    assert main(["predict", "--checkpoint", str(ckpt), "--store", str(tmp_path / "stores/forecast.zarr"),
                 "--out", str(product), "--init-time", "2012-01-01T12", "2012-06-30T12",
                 "2013-01-01T12"]) == 0
    prod = open_product(product)
    assert prod["t2m_mean"].dims == ("init_time", "lead_time", "station") and prod.sizes["init_time"] == 3
    assert prod.attrs["input_members"] == list(range(1, 11))
    # the product is the checkpoint's model on the pipeline's batches of those dates
    from enspp.pipeline.config import PipelineConfig as P

    loaded = load_checkpoint(ckpt)
    pipe = P.model_validate(loaded.metadata.pipeline)
    dm = EnsembleDataModule(pipe)
    dm.setup()
    batch = dm.preloaded(("test",))
    inits = dm.split_init_times["test"]
    rows = [int(np.flatnonzero(inits == t)[0]) for t in prod.init_time.values]
    with torch.no_grad():
        mu = loaded.model(batch)["mu"][:, 0, 0, 0].numpy()[rows]
    np.testing.assert_allclose(prod["t2m_mean"].values[:, 0, 0], mu, rtol=1e-5)
    # the whole test period, then enspp evaluate
    test_inits = [str(t)[:19] for t in inits]
    assert main(["predict", "--checkpoint", str(ckpt), "--store", str(tmp_path / "stores/forecast.zarr"),
                 "--out", str(product), "--init-time", *test_inits]) == 0
    assert main(["evaluate", "--config", str(path), "--out", str(tmp_path / "report")]) == 0
    head = {r["system"]: r for r in read_scores(tmp_path / "report")["variables"]["t2m"]["headline"]["global"]}
    assert head["raw_full"]["crps"] == pytest.approx(0.893, abs=2e-3)
    assert head["mlp"]["crps"] < 0.85 * head["raw_full"]["crps"]
