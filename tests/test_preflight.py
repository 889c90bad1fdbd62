"""``enspp validate CONFIG`` checks what can be checked before running: paths, splits against
the store's period, K against its members, variables, lead times, regions against the grid,
case catalogues, the metrics' needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from predict_data import make_stores  # noqa: E402

from enspp.flows.cli import main  # noqa: E402
from enspp.flows.config import load_config  # noqa: E402
from enspp.flows.preflight import check_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Stores of 16 daily init times from 2019-01-01, members 0..5, leads 24/48 h, on a
    European grid (70..30 N, 20 W..40 E)."""
    root = tmp_path_factory.mktemp("preflight")
    make_stores(root / "stores")
    (root / "cases.yaml").write_text(
        "cases:\n  - id: cold\n    name: A cold day\n    variable: t2m\n"
        "    box: {lat_min: 40, lat_max: 60, lon_min: 0, lon_max: 20}\n"
        "    window: {start: 2019-01-05T00:00, end: 2019-01-06T00:00}\n"
        "    how_chosen: fixed in advance\n")
    return root


def config(work: Path, name: str, **sections) -> Path:
    base = {
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr",
                                "analysis": "stores/analysis.zarr", "static": "stores/static.nc",
                                "statistics": "cache/statistics.nc"},
                     "features": {"variables": ["t2m"], "targets": ["t2m"],
                                  "target_lead_time": 48, "input_lead_times": [24]},
                     "members": {"k": 5},
                     "split": {"train": {"start": "2019-01-01", "end": "2019-01-10"},
                               "val": {"start": "2019-01-11", "end": "2019-01-13"},
                               "test": {"start": "2019-01-14", "end": "2019-01-16"}}},
        "evaluate": {"truth": "stores/analysis.zarr", "variables": ["t2m"],
                     "systems": [{"name": "raw_full", "path": "stores/forecast.zarr"},
                                 {"name": "raw_subset", "path": "stores/forecast.zarr",
                                  "members": 5}],
                     "split": "test", "regions": ["global", "extratropics", "tropics"],
                     "lead_times": [48], "metrics": ["crps", "eecrps"], "cases": ["cases.yaml"]},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    path = work / name
    path.write_text(yaml.safe_dump(base))
    return path


def test_a_consistent_config_passes_with_notes(work, capsys):
    path = config(work, "good.yaml")
    report = check_config(load_config(path))
    assert report.problems == []
    # tropics on a European grid: skipped with a note, not fatal; extratropics works
    assert "evaluate.regions: 'tropics' holds no grid point of the stores' grid (30°N–70°N, " \
           "20°W–40°E): evaluate skips it" in report.notes
    assert not any("extratropics" in n for n in report.notes)
    assert any(n.startswith("pipeline.stores.statistics: statistics file") and "training writes it" in n
               for n in report.notes)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid config" in out and f"{path}: note: evaluate.regions: 'tropics'" in out


def test_every_problem_is_named_with_its_key(work, capsys):
    path = config(
        work, "bad.yaml",
        pipeline={"stores": {"forecast": "stores/forecast.zarr", "analysis": "stores/analysis.zarr",
                             "static": "elsewhere/static.nc"},
                  "features": {"variables": ["t2m", "z300"], "targets": ["t2m"],
                               "target_lead_time": 72, "input_lead_times": [24]},
                  "members": {"k": 9},
                  "split": {"train": {"start": "2019-01-01", "end": "2019-01-10"},
                            "test": {"start": "2020-01-01", "end": "2020-12-31"}}},
        evaluate={"systems": [{"name": "raw_full", "path": "stores/forecast.zarr", "members": 8},
                              {"name": "mixed", "path": "products/missing.zarr",
                               "type": "gaussian"}],
                  "lead_times": [48, 96], "cases": ["nope.yaml"], "regions": ["tropics"],
                  "split": None, "period": {"start": "2018-01-01", "end": "2018-02-01"}})
    problems = check_config(load_config(path)).problems
    expected = [
        f"pipeline.stores.static: static file {work / 'elsewhere/static.nc'} does not exist",
        "pipeline.split: no validation period (split.val is not set): training chooses",
        "pipeline.features.variables: ['z300'] not in",
        "pipeline.features.target_lead_time: [72] h not in",
        "pipeline.members: members.k = 9 is larger than the 5 perturbed members present",
        "pipeline.split.test: 2020-01-01..2020-12-31 holds no init time of",
        f"evaluate.systems[mixed].path: store {work / 'products/missing.zarr'} does not exist",
        "evaluate.systems[raw_full].members: K = 8 but",
        "evaluate.lead_times: [96] h not in",
        "evaluate.period: 2018-01-01..2018-02-01 holds no init time of",
        "evaluate.regions: no region holds a grid point",
        f"evaluate.cases: case catalogue {work / 'nope.yaml'} does not exist",
    ]
    for e in expected:
        assert sum(p.startswith(e) for p in problems) == 1, (e, problems)
    assert len(problems) == len(expected), problems
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(expected)
    assert all(line.startswith(f"enspp validate: error: {path}: ") for line in err)


