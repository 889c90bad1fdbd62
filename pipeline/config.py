"""Typed configuration of the pipeline (the ``pipeline`` section of ``enspp.yaml``).

Conventions said once:

* lead times are given in whole hours; members are numbered from 0 with the control as
  member 0 (so the paper's "members 1..5 of 10" are the perturbed members 1..5 here);
* split periods are inclusive date ranges (``{start: 1999-01-01, end: 2013-12-31}``) or
  inclusive year ranges (``[1999, 2013]``);
* ``nan_policy``: ``error`` (default) raises on a NaN in an input field, naming the variable
  and the init time; ``mask`` replaces input NaNs by the training mean of the channel at that
  grid point (a normalised value of 0) and sets the target to NaN at those grid points, so
  the loss ignores them.  NaNs in targets (analyses) are always passed on as NaN.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.yaml_file import read_yaml_mapping

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class PipelineConfigError(EnsppError):
    """The pipeline configuration is invalid; the message names the bad key."""


class StoresConfig(BaseModel):
    """Where the data come from (paths relative to the working directory or absolute)."""

    model_config = _FROZEN
    forecast: Path | None = None
    analysis: Path | None = None
    #: NetCDF/Zarr with ``lsm`` and ``orog`` on the forecast grid; zeros are used when absent
    static: Path | None = None
    #: statistics file (NetCDF); computed and written there when missing
    statistics: Path | None = None
    #: a deterministic forecast (a one-member forecast store) for ``features.hres``
    deterministic: Path | None = None


#: the static features every sample can carry (``batch["static"]``, scaled to O(1))
STATIC_FEATURES: tuple[str, ...] = ("lsm", "orog", "sin_lat", "cos_lat", "sin_lon", "cos_lon",
                                    "sin_doy", "cos_doy")


class PastErrorConfig(BaseModel):
    """Causal features of the recent errors at each station (point data only): per forecast,
    from the earlier forecasts whose verifying observation is valid at or before its init
    time, the latest and second-latest error of the members' mean (``err_lag1``,
    ``err_lag2``), the latest observation (``obs_init``) and the exponentially weighted mean
    error (``err_ewm``); with ``spread`` also the weighted mean error magnitude
    (``err_ewm_abs``).  Scaled by training-period statistics (``pipeline.station_features``)."""

    model_config = _FROZEN
    halflife_days: float = Field(5.0, gt=0)
    #: a latest error or observation older than this (a gap in the record) counts as unknown (0)
    max_age_days: float = Field(3.0, gt=0)
    spread: bool = False


class FeaturesConfig(BaseModel):
    """Which fields become input channels, targets and static features."""

    model_config = _FROZEN
    #: per-member input variables, addressed as ``z500``, ``t850``, ``t2m``
    variables: tuple[str, ...] = ("z500", "t850", "t2m")
    #: analysis variables predicted at the target lead time
    targets: tuple[str, ...] = ("t2m",)
    #: the lead time (hours) of the forecast being post-processed (the paper: 48 h)
    target_lead_time: int = 48
    #: several lead times (hours) post-processed by one model, trained on all of them (each
    #: sample is one init time at one of these leads; the model sees every lead's inputs and
    #: which lead it forecasts); replaces ``target_lead_time`` when set
    target_lead_times: tuple[int, ...] = ()
    #: further input lead times (hours) besides the target lead, e.g. ``[0, 24]``
    input_lead_times: tuple[int, ...] = ()
    #: static features, in this order (of :data:`STATIC_FEATURES`)
    static: tuple[str, ...] = STATIC_FEATURES
    #: station data: causal past-error features, appended to the static features
    past_error: PastErrorConfig | None = None
    #: station data: the deterministic forecast's departure from the members' mean
    #: (``hres_dev``, needs ``stores.deterministic``), appended to the static features
    hres: bool = False

    @field_validator("static")
    @classmethod
    def _static(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in v if n not in STATIC_FEATURES]
        if unknown:
            raise ValueError(f"unknown static features {unknown} (known: {list(STATIC_FEATURES)})")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate static features in {list(v)}")
        return v

    @field_validator("variables", "targets")
    @classmethod
    def _non_empty_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("must name at least one variable")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate names in {list(v)}")
        return v

    @field_validator("target_lead_time")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"lead time must be >= 0 hours, got {v}")
        return v

    @field_validator("input_lead_times", "target_lead_times")
    @classmethod
    def _leads(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 0 for h in v):
            raise ValueError(f"lead times must be >= 0 hours, got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate lead times in {list(v)}")
        return v

    @model_validator(mode="after")
    def _targets_are_inputs(self) -> FeaturesConfig:
        missing = [t for t in self.targets if t not in self.variables]
        if missing:
            raise ValueError(f"targets {missing} must also be input variables (features.variables "
                             f"= {list(self.variables)}) so a model sees their raw ensemble")
        return self

    @model_validator(mode="after")
    def _station_features(self) -> FeaturesConfig:
        if (self.past_error is not None or self.hres) and len(self.targets) != 1:
            raise ValueError(f"past_error and hres features need exactly one target, got "
                             f"{list(self.targets)}")
        if (self.past_error is not None or self.hres) and len(self.target_leads) != 1:
            raise ValueError(f"past_error and hres features need one target lead time, got "
                             f"target_lead_times {list(self.target_lead_times)}")
        return self

    @model_validator(mode="after")
    def _one_target_lead_setting(self) -> FeaturesConfig:
        if (self.target_lead_times and "target_lead_time" in self.model_fields_set
                and self.target_lead_time not in self.target_lead_times):
            raise ValueError(f"target_lead_time {self.target_lead_time} is not in target_lead_times "
                             f"{list(self.target_lead_times)}: set one of them")
        return self

    @property
    def target_leads(self) -> tuple[int, ...]:
        """The lead times (hours) the model post-processes, increasing: ``target_lead_times``,
        else ``(target_lead_time,)``."""
        return tuple(sorted(self.target_lead_times)) or (self.target_lead_time,)

    @property
    def lead_times(self) -> tuple[int, ...]:
        """All input lead times (hours), increasing, the target leads included."""
        return tuple(sorted({*self.input_lead_times, *self.target_leads}))


class MembersConfig(BaseModel):
    """Which K of the N members a sample carries (0-based numbering, control = member 0)."""

    model_config = _FROZEN
    k: int = 5
    #: ``first``: perturbed members 1..K (the paper); ``random``: a fresh draw of K perturbed
    #: members per sample (seeded); ``explicit``: the list in ``explicit``; ``all``: every member
    strategy: Literal["first", "random", "explicit", "all"] = "first"
    explicit: tuple[int, ...] | None = None
    #: ``random``: training samples carry K perturbed members drawn afresh for every sample
    #: and epoch (seeded), while validation, test, predict and evaluate keep ``strategy``: a
    #: network learns from the sampling noise of any K of the N members instead of one fixed
    #: K (the archive holds all N; operations run K). ``fixed``: training uses ``strategy``.
    #: Past-error and HRES features stay those of the ``strategy`` members in every split.
    train_draw: Literal["fixed", "random"] = "fixed"

    @field_validator("k")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"k must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _explicit(self) -> MembersConfig:
        if self.strategy == "explicit":
            if not self.explicit:
                raise ValueError("strategy 'explicit' needs a list in members.explicit "
                                 "(0-based member numbers, control = 0)")
            if len(set(self.explicit)) != len(self.explicit):
                raise ValueError(f"members.explicit has duplicates: {list(self.explicit)}")
            if any(m < 0 for m in self.explicit):
                raise ValueError(f"members.explicit holds negative numbers {list(self.explicit)}: "
                                 "members are 0-based, the control is member 0")
            if "k" in self.model_fields_set and self.k != len(self.explicit):
                raise ValueError(f"members.k = {self.k} disagrees with the {len(self.explicit)} "
                                 "members of members.explicit")
        elif self.explicit is not None:
            raise ValueError(f"members.explicit is only used with strategy 'explicit', "
                             f"not {self.strategy!r}")
        if self.train_draw == "random" and self.strategy in ("random", "all"):
            raise ValueError(f"members.train_draw 'random' draws K members for training while "
                             f"the other splits keep members.strategy; with strategy "
                             f"{self.strategy!r} it has nothing to change")
        return self

    def training(self) -> MembersConfig:
        """The members of training samples: K random perturbed members with ``train_draw:
        random``, else this config."""
        if self.train_draw != "random":
            return self
        return MembersConfig(k=self.n_chosen or self.k, strategy="random")

    @property
    def n_chosen(self) -> int | None:
        """K, or None for ``all`` (known only from the store)."""
        if self.strategy == "explicit":
            return len(self.explicit or ())
        return None if self.strategy == "all" else self.k


class Period(BaseModel):
    """An inclusive date range."""

    model_config = _FROZEN
    start: dt.date
    end: dt.date

    @model_validator(mode="before")
    @classmethod
    def _from_years(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if len(v) != 2 or not all(isinstance(y, int) for y in v):
                raise ValueError(f"a period is [first_year, last_year] or {{start, end}}, got {v!r}")
            return {"start": dt.date(v[0], 1, 1), "end": dt.date(v[1], 12, 31)}
        if isinstance(v, int):
            return {"start": dt.date(v, 1, 1), "end": dt.date(v, 12, 31)}
        return v

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


class SplitConfig(BaseModel):
    """Train / validation / test periods by date.

    When no period is given the split follows the paper: the init times are ordered in time
    and the earliest ``fractions[0]`` go to training, then validation, then test (whole years
    when the data span at least three years).  ``gap_days`` further drops samples whose init
    time lies within that many days after the end of an earlier split; a sample belongs to a
    split only when all its valid times fall in the split's period, so no valid time of one
    split falls in another.
    """

    model_config = _FROZEN
    train: Period | None = None
    val: Period | None = None
    test: Period | None = None
    fractions: tuple[float, float, float] = (15 / 19, 2 / 19, 2 / 19)
    gap_days: int = 0

    @field_validator("gap_days")
    @classmethod
    def _gap(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"gap_days must be >= 0, got {v}")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1) > 1e-6 or v[0] <= 0:
            raise ValueError(f"fractions must be >= 0, sum to 1 and give training a share, got {v}")
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> SplitConfig:
        given = {k: p for k, p in (("train", self.train), ("val", self.val), ("test", self.test))
                 if p is not None}
        if given and "train" not in given:
            raise ValueError("split.train is required when any split period is given")
        names = list(given)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pa, pb = given[a], given[b]
                if pa.start <= pb.end and pb.start <= pa.end:
                    raise ValueError(f"split.{a} ({pa}) overlaps split.{b} ({pb})")
        return self

    @property
    def explicit(self) -> bool:
        return self.train is not None


class BatchesConfig(BaseModel):
    """How samples are cut and batched."""

    model_config = _FROZEN
    #: square training patch (grid points); None trains on whole fields
    patch_size: int | None = None
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0
    #: training samples drawn per epoch (None: one patch per training sample)
    samples_per_epoch: int | None = None
    #: inference tiles (None: whole fields) and their overlap, in grid points
    tile_size: int | None = None
    tile_overlap: int = 0
    #: MiB per process for whole input blocks and target fields kept in memory once read
    #: (each later epoch then reads no store); 0 reads every sample from the stores, so the
    #: memory of an epoch does not grow with the store
    cache_mb: float = 0.0
    #: threads decoding chunks in each reading process (the main process with
    #: ``num_workers: 0``, else each worker); None: the CPU cores this process may use,
    #: shared among the workers (at most 8 per process)
    read_threads: int | None = None
    #: batches each worker prepares ahead of the training step
    prefetch_factor: int = 2
    #: how DataLoader workers start: None is ``fork`` where the platform has it (Linux:
    #: instant, nothing imported again, works in scripts without a ``__main__`` guard, in
    #: notebooks and from ``python -``), else ``spawn``; ``forkserver``/``spawn`` import the
    #: reading code afresh in each worker and need the ``__main__`` guard
    start_method: Literal["fork", "forkserver", "spawn"] | None = None

    @field_validator("read_threads", "prefetch_factor")
    @classmethod
    def _at_least_one(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v
    #: read every sample of a split once into memory as tensors (small data: stations, small
    #: grids); a ``batch_size`` at least the split's size then makes one full batch per epoch
    #: (full-batch fitting).  Draws are fixed, so it excludes patches and random members.
    preload: bool = False
    #: at most this many training init times, evenly spread over the training split (every
    #: season kept), feed an exact EMOS fit (an EMOS model, a network's anchor); None: every
    #: one.  A local EMOS fits 4 (8 seasonal) parameters per point, which a few thousand cases
    #: determine nearly as well as decades do (synthetic world: from 150 of 624 init times
    #: CRPS +0.5 %, from 50 +2.5 %), while its cases take 32 bytes each in memory or on disk
    #: (decades at 0.25 deg: hundreds of GB); the networks still train on every init time
    exact_fit_init_times: int | None = None

    @field_validator("patch_size", "tile_size", "samples_per_epoch", "exact_fit_init_times")
    @classmethod
    def _positive_or_none(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1 or null, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("num_workers", "tile_overlap", "cache_mb")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _overlap(self) -> BatchesConfig:
        if self.tile_size is not None and self.tile_overlap * 2 >= self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be less than half of "
                             f"tile_size ({self.tile_size})")
        return self


class PipelineConfig(BaseModel):
    """Everything the pipeline needs; frozen, unknown keys are errors that name the key."""

    model_config = _FROZEN
    stores: StoresConfig = Field(default_factory=StoresConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    members: MembersConfig = Field(default_factory=MembersConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    nan_policy: Literal["error", "mask"] = "error"
    #: None: forecast and analysis must share a grid; ``nearest``/``linear``: interpolate the
    #: analysis (and the static fields) onto the forecast grid
    regrid: Literal["nearest", "linear"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.batches.preload and (self.batches.patch_size is not None
                                     or self.members.strategy == "random"):
            raise ValueError("batches.preload reads each sample once, so it cannot draw fresh "
                             "patches (batches.patch_size) or members (members.strategy: random; "
                             "members.train_draw: random can: the preloaded training samples "
                             "hold every perturbed member)")
        f = self.features
        if (f.past_error is not None or f.hres) and self.members.strategy == "random":
            raise ValueError("features.past_error / features.hres use the errors of the members "
                             "in use, which members.strategy 'random' changes per sample")
        if f.hres and self.stores.deterministic is None:
            raise ValueError("features.hres needs stores.deterministic (a one-member forecast store)")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, source: str = "pipeline") -> PipelineConfig:
        """Validate a plain dict; errors become :class:`PipelineConfigError` naming the key."""
        try:
            return cls.model_validate(data or {})
        except ValidationError as e:
            raise PipelineConfigError(format_validation_error(e, prefix=source)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = "pipeline") -> PipelineConfig:
        """Read ``path``; with ``section`` set and present, only that top-level key is used."""
        path = Path(path)
        raw = read_yaml_mapping(path, what="pipeline config", error=PipelineConfigError)
        if section is not None and section in raw:
            raw = raw[section]
            where = f"{path}: {section}"
        else:
            where = str(path)
        return cls.from_dict(raw, source=where)


