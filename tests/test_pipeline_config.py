"""PipelineConfig: YAML loading, defaults, and validation messages that name the bad key."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest

from enspp.pipeline.config import PipelineConfig, PipelineConfigError


def test_defaults_are_valid():
    cfg = PipelineConfig()
    assert cfg.nan_policy == "error" and cfg.regrid is None
    assert cfg.members.strategy == "first" and cfg.members.k == 5
    assert cfg.features.lead_times == (48,)


def test_from_yaml_section(tmp_path):
    p = tmp_path / "enspp.yaml"
    p.write_text("""
pipeline:
  stores: {forecast: f.zarr, analysis: a.zarr}
  features: {variables: [z500, t2m], targets: [t2m], target_lead_time: 48, input_lead_times: [0, 24]}
  members: {strategy: explicit, explicit: [0, 3, 7]}
  split: {train: [1999, 2013], val: [2014, 2015], test: {start: 2016-01-01, end: 2017-12-31}, gap_days: 2}
  batches: {patch_size: 32, batch_size: 4, seed: 3, tile_size: 64, tile_overlap: 8}
  nan_policy: mask
model: {ignored: here}
""")
    cfg = PipelineConfig.from_yaml(p)
    assert cfg.split.train.start == dt.date(1999, 1, 1) and cfg.split.train.end == dt.date(2013, 12, 31)
    assert cfg.split.test.end == dt.date(2017, 12, 31)
    assert cfg.members.n_chosen == 3
    assert cfg.features.lead_times == (0, 24, 48)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.nan_policy = "error"  # frozen


@pytest.mark.parametrize("data, key", [
    ({"batches": {"patch_sise": 3}}, "batches.patch_sise: unknown key"),
    ({"bogus": 1}, "pipeline.bogus: unknown key"),
    ({"nan_policy": "ignore"}, "pipeline.nan_policy"),
    ({"members": {"k": 0}}, "members.k"),
    ({"members": {"strategy": "explicit"}}, "needs a list in members.explicit"),
    ({"members": {"strategy": "explicit", "explicit": [1, 1]}}, "duplicates"),
    ({"members": {"strategy": "explicit", "explicit": [-1]}}, "0-based"),
    ({"members": {"strategy": "explicit", "explicit": [1, 2], "k": 3}}, "disagrees"),
    ({"members": {"strategy": "first", "explicit": [1, 2]}}, "only used with strategy"),
    ({"split": {"train": [2000, 2010], "val": [2010, 2011]}}, "split.train (2000-01-01..2010-12-31) overlaps split.val"),
    ({"split": {"val": [2010, 2011]}}, "split.train is required"),
    ({"split": {"train": [2011, 2010]}}, "is before start"),
    ({"split": {"train": [2011, 2012, 2013]}}, "a period is"),
    ({"split": {"gap_days": -1}}, "gap_days"),
    ({"split": {"fractions": [0.5, 0.2, 0.2]}}, "fractions"),
    ({"features": {"variables": []}}, "features.variables"),
    ({"features": {"variables": ["t2m", "t2m"]}}, "duplicate names"),
    ({"features": {"targets": ["tp"]}}, "must also be input variables"),
    ({"features": {"target_lead_time": -6}}, "features.target_lead_time"),
    ({"features": {"input_lead_times": [0, 0]}}, "duplicate lead times"),
    ({"features": {"input_lead_times": [-24]}}, "lead times must be >= 0"),
    ({"batches": {"patch_size": 0}}, "batches.patch_size"),
    ({"batches": {"batch_size": 0}}, "batches.batch_size"),
    ({"batches": {"num_workers": -1}}, "batches.num_workers"),
    ({"batches": {"tile_size": 16, "tile_overlap": 8}}, "less than half"),
    ({"regrid": "cubic"}, "pipeline.regrid"),
])
def test_bad_values_name_the_key(data, key):
    with pytest.raises(PipelineConfigError, match=None) as e:
        PipelineConfig.from_dict(data)
    assert key in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


def test_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PipelineConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: [unclosed\n")
    with pytest.raises(PipelineConfigError, match="not valid YAML"):
        PipelineConfig.from_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(PipelineConfigError, match="top level must be a mapping"):
        PipelineConfig.from_yaml(scalar)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("pipeline:\n  members: {kk: 3}\n")
    with pytest.raises(PipelineConfigError, match=r"u.yaml: pipeline.members.kk: unknown key"):
        PipelineConfig.from_yaml(unknown)