def test_a_fresh_work_directory_gives_notes_only(tmp_path, capsys):
    """Before the first ingest nothing exists yet: the stores, statistics and the work
    directory itself are notes; a missing input that enspp does not write is a problem."""
    path = tmp_path / "enspp.yaml"
    path.write_text(yaml.safe_dump({"data": {"workdir": "work",
                                             "incoming": {"forecast": ["in/*.grib"]}},
                                    "evaluate": {"systems": [{"name": "raw_full",
                                                              "path": "stores/forecast.zarr"}],
                                                 "truth": "stores/analysis.zarr"}}))
    report = check_config(load_config(path))
    assert report.problems == []
    notes = "\n".join(report.notes)
    incoming = str(tmp_path.resolve() / "work" / "in" / "*.grib")  # resolved against the work directory
    for part in ("data.workdir:", f"data.incoming.forecast: no file matches ['{incoming}'] yet",
                 "pipeline.stores.forecast: forecast store", "(ingest writes it)",
                 "evaluate.truth: analysis store"):
        assert part in notes, (part, notes)
    assert main(["validate", str(path)]) == 0
    path.write_text(yaml.safe_dump({"data": {"workdir": "work"},
                                    "pipeline": {"stores": {"static": "/nonexistent/static.nc"}}}))
    assert main(["validate", str(path)]) == 1
    assert "pipeline.stores.static: static file /nonexistent/static.nc does not exist" \
        in capsys.readouterr().err


def test_eecrps_without_an_ensemble_and_a_broken_catalogue(work):
    (work / "broken.yaml").write_text("cases: 3\n")
    path = config(work, "ee.yaml", evaluate={
        "systems": [{"name": "emos", "path": "stores/forecast.zarr", "type": "gaussian"}],
        "reference": "emos", "cases": ["broken.yaml"]})
    problems = check_config(load_config(path)).problems
    assert any(p.startswith("evaluate.metrics: eecrps needs an ensemble system") for p in problems)
    assert any(p.startswith("evaluate.cases: ") and "broken.yaml" in p for p in problems)


def test_land_sea_mask_that_the_maps_cannot_use_is_a_note(work):
    """The mask only draws the coastline: one evaluate cannot use (missing, no ``lsm``, another
    grid) is a note naming the key, never a problem; a usable one says nothing."""
    import xarray as xr

    def notes(mask):
        path = config(work, "lsm.yaml", evaluate={"land_sea_mask": mask})
        report = check_config(load_config(path))
        assert report.problems == []
        return [n for n in report.notes if n.startswith("evaluate.land_sea_mask")]

    assert notes("stores/static.nc") == []
    static = xr.open_dataset(work / "stores" / "static.nc").load()
    static[["orog"]].to_netcdf(work / "orog_only.nc")
    static.isel(latitude=slice(0, 4)).to_netcdf(work / "small.nc")
    (line,) = notes("missing.nc")
    assert line == (f"evaluate.land_sea_mask: {work / 'missing.nc'} does not exist: maps are "
                    "drawn without a coastline")
    (line,) = notes("orog_only.nc")
    assert "holds no 'lsm' variable (it holds ['orog'])" in line
    (line,) = notes("small.nc")
    assert "is on a 4x24 grid, the stores on 16x24" in line and line.endswith("without a coastline")


