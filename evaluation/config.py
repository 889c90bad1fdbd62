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
      period: {start: 2023-01-01, end: 2023-12-31}   # or split: test, or recent_days: 30
      regions: [global, tropics, extratropics,      # names of evaluation.weights.REGIONS
                {name: alps, lat_min: 44, lat_max: 48.5, lon_min: 5, lon_max: 17}]
      lead_times: [24, 48]          # hours; all leads when omitted
      metrics: [crps, spread_skill, rank_histogram, rmse, mae, bias, twcrps, eecrps]
      bootstrap: {block_length: 5, n: 1000, ci_level: 0.9}
      twcrps: {percentiles: [0.9, 0.95], tail: upper}
      eecrps: {climatology: {start: 2018-01-01, end: 2022-12-31}}
      cases: [evaluation/catalogue/cases.yaml, synth/events.yaml]
      land_sea_mask: synth/static.nc   # coastlines on the maps
      reference: raw_full

Paths are relative to the directory the config is read from (``base_dir`` of
:func:`resolve_paths`), or absolute.

**Missing data** (``missing``): ``"error"`` (default) refuses an evaluation where data are
missing -- an init time of the period that one system lacks while another has it, a valid time
the truth lacks, a missing value (NaN: a field absent from a store, a hole left by a deleted
chunk) in the truth or a system -- naming the system, the variable and the init time.
``"skip"`` scores without them: such init times are left out for every system (paired
comparison), a missing value weighs zero in both the numerator and the denominator of the
weighted mean, and what was skipped is reported (``EvaluationResult.notes``, printed by
``enspp evaluate``, in ``scores.json`` and on the dashboard).  ``nan_policy`` is the former
name of the key.

**Regions** without a grid point (``tropics`` on a European grid) are skipped with a note in
the result (``EvaluationResult.notes``, printed by ``enspp evaluate``); an evaluation whose
regions all miss the grid is an error.

**Metrics**: CRPS (the estimator named by ``crps_estimator`` for ensembles, closed form for
distributions), RMSE/MAE/bias of the mean and the spread/skill ratio are always computed;
``rank_histogram`` (rank / PIT histograms), ``twcrps`` (threshold-weighted CRPS) and
``eecrps`` (extreme-event weighted CRPS) are computed when listed.  ``eecrps`` weights every
system's CRPS with ``|EFI|`` of the reference ensemble against its own model climate (the
quantiles of the reference's members over ``eecrps.climatology``, by default the evaluated
init times): the weight depends neither on the observation nor on the system scored, so the
score stays proper and the systems are compared on the same events.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from enspp.data.errors import EnsppError, format_validation_error
from enspp.evaluation.weights import REGIONS, Region

#: systems that are not trained models (the models' names come from ``models.base.MODELS``)
DATA_SYSTEMS = ("raw_full", "raw_subset", "oracle", "custom")
SystemType = Literal["ensemble", "gaussian", "censored_logistic"]

#: Metrics an evaluation computes (``crps``, ``spread_skill``, ``rmse``, ``mae``, ``bias``
#: always; ``rank_histogram`` -- rank or PIT --, ``twcrps`` and ``eecrps`` when listed).
KNOWN_METRICS = ("crps", "twcrps", "eecrps", "spread_skill", "rank_histogram", "rmse", "mae",
                 "bias")
#: other names of the same metrics (those of the metric registry, ``evaluation.METRICS``)
METRIC_ALIASES = {"crps_fair": "crps", "crps_standard": "crps", "crps_gaussian": "crps",
                  "twcrps_fair": "twcrps", "twcrps_standard": "twcrps",
                  "twcrps_gaussian": "twcrps", "eecrps_fair": "eecrps",
                  "spread_skill_ratio": "spread_skill", "pit_histogram": "rank_histogram"}


