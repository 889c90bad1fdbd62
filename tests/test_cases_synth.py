"""The synthetic world's events.yaml plugs into evaluation.cases' catalogue schema.

Generates a tiny world with data.synth and loads its catalogue with
evaluation.cases.load_catalogue, so the test fails loudly if the two schemas diverge.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import xarray as xr
import yaml

from enspp.data.synth import SynthConfig, generate_world
from enspp.evaluation.cases import Case, load_catalogue


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    config = SynthConfig(seed=5, grid=(8, 16), years=(2020, 2020), n_perturbed=2,
                         lead_times_h=(24,), events_per_year=4)
    return config, generate_world(tmp_path_factory.mktemp("synth-world"), config)


def test_events_yaml_loads_as_a_case_catalogue(world):
    config, paths = world
    path = paths.events
    assert path == paths.root / "events.yaml"  # ARCHITECTURE.md: WORKDIR/synth/events.yaml
    raw = yaml.safe_load(path.read_text())
    cases = load_catalogue(path)
    assert len(cases) == len(raw["cases"]) == config.events_per_year
    assert [c.id for c in cases] == [e["id"] for e in raw["cases"]]
    for case in cases:
        assert isinstance(case, Case)
        assert case.variable in config.variables
        assert not case.selected_on_outcome and "by construction" in case.how_chosen
        assert dt.datetime(2020, 1, 1) <= case.window.start <= case.window.end <= dt.datetime(2021, 1, 1)
        assert case.map_time is not None and case.window.start <= case.map_time <= case.window.end
        assert case.threshold is not None and np.isfinite(case.threshold)


def test_synth_case_boxes_hold_points_of_the_synth_grid(world):
    """Every case's box holds grid points of the world it came from (its windows may fall
    between init days: evaluate() then reports the case as out of range, not an error)."""
    _, paths = world
    oracle = xr.open_zarr(paths.oracle)
    for case in load_catalogue(paths.events):
        assert case.box.lat_mask(oracle.latitude.values).any(), case.id
        assert case.box.lon_mask(oracle.longitude.values).any(), case.id