def test_a_member_list_is_checked_against_the_store(work):
    """``members: [...]`` names member numbers: one the store lacks is a problem (members
    0..5 here), a list it holds passes."""
    def problems(members):
        path = config(work, "members.yaml", evaluate={"systems": [
            {"name": "raw_full", "path": "stores/forecast.zarr"},
            {"name": "raw_subset", "path": "stores/forecast.zarr", "members": members}]})
        return check_config(load_config(path)).problems

    assert problems([1, 2, 3, 4, 5]) == []
    (line,) = problems([0, 4, 7, 9])
    assert line.startswith("evaluate.systems[raw_subset].members: member(s) [7, 9] not in ")
    assert line.endswith("(it holds members [0, 1, 2, 3, 4, 5])")


def test_products_and_the_oracle_open_as_evaluate_opens_them(work):
    """A product or the oracle is a plain Zarr, not an ingested enspp store: validate opens
    evaluate's systems as evaluate does (the demo's own config validates)."""
    import xarray as xr

    fc = xr.open_zarr(work / "stores" / "forecast.zarr")
    t2m = fc["t2m"].isel(member=0, drop=True)
    xr.Dataset({"t2m_mean": t2m, "t2m_std": abs(t2m) * 0 + 1.0}).to_zarr(
        work / "product.zarr", mode="w")
    path = config(work, "product.yaml", evaluate={"systems": [
        {"name": "raw_full", "path": "stores/forecast.zarr"},
        {"name": "mixed", "path": "product.zarr", "type": "gaussian"}]})
    assert check_config(load_config(path)).problems == []
    (work / "notzarr.zarr").mkdir(exist_ok=True)
    path = config(work, "broken_product.yaml", evaluate={"systems": [
        {"name": "raw_full", "path": "stores/forecast.zarr"},
        {"name": "mixed", "path": "notzarr.zarr", "type": "gaussian"}]})
    (line,) = check_config(load_config(path)).problems
    assert line.startswith(f"evaluate.systems[mixed].path: {work / 'notzarr.zarr'} cannot be opened")


def test_a_netcdf_product_is_a_system_as_evaluate_reads_it(work):
    """``enspp evaluate`` scores a NetCDF product (``predict.fmt: netcdf``): validate opens
    it as evaluate does (its lead times and period checked), no false problem; a file that
    is no NetCDF is the problem evaluate would stop on."""
    import xarray as xr

    fc = xr.open_zarr(work / "stores" / "forecast.zarr")
    t2m = fc["t2m"].isel(member=0, drop=True)
    xr.Dataset({"t2m_mean": t2m, "t2m_std": abs(t2m) * 0 + 1.0},
               attrs={"enspp_kind": "product"}).to_netcdf(work / "product.nc")
    path = config(work, "netcdf_product.yaml", evaluate={"systems": [
        {"name": "raw_full", "path": "stores/forecast.zarr"},
        {"name": "mixed", "path": "product.nc", "type": "gaussian"}]})
    assert check_config(load_config(path)).problems == []
    path = config(work, "netcdf_product_leads.yaml", evaluate={"lead_times": [72], "systems": [
        {"name": "mixed", "path": "product.nc", "type": "gaussian"}], "reference": "mixed"})
    assert f"evaluate.lead_times: [72] h not in {work / 'product.nc'} (lead times [24.0, 48.0] h)" \
        in check_config(load_config(path)).problems
    (work / "product.txt").write_text("not a product")
    path = config(work, "text_product.yaml", evaluate={"systems": [
        {"name": "raw_full", "path": "stores/forecast.zarr"},
        {"name": "mixed", "path": "product.txt", "type": "gaussian"}]})
    (line,) = check_config(load_config(path)).problems
    assert line == (f"evaluate.systems[mixed].path: {work / 'product.txt'} cannot be opened as a "
                    f"store: {work / 'product.txt'}: a file that is not NetCDF (a system is a "
                    "Zarr store or a NetCDF product)")


