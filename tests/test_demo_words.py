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
