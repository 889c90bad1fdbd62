"""evaluate(): systems, alignment, chunking, skill with intervals, reports, CLI, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
from evaluation_data import config_dict, evaluated_report, make_world

from enspp.evaluation.config import EvaluateConfig, EvaluateConfigError, config_from_mapping
from enspp.evaluation.evaluate import MissingDataError, evaluate, prepare_fields, score_variable, summarise
from enspp.evaluation.metrics import crps_ensemble
from enspp.evaluation.registry import MissingReferenceError
from enspp.evaluation.systems import AlignmentError, SystemDataError, open_truth
from enspp.evaluation.weights import region_weights

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return evaluated_report(tmp_path_factory.getbasetemp() / "evaluation-shared")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("small"), n_init=8, n_members=5, seed=3)


def _cfg(world, **over) -> EvaluateConfig:
    base = {"metrics": ["crps"], "cases": [], "regions": ["global"], "bootstrap": {"n": 50, "block_length": 2}}
    base.update(over)
    return config_from_mapping(config_dict(world, **base))


# ------------------------------------------------------------------ the numbers
def test_skill_ranks_the_systems_as_built(report):
    _, result, _ = report
    ds = result.scores["t2m"].sel(region="global")
    skill = ds["skill_all"]
    assert float(skill.sel(system="raw_full")) == 0.0
    # the product and the oracle are better than the raw ensemble, with intervals above 0
    for s in ("emos", "oracle"):
        assert float(ds["skill_low_all"].sel(system=s)) > 0.1
        assert float(ds["skill_low_all"].sel(system=s)) <= float(skill.sel(system=s)) \
            <= float(ds["skill_high_all"].sel(system=s))
        assert float(ds["dm_pvalue_all"].sel(system=s)) < 0.01
    assert float(skill.sel(system="oracle")) > float(skill.sel(system="raw_subset"))
    # the raw ensemble is under-dispersive by construction, the oracle calibrated
    assert float(ds["spread_skill_all"].sel(system="raw_full")) < 0.6
    assert 0.85 < float(ds["spread_skill_all"].sel(system="oracle")) < 1.15


def test_crps_equals_direct_weighted_mean(report):
    w, result, _ = report
    fc = xr.open_zarr(w.forecast)["t2m"].load()
    ana = xr.open_zarr(w.analysis)["t2m"].load()
    obs = ana.sel(time=fc.init_time + fc.lead_time).drop_vars("time")
    crps = crps_ensemble(fc, obs, estimator="fair")
    wts = region_weights(fc.latitude, fc.longitude, "tropics")
    direct = float((crps * wts).sum() / (wts.broadcast_like(crps)).sum())
    got = float(result.scores["t2m"]["crps_all"].sel(system="raw_full", region="tropics"))
    assert got == pytest.approx(direct, rel=1e-10)


def test_a_one_member_system_is_labelled_as_the_absolute_error_it_is(world):
    """Every CRPS estimator of a one-member "ensemble" (a deterministic forecast) is its
    absolute error: the label says so instead of naming the fair estimator."""
    from enspp.evaluation.evaluate import _estimator_label_from

    cfg = _cfg(world, systems=[{"name": "raw_full", "path": str(world.forecast)},
                               {"name": "raw_subset", "path": str(world.forecast), "members": [0]},
                               {"name": "emos", "path": str(world.product), "type": "gaussian"}])
    vs = score_variable(cfg, "t2m", prepare_fields(cfg)["t2m"],
                        open_truth(cfg.truth, ["t2m"])["t2m"])
    label = ("fair ensemble CRPS for raw_full; absolute error (one member) for raw_subset; "
             "closed-form gaussian CRPS for emos")
    assert _estimator_label_from(cfg, vs) == label == vs.crps_map.attrs["estimator"]
    fc = xr.open_zarr(world.forecast)["t2m"].isel(member=0).load()
    obs = xr.open_zarr(world.analysis)["t2m"].load().sel(time=fc.init_time + fc.lead_time)
    err = np.abs(fc - obs.drop_vars("time"))
    wts = region_weights(fc.latitude, fc.longitude, "global")
    mae = float((err * wts).sum() / wts.broadcast_like(err).sum())
    got = float(summarise(cfg, vs)["crps_all"].sel(system="raw_subset", region="global"))
    assert got == pytest.approx(mae, rel=1e-9)


def test_chunked_and_one_shot_agree(world):
    out = []
    for chunk in (3, 100):
        cfg = _cfg(world, chunk_size=chunk, metrics=["crps", "rmse", "rank_histogram"])
        fields = prepare_fields(cfg)["t2m"]
        truth = open_truth(cfg.truth, ["t2m"])["t2m"]
        vs = score_variable(cfg, "t2m", fields, truth)
        out.append((summarise(cfg, vs), vs))
    (a, va), (b, vb) = out
    for name in ("crps", "crps_all", "rmse_all", "skill_all", "skill_low_all", "spread_skill"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(va.crps_map.values, vb.crps_map.values, rtol=1e-10)
    # ties in ranks are broken by a hash of the point's position in the period: chunk-independent
    np.testing.assert_allclose(va.histograms["raw_full"].values, vb.histograms["raw_full"].values)


def test_a_netcdf_product_is_a_system_as_its_zarr_store_is(world, tmp_path):
    """A product written as NetCDF (``predict.fmt: netcdf``) is opened as predict's products
    are read back and scored as the same product in Zarr; a file that is not NetCDF is one
    line naming it."""
    with xr.open_zarr(world.product) as ds:
        ds.load().to_netcdf(tmp_path / "product.nc")
    systems = [{"name": "raw_full", "path": str(world.forecast)},
               {"name": "emos", "path": str(world.product), "type": "gaussian"}]
    got = []
    for path in (world.product, tmp_path / "product.nc"):
        systems[1]["path"] = str(path)
        got.append(evaluate(_cfg(world, systems=systems, metrics=["crps", "rmse"]),
                            progress=False).scores["t2m"])
    xr.testing.assert_allclose(got[0], got[1], rtol=1e-12)
    (tmp_path / "product.txt").write_text("not a product")
    systems[1]["path"] = str(tmp_path / "product.txt")
    with pytest.raises(SystemDataError, match=r"product.txt: a file that is not NetCDF \(a system "
                                              r"is a Zarr store or a NetCDF product\)$"):
        evaluate(_cfg(world, systems=systems))


def test_a_products_unfinished_init_times_are_not_scored(world, tmp_path):
    """A predict killed after writing an init time but before marking it complete leaves
    values that may be partial: evaluate reads a product as predict reads it back (only
    the init times marked complete), so that init time is not scored."""
    import shutil

    import zarr

    from enspp.evaluation.systems import open_dataset
    from enspp.models.product import COMPLETE_ATTR, PRODUCT_KIND

    path = tmp_path / "product.zarr"
    shutil.copytree(world.product, path)
    with xr.open_zarr(path) as ds:
        inits = ds.init_time.values
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.attrs.update({"enspp_kind": PRODUCT_KIND,
                        COMPLETE_ATTR: [str(t)[:19] for t in inits[:-1]]})
    zarr.consolidate_metadata(path)
    np.testing.assert_array_equal(open_dataset(path).init_time.values, inits[:-1])
    np.testing.assert_array_equal(open_dataset(world.product).init_time.values, inits)


def test_report_files_name_the_estimator(report):
    _, result, out = report
    doc = json.loads((out / "scores.json").read_text())
    assert doc["schema"] == "enspp-evaluation/1"
    v = doc["variables"]["t2m"]
    assert "fair ensemble CRPS" in v["estimator"] and "gaussian" in v["estimator"]
    assert {r["system"] for r in v["headline"]["global"]} == {"raw_full", "raw_subset", "emos", "oracle"}
    assert set(v["twcrps"]["global"]) == {"t295", "p90"}
    ds = xr.open_dataset(out / "scores_t2m.nc")
    assert "fair" in ds.attrs["crps_estimator"] and "fair" in ds["crps_all"].attrs["crps_estimator"]
    assert set(map(str, ds.system.values)) == {"raw_full", "raw_subset", "emos", "oracle"}
    assert ds["crps_map"].dims == ("system", "lead_time", "latitude", "longitude")
    for p in list(v["plots"]["skill_by_lead"].values()) + [v["plots"]["maps"]]:
        assert (out / p).stat().st_size > 1000
    assert (out / "index.html").is_file()
    # the out-of-period case is reported, and the rest of the report was still written
    assert any("far-away" in p and "outside" in p for p in doc["cases_not_covered"])
    assert not any("far-away" in p for p in doc["problems"])
    html = (out / "index.html").read_text()
    assert "1 catalogue case(s) outside this evaluation" in html and "<h2>Problems</h2>" not in html
    assert [c["status"] for c in doc["cases"]] == ["ok", "out_of_range"]


# ------------------------------------------------------------------ bad input
def test_truth_not_covering_valid_times_is_an_error(world, tmp_path):
    ana = xr.open_zarr(world.analysis).isel(time=slice(0, 5)).load()
    short = tmp_path / "short.zarr"
    ana.to_zarr(short)
    cfg = _cfg(world, truth=str(short))
    with pytest.raises(AlignmentError, match="valid times .* not in the truth"):
        evaluate(cfg)


def test_truth_on_another_grid_is_an_error(world, tmp_path):
    ana = xr.open_zarr(world.analysis).load()
    ana = ana.assign_coords(longitude=ana.longitude + 1.0)
    other = tmp_path / "shifted.zarr"
    ana.to_zarr(other)
    with pytest.raises(AlignmentError, match="'longitude' differs"):
        evaluate(_cfg(world, truth=str(other)))


def test_missing_reference_is_named(world):
    systems = [{"name": "emos", "path": str(world.product), "type": "gaussian"}]
    with pytest.raises(MissingReferenceError, match="'raw_full'.*not among the systems"):
        evaluate(_cfg(world, systems=systems))


def test_reference_without_the_variable_is_named(world, tmp_path):
    orc = xr.open_zarr(world.oracle).rename({"t2m_mu": "z500_mu", "t2m_sigma": "z500_sigma"}).load()
    orc.to_zarr(tmp_path / "z.zarr")
    systems = [{"name": "raw_full", "path": str(world.forecast), "variables": ["t2m"]},
               {"name": "oracle", "path": str(tmp_path / "z.zarr"), "type": "gaussian", "variables": ["z500"]}]
    cfg = _cfg(world, systems=systems, variables=["t2m", "z500"], reference="raw_full")
    with pytest.raises(MissingReferenceError, match="does not provide variable 'z500'"):
        evaluate(cfg)


def test_missing_variable_and_members_and_leads(world):
    with pytest.raises(SystemDataError, match="t2m_mean"):
        evaluate(_cfg(world, systems=[{"name": "raw_full", "path": str(world.forecast)},
                                      {"name": "emos", "path": str(world.oracle), "type": "gaussian"}]))
    with pytest.raises(SystemDataError, match=r"members \[5, 6\] are out of range"):
        evaluate(_cfg(world, systems=[{"name": "raw_full", "path": str(world.forecast)},
                                      {"name": "raw_subset", "path": str(world.forecast),
                                       "members": [0, 5, 6]}]))
    with pytest.raises(AlignmentError, match=r"lead times \[72\] h"):
        evaluate(_cfg(world, lead_times=[24, 72]))
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        evaluate(_cfg(world, truth=str(world.forecast.parent / "nowhere.zarr")))


def test_missing_values(tmp_path):
    """Missing values are refused by default, naming the store and the init times; with
    ``missing: skip`` (or its former name ``nan_policy``) they are dropped and reported."""
    w = make_world(tmp_path, n_init=6, n_members=5, nan_truth=True)
    base = {"metrics": ["crps"], "cases": [], "regions": ["global"], "bootstrap": {"n": 20, "block_length": 2}}
    # truth time index 2 (2021-01-03) is the valid time of (init 01-02, +24 h) and (01-01, +48 h)
    with pytest.raises(MissingDataError, match=rf"the truth \({w.analysis}\) has 2 missing values of "
                                               r"'t2m' at the valid times of init times "
                                               r"2021-01-01T00, 2021-01-02T00; set evaluate.missing: skip"):
        evaluate(config_from_mapping(config_dict(w, **base)))
    for key in ("missing", "nan_policy"):
        res = evaluate(config_from_mapping(config_dict(w, **{key: "skip"}, **base)))
        assert res.scores["t2m"].attrs["nan_dropped_raw_full"] == 2
        assert np.isfinite(res.scores["t2m"]["crps_all"]).all()
        assert res.notes == ["t2m: missing values skipped (points with NaN in the truth or the "
                             "system): raw_full 2, raw_subset 2, emos 2, oracle 2"]


@pytest.mark.parametrize("over, match", [
    ({"systems": [{"name": "raw_full", "path": "a"}, {"name": "raw_full", "path": "b"}]}, "duplicate system"),
    ({"systems": [{"name": "raw_subset", "path": "a"}]}, "needs 'members'"),
    ({"systems": [{"name": "custom", "path": "a"}]}, "needs a 'label'"),
    ({"systems": [{"name": "raw_full", "path": "a", "members": 0}]}, "K must be >= 1"),
    ({"systems": [{"name": "emos", "path": "a", "type": "gaussian", "members": 3}]}, "needs type 'ensemble'"),
    ({"systems": []}, "at least one system"),
    ({"metrics": ["crps", "brier"]}, "unknown"),
    ({"period": {"start": "2021-01-01", "end": "2021-02-01"}, "split": "test"}, "either 'period' or 'split'"),
    ({"split": "test", "splits": {"train": {"start": "2020-01-01", "end": "2020-02-01"}}}, "not a known split"),
    ({"period": {"start": "2021-02-01", "end": "2021-01-01"}}, "is before start"),
    ({"split": "test", "recent_days": 30}, "one of 'period', 'split' and 'recent_days'"),
    ({"recent_days": 0}, "recent_days"),
    ({"lead_times": [-6]}, "must be >= 0"),
    ({"twcrps": {"percentiles": [1.5]}}, r"must lie in \(0, 1\)"),
    ({"bootstrap": {"n": 3}}, "evaluate.bootstrap.n"),
    ({"colour": "red"}, "evaluate.colour: unknown key"),
])
def test_config_errors_name_the_key(over, match):
    base = {"systems": [{"name": "raw_full", "path": "f.zarr"}]}
    base.update(over)
    with pytest.raises(EvaluateConfigError, match=match):
        config_from_mapping(base)


def test_config_split_and_period_resolution(tmp_path):
    cfg = config_from_mapping({"systems": [{"name": "raw_full", "path": "f.zarr"}], "split": "test"})
    with pytest.raises(EvaluateConfigError, match="'test' is not defined"):
        cfg.resolved_period()
    cfg = config_from_mapping({"systems": [{"name": "raw_full", "path": "f.zarr"}], "split": "test",
                               "splits": {"test": {"start": "2021-01-03", "end": "2021-01-05"}},
                               "truth": "a.zarr", "cases": ["c.yaml"]})
    assert str(cfg.resolved_period().start) == "2021-01-03"
    r = cfg.resolve_paths(tmp_path)
    assert r.systems[0].path == tmp_path / "f.zarr" and r.truth == tmp_path / "a.zarr"
    assert r.cases == [tmp_path / "c.yaml"]
    with pytest.raises(EvaluateConfigError, match="expected a mapping"):
        config_from_mapping(["not", "a", "mapping"])


def test_period_selects_init_dates(world):
    cfg = _cfg(world, period={"start": "2021-01-03", "end": "2021-01-05"})
    res = evaluate(cfg)
    assert int(res.scores["t2m"]["init_count"]) == 3
    assert res.provenance["init_times"]["t2m"]["first"].startswith("2021-01-03")
    with pytest.raises(AlignmentError, match="share no init time"):
        evaluate(_cfg(world, period={"start": "2030-01-01", "end": "2030-01-05"}))


@pytest.mark.parametrize("period_end, block, interval", [
    ("2021-01-03", 2, False),   # 3 init times, blocks of 2: one block and a stub
    ("2021-01-04", 3, False),   # 4 init times, blocks of 3: one block and a stub
    ("2021-01-08", 4, True),    # 8 init times: two whole blocks of 4
    ("2021-01-08", 500, False),  # a block far longer than the period
])
def test_an_interval_needs_two_blocks_and_its_absence_is_noted(world, period_end, block, interval):
    from enspp.evaluation.dashboard import headline_view
    from enspp.evaluation.report import scores_document

    cfg = _cfg(world, period={"start": "2021-01-01", "end": period_end},
               bootstrap={"n": 50, "block_length": block}, systems=config_dict(world)["systems"][::2])
    res = evaluate(cfg)
    ds = res.scores["t2m"].sel(region="global", system="emos")
    n = int(res.scores["t2m"]["init_count"])
    noted = [x for x in res.notes if "bootstrap" in x]
    assert np.isfinite(float(ds["skill_all"]))
    if interval:
        assert not noted
        assert float(ds["skill_low_all"]) < float(ds["skill_high_all"])
        return
    # no interval at all rather than a zero-width one, and one note that says why
    assert np.isnan(float(ds["skill_low_all"])) and bool(np.isnan(ds["skill_high"]).all())
    assert noted == [f"t2m: bootstrap: {n} init times are fewer than two blocks of {block} "
                     "(evaluate.bootstrap.block_length): no confidence interval"]
    doc = scores_document(res)
    row = next(r for r in doc["variables"]["t2m"]["headline"]["global"] if r["system"] == "emos")
    assert row["skill"] is not None and row["skill_low"] is None and row["skill_high"] is None
    assert noted[0] in doc["notes"]
    cells = [c for r in headline_view(doc, "t2m", "global")["rows"] for c in r["cells"]]
    assert any(c.get("text") == "[–, –]" for c in cells)


def test_recent_days_follow_the_truth(world, tmp_path):
    """``recent_days``: the last days of init times the truth can verify; the period moves
    with the data (a nightly report of recent skill needs no date in its config)."""
    day = [str(t.date()) for t in world.init_times]
    res = evaluate(_cfg(world, recent_days=3))
    assert int(res.scores["t2m"]["init_count"]) == 3
    assert res.provenance["init_times"]["t2m"]["first"].startswith(day[-3])
    # analyses that end two days earlier verify the +48 h forecasts up to the third-last init
    ana = xr.open_zarr(world.analysis).sel(time=slice(None, day[-1])).load()
    ana.chunk({"time": 1}).to_zarr(tmp_path / "late.zarr", mode="w")
    res = evaluate(_cfg(world, recent_days=3, truth=str(tmp_path / "late.zarr")))
    assert int(res.scores["t2m"]["init_count"]) == 3
    assert res.provenance["init_times"]["t2m"]["first"].startswith(day[-5])
    assert res.provenance["init_times"]["t2m"]["last"].startswith(day[-3])


def test_the_summary_counts_the_cases_the_data_cover():
    from types import SimpleNamespace

    from enspp.evaluation.evaluate import _cases_text

    ok, out = SimpleNamespace(status="ok"), SimpleNamespace(status="out_of_range")
    assert _cases_text([ok, ok]) == "2 cases"
    assert _cases_text([ok] + [out] * 19) == "1 case (19 outside the data)"
    assert _cases_text([out] * 20) == "0 cases (20 outside the data)"
    assert _cases_text([]) == "0 cases"


def test_recent_period_by_hand():
    from enspp.evaluation.systems import recent_period

    init = np.array(["2021-01-01T00", "2021-01-01T12", "2021-01-02T00", "2021-01-03T00"],
                    dtype="datetime64[ns]")
    leads = np.array([0, 24], dtype="timedelta64[h]")
    truth = np.arange(np.datetime64("2021-01-01T00"), np.datetime64("2021-01-03T01"),
                      np.timedelta64(12, "h")).astype("datetime64[ns]")
    p = recent_period(init, leads, truth, days=2)
    assert (str(p.start), str(p.end)) == ("2021-01-01", "2021-01-02")
    with pytest.raises(AlignmentError, match="no init time"):
        recent_period(init, leads, truth[:1], days=2)


def test_recent_window_is_the_earliest_ending_variables_period(tmp_path):
    """The one window of ``evaluate.recent_days`` (the evaluate flow's, and the first
    predict of a new version's): per variable the last days the truth verifies, the
    earliest ending of them; no variable, no window."""
    from enspp.evaluation.systems import recent_window

    time = np.arange(np.datetime64("2021-01-01"), np.datetime64("2021-01-11"),
                     np.timedelta64(1, "D")).astype("datetime64[ns]")
    field = (("time", "latitude", "longitude"), np.ones((time.size, 2, 3), "float32"))
    xr.Dataset({"t2m": field, "msl": field},
               coords={"time": time, "latitude": [10.0, 0.0], "longitude": [0.0, 1.0, 2.0]}
               ).to_zarr(tmp_path / "truth.zarr")
    truth, leads = tmp_path / "truth.zarr", np.array([0, 48], dtype="timedelta64[h]")
    p = recent_window(truth, {"msl": (time, leads[:1])}, days=2)
    assert (str(p.start), str(p.end)) == ("2021-01-09", "2021-01-10")
    # t2m verified at +48 h too ends two days earlier: the window every variable verifies
    p = recent_window(truth, {"msl": (time, leads[:1]), "t2m": (time, leads)}, days=3)
    assert (str(p.start), str(p.end)) == ("2021-01-06", "2021-01-08")
    assert recent_window(truth, {}, days=3) is None
    with pytest.raises(AlignmentError, match="no init time"):
        recent_window(truth, {"t2m": (time + np.timedelta64(30, "D"), leads)}, days=3)
    with pytest.raises(SystemDataError, match="z500"):
        recent_window(truth, {"z500": (time, leads)}, days=3)


# ------------------------------------------------------------------ CLI
def test_cli_evaluate_and_combine(world, tmp_path):
    from enspp.flows.cli import main

    cfg_file = tmp_path / "enspp.yaml"
    import yaml

    section = config_dict(world, metrics=["crps", "rank_histogram"], regions=["global"],
                          bootstrap={"n": 50, "block_length": 2})
    # relative paths are resolved against the config file's directory
    shutil.copytree(world.forecast, tmp_path / "fc.zarr")
    section["systems"][0]["path"] = "fc.zarr"
    cfg_file.write_text(yaml.safe_dump({"evaluate": section}))
    assert main(["evaluate", "--config", str(cfg_file), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file()
    assert main(["evaluate", "--combine", str(tmp_path / "rep"), str(tmp_path / "rep"),
                 "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "index.html").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  systems: []\n")
    assert main(["evaluate", "--config", str(bad), "--out", str(tmp_path / "x")]) == 1
    nosec = tmp_path / "nosec.yaml"
    nosec.write_text("train: {}\n")
    assert main(["evaluate", "--config", str(nosec), "--out", str(tmp_path / "x")]) == 1
    assert main(["evaluate", "--out", str(tmp_path / "x")]) == 1
    assert main(["evaluate", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 1