class EvaluateConfigError(EnsppError):
    """The ``evaluate`` section is inconsistent; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemConfig(_Frozen):
    """One forecast system to score."""

    #: ``raw_full``, ``raw_subset``, ``oracle``, ``custom`` or a model's system name
    #: (``emos``, ``mlp``, ``unet``, ``mixed``: ``models.base.MODEL_SYSTEMS``)
    name: str
    path: Path
    type: SystemType = "ensemble"
    #: display name and key in the results; defaults to ``name`` (required for ``custom``)
    label: str | None = None
    #: variables this system provides; defaults to the evaluation's ``variables``
    variables: list[str] | None = None
    #: member selection: K (the first K perturbed members, 1..K: the control, member 0, is
    #: not one of them; the pipeline's ``first``) or an explicit list of member numbers
    members: int | list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "SystemConfig":
        from enspp.models.base import MODEL_SYSTEMS

        if self.name not in (*DATA_SYSTEMS, *MODEL_SYSTEMS):
            raise EvaluateConfigError(f"evaluate.systems: unknown system {self.name!r} (known: "
                                      f"{', '.join((*DATA_SYSTEMS, *MODEL_SYSTEMS))})")
        if self.name == "custom" and not self.label:
            raise EvaluateConfigError("a system named 'custom' needs a 'label'")
        if self.name == "raw_subset" and self.members is None:
            raise EvaluateConfigError("'raw_subset' needs 'members' (K, or a list of member "
                                      "numbers)")
        if isinstance(self.members, int) and self.members < 1:
            raise EvaluateConfigError(f"system {self.key!r}: members: K must be >= 1, got "
                                      f"{self.members}")
        if self.members is not None and self.type != "ensemble":
            raise EvaluateConfigError(f"system {self.key!r}: members: a member selection needs "
                                      f"type 'ensemble', not {self.type!r}")
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
            raise EvaluateConfigError(f"end {self.end} is before start {self.start}")
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
            raise EvaluateConfigError(f"must lie in (0, 1), got {bad}")
        return v


class EecrpsConfig(_Frozen):
    """Extreme-event weighted CRPS: the model climate of the reference ensemble."""

    #: init dates whose forecasts make the model climate; the evaluated init times if omitted
    climatology: Period | None = None
    #: probability levels of the model climate: 1/(n+1) .. n/(n+1)
    n_quantiles: int = Field(99, ge=9, le=999)
    #: most init times read for the model climate (evenly spaced): its memory is
    #: init times x members x grid x 4 bytes per lead time
    max_init_times: int = Field(100, ge=10)


class EvaluateConfig(_Frozen):
    """Everything ``enspp evaluate`` needs."""

    title: str = "enspp evaluation"
    systems: list[SystemConfig]
    truth: Path | None = None
    variables: list[str] = ["t2m"]
    period: Period | None = None
    #: named periods a ``split`` refers to (filled from the pipeline section by the CLI)
    splits: dict[str, Period] = {}
    split: str | None = None
    #: the last ``recent_days`` days of init dates, ending at the latest init time whose
    #: valid times the truth holds (a nightly report of recent skill: the period moves with
    #: the data); exclusive with ``period`` and ``split``
    recent_days: int | None = Field(None, ge=1)
    regions: list[str | Region] = ["global"]
    lead_times: list[int] | None = None
    metrics: list[str] = ["crps", "spread_skill", "rank_histogram", "rmse", "mae", "bias"]
    crps_estimator: Literal["fair", "standard"] = "fair"
    bootstrap: BootstrapConfig = BootstrapConfig()
    twcrps: TwCrpsConfig = TwCrpsConfig()
    eecrps: EecrpsConfig = EecrpsConfig()
    cases: list[Path] = []
    reference: str = "raw_full"
    #: missing init times, valid times or values: refuse ("error") or skip and report them
    missing: Literal["error", "skip"] = "error"
    #: init times per chunk: memory is bounded by two chunks (one is read ahead while the
    #: other is scored) whatever the period's length
    chunk_size: int = Field(8, ge=1)
    #: lead time (hours) of the maps; the first evaluated lead when omitted
    map_lead_time: int | None = None
    #: NetCDF or Zarr file with the land-sea mask ``lsm`` (land fraction 0..1) on the
    #: evaluation grid, e.g. the pipeline's static file: maps draw its coastline
    land_sea_mask: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _estimator_of_metric_names(cls, data: object) -> object:
        """A registry name with an estimator (``crps_standard``) sets ``crps_estimator`` (or
        must agree with it)."""
        if isinstance(data, dict) and "nan_policy" in data:  # the key's former name
            if "missing" in data:
                raise EvaluateConfigError("give 'missing' (nan_policy is its former name), "
                                          "not both")
            data = {**{k: v for k, v in data.items() if k != "nan_policy"},
                    "missing": data["nan_policy"]}
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
            return data
        asked = {m.rsplit("_", 1)[1] for m in data["metrics"] if isinstance(m, str)
                 and m.endswith(("_fair", "_standard"))}
        if not asked:
            return data
        given = data.get("crps_estimator")
        if len(asked) > 1 or (given is not None and given not in asked):
            raise EvaluateConfigError(
                f"metrics: {sorted(asked)} and crps_estimator {given!r} ask for different "
                "ensemble CRPS estimators; one evaluation uses one")
        return {**data, "crps_estimator": asked.pop()}

    @field_validator("systems")
    @classmethod
    def _systems(cls, v: list[SystemConfig]) -> list[SystemConfig]:
        if not v:
            raise EvaluateConfigError("at least one system is needed")
        keys = [s.key for s in v]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise EvaluateConfigError(f"duplicate system names {dup}; give each a distinct 'label'")
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("period") is not None:
            raise EvaluateConfigError("give either 'period' or 'split', not both")
        splits = info.data.get("splits") or {}
        if v is not None and splits and v not in splits:
            raise EvaluateConfigError(f"{v!r} is not a known split ({sorted(splits)})")
        return v

    @field_validator("recent_days")
    @classmethod
    def _recent(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and (info.data.get("period") is not None
                              or info.data.get("split") is not None):
            raise EvaluateConfigError("give one of 'period', 'split' and 'recent_days'")
        return v

    @field_validator("regions", mode="before")
    @classmethod
    def _region_objects(cls, v: object) -> object:
        if not isinstance(v, list):
            return v
        out: list[object] = []
        for i, r in enumerate(v):
            if isinstance(r, str) and r not in REGIONS:
                raise EvaluateConfigError(
                    f"unknown region {r!r} (known: {', '.join(REGIONS)}; or a box "
                    "{name, lat_min, lat_max, lon_min, lon_max})")
            if isinstance(r, dict):
                from pydantic import ValidationError

                try:
                    r = Region.model_validate(r)
                except ValidationError as e:
                    where = f"region {r.get('name', i)!r}"
                    raise EvaluateConfigError("; ".join(
                        str(err["msg"]).removeprefix("Value error, ") if not err["loc"] else
                        f"{where}: {'.'.join(map(str, err['loc']))}: "
                        + ("unknown key" if err["type"] == "extra_forbidden" else err["msg"])
                        for err in e.errors())) from None
            out.append(r)
        return out

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str | Region]) -> list[str | Region]:
        if not v:
            raise EvaluateConfigError("at least one region is needed")
        names = [r.name if isinstance(r, Region) else r for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise EvaluateConfigError(f"duplicate region names {dup}")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        out = [METRIC_ALIASES.get(m, m) for m in v]
        unknown = [m for m in out if m not in KNOWN_METRICS]
        if unknown:
            raise EvaluateConfigError(f"unknown {unknown} (known: "
                                      f"{', '.join(KNOWN_METRICS + tuple(METRIC_ALIASES))})")
        return list(dict.fromkeys(out))

    @field_validator("lead_times")
    @classmethod
    def _leads(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(h < 0 for h in v):
            raise EvaluateConfigError(f"hours must be >= 0, got {v}")
        return v

    @property
    def region_list(self) -> list[Region]:
        """The regions as boxes (names looked up in :data:`~evaluation.weights.REGIONS`)."""
        return [r if isinstance(r, Region) else REGIONS[r] for r in self.regions]

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
            "land_sea_mask": None if self.land_sea_mask is None else fix(self.land_sea_mask),
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
