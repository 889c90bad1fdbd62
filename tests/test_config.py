"""flows.config: one enspp.yaml, each section its package's model, errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from enspp.flows.cli import main
from enspp.flows.config import (
    ConfigError,
    DeployConfig,
    EnsppConfig,
    Workdir,
    config_from_mapping,
    default_demo_config,
    load_config,
)
from enspp.models.config import ModelConfig, PredictConfig, TrainConfig
from enspp.pipeline.config import PipelineConfig


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "enspp.yaml"
    p.write_text(text)
    return p


def test_empty_file_gives_defaults_and_each_section_its_model(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert isinstance(cfg.pipeline, PipelineConfig) and isinstance(cfg.model, ModelConfig)
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.predict, PredictConfig)
    assert cfg.evaluate is None and cfg.deploy == DeployConfig()
    assert cfg.data.workdir == tmp_path.resolve()  # "." is the config file's directory


def test_full_file_parses_and_relative_workdir_is_anchored(tmp_path):
    cfg = load_config(write(tmp_path, """
data: {workdir: work, incoming: {forecast: ["in/*.grib"]}, files_per_task: 4}
pipeline: {members: {k: 3}, split: {train: [2012, 2014], val: [2015, 2015], test: [2016, 2016]}}
model: {name: unet}
train: {max_epochs: 2, accelerator: cpu, devices: 1, strategy: auto, num_nodes: 1}
predict: {n_members: 4}
evaluate: {systems: [{name: raw_full, path: stores/forecast.zarr}], split: test}
deploy: {task_runner: dask, dask_address: "tcp://127.0.0.1:8786",
         schedules: {predict: "15 8,20 * * *", train: null}}