@pytest.mark.parametrize("start, end, noted", [
    ("2018-12-31", "2019-01-17", False),  # a day past each end of daily inits: nothing missed
    ("2018-12-01", "2019-01-10", True),
    ("2019-01-05", "2019-03-01", True),
])
def test_a_split_past_the_store_is_noted_only_beyond_its_init_spacing(work, start, end, noted):
    path = config(work, "period.yaml", pipeline={"split": {"train": {"start": start, "end": end}}})
    notes = [n for n in check_config(load_config(path)).notes if n.startswith("pipeline.split.train")]
    assert bool(notes) == noted, notes


def test_swapped_forecast_and_analysis_stores_are_problems_and_train_says_so(work, capsys):
    """An analysis store where a forecast store belongs (and the reverse) is a problem naming
    the key; ``enspp train`` on such a config stops with one line, not a traceback."""
    fc, an = work / "stores" / "forecast.zarr", work / "stores" / "analysis.zarr"
    path = config(work, "swapped.yaml",
                  pipeline={"stores": {"forecast": "stores/analysis.zarr",
                                       "analysis": "stores/forecast.zarr",
                                       "static": "stores/static.nc"}},
                  evaluate={"truth": "stores/forecast.zarr",
                            "systems": [{"name": "raw_full", "path": "stores/analysis.zarr"}],
                            "reference": "raw_full", "metrics": ["crps"]})
    problems = check_config(load_config(path)).problems
    assert (f"pipeline.stores.forecast: {an} is an analysis store, not a forecast store (are "
            "the forecast and analysis stores swapped?)") in problems
    assert (f"pipeline.stores.analysis: {fc} is a forecast store, not an analysis store (are "
            "the forecast and analysis stores swapped?)") in problems
    assert any(p.startswith(f"evaluate.truth: {fc} is a forecast store") for p in problems)
    assert (f"evaluate.systems[raw_full].path: {an} is an analysis store, not a forecast or "
            "product store (is it the truth?)") in problems
    assert main(["validate", str(path)]) == 1
    capsys.readouterr()
    assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pipeline.stores.forecast: " in err and "swapped" in err, err


def test_an_evaluate_only_config_is_checked_as_such(work, capsys):
    """A file with only an evaluate section (scoring existing stores) gets no notes about
    the training stores it never names, and the verdict says what the file holds."""
    ev = {"evaluate": {"truth": "stores/analysis.zarr", "variables": ["t2m"], "lead_times": [48],
                       "systems": [{"name": "raw_full", "path": "stores/forecast.zarr"}]}}
    path = work / "scores.yaml"
    path.write_text(yaml.safe_dump(ev))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pipeline.stores" not in out and "note:" not in out
    assert out == f"{path}: valid config (section evaluate, for enspp evaluate; work directory {work})\n"
    full = config(work, "full.yaml")
    assert main(["validate", str(full)]) == 0
    assert "valid config (sections evaluate, pipeline, the others default; " in capsys.readouterr().out


