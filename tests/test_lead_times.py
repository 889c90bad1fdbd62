"""One model for several lead times (``features.target_lead_times``): samples per init time and
lead, per-lead EMOS (the anchor too) equal to single-lead fits, a network trained on all leads
through the service path, predict writing every lead of an init time in one call, evaluation
per lead; single-lead configs and checkpoints without target leads unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_data import make_stores, pipeline_config

from enspp.data.schema import select_variable
from enspp.models.base import ModelSpec, ModelSpecError, build_model
from enspp.models.checkpoint import load_checkpoint
from enspp.models.config import ModelConfig, TrainConfig
from enspp.models.emos import emos_chunk, fit_emos
from enspp.models.predict import predict
from enspp.models.product import open_product
from enspp.models.train import build_spec, train
from enspp.pipeline.align import open_dataset
from enspp.pipeline.config import FeaturesConfig
from enspp.pipeline.datamodule import EnsembleDataModule
from enspp.pipeline.synthetic import write_stores

H = np.timedelta64(1, "h").astype("timedelta64[ns]")
SMALL_MIXED = {"embed_dim": 4, "encoder_hidden": [4], "width": 4, "depth": 1}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("leads") / "stores")


@pytest.fixture(scope="module")
def station_paths(tmp_path_factory):
    return write_stores(tmp_path_factory.mktemp("leads_points") / "stores", n_init=40,
                        lead_hours=(24, 48), n_members=6, stations=7)


def _dm(paths, **features) -> EnsembleDataModule:
    stores = {"forecast": str(paths.forecast), "analysis": str(paths.analysis)}
    if paths.static is not None and paths.static.exists():
        stores["static"] = str(paths.static)
    dm = EnsembleDataModule(pipeline_config(paths, stores=stores, features=features))
    dm.setup()
    return dm


def test_samples_are_init_times_at_each_target_lead(paths):
    dm = _dm(paths, target_lead_times=[48, 24])
    assert dm.target_leads == (24, 48)
    assert dm.channels == ("z500@24h", "t850@24h", "t2m@24h", "z500@48h", "t850@48h", "t2m@48h")
    ds = dm.dataset("test")
    inits = dm.split_init_times["test"]
    assert len(ds) == 2 * len(inits)
    batch = ds.__getitems__(list(range(len(ds))))
    leads = batch["lead_time"].numpy().astype("timedelta64[ns]") // H
    assert leads.tolist() == [24, 48] * len(inits)
    an = open_dataset(paths.analysis)
    for i in range(len(ds)):
        init = batch["init_time"].numpy()[i].astype("datetime64[ns]")
        truth = select_variable(an, "t2m").sel(time=init + int(leads[i]) * H).values
        np.testing.assert_allclose(batch["target"][i, 0].numpy(), truth, rtol=1e-6)
    # the inputs of one init time are the same whatever the lead
    torch.testing.assert_close(batch["inputs"][0], batch["inputs"][1])


def test_config_refuses_a_target_lead_outside_the_list():
    with pytest.raises(ValueError, match="not in target_lead_times"):
        FeaturesConfig(target_lead_time=12, target_lead_times=[24, 48])
    assert FeaturesConfig(target_lead_times=[48, 24]).lead_times == (24, 48)
    assert FeaturesConfig(target_lead_time=24, input_lead_times=[0]).target_leads == (24,)


@pytest.mark.parametrize(("name", "where"), [("emos_local", "grid"), ("emos_global", "grid"),
                                             ("emos_local", "stations")])
def test_emos_of_several_leads_is_each_leads_own_exact_fit(paths, station_paths, name, where):
    paths = paths if where == "grid" else station_paths
    multi = _dm(paths, target_lead_times=[24, 48])
    spec = build_spec(multi, ModelConfig(name=name), n_members=multi.n_members, grid_shape=multi.grid_shape)
    assert spec.target_leads == (24, 48)
    model = build_model(spec)
    fit_emos(model, [emos_chunk(model, multi.preloaded(("train",)))])
    test = multi.preloaded(("test",))
    with torch.no_grad():
        out = model(test)
    for i, lead in enumerate((24, 48)):
        other = 48 if lead == 24 else 24
        single = _dm(paths, target_lead_time=lead, input_lead_times=[other])
        ref = build_model(build_spec(single, ModelConfig(name=name), n_members=single.n_members,
                                     grid_shape=single.grid_shape))
        fit_emos(ref, [emos_chunk(ref, single.preloaded(("train",)))])
        ref_test = single.preloaded(("test",))
        with torch.no_grad():
            expected = ref(ref_test)
        n = multi.grid_shape[0] if multi.point else 1  # rows per sample: stations or 1
        rows = torch.arange(out["mu"].shape[0]).reshape(-1, 2, n)[:, i].reshape(-1)
        for key in ("mu", "sigma"):
            torch.testing.assert_close(out[key][rows], expected[key], rtol=2e-4, atol=2e-4)


def test_a_network_trained_on_two_leads_predicts_both_in_one_call(paths, tmp_path):
    pipe = pipeline_config(paths, features={"target_lead_times": [24, 48]})
    cfg = TrainConfig(max_epochs=2, learning_rate=1e-3, progress_bar=False, run_id="leads")
    result = train(pipe, ModelConfig(name="mixed", options=SMALL_MIXED), cfg, workdir=tmp_path)
    loaded = load_checkpoint(result.best_checkpoint)
    model = loaded.model
    assert model.spec.target_leads == (24, 48) and model.spec.n_static_inputs == len(model.spec.static_names) + 2
    dm = EnsembleDataModule(pipe)
    dm.setup()
    inits = list(dm.split_init_times["test"])
    out = predict(result.best_checkpoint, paths.forecast, out=tmp_path / "p.zarr", init_times=inits,
                  n_members=4, whole_fields=True, progress=False)
    product = open_product(out)
    assert (product["lead_time"].values // H).tolist() == [24, 48]
    assert product["t2m"].sizes["member"] == 4
    test = dm.preloaded(("test",))
    with torch.no_grad():
        expected = model(test)
    for i, lead in enumerate((24, 48)):
        got = product["t2m_mean"].sel(lead_time=lead * H).values
        np.testing.assert_allclose(got, expected["mu"][i::2, 0].numpy(), rtol=1e-5, atol=1e-4)
        got = product["t2m_std"].sel(lead_time=lead * H).values
        np.testing.assert_allclose(got, expected["sigma"][i::2, 0].numpy(), rtol=1e-5, atol=1e-4)
    # the leads' forecasts differ (each lead's own anchor and inputs)
    assert not np.allclose(product["t2m_std"].isel(lead_time=0), product["t2m_std"].isel(lead_time=1))
    # scored per lead time
    from enspp.evaluation.config import EvaluateConfig
    from enspp.evaluation.evaluate import evaluate
    from enspp.evaluation.systems import product_system

    ev = EvaluateConfig(systems=[{"name": "raw_full", "path": str(paths.forecast)},
                                 {"name": "custom", "label": "mixed", "path": str(out),
                                  "type": product_system(out).type}],
                        truth=paths.analysis, variables=["t2m"], metrics=["crps"],
                        lead_times=[24, 48], bootstrap={"n": 10}, cases=[],
                        period={"start": str(inits[0])[:10], "end": str(inits[-1])[:10]})
    crps = evaluate(ev, None).scores["t2m"]["crps"]
    assert (crps["lead_time"].values // H).tolist() == [24, 48]
    assert np.isfinite(crps.values).all() and crps.sizes["system"] == 2

def test_single_lead_specs_and_old_checkpoint_specs(paths):
    dm = _dm(paths, target_lead_time=48, input_lead_times=[24])
    spec = build_spec(dm, ModelConfig(name="mixed", options=SMALL_MIXED), n_members=dm.n_members,
                      grid_shape=dm.grid_shape)
    assert spec.target_leads == () and spec.n_leads == 1
    d = spec.to_dict()
    del d["target_leads"]  # a checkpoint written before the option
    old = ModelSpec.from_dict(d)
    model = build_model(old)
    batch = dm.preloaded(("test",))
    del batch["lead_time"]  # a single-lead model does not need it
    with torch.no_grad():
        assert torch.isfinite(model(batch)["mu"]).all()
    with pytest.raises(ModelSpecError, match="target_leads"):
        ModelSpec.from_dict({**spec.to_dict(), "target_leads": [24, 72]})


def test_a_lead_the_model_does_not_serve_is_refused(paths):
    dm = _dm(paths, target_lead_times=[24, 48])
    model = build_model(build_spec(dm, ModelConfig(name="emos_local"), n_members=dm.n_members,
                                   grid_shape=dm.grid_shape))
    batch = dict(dm.preloaded(("test",)))
    batch["lead_time"] = torch.full_like(batch["lead_time"], 72 * 3_600_000_000_000)
    with pytest.raises(ModelSpecError, match="72"):
        model(batch)

