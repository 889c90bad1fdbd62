"""One configuration file (``enspp.yaml``) for every command and flow.

```yaml
data:     {workdir: ., incoming: {forecast: ["incoming/fc/*.grib"], analysis: ["incoming/an"]}}
pipeline: {...}        # pipeline.config.PipelineConfig
model:    {...}        # models.config.ModelConfig
train:    {...}        # models.config.TrainConfig
predict:  {...}        # models.config.PredictConfig
evaluate: {...}        # evaluation.config.EvaluateConfig (optional)
deploy:   {task_runner: dask, dask_address: "tcp://127.0.0.1:8786"}
```

Each section is parsed into its package's frozen pydantic model and each package receives
only its section.  Relative paths: ``data.workdir`` is relative to the config file's
directory (default: that directory); every other relative path (stores, statistics, static
fields, incoming files, evaluate systems, truth and cases) is made absolute against the work
directory when the file is read, so every command reads the same files wherever it runs.  Errors read ``<file>: <section>.<key>: <problem>``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.station import StationOptions
from enspp.data.synth import SynthConfig
from enspp.data.yaml_file import read_yaml_mapping
from enspp.evaluation.config import EvaluateConfig
from enspp.models.config import ModelConfig, PredictConfig, TrainConfig
from enspp.pipeline.config import PipelineConfig

__all__ = ["ConfigError", "DataConfig", "DeployConfig", "EnsppConfig", "IncomingConfig",
           "SchedulesConfig", "Workdir", "default_demo_config", "load_config", "read_config"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
SECTIONS = ("data", "pipeline", "model", "train", "predict", "evaluate", "deploy")


class ConfigError(EnsppError):
    """A configuration file is malformed; the message names the file, the section and the key."""


class IncomingConfig(BaseModel):
    """Files the ``ingest`` flow picks up: files, directories or glob patterns per store.
    A station file listed under several stores gives each its part: the ensemble
    (``forecast``), the observations (``analysis``), the deterministic forecast
    (``deterministic``, the store ``pipeline.stores.deterministic``)."""

    model_config = _FROZEN
    forecast: tuple[str, ...] = ()
    analysis: tuple[str, ...] = ()
    deterministic: tuple[str, ...] = ()


class GridStores(BaseModel):
    """The gridded stores ``data.points`` samples (relative to the work directory)."""

    model_config = _FROZEN
    forecast: Path
    analysis: Path
    #: static fields (NetCDF) sampled beside them, for ``pipeline.stores.static``
    static: Path | None = None


class PointsConfig(BaseModel):
    """Station stores sampled from a grid (``data.points``): ``data.incoming`` is ingested into
    the ``grid`` stores, and ``n`` distinct grid points (drawn with ``seed``) of those become
    the station stores ``pipeline.stores.forecast`` / ``analysis`` (and ``static``), written
    once (:mod:`data.points`): a pooled-station study on gridded data."""

    model_config = _FROZEN
    n: int = Field(ge=1)
    seed: int = 0
    grid: GridStores


class DataConfig(BaseModel):
    """Where a run lives and where its data come from."""

    model_config = _FROZEN
    #: the work directory (ARCHITECTURE.md, "Work directory"); relative to the config file
    workdir: Path = Path(".")
    #: the synthetic world (``enspp demo`` and the ``demo`` flow); None: real data only
    synth: SynthConfig | None = None
    incoming: IncomingConfig = Field(default_factory=IncomingConfig)
    #: rebuildable files (relative to the work directory)
    cache: Path = Path("cache")
    #: files per ingest task (1: one task per file; larger batches cost less orchestration)
    files_per_task: int = Field(1, ge=1)
    #: accept NaN (missing) points in ingested fields
    allow_nan: bool = False
    #: seconds an ingest waits for another one holding the store's lock
    lock_timeout: float = Field(300.0, ge=0)
    #: plausible ranges per variable, overriding the defaults of ``data.field_checks``
    #: (``t2m: [200, 330]`` in the variable's units; ``null`` for an open end; a variable set to
    #: ``null`` is not checked); values outside refuse the file at ingest
    bounds: dict[str, tuple[float | None, float | None] | None] = Field(default_factory=dict)
    #: accept inputs from several originating centres (GRIB ``centre``) in one store
    allow_mixed_centres: bool = False
    #: how station files (NetCDF, CSV) map onto the data model (``data.station.StationOptions``)
    station: StationOptions | None = None
    #: station stores sampled from gridded ones (:class:`PointsConfig`); None: no sampling
    points: PointsConfig | None = None

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, v: dict[str, tuple[float | None, float | None] | None]
                ) -> dict[str, tuple[float | None, float | None] | None]:
        for name, pair in v.items():
            if pair is not None and None not in pair and pair[0] >= pair[1]:  # type: ignore[operator]
                raise ValueError(f"bounds of {name!r}: the lower bound {pair[0]} is not below "
                                 f"the upper bound {pair[1]}")
        return v


def _check_cron(expr: str) -> str:
    from cronsim import CronSim, CronSimError

    try:
        CronSim(expr, dt.datetime(2024, 1, 1))
    except (CronSimError, ValueError) as e:
        raise ValueError(f"{expr!r} is not a cron expression ({e})") from None
    return expr


class SchedulesConfig(BaseModel):
    """Cron schedules of the four deployments (``null`` leaves a deployment unscheduled)."""

    model_config = _FROZEN
    timezone: str = "UTC"
    #: hourly, a few minutes past the hour
    ingest: str | None = "5 * * * *"
    #: the 00 and 12 UTC runs, after their data arrived (about 7 h after the init time)
    predict: str | None = "30 7,19 * * *"
    #: nightly
    evaluate: str | None = "0 2 * * *"
    #: weekly, on Sunday
    train: str | None = "0 3 * * 0"

    @field_validator("ingest", "predict", "evaluate", "train")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else _check_cron(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class DeployConfig(BaseModel):
    """How flows run their tasks and when deployments run.

    ``task_runner: thread`` (default) runs tasks in a local thread pool; ``dask`` runs them
    on the ``dask.distributed`` cluster at ``dask_address`` (a temporary local cluster when
    the address is null).
    """

    model_config = _FROZEN
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    #: threads of the thread runner
    max_workers: int = Field(2, ge=1)
    schedules: SchedulesConfig = Field(default_factory=SchedulesConfig)

    @model_validator(mode="after")
    def _address(self) -> DeployConfig:
        if self.dask_address is not None and self.task_runner != "dask":
            raise ValueError("dask_address is only used with task_runner: dask")
        return self


class EnsppConfig(BaseModel):
    """The whole ``enspp.yaml``; frozen, unknown sections and keys are errors."""

    model_config = _FROZEN
    data: DataConfig = Field(default_factory=DataConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    evaluate: EvaluateConfig | None = None
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    @property
    def workdir(self) -> Workdir:
        return Workdir(Path(self.data.workdir))

    def with_workdir(self, workdir: str | Path) -> EnsppConfig:
        """A copy whose work directory is ``workdir`` (absolute)."""
        data = self.data.model_copy(update={"workdir": Path(workdir).resolve()})
        return self.model_copy(update={"data": data})


@dataclass(frozen=True)
class Workdir:
    """The layout of a work directory (ARCHITECTURE.md, "Work directory")."""

    root: Path

    def path(self, p: str | Path) -> Path:
        """``p`` made absolute against the work directory."""
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def stores(self) -> Path:
        return self.root / "stores"

    @property
    def forecast(self) -> Path:
        return self.stores / "forecast.zarr"

    @property
    def analysis(self) -> Path:
        return self.stores / "analysis.zarr"

    @property
    def products(self) -> Path:
        return self.stores / "products"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def cache(self) -> Path:
        return self.root / "cache"


def _format(e: ValidationError, source: str) -> str:
    def unknown(loc: tuple[str, ...]) -> str:
        return "unknown section (known: " + ", ".join(SECTIONS) + ")" if len(loc) == 1 else "unknown key"

    return format_validation_error(e, prefix=source, sep=": ", unknown_key=unknown)


def config_from_mapping(raw: dict[str, Any] | None, *, source: str = "config",
                        base_dir: Path | None = None) -> EnsppConfig:
    """Validate a mapping of sections; ``base_dir`` anchors a relative ``data.workdir``."""
    raw = dict(raw or {})
    for name, section in raw.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{source}: {name}: must be a mapping, got {type(section).__name__}")
    raw = {k: ({} if v is None else v) for k, v in raw.items()}
    try:
        config = EnsppConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
    if base_dir is not None and not config.data.workdir.is_absolute():
        config = config.with_workdir(base_dir / config.data.workdir)
    return _with_splits(resolve_paths(config))


def resolve_paths(config: EnsppConfig) -> EnsppConfig:
    """Every relative path of the config (stores, statistics, static fields, incoming files,
    evaluate systems, truth and cases) made absolute against the work directory, so every
    command and flow reads the same files whatever its working directory.  A config whose
    work directory is itself relative (built from a mapping without a file) is returned as
    it is."""
    root = config.data.workdir
    if not root.is_absolute():
        return config

    def fix(p: Path | None) -> Path | None:
        return p if p is None or Path(p).is_absolute() else root / p

    def fix_text(p: str) -> str:
        return p if Path(p).is_absolute() else str(root / p)

    st = config.pipeline.stores
    stores = st.model_copy(update={k: fix(getattr(st, k)) for k in type(st).model_fields})
    inc = config.data.incoming
    incoming = inc.model_copy(update={"forecast": tuple(map(fix_text, inc.forecast)),
                                      "analysis": tuple(map(fix_text, inc.analysis)),
                                      "deterministic": tuple(map(fix_text, inc.deterministic))})
    data_update: dict[str, Any] = {"incoming": incoming}
    if config.data.points is not None:
        g = config.data.points.grid
        grid = g.model_copy(update={k: fix(getattr(g, k)) for k in type(g).model_fields})
        data_update["points"] = config.data.points.model_copy(update={"grid": grid})
    update: dict[str, Any] = {
        "pipeline": config.pipeline.model_copy(update={"stores": stores}),
        "data": config.data.model_copy(update=data_update),
    }
    if config.evaluate is not None:
        update["evaluate"] = config.evaluate.resolve_paths(root)
    return config.model_copy(update=update)


def ingest_targets(config: EnsppConfig) -> dict[str, Path | None]:
    """The store each part of ``data.incoming`` goes into: the pipeline's stores, or with
    ``data.points`` the grid stores sampled afterwards (:func:`sample_points`)."""
    st, wd = config.pipeline.stores, config.workdir
    if config.data.points is not None:
        g = config.data.points.grid
        return {"forecast": wd.path(g.forecast), "analysis": wd.path(g.analysis),
                "deterministic": None if st.deterministic is None else wd.path(st.deterministic)}
    return {"forecast": wd.path(st.forecast or wd.forecast), "analysis": wd.path(st.analysis or wd.analysis),
            "deterministic": None if st.deterministic is None else wd.path(st.deterministic)}


def sample_points(config: EnsppConfig) -> str | None:
    """With ``data.points``: the pipeline's station stores sampled from the grid stores (each
    written once, :func:`data.points.sample_stores`); one line saying what, else None."""
    pts = config.data.points
    if pts is None:
        return None
    from enspp.data.points import sample_stores

    st, wd = config.pipeline.stores, config.workdir
    if st.forecast is None or st.analysis is None:
        raise ConfigError("data.points: pipeline.stores.forecast and .analysis name the station "
                          "stores the points are written to")
    grid = {"forecast": wd.path(pts.grid.forecast), "analysis": wd.path(pts.grid.analysis),
            "static": None if pts.grid.static is None else wd.path(pts.grid.static)}
    out = {"forecast": wd.path(st.forecast), "analysis": wd.path(st.analysis),
           "static": None if st.static is None or pts.grid.static is None else wd.path(st.static)}
    had = {k: v is not None and v.exists() for k, v in out.items()}
    written = sample_stores(grid, out, n=pts.n, seed=pts.seed)
    new = [k for k in written if not had[k]]
    return (f"points: {pts.n} grid points (seed {pts.seed}) of {grid['forecast']} as stations in "
            f"{', '.join(str(written[k]) for k in written)}"
            + (f" ({', '.join(new)} written)" if new else " (already there)"))


def _with_splits(config: EnsppConfig) -> EnsppConfig:
    """Give ``evaluate`` the pipeline's explicit split periods so ``evaluate.split: test``
    names the same dates as training."""
    ev, split = config.evaluate, config.pipeline.split
    if ev is None or ev.splits or not split.explicit:
        return config
    from enspp.evaluation.config import Period

    splits = {k: Period(start=p.start, end=p.end)
              for k in ("train", "val", "test") if (p := getattr(split, k)) is not None}
    return config.model_copy(update={"evaluate": ev.model_copy(update={"splits": splits})})


def load_config(path: str | Path, *, workdir: str | Path | None = None) -> EnsppConfig:
    """Read ``enspp.yaml``; raises :class:`ConfigError` naming ``<file>: <section>.<key>``.

    Relative paths resolve against the work directory: ``data.workdir`` (itself relative to
    the config file's folder), the config file's folder when unset, or ``workdir`` when given
    (a command's ``--workdir``)."""
    return read_config(path, workdir=workdir)[0]


def read_config(path: str | Path, *, workdir: str | Path | None = None
                ) -> tuple[EnsppConfig, list[str]]:
    """:func:`load_config`, and the sections the file gives (in its order; the others are
    defaults), from one read of the file."""
    path = Path(path)
    raw = read_yaml_mapping(path, what="config file", error=ConfigError,
                            hint=f" of sections ({', '.join(SECTIONS)})")
    given = list(raw)
    if workdir is not None and isinstance(raw.get("data") or {}, dict):
        raw = {**raw, "data": {**(raw.get("data") or {}), "workdir": str(Path(workdir).resolve())}}
    return config_from_mapping(raw, source=str(path), base_dir=path.resolve().parent), given


def demo_synth(*, fast: bool = False) -> SynthConfig:
    """The demo's synthetic world: 6 years (5 with ``fast``) of Monday/Thursday inits,
    10 + 1 members, 32x64 grid."""
    return SynthConfig(years=(2012, 2016) if fast else (2012, 2017), grid=(32, 64),
                       n_perturbed=10, lead_times_h=(24, 48))


def default_demo_config(workdir: str | Path, *, fast: bool = False) -> EnsppConfig:
    """The configuration ``enspp demo`` runs with (no file): a small mixed model trained on
    patches of the synthetic world, K = 5 of 11 members, evaluated on the test years."""
    synth = demo_synth(fast=fast)
    first, last = synth.years
    raw: dict[str, Any] = {
        "data": {"workdir": str(Path(workdir).resolve()), "synth": synth.model_dump(mode="json"),
                 "incoming": {"forecast": ["synth/forecast"], "analysis": ["synth/analysis"]},
                 "files_per_task": 64},
        "pipeline": {
            "stores": {"forecast": "stores/forecast.zarr", "analysis": "stores/analysis.zarr",
                       "static": "synth/static.nc", "statistics": "cache/statistics.nc"},
            "features": {"variables": ["z500", "t850", "t2m"], "targets": ["t2m"],
                         "target_lead_time": 48, "input_lead_times": [24]},
            "members": {"k": 5, "strategy": "first"},
            "split": {"train": [first, last - 2], "val": [last - 1, last - 1],
                      "test": [last, last]},
            # tile_size: validation and predict see whole fields (one 32x64 tile)
            "batches": {"patch_size": 16, "batch_size": 16, "samples_per_epoch": 512,
                        "tile_size": 64, "cache_mb": 1024},  # the demo world's blocks: ~0.45 GiB
        },
        "model": {"name": "mixed", "options": {"embed_dim": 8, "encoder_hidden": [16],
                                               "width": 16, "depth": 1, "n_blocks": 1}},
        # up to 30 epochs of 512 patches, patience 5 (chosen on the validation year: 8 epochs
        # stopped while still improving, val CRPS 0.0583 against 0.0572; docs/history.md)
        "train": {"max_epochs": 4 if fast else 30, "learning_rate": 3e-3,
                  "early_stopping_patience": 5, "progress_bar": True, "run_id": None},
        "predict": {"n_members": 10},
        "evaluate": {
            "title": "enspp demo: synthetic world, test year",
            "truth": "stores/analysis.zarr",
            "systems": [],  # filled by the demo flow once the products exist
            "variables": ["t2m"], "split": "test", "regions": ["global"],
            "metrics": ["crps", "spread_skill", "rank_histogram", "rmse", "bias"],
            "bootstrap": {"n": 200}, "cases": ["synth/events.yaml"],
        },
    }
    # systems are filled in later; validate the section with a placeholder reference
    raw["evaluate"]["systems"] = [{"name": "raw_full", "path": "stores/forecast.zarr"}]
    return config_from_mapping(raw, source="default demo config")