def test_an_exact_fit_beyond_memory_or_disk_is_named(work, monkeypatch):
    """The exact EMOS fit holds its training cases in memory up to a quarter of the machine's
    and spills the rest to the run's folder (models.emos.fit_emos): validate notes a spill,
    names one beyond the free disk as a problem with the way out, and a global EMOS (one
    group per target, held whole) beyond this machine's memory as a problem."""
    import shutil
    from types import SimpleNamespace

    import xarray as xr

    import enspp.flows.preflight as preflight
    from enspp.models.emos import CASE_BYTES, fit_memory

    assert preflight.EMOS_CASE_BYTES == CASE_BYTES
    assert fit_memory() == preflight._memory_bytes() // 4
    fc = xr.open_zarr(work / "stores" / "forecast.zarr")
    points = fc.sizes["latitude"] * fc.sizes["longitude"]
    # 8 training init times (split.train 2019-01-01..10 with a 48 h lead: those whose valid
    # time lies in the period, as training forms them), one target and lead
    need = 8 * points * CASE_BYTES
    cfg = lambda **model: load_config(config(work, "mem.yaml", model=model))  # noqa: E731

    def model_lines(report):  # (8 training init times: the local fit's overfit note aside)
        return ([p for p in report.problems if p.startswith("model:")],
                [n for n in report.notes if n.startswith("model:") and "overfit" not in n])

    monkeypatch.setattr(preflight, "_memory_bytes", lambda: 4 * need + 4)  # it all fits
    assert model_lines(check_config(cfg(name="mixed"))) == ([], [])
    monkeypatch.setattr(preflight, "_memory_bytes", lambda: 4 * need - 4)  # spilled
    problems, [note] = model_lines(check_config(cfg(name="mixed")))
    assert not problems
    assert note.startswith("model: the exact fit of the emos_local anchor of mixed spills its "
                           "training cases beyond memory")
    assert "for 8 training init times x" in note and "then fits it in ranges" in note
    problems, [note] = model_lines(check_config(cfg(name="mixed", options={"anchor_season": "doy"})))
    assert f"about {8 * points * (CASE_BYTES + 16) / 2**30:.1f} GiB" in note
    assert model_lines(check_config(cfg(name="mixed", options={"anchor": "raw"}))) == ([], [])
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=need - 1))
    [problem], _ = model_lines(check_config(cfg(name="emos_local")))
    assert problem.startswith("model: the exact fit of emos_local spills") and "free disk space" in problem
    assert "set pipeline.batches.exact_fit_init_times" in problem
    # the fit from 4 of the 8 training init times: half the cases, held in memory
    pipe = yaml.safe_load(config(work, "x.yaml").read_text())["pipeline"]
    sub = lambda n: load_config(config(work, "sub.yaml", model={"name": "emos_local"},  # noqa: E731
                                       pipeline={**pipe, "batches": {"exact_fit_init_times": n}}))
    assert model_lines(check_config(sub(4))) == ([], [])
    [problem], _ = model_lines(check_config(sub(20)))  # more than the split holds: all 8
    assert "for 8 training init times x" in problem
    # a global EMOS is held whole: a problem beyond the machine's memory, a note beyond half
    monkeypatch.setattr(preflight, "_memory_bytes", lambda: need - 1)
    [problem], _ = model_lines(check_config(cfg(name="emos_global")))
    assert "holds all of a target's training cases in memory" in problem and "use emos_local" in problem
    [problem], _ = model_lines(check_config(cfg(name="mixed", options={"anchor": "emos_global"})))
    assert "set model.options.anchor: raw or emos_local" in problem
    monkeypatch.setattr(preflight, "_memory_bytes", lambda: need + 1)
    assert model_lines(check_config(cfg(name="emos_global")))[0] == []
    assert len(model_lines(check_config(cfg(name="emos_global")))[1]) == 1


def test_fresh_member_draws_from_no_more_members_than_k_are_a_note(work):
    """members.train_draw: random over a store holding only K perturbed members draws the
    same members every time: a note; with more members than K, none."""
    def notes(k):
        cfg = load_config(config(work, "draw.yaml", pipeline={
            "members": {"k": k, "train_draw": "random"}}))
        return [n for n in check_config(cfg).notes if n.startswith("pipeline.members.train_draw")]

    [note] = notes(5)  # the fixture's store: 5 perturbed members
    assert note.startswith("pipeline.members.train_draw: random draws 5 of the 5 perturbed "
                           "members of ") and "every draw is the same" in note
    assert notes(3) == []


def test_a_local_fit_from_too_few_init_times_is_a_note(work):
    """A local EMOS fits 4 parameters (8 seasonal) at every point from that point's training
    init times alone: fewer than 5 per parameter is a note naming the count and the way out,
    for the model and for a network's anchor; a global fit or a raw anchor is not noted."""
    import enspp.flows.preflight as preflight

    cfg = lambda **model: load_config(config(work, "few.yaml", model=model))  # noqa: E731

    def overfit(report):
        return [n for n in report.notes if "overfit" in n]

    [note] = overfit(check_config(cfg(name="emos_local")))  # the fixture: 8 training init times
    assert note == ("model: the exact fit of emos_local fits 4 parameters at every point from "
                    "only 8 training init times (fewer than 20, 5 per parameter): it will "
                    "overfit; train on more init times or use emos_global (one fit for all "
                    "points)")
    [note] = overfit(check_config(cfg(name="mixed", options={"anchor_season": "doy"})))
    assert note.startswith("model: the exact fit of the emos_local anchor of mixed fits 8 "
                           "parameters") and "(fewer than 40," in note
    assert "set model.options.anchor: emos_global (one fit for all points) or raw" in note
    for model in ({"name": "emos_global"}, {"name": "mixed", "options": {"anchor": "raw"}},
                  {"name": "mixed", "options": {"anchor": "emos_global"}}):
        assert overfit(check_config(cfg(**model))) == []
    assert not check_config(cfg(name="emos_local")).problems
    assert preflight.LOCAL_CASES_PER_PARAMETER == 5


