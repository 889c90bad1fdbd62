"""What ``enspp demo`` prints under its table: the claim, each CRPS with its units."""

from __future__ import annotations

from enspp.flows.commands.demo import verdict_line


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
