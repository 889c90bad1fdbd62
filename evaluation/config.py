"""The ``evaluate`` section of ``enspp.yaml``: which systems to score, against what, how.

Example::

    evaluate:
      title: "Test period 2023"
      truth: stores/analysis.zarr
      systems:
        - {name: raw_full, path: stores/forecast.zarr}
        - {name: raw_subset, path: stores/forecast.zarr, members: 10}
        - {name: mlp, path: stores/products/mlp-v3.zarr, type: gaussian}
      variables: [t2m, z500]
      period: {start: 2023-01-01, end: 2023-12-31}
      regions: [global, tropics, extratropics]
      lead_times: [24, 48]          # hours; all leads when omitted
      metrics: [crps, spread_skill, rank_histogram, rmse, mae, bias, twcrps]
      bootstrap: {block_length: 5, n: 1000, ci_level: 0.9}
      twcrps: {percentiles: [0.9, 0.95], tail: upper}
      cases: [evaluation/catalogue/cases.yaml, synth/events.yaml]
      reference: raw_full

Paths are relative to the directory the config is read from (``base_dir`` of
:func:`resolve_paths`), or absolute.

**NaN policy** (``nan_policy``): ``"skip"`` (default) drops every point where the truth or the
forecast (any member, the mean or the standard deviation) is NaN from every score: its weight
is zero in both the numerator and the denominator of the weighted mean, and the number of
dropped points is reported per system and variable.  ``"error"`` raises instead.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enspp.data.errors import EnsppError, format_validation_error

SystemName = Literal["raw_full", "raw_subset", "emos", "mlp", "unet", "mixed", "oracle", "custom"]
SystemType = Literal["ensemble", "gaussian", "censored_logistic"]

#: Metrics the evaluation knows how to aggregate (names in the metrics registry).
KNOWN_METRICS = ("crps", "twcrps", "spread_skill", "rank_histogram", "rmse", "mae", "bias")


class EvaluateConfigError(EnsppError):
    """The ``evaluate`` section is inconsistent; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemConfig(_Frozen):
    """One forecast system to score."""

    name: SystemName
    path: Path
    type: SystemType = "ensemble"
    #: display name and key in the results; defaults to ``name`` (required for ``custom``)
    label: str | None = None
    #: variables this system provides; defaults to the evaluation's ``variables``
    variables: list[str] | None = None
    #: member selection: K (the first K members, 0..K-1) or an explicit list of member numbers
    members: int | list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "SystemConfig":
        if self.name == "custom" and not self.label:
            raise EvaluateConfigError("evaluate.systems: a system named 'custom' needs a 'label'")
        if self.name == "raw_subset" and self.members is None:
            raise EvaluateConfigError("evaluate.systems: 'raw_subset' needs 'members' "
                                      "(K, or a list of member numbers)")
        if isinstance(self.members, int) and self.members < 1:
            raise EvaluateConfigError(f"evaluate.systems[{self.key}].members: K must be >= 1, "
                                      f"got {self.members}")
        if self.members is not None and self.type != "ensemble":
            raise EvaluateConfigError(f"evaluate.systems[{self.key}].members: a member selection "
                                      f"needs type 'ensemble', not {self.type!r}")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name


class Period(_Frozen):
    """Init dates, both ends included."""

    start: _dt.date
    end: _dt.date

    @model_validator(mode="after")
    def _order(self) -> "Period":
        if self.end < self.start:
            raise EvaluateConfigError(f"evaluate.period: end {self.end} is before start {self.start}")
        return self


class BootstrapConfig(_Frozen):
    """Block bootstrap over init dates for the confidence intervals of skill scores."""

    block_length: int = Field(5, ge=1)
    n: int = Field(1000, ge=10)
    ci_level: float = Field(0.9, gt=0.0, lt=1.0)
    seed: int = 0


