"""The CLI prints the user's errors as one line and lets a bug raise with its traceback."""

from __future__ import annotations

import types

import pytest

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.schema import SchemaError, VariableNotFoundError
from enspp.flows import cli


def _fake_command(monkeypatch, exc: BaseException) -> None:
    def run(args):
        raise exc

    module = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: module)


def test_a_user_error_is_one_line(monkeypatch, capsys):
    _fake_command(monkeypatch, SchemaError("store s.zarr: variable 't2m'\n  has no units"))
    assert cli.main(["validate"]) == 1
    err = capsys.readouterr().err
    assert err == "enspp validate: error: store s.zarr: variable 't2m' has no units\n"


def test_a_missing_file_is_one_line(monkeypatch, capsys):
    _fake_command(monkeypatch, FileNotFoundError(2, "No such file or directory", "in/fc.grib"))
    assert cli.main(["ingest"]) == 1
    assert capsys.readouterr().err == "enspp ingest: error: in/fc.grib: No such file or directory\n"


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), KeyError("lead_time"),
                                 ValueError("operands could not be broadcast"), TypeError("x")])
def test_a_bug_keeps_its_traceback(monkeypatch, bug):
    """A plain ValueError/KeyError from a library is a bug, never printed as a user error."""
    _fake_command(monkeypatch, bug)
    with pytest.raises(type(bug)):
        cli.main(["train"])


def test_every_user_error_class_derives_from_the_one_base():
    import importlib

    for module, name in [("enspp.data.ingest", "IngestError"), ("enspp.evaluation.config", "EvaluateConfigError"),
                         ("enspp.flows.config", "ConfigError"), ("enspp.models.checkpoint", "CorruptCheckpointError"),
                         ("enspp.pipeline.config", "PipelineConfigError"), ("enspp.flows.commands", "UsageError")]:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, EnsppError), cls


def test_a_missing_variable_is_a_user_error_and_a_key_error():
    e = VariableNotFoundError("variable 'z500' is not in the dataset")
    assert isinstance(e, EnsppError) and isinstance(e, KeyError)
    assert str(e) == "variable 'z500' is not in the dataset"  # not quoted as KeyError would


def test_one_formatter_for_config_errors():
    import pydantic

    class M(pydantic.BaseModel, extra="forbid"):
        k: int = 1

    with pytest.raises(pydantic.ValidationError) as info:
        M.model_validate({"k": "x", "bogus": 1})
    text = format_validation_error(info.value, prefix="enspp.yaml: pipeline")
    assert text.startswith("enspp.yaml: pipeline.k: Input should be a valid integer")
    assert text.endswith("; enspp.yaml: pipeline.bogus: unknown key")
