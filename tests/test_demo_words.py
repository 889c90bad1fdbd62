"""What ``enspp demo`` prints under its table: the claim, each CRPS with its units."""

from __future__ import annotations

import pytest

from enspp.flows.commands.demo import verdict_line

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _row(system, crps, label, variable="t2m", units="K"):
    return {"variable": variable, "system": system, "crps": crps, "label": label, "units": units}


def test_the_verdict_names_systems_by_label_and_scores_in_units():
    rows = [_row("mixed", 0.93431, "mixed (ours), 5 of 10 perturbed"),
            _row("raw_full", 1.20244, "raw ensemble, all 11 (control + 10 perturbed)")]
    assert verdict_line(rows) == (
        "t2m: mixed (ours), 5 of 10 perturbed, CRPS 0.9343 K beats the raw ensemble, all 11 "
        "(control + 10 perturbed), 1.2024 K, on the test year")
    rows[0]["crps"] = 1.3
    assert " does NOT beat " in verdict_line(rows)


def test_no_verdict_without_both_systems():
    assert verdict_line([_row("raw_full", 1.2, "raw")]) is None
    assert verdict_line([_row("mixed", None, "m"), _row("raw_full", 1.2, "raw")]) is None


def test_the_written_config_reads_like_a_hand_written_one(tmp_path):
    """The demo's enspp.yaml: short lists on one line, and it loads back to the same config."""
    from enspp.flows.config import default_demo_config, load_config
    from enspp.flows.demo import write_config

    config = default_demo_config(tmp_path)
    text = write_config(config, tmp_path / "enspp.yaml").read_text()
    assert "    grid: [32, 64]\n" in text and "    forecast: [synth/forecast]\n" in text
    assert "variables: [z500, t850, t2m]" in text and "\n    - 32\n" not in text
    loaded = load_config(tmp_path / "enspp.yaml")
    for section in ("data", "pipeline", "model", "train", "predict"):
        assert getattr(loaded, section) == getattr(config, section), section


def test_the_written_config_validates_with_its_products(tmp_path, capsys):
    """`enspp validate enspp.yaml` on a config written as the demo writes it, whose systems
    include a product and the oracle (plain Zarr, not ingested stores): valid, no error line."""
    import xarray as xr
    from predict_data import make_stores

    from enspp.evaluation.config import EvaluateConfig
    from enspp.flows.cli import main
    from enspp.flows.config import default_demo_config
    from enspp.flows.demo import write_config

    wd = tmp_path / "work"
    paths = make_stores(wd / "stores")
    t2m = xr.open_zarr(paths.forecast)["t2m"].isel(member=0, drop=True)
    for p in (wd / "stores" / "products" / "mixed-abc.zarr", wd / "synth" / "oracle.zarr"):
        xr.Dataset({"t2m_mean": t2m, "t2m_std": abs(t2m) * 0 + 1.0}).to_zarr(p, mode="w")
    config = default_demo_config(wd)
    config = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={
        "stores": config.pipeline.stores.model_copy(update={"static": paths.static}),
        "features": config.pipeline.features.model_copy(update={
            "variables": ("t2m",), "targets": ("t2m",), "input_lead_times": (24,)}),
        "split": config.pipeline.split.model_copy(update={"train": None, "val": None,
                                                          "test": None})})})
    ev = EvaluateConfig(
        title="demo", truth=paths.analysis, variables=["t2m"], lead_times=[48],
        systems=[{"name": "raw_full", "path": paths.forecast},
                 {"name": "raw_subset", "path": paths.forecast, "members": [1, 2, 3, 4, 5]},
                 {"name": "mixed", "path": wd / "stores" / "products" / "mixed-abc.zarr",
                  "type": "gaussian"},
                 {"name": "oracle", "path": wd / "synth" / "oracle.zarr", "type": "gaussian"}])
    path = write_config(config, wd / "enspp.yaml", evaluate=ev)
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert f"{path}: valid config" in out and err == ""