def _analysis(work: Path, name: str, days: list[str]) -> str:
    """An analysis store on the stores' grid holding the given days only (written once)."""
    import pandas as pd
    from predict_data import NX, NY

    from enspp.data.store_writer import append
    from enspp.pipeline.synthetic import analysis_dataset

    path = work / "stores" / name
    if not path.exists():
        append(path, analysis_dataset(times=pd.DatetimeIndex(days), ny=NY, nx=NX, seed=3),
               kind="analysis")
    return f"stores/{name}"


def test_a_split_whose_valid_times_the_analysis_lacks_is_the_error_train_stops_on(work, capsys):
    """A split period holding init times whose valid times (init + 48 h) the analysis store
    lacks selects no sample: validate names the split's key and why, with the message
    ``enspp train`` stops on (the pipeline's own selection, on coordinates)."""
    import pandas as pd

    days = [str(d.date()) for d in pd.date_range("2019-01-01", "2019-01-18")
            if str(d.date()) != "2019-01-13"]  # the valid time of val's one init time
    stores = {"forecast": "stores/forecast.zarr", "static": "stores/static.nc",
              "analysis": _analysis(work, "analysis_gap.zarr", days)}
    path = config(work, "gap.yaml", pipeline={"stores": stores})
    (line,) = check_config(load_config(path)).problems
    assert line.startswith("pipeline.split.val: split 'val' (2019-01-11..2019-01-13) selects "
                           "no data: ")
    assert ("1 of the 3 forecast init times in the period (2019-01-11 00:00:00..2019-01-11 "
            "00:00:00) have no analysis at their valid time (init + 48 h)") in line
    assert main(["validate", str(path)]) == 1
    capsys.readouterr()
    assert main(["train", "--config", str(path)]) == 1
    assert line.removeprefix("pipeline.split.val: ") in capsys.readouterr().err

    # a fraction split (the paper's default here: test 2019-01-13..16) whose valid times
    # lie past the analysis's last day
    stores["analysis"] = _analysis(work, "analysis_short.zarr",
                                   [str(d.date()) for d in pd.date_range("2019-01-01",
                                                                         "2019-01-14")])
    path = config(work, "short.yaml", pipeline={"stores": stores, "split": {}},
                  evaluate={"split": None})
    problems = [p for p in check_config(load_config(path)).problems
                if p.startswith("pipeline.split")]
    assert len(problems) == 1 and problems[0].startswith(
        "pipeline.split.fractions: split 'test' (2019-01-13..2019-01-16) selects no data"), problems
    # the stores' own analysis: every split selects samples
    stores["analysis"] = "stores/analysis.zarr"
    path = config(work, "full_analysis.yaml", pipeline={"stores": stores, "split": {}},
                  evaluate={"split": None})
    assert not [p for p in check_config(load_config(path)).problems if p.startswith("pipeline.split")]


def test_fractions_that_leave_training_nothing_are_a_problem(tmp_path):
    """Fractions of too few days of data: no training split at all (4 daily init times,
    each split needing 2 more days for its 48 h valid times)."""
    make_stores(tmp_path / "stores", n_init=4)
    path = config(tmp_path, "few.yaml", pipeline={"split": {}}, evaluate={"split": None,
                                                                         "cases": []})
    problems = [p for p in check_config(load_config(path)).problems
                if p.startswith("pipeline.split")]
    assert problems == ["pipeline.split.fractions: cannot split 4 days of data into fractions "
                        "(0.7894736842105263, 0.10526315789473684, 0.10526315789473684): "
                        "nothing is left for training"], problems


