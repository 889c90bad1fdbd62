"""``enspp experiment``: train and compare every system on one split, write a table and a dashboard.

Two kinds, one YAML file each (``configs/experiments/*.yaml``)::

    title: Magdeburg 2 m temperature (ECMWF ENS, +24 h)
    kind: station                      # or synthetic (flows.experiment_synthetic)
    station:
      path: ../shared/data/station/ecmwf_ens_t2m_magdeburg_2002-2014.nc   # relative to the CWD
      distribution: gaussian           # or censored_logistic (precipitation)
      val_start: 2011-01-01            # valid dates [val_start, test_start) stop the fit early
      test_start: 2012-01-01           # valid dates >= test_start are the test period
      members: [5, 10, 25]             # K: the first K members (control = 0) feed the models
      systems: [emos_global, emos_local, mlp, mixed]
    train: {max_epochs: 300, patience: 25, seeds: 3}
    evaluate: {n_resamples: 1000}

Every CRPS is named: raw ensembles use the ``standard`` estimator (= properscoring), models
their closed-form CRPS (``gaussian`` = the standard CRPS of the predictive distribution;
``censored_logistic``).  ``quick`` shrinks everything for tests (one K, few epochs, one seed).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.yaml_file import read_yaml_mapping
from enspp.flows.experiment_synthetic import SyntheticSection

_FROZEN = ConfigDict(extra="forbid", frozen=True)
POINT_SYSTEMS = ("emos_global", "emos_local", "emos_lagged", "mlp", "mixed")
#: every station system: ``emos_season`` is the seasonal EMOS chosen on validation among a
#: day-of-year EMOS and sliding-window EMOS fits (``station.season_windows``)
STATION_SYSTEMS = POINT_SYSTEMS + ("emos_season",)


class ExperimentConfigError(EnsppError):
    """An experiment file is malformed; the message names the file and the key."""


class FeatureSettings(BaseModel):
    """Station model inputs besides the members (all causal, see flows.experiment_point)."""

    model_config = _FROZEN
    day_of_year: bool = True
    #: past errors and the observation at init time (err_lag1, err_lag2, obs_init, err_ewm)
    lagged_error: bool = True
    halflife_days: float = Field(5.0, gt=0)
    max_age_days: float = Field(3.0, gt=0)
    #: with lagged_error: also the weighted mean of the past errors' magnitude (err_ewm_abs),
    #: a predictor of the spread; networks only
    error_spread: bool = False

    @model_validator(mode="after")
    def _spread_needs_errors(self) -> "FeatureSettings":
        if self.error_spread and not self.lagged_error:
            raise ValueError("features.error_spread needs features.lagged_error: true")
        return self
    #: the deterministic high-resolution forecast of the same init (``<v>_hres`` in the file),
    #: as its departure from the subset's mean (hres_dev); networks only
    hres: bool = False


class MemberTransform(BaseModel):
    """A stress test of the post-processors: every member moved by ``offset`` (the variable's
    units) and its departure from the ensemble mean scaled by ``spread`` (so the raw
    ensemble is biased and under- or over-dispersed), before anything else reads them."""

    model_config = _FROZEN
    offset: float = 0.0
    spread: float = Field(1.0, gt=0)


class StationSection(BaseModel):
    model_config = _FROZEN
    path: Path
    variable: str | None = None
    #: e.g. {offset: 8.0, spread: 0.3}: the members biased by +8 and their spread cut to 30 %
    transform: MemberTransform | None = None
    distribution: Literal["gaussian", "censored_logistic"] = "gaussian"
    train_start: dt.date | None = None
    val_start: dt.date
    test_start: dt.date
    test_end: dt.date | None = None
    members: tuple[int, ...] = (5, 10, 25)
    #: which K members: ``first`` = 0..K-1 (control first), ``perturbed`` = 1..K
    subset: Literal["first", "perturbed"] = "first"
    systems: tuple[Literal["emos_global", "emos_local", "emos_lagged", "mlp", "mixed", "emos_season"], ...] = POINT_SYSTEMS
    #: the sliding windows (days) ``emos_season`` chooses among on validation, beside the
    #: day-of-year EMOS
    season_windows: tuple[float, ...] = (25.0, 30.0, 40.0)
    features: FeatureSettings = FeatureSettings()
    #: per-model options passed to ModelSpec.options (e.g. {mixed: {embed_dim: 16}})
    model_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _order(self) -> StationSection:
        if not (self.train_start or dt.date.min) < self.val_start < self.test_start:
            raise ValueError(f"dates must satisfy train_start < val_start < test_start, got "
                             f"{self.train_start}, {self.val_start}, {self.test_start}")
        if self.test_end is not None and self.test_end < self.test_start:
            raise ValueError(f"test_end {self.test_end} is before test_start {self.test_start}")
        if any(w <= 0 for w in self.season_windows):
            raise ValueError(f"season_windows must be > 0 days, got {list(self.season_windows)}")
        if not self.members or min(self.members) < 1:
            raise ValueError(f"members must be a non-empty list of K >= 1, got {list(self.members)}")
        return self


class SystemTrain(BaseModel):
    """One system's own training settings (unset keys: the train section's)."""

    model_config = _FROZEN
    max_epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    seeds: int | None = Field(None, ge=1)


class TrainSection(BaseModel):
    model_config = _FROZEN
    max_epochs: int = Field(300, ge=1)
    patience: int = Field(25, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-3, gt=0)
    #: synthetic experiments' EMOS learning rate (station EMOS is fitted exactly)
    emos_lr: float = Field(3e-2, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    #: learning-rate schedule of the synthetic experiment's trainings (models.config.TrainConfig)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    #: networks (mlp, mixed, unet) are fitted with this many seeds and their parameters averaged
    seeds: int = Field(3, ge=1)
    seed: int = 0
    #: station experiments: after early stopping on the validation period, refit (same seed)
    #: on training + validation, networks for the chosen number of epochs, EMOS exactly
    refit: bool = False
    #: per-network settings, e.g. {mixed: {lr: 0.003, max_epochs: 2000}} (``seeds``: station
    #: experiments only); EMOS is fitted exactly
    systems: dict[Literal["mlp", "mixed", "unet"], SystemTrain] = Field(default_factory=dict)


#: train settings each experiment kind does not read (setting one is an error, not a no-op)
_TRAIN_UNUSED = {"station": frozenset({"lr_schedule", "emos_lr"}),
                 "synthetic": frozenset({"batch_size", "seeds", "refit"})}


class EvaluateSection(BaseModel):
    model_config = _FROZEN
    n_resamples: int = Field(1000, ge=10)
    confidence: float = Field(0.9, gt=0, lt=1)
    seed: int = 0
    #: twCRPS tails: thresholds are these quantiles of the training-period observations/analysis
    tail_quantiles: tuple[float, float] = (0.05, 0.95)


class ExperimentConfig(BaseModel):
    model_config = _FROZEN
    title: str
    kind: Literal["station", "synthetic"]
    station: StationSection | None = None
    synthetic: SyntheticSection | None = None
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _section(self) -> ExperimentConfig:
        if getattr(self, self.kind) is None:
            raise ValueError(f"kind: {self.kind} needs a '{self.kind}' section")
        unused = sorted(self.train.model_fields_set & _TRAIN_UNUSED[self.kind])
        if unused:  # set in the file but without effect for this kind: say so, never ignore
            raise ValueError(f"train.{', train.'.join(unused)} has no effect on a {self.kind} "
                             f"experiment; remove it")
        return self


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Parse and validate an experiment YAML file (errors name the file and the key)."""
    path = Path(path)
    raw = read_yaml_mapping(path, what="experiment config", error=ExperimentConfigError)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ExperimentConfigError(format_validation_error(e, prefix=str(path), sep=": ")) from None
    return cfg


def run_experiment(config: ExperimentConfig, *, out_dir: str | Path, quick: bool = False,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Run the experiment; write ``table.md``, ``results.json`` and ``index.html`` into
    ``out_dir``; return the results document (rows, timings, files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if config.kind == "synthetic":
        from enspp.flows.experiment_synthetic import run_synthetic as run_kind
    else:
        from enspp.flows.experiment_station import run_station as run_kind

    result = run_kind(config, out_dir=out, quick=quick, progress=progress)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["quick"] = quick
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result
