"""Typed configuration of the ``model``, ``train`` and ``predict`` sections of ``enspp.yaml``.

Each section is a frozen pydantic model that refuses unknown keys.  :func:`load_sections`
reads the YAML file into its raw sections (a helper the flows layer may reuse) and
:func:`parse_section` turns one section into its model with an error naming the file, the
section and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.yaml_file import read_yaml_mapping

#: the sections one ``enspp.yaml`` may hold (ARCHITECTURE.md, "Configuration")
KNOWN_SECTIONS = ("data", "pipeline", "model", "train", "predict", "evaluate", "deploy")



class ConfigError(EnsppError):
    """A configuration file or section is malformed; the message names the file and key."""


class ModelConfig(BaseModel):
    """Which post-processing model to build and its hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: one of ``models.base.MODELS``
    name: str = "mixed"
    distribution: Literal["gaussian", "censored_logistic"] = "gaussian"
    #: hyper-parameters passed to the model as ``ModelSpec.options`` (model-specific)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from enspp.models.base import MODEL_NAMES

        if v not in MODEL_NAMES:
            raise ValueError(f"unknown model {v!r} (known: {', '.join(MODEL_NAMES)})")
        return v

    @model_validator(mode="after")
    def _options(self) -> ModelConfig:
        """The options the model would refuse, refused here (before any data is read)."""
        from enspp.models.base import ModelSpecError, check_model_options

        try:
            check_model_options(self.name, self.distribution, self.options)
        except ModelSpecError as e:
            raise ValueError(f"options: {e}") from None
        return self