def test_validate_reads_the_config_file_once(work, monkeypatch, capsys):
    """``enspp validate CONFIG`` parses the file once: the config and the sections it gives
    come from the same read."""
    path = config(work, "once.yaml")
    reads = []
    read_text = Path.read_text

    def counting(self, *args, **kwargs):
        if self == path:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    assert main(["validate", str(path)]) == 0
    assert "valid config (sections evaluate, pipeline, the others default" in capsys.readouterr().out
    assert len(reads) == 1


@pytest.mark.parametrize("split, patience, line", [
    ({"fractions": [0.8, 0.0, 0.2]}, 5,
     "pipeline.split.fractions: [0.8, 0.0, 0.2] leave no validation split: "),
    ({"train": {"start": "2019-01-01", "end": "2019-01-10"}}, None,
     "pipeline.split: no validation period (split.val is not set): "),
])
def test_a_split_without_validation_is_a_problem_as_in_train(work, capsys, split, patience, line):
    """Training refuses a split without validation init times (it chooses and scores its
    checkpoint on them, with or without early stopping): validate names the same line, and
    exits 1; train says it in one line."""
    path = config(work, "noval.yaml", pipeline={"split": split},
                  train={"early_stopping_patience": patience, "max_epochs": 1,
                         "progress_bar": False})
    problems = check_config(load_config(path)).problems
    assert [p for p in problems if p.startswith("pipeline.split")] == [
        p for p in problems if p.startswith(line)], problems
    [problem] = [p for p in problems if p.startswith(line)]
    assert "early stopping, best.ckpt" in problem
    assert main(["validate", str(path)]) == 1
    assert problem in capsys.readouterr().err
    assert main(["train", "--config", str(path)]) == 1
    assert capsys.readouterr().err == f"enspp train: error: {problem}\n"
    assert not (work / "runs").exists()


def test_a_statistics_file_outside_stores_is_a_note_wherever_it_is(work, capsys):
    """Training writes the statistics file wherever pipeline.stores.statistics puts it: its
    absence is a note (not a problem), in stores/ or elsewhere."""
    path = config(work, "stats_elsewhere.yaml",
                  pipeline={"stores": {"forecast": "stores/forecast.zarr",
                                       "analysis": "stores/analysis.zarr",
                                       "static": "stores/static.nc",
                                       "statistics": "statistics/norm.nc"}})
    report = check_config(load_config(path))
    assert not any(p.startswith("pipeline.stores.statistics") for p in report.problems)
    assert (f"pipeline.stores.statistics: statistics file {work / 'statistics/norm.nc'} does "
            "not exist yet (training writes it)") in report.notes
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("split", [
    {},  # the default fractions: day units, each split with its lead days
    {"train": {"start": "2019-01-01", "end": "2019-01-10"},
     "val": {"start": "2019-01-11", "end": "2019-01-16"}},
])
def test_the_overfit_note_counts_the_training_init_times_training_uses(work, split):
    """The local fit's note counts the init times the DataModule trains on (its split of the
    aligned samples: valid times inside the period), also without an analysis store to align
    with (the forecast store's init times, split as training splits them)."""
    from enspp.models.train import resolve_store_paths
    from enspp.pipeline.datamodule import EnsembleDataModule

    def count(path):
        [note] = [n for n in check_config(load_config(path)).notes if "overfit" in n]
        return int(note.split("from only ")[1].split()[0])

    path = config(work, "count.yaml", pipeline={"split": split}, model={"name": "emos_local"},
                  evaluate={"split": None})
    cfg = load_config(path)
    pipe = resolve_store_paths(cfg.pipeline, cfg.workdir.root)  # no statistics file written
    pipe = pipe.model_copy(update={"stores": pipe.stores.model_copy(update={"statistics": None})})
    dm = EnsembleDataModule(pipe)
    dm.setup("fit")
    n = len(dm.split_init_times["train"])
    assert count(path) == n
    stores = {"forecast": "stores/forecast.zarr", "analysis": "stores/none.zarr",
              "static": "stores/static.nc"}
    assert count(config(work, "count_no_an.yaml", pipeline={"split": split, "stores": stores},
                        model={"name": "emos_local"}, evaluate={"split": None})) == n