class TwCrpsConfig(_Frozen):
    """Threshold-weighted CRPS: fixed thresholds (variable units) and/or local percentiles of
    the truth's climatology (over the evaluation period unless ``climatology`` is given)."""

    thresholds: list[float] = []
    percentiles: list[float] = [0.9]
    tail: Literal["upper", "lower"] = "upper"
    climatology: Period | None = None

    @field_validator("percentiles")
    @classmethod
    def _in_unit_interval(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 0.0 < p < 1.0]
        if bad:
            raise EvaluateConfigError(f"evaluate.twcrps.percentiles must lie in (0, 1), got {bad}")
        return v


class EvaluateConfig(_Frozen):
    """Everything ``enspp evaluate`` needs."""

    title: str = "enspp evaluation"
    systems: list[SystemConfig]
    truth: Path | None = None
    variables: list[str] = ["t2m"]
    period: Period | None = None
    split: str | None = None
    #: named periods a ``split`` refers to (filled from the pipeline section by the CLI)
    splits: dict[str, Period] = {}
    regions: list[str] = ["global"]
    lead_times: list[int] | None = None
    metrics: list[str] = ["crps", "spread_skill", "rank_histogram", "rmse", "mae", "bias"]
    crps_estimator: Literal["fair", "standard"] = "fair"
    bootstrap: BootstrapConfig = BootstrapConfig()
    twcrps: TwCrpsConfig = TwCrpsConfig()
    cases: list[Path] = []
    reference: str = "raw_full"
    nan_policy: Literal["skip", "error"] = "skip"
    #: init times per chunk: memory is bounded by two chunks (one is read ahead while the
    #: other is scored) whatever the period's length
    chunk_size: int = Field(8, ge=1)
    #: lead time (hours) of the maps; the first evaluated lead when omitted
    map_lead_time: int | None = None

    @model_validator(mode="after")
    def _check(self) -> "EvaluateConfig":
        if not self.systems:
            raise EvaluateConfigError("evaluate.systems: at least one system is needed")
        keys = [s.key for s in self.systems]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise EvaluateConfigError(f"evaluate.systems: duplicate system names {dup}; "
                                      "give each a distinct 'label'")
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown:
            raise EvaluateConfigError(f"evaluate.metrics: unknown {unknown} (known: {list(KNOWN_METRICS)})")
        if self.period is not None and self.split is not None:
            raise EvaluateConfigError("evaluate: give either 'period' or 'split', not both")
        if self.split is not None and self.splits and self.split not in self.splits:
            raise EvaluateConfigError(f"evaluate.split: {self.split!r} is not a known split "
                                      f"({sorted(self.splits)})")
        if self.lead_times is not None and any(h < 0 for h in self.lead_times):
            raise EvaluateConfigError(f"evaluate.lead_times: hours must be >= 0, got {self.lead_times}")
        return self

    @property
    def system_keys(self) -> list[str]:
        return [s.key for s in self.systems]

    def resolved_period(self) -> Period | None:
        """The init-date period: ``period``, or the named ``split``; ``None`` means all dates."""
        if self.split is None:
            return self.period
        if self.split not in self.splits:
            raise EvaluateConfigError(f"evaluate.split: {self.split!r} is not defined; known splits: "
                                      f"{sorted(self.splits) or 'none (give evaluate.period instead)'}")
        return self.splits[self.split]

    def resolve_paths(self, base_dir: Path) -> "EvaluateConfig":
        """A copy with every relative path made relative to ``base_dir``."""
        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base_dir / p)

        return self.model_copy(update={
            "systems": [s.model_copy(update={"path": fix(s.path)}) for s in self.systems],
            "truth": None if self.truth is None else fix(self.truth),
            "cases": [fix(c) for c in self.cases],
        })


def config_from_mapping(section: dict, *, source: str = "evaluate") -> EvaluateConfig:
    """Parse the ``evaluate`` mapping; pydantic errors become :class:`EvaluateConfigError`
    naming the key."""
    from pydantic import ValidationError

    if not isinstance(section, dict):
        raise EvaluateConfigError(f"{source}: expected a mapping, got {type(section).__name__}")
    try:
        return EvaluateConfig.model_validate(section)
    except ValidationError as e:
        raise EvaluateConfigError(format_validation_error(e, prefix=source)) from None