class TrainConfig(BaseModel):
    """Optimisation, early stopping, seeds and the Lightning ``Trainer`` settings.

    CPU by default; GPU / multi-GPU DDP need only ``accelerator``, ``devices``, ``strategy``
    (and ``num_nodes``) here, nothing else changes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epochs: int = Field(20, ge=1)
    optimizer: Literal["adam", "adamw"] = "adamw"
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    #: learning-rate schedule: ``constant``; ``cosine`` (per epoch from ``learning_rate`` down
    #: to ``learning_rate * lr_min_factor`` at ``max_epochs``); ``plateau`` (times
    #: ``lr_plateau_factor`` after ``lr_plateau_patience`` epochs without a better validation
    #: CRPS, never below ``learning_rate * lr_min_factor``)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    lr_min_factor: float = Field(0.01, ge=0, le=1)
    lr_plateau_factor: float = Field(0.5, gt=0, lt=1)
    lr_plateau_patience: int = Field(2, ge=0)
    gradient_clip_val: float | None = Field(None, gt=0)
    #: epochs without improvement of the *validation* CRPS before stopping; None disables
    early_stopping_patience: int | None = Field(5, ge=1)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    #: estimator of the raw-ensemble CRPS logged beside the model's for comparison
    ensemble_estimator: Literal["fair", "standard"] = "fair"
    seed: int = 0
    #: a seed ensemble of this many networks (seeds ``seed``, ``seed + 1``, ...), each stopped at
    #: its own best validation epoch, whose distribution parameters are averaged
    #: (``models.ensemble``); 1: one network
    seeds: int = Field(1, ge=1)
    #: after choosing each network's epoch count on validation, train it again from the same
    #: seed on training + validation for that many epochs, and use that model
    refit: bool = False
    #: "warn" asks torch for deterministic algorithms and only warns where none exists
    deterministic: bool | Literal["warn"] = "warn"
    accelerator: str = "cpu"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    #: ``32-true``; ``bf16-mixed``: matrix products and convolutions in bfloat16 (GPUs
    #: since Ampere, and CPUs), everything the distribution and the CRPS need (ensemble
    #: moments, the head, the loss) in float32, so at 721x1440 activations take about half
    #: the memory; ``16-mixed``: float16 with loss scaling (CUDA only)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    log_every_n_steps: int = Field(10, ge=1)
    limit_train_batches: int | float = Field(1.0, gt=0)
    limit_val_batches: int | float = Field(1.0, gt=0)
    progress_bar: bool = True
    #: name of the run directory under ``WORKDIR/runs``; default: a timestamp and the seed
    run_id: str | None = None

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _batch_limit(cls, v: int | float) -> int | float:
        if isinstance(v, float) and v > 1.0:
            raise ValueError(f"{v} is neither a fraction (at most 1.0) of the batches nor a "
                             "number of batches (an int)")
        return v

    @field_validator("precision")
    @classmethod
    def _precision_on_device(cls, v: str, info: ValidationInfo) -> str:
        if v == "16-mixed" and info.data.get("accelerator") == "cpu":
            raise ValueError("'16-mixed' needs a CUDA accelerator; on a CPU use 'bf16-mixed' "
                             "or '32-true'")
        return v

    @field_validator("run_id")
    @classmethod
    def _plain_run_id(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in (".", "..")):
            raise ValueError(f"run_id {v!r} must be a plain directory name")
        return v


def validation_split_problem(split: Any) -> str | None:
    """Why training cannot run on ``split`` (a ``pipeline.config.SplitConfig``), or ``None``:
    training chooses its checkpoint on the validation init times (early stopping, ``best.ckpt``,
    the seeds' and refit's epochs) and scores it there (the score the train flow and the
    registry compare), so a split without validation init times cannot be trained on.
    Exact: a validation fraction > 0 always gives a validation period, and a period that
    selects no sample is a split error of its own.  Reads the config only (no torch), for
    ``enspp train`` and ``enspp validate`` alike."""
    why = ("training chooses and scores its checkpoint on validation init times (early "
           "stopping, best.ckpt and the validation score the train flow registers)")
    if split.explicit:
        if split.val is None:
            return (f"pipeline.split: no validation period (split.val is not set): {why}; "
                    "set pipeline.split.val")
        return None
    if split.fractions[1] <= 0:
        return (f"pipeline.split.fractions: {list(split.fractions)} leave no validation split: "
                f"{why}; give validation a fraction > 0")
    return None


class PredictConfig(BaseModel):
    """What ``enspp predict`` writes: members, quantiles, format (tiling comes from the
    pipeline's ``batches`` section recorded in the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: probability levels of ``<v>_quantiles``
    quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
    #: number M of ECC members written (may exceed the K input members)
    n_members: int = Field(10, ge=1)
    fmt: Literal["zarr", "netcdf"] = "zarr"
    #: tiles per forward pass
    batch_size: int = Field(4, ge=1)
    #: seed of the ECC rank resampling when M > K
    seed: int = 0

    @field_validator("quantiles")
    @classmethod
    def _valid_quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < q < 1.0 for q in v):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {list(v)}")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"quantiles must be strictly increasing, got {list(v)}")
        return tuple(float(q) for q in v)


def load_sections(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read ``enspp.yaml`` into ``{section: mapping}`` (sections absent from the file are absent).

    Raises :class:`ConfigError` for a file that is not YAML, not a mapping, holds an unknown
    section, or a section that is not a mapping; ``FileNotFoundError`` if it does not exist.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, what="config file", error=ConfigError, hint=" of sections")
    sections: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key not in KNOWN_SECTIONS:
            raise ConfigError(f"{path}: unknown section {key!r} (known: {list(KNOWN_SECTIONS)})")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: section {key!r} must be a mapping, "
                              f"got {type(value).__name__}")
        sections[str(key)] = value
    return sections


C = TypeVar("C", bound=BaseModel)


def parse_section(sections: dict[str, dict[str, Any]], name: str, cls: type[C], *,
                  source: str | Path = "config") -> C:
    """Build ``cls`` from ``sections[name]`` (defaults when absent); errors name file and key."""
    try:
        return cls.model_validate(sections.get(name, {}))
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, prefix=name)}") from None