"""))
    assert cfg.data.workdir == (tmp_path / "work").resolve()
    assert cfg.workdir.forecast == (tmp_path / "work" / "stores" / "forecast.zarr").resolve()
    assert cfg.pipeline.members.k == 3 and cfg.model.name == "unet"
    assert cfg.deploy.schedules.predict == "15 8,20 * * *" and cfg.deploy.schedules.train is None
    # the evaluate section gets the pipeline's split periods, so split: test means the same dates
    assert str(cfg.evaluate.resolved_period().start) == "2016-01-01"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.model = ModelConfig()  # frozen


@pytest.mark.parametrize("text, expected", [
    ("pipeline: {members: {k: 0}}", "pipeline.members.k: k must be >= 1"),
    ("pipeline: {batchez: {}}", "pipeline.batchez: unknown key"),
    ("train: {max_epochs: 0}", "train.max_epochs: Input should be greater than or equal to 1"),
    ("model: {name: transformer}", "model.name: unknown model 'transformer'"),
    # what the model would refuse at build time, refused before any data is read
    ("model: {name: mixed, distribution: censored_logistic, options: {tail_weight: 0.2}}",
     "model: options: option tail_weight needs the gaussian distribution, not 'censored_logistic'"),
    ("model: {name: unet, options: {widht: 8}}", "model: options: unknown option(s) ['widht'] for model 'unet'"),
    ("model: {name: mlp, options: {anchor: emos_doy}}", "model: options: option anchor='emos_doy': expected one of"),
    ("predict: {quantiles: [0.9, 0.1]}", "predict.quantiles: quantiles must be strictly increasing"),
    ("evaluate: {systems: []}", "enspp.yaml: evaluate.systems: at least one system is needed"),
    ("data: {synth: {grid: [4, 4]}}", "data.synth.grid: grid 4x4 is too small"),
    ("data: {files_per_task: 0}", "data.files_per_task: Input should be greater than or equal to 1"),
    ("deploy: {schedules: {ingest: 'every hour'}}", "deploy.schedules.ingest: 'every hour' is not a cron"),
    ("deploy: {schedules: {timezone: Mars/Olympus}}", "deploy.schedules.timezone: unknown time zone"),
    ("deploy: {dask_address: 'tcp://x:1'}", "deploy: dask_address is only used with task_runner: dask"),
    ("deploy: {task_runner: spark}", "deploy.task_runner: Input should be 'thread' or 'dask'"),
    ("modle: {name: mixed}", "modle: unknown section"),
    ("model: [mixed]", "model: must be a mapping, got list"),
])
def test_errors_name_file_section_and_key(tmp_path, text, expected):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert expected in str(e.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: {workdir: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping of sections"):
        load_config(write(tmp_path, "- data\n- model\n"))
    binary = tmp_path / "fc.grib"
    binary.write_bytes(b"GRIB\x00\x00\xe4\x02" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"fc.grib: not a text \(UTF-8\) file: byte 0xe4 at offset 6"):
        load_config(binary)


@pytest.mark.parametrize("command", [["evaluate", "--config", "{f}", "--out", "{d}/o"],
                                     ["train", "--config", "{f}"], ["validate", "{f}"]])
def test_a_binary_file_as_config_is_one_line(tmp_path, capsys, command):
    from enspp.flows.cli import main

    binary = tmp_path / "fc.yaml"
    binary.write_bytes(b"GRIB\x00\x00\xe4\x02" + bytes(range(256)))
    args = [a.format(f=binary, d=tmp_path) for a in command]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fc.yaml: not a text (UTF-8) file" in err, err


def test_demo_config_needs_no_file_and_round_trips(tmp_path):
    from enspp.flows.demo import write_config

    cfg = default_demo_config(tmp_path / "w")
    assert cfg.data.workdir == (tmp_path / "w").resolve() and cfg.data.synth is not None
    fast = default_demo_config(tmp_path / "w", fast=True)
    assert fast.train.max_epochs < cfg.train.max_epochs
    assert fast.data.synth.years[1] - fast.data.synth.years[0] < cfg.data.synth.years[1] - cfg.data.synth.years[0]
    again = load_config(write_config(cfg, tmp_path / "cfg" / "enspp.yaml"))
    assert again == cfg


def test_workdir_layout(tmp_path):
    wd = Workdir(tmp_path)
    assert wd.products == tmp_path / "stores" / "products"
    assert wd.registry == tmp_path / "registry" and wd.reports == tmp_path / "reports"
    assert wd.path("a/b") == tmp_path / "a" / "b" and wd.path("/abs") == Path("/abs")


def test_config_from_mapping_without_a_file():
    cfg = config_from_mapping({"model": {"name": "mlp"}}, source="inline")
    assert isinstance(cfg, EnsppConfig) and cfg.model.name == "mlp"
    with pytest.raises(ConfigError, match=r"^inline: train.seed: Input should be a valid integer"):
        config_from_mapping({"train": {"seed": "x"}}, source="inline")


def test_enspp_validate_config(tmp_path, capsys):
    good = write(tmp_path, "model: {name: mlp}\n")
    assert main(["validate", str(good)]) == 0
    assert "valid config" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_epochs: -1}\n")
    assert main(["validate", str(bad)]) == 1
    assert f"{bad}: train.max_epochs" in capsys.readouterr().err
    other = tmp_path / "x.txt"
    other.write_text("")
    assert main(["validate", str(other)]) == 1
    assert "expected a Zarr store directory or a .yaml/.yml config file" in capsys.readouterr().err


def test_enspp_validate_missing_path(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: no such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("pipeline:\n  split:\n    train: {start: 2002-01-01, end: 2021-02-29}\n",
     "line 3, column 37: '2021-02-29' is not a date that exists (day is out of range for month)"),
    ("evaluate:\n  period: {start: 2020-13-45}\n",
     "line 2, column 19: '2020-13-45' is not a date that exists (month must be in 1..12)"),
])
def test_an_impossible_date_is_one_line_naming_file_line_and_value(tmp_path, capsys, text,
                                                                    expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: {expected}"
    for argv in (["validate", str(path)], ["train", "--config", str(path)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: {expected}" in err, err


@pytest.mark.parametrize("text, expected", [
    # a section pasted twice: the first (with its learning_rate) was silently dropped
    ("train:\n  max_epochs: 500\n  learning_rate: 0.01\ntrain:\n  max_epochs: 5\n",
     "line 4, column 1: key 'train' given twice (first at line 1)"),
    ("train:\n  max_epochs: 500\n  max_epochs: 5\n",
     "line 3, column 3: key 'train.max_epochs' given twice (first at line 2)"),
    ("pipeline: {split: {train: [2012, 2014], val: [2015, 2015], train: [2016, 2016]}}\n",
     "line 1, column 60: key 'pipeline.split.train' given twice (first at line 1)"),
    ("evaluate:\n  systems:\n    - {name: a, path: x.zarr}\n    - name: b\n      path: y.zarr\n"
     "      name: c\n", "line 6, column 7: key 'evaluate.systems[1].name' given twice "
     "(first at line 4)"),
])
def test_a_key_given_twice_is_refused_naming_file_key_and_line(tmp_path, capsys, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: {expected}"), str(e.value)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {expected}" in err, err


def test_yaml_merge_keys_may_be_overridden_and_aliases_are_checked_once(tmp_path):
    from enspp.data.yaml_file import read_yaml_mapping

    path = tmp_path / "x.yaml"
    path.write_text("base: &b {a: 1, b: 2}\nmore: {<<: *b, b: 3}\nagain: [*b, *b]\n")
    assert read_yaml_mapping(path, what="x", error=ConfigError) == {
        "base": {"a": 1, "b": 2}, "more": {"a": 1, "b": 3}, "again": [{"a": 1, "b": 2}] * 2}
    path.write_text("base: &b {a: 1, a: 2}\nmore: {<<: *b}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: line 1, column 17: key 'base\.a' given twice"):
        read_yaml_mapping(path, what="x", error=ConfigError)


def test_every_shipped_yaml_file_loads_as_safe_load_reads_it():
    """The strict reader (duplicate keys, impossible dates) accepts every YAML file the
    project ships, with the same content as ``yaml.safe_load``."""
    import yaml

    from enspp.data.yaml_file import read_yaml_mapping

    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("configs", "deploy", "evaluation") for p in sorted((root / d).rglob("*.y*ml"))]
    assert len(files) >= 10, files
    for p in files:
        assert read_yaml_mapping(p, what="file", error=ConfigError) == yaml.safe_load(p.read_text()), p
