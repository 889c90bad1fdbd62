"""``train(...)``: fit a post-processing model with Lightning into ``WORKDIR/runs/<run-id>/``.

A run directory holds::

    runs/<run-id>/
      config.yaml                 resolved pipeline/model/train sections
      checkpoints/best.ckpt       lowest validation CRPS (never test)
      checkpoints/last.ckpt       end of the latest epoch (resume from here)
      logs/csv/version_<n>/metrics.csv   per-epoch metrics (CSV), one version per session
      logs/tensorboard/version_<n>/      the same as TensorBoard event files

Resuming from a checkpoint inside a run directory continues that run: the same directory,
epoch counter, optimizer, early-stopping and RNG states.  The checkpoint is read once, with
``weights_only=True`` (a checkpoint cannot execute code), and those bytes are checked against
the config and resumed from: the path is not opened a second time.  CPU by default; GPU and multi-GPU
DDP come from :class:`~models.config.TrainConfig`'s Trainer fields alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from enspp.data import durable, schema
from enspp.data.errors import EnsppError
from enspp.data.progress import LOGGER, summary_line
from enspp.models.checkpoint import (
    METADATA_KEY,
    CheckpointMetadata,
    CheckpointMismatchError,
    code_version,
    git_commit,
    read_checkpoint_bytes,
    read_checkpoint_file,
    spec_to_dict,
    write_checkpoint,
)
from enspp.models.config import ConfigError, ModelConfig, TrainConfig, validation_split_problem
from enspp.models.lightning_module import PostProcessingModule, monitor_name
from enspp.models.progress import TrainProgress, metric_words, train_summary

RUNS_DIR = "runs"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best"
LAST_NAME = "last"


class RunDirError(EnsppError):
    """The run directory a training would write into holds another run."""


class NoBestCheckpointError(EnsppError):
    """A fit ended without a validation score, so without a best checkpoint."""


class TrainingData(Protocol):
    """What :func:`train` reads from the pipeline's DataModule (after ``setup("fit")``)."""

    channels: tuple[str, ...]
    targets: tuple[str, ...]
    target_channels: tuple[int, ...]
    static_names: tuple[str, ...]

    def setup(self, stage: str) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    """Where a run wrote its files and how it ended.

    ``best_checkpoint`` is the model to use: the best validation epoch's, or with
    ``train.refit`` the refit one; ``best_score`` is always the validation score of the
    early-stopped fit (the refit model has seen the validation data)."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    #: the metric early stopping and the best checkpoint followed, e.g. ``val/crps_gaussian``
    monitor: str
    best_score: float
    #: the raw ensemble's validation CRPS on the same scale (``val/crps_raw_<estimator>``)
    raw_score: float | None
    #: epochs completed in the run (a resumed run counts the earlier ones too)
    epochs: int
    #: this session's metrics (a resumed run writes a new ``version_<n>``)
    metrics_csv: Path
    #: the early-stopped fit chosen on validation (``best_checkpoint`` unless refit)
    selection_checkpoint: Path | None = None
    #: per network: the epoch of its kept weights (the refit's epoch count)
    best_epochs: tuple[int, ...] = ()


def new_run_id(seed: int) -> str:
    """``YYYYmmdd-HHMMSS-s<seed>`` (UTC) — sortable and readable."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-s{seed}"


def claim_run_dir(runs: Path, run_id: str) -> Path:
    """A new, empty ``runs/<run_id>`` created for this run alone: when another run already
    holds that name (two trainings started within one second with one seed), the first free
    ``<run_id>-2``, ``<run_id>-3``, ...  Creating the directory is the claim, so two
    processes never share one."""
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = runs / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{runs}: no free run directory named {run_id}-<n>")


def run_dir_of_checkpoint(path: Path) -> Path | None:
    """The run directory holding ``path`` (``runs/<id>/checkpoints/x.ckpt``), else ``None``."""
    path = Path(path).resolve()
    if path.parent.name == CHECKPOINT_DIR and path.parent.parent.parent.name == RUNS_DIR:
        return path.parent.parent
    return None


def build_spec(data: Any, model: ModelConfig, *, n_members: int, grid_shape: tuple[int, int],
               seeds: int = 1):
    """The ``ModelSpec`` of ``model`` on the DataModule's channels and statistics."""
    from enspp.models.base import ModelSpec

    return ModelSpec(
        name=model.name, channels=tuple(data.channels), targets=tuple(data.targets),
        target_channels=tuple(int(c) for c in data.target_channels),
        static_names=tuple(data.static_names), n_members=int(n_members),
        grid_shape=tuple(int(n) for n in grid_shape), stats=data.stats.to_dict(),
        distribution=model.distribution, options=dict(model.options), seeds=int(seeds),
        target_leads=_target_leads(data))


def _target_leads(data: Any) -> tuple[int, ...]:
    """The DataModule's target leads when it serves several (a single-lead spec keeps none)."""
    leads = tuple(int(h) for h in getattr(data, "target_leads", ()) or ())
    return leads if len(leads) > 1 else ()


def build_metadata(spec: Any, *, data: Any, pipeline: Any, model: ModelConfig,
                   train: TrainConfig) -> CheckpointMetadata:
    """Everything a checkpoint carries besides the weights."""
    variables = tuple(pipeline.features.variables)
    levels = sorted({lev for v in variables
                     if (lev := schema.split_level_name(v)[1]) is not None})
    stats = spec.stats
    return CheckpointMetadata(
        spec=spec_to_dict(spec), channels=tuple(spec.channels), targets=tuple(spec.targets),
        variables=variables, levels=tuple(levels), n_members=int(spec.n_members),
        member_strategy=pipeline.members.strategy, estimator=spec.distribution,
        distribution=spec.distribution,
        latitude=_grid_coord(data, pipeline, schema.LATITUDE),
        longitude=_grid_coord(data, pipeline, schema.LONGITUDE),
        patch_shape=(None if pipeline.batches.patch_size is None
                     else (pipeline.batches.patch_size, pipeline.batches.patch_size)),
        data_version=data_version(data, pipeline),
        data_hash=_opt_str(stats.get("source_hash") if isinstance(stats, dict) else None),
        pipeline=pipeline.model_dump(mode="json"), model=model.model_dump(mode="json"),
        train=train.model_dump(mode="json"), code_version=code_version(),
        git_commit=git_commit(), created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        stations=_stations(data, pipeline), feature_scales=_feature_scales(data))


def _stations(data: Any, pipeline: Any) -> tuple[str, ...]:
    ds = _forecast_of(data, pipeline)
    if ds is None or schema.STATION not in ds.dims:
        return ()
    return tuple(str(s) for s in ds[schema.STATION].values)


def _feature_scales(data: Any) -> dict[str, Any]:
    scales = getattr(data, "feature_scales", None)
    return {} if scales is None else scales.to_dict()


def _grid_coord(data: Any, pipeline: Any, name: str) -> tuple[float, ...]:
    """The training grid's ``latitude``/``longitude`` (stations: theirs, when known): the
    DataModule's own (toy modules), else its opened forecast store (``dm.forecast``), else the
    configured store."""
    values = getattr(data, name, None)
    if values is None:
        ds = _forecast_of(data, pipeline)
        values = ds[name].values if ds is not None and name in ds.coords else np.zeros(0)
    return tuple(float(x) for x in np.asarray(values).reshape(-1))


def _forecast_of(data: Any, pipeline: Any) -> Any:
    """The DataModule's opened forecast store (``dm.forecast``), else the configured one."""
    ds = getattr(data, "forecast", None)
    if ds is not None:
        return ds
    if pipeline.stores.forecast is None:
        return None
    from enspp.pipeline.align import open_dataset

    return open_dataset(pipeline.stores.forecast)


def data_version(data: Any, pipeline: Any) -> str | None:
    """The DataModule's ``data_version`` if it has one, else a short sha256 of the forecast
    store's provenance attributes (sources with their checksums, schema version) and its
    init times: it changes exactly when the store's content does."""
    own = getattr(data, "data_version", None)
    if own is not None:
        return _opt_str(own)
    ds = _forecast_of(data, pipeline)
    if ds is None:
        return None
    from enspp.pipeline.stats import provenance_of

    h = hashlib.sha256(json.dumps(provenance_of(ds), sort_keys=True, default=str).encode())
    if schema.INIT_TIME in ds.coords:
        h.update(np.asarray(ds[schema.INIT_TIME].values, "datetime64[ns]").astype(np.int64).tobytes())
    return f"sha256:{h.hexdigest()[:16]}"


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = v.item() if v.size == 1 else v.tolist()
    return str(v)


def resumable(model_name: str, train_config: TrainConfig) -> bool:
    """Whether a stopped fit of ``model_name`` resumes from its ``last.ckpt``: a network fit
    with one seed and no refit (a seed ensemble or a refit keeps its best weights in memory;
    the exact EMOS fit has no epochs to resume)."""
    from enspp.models.base import MODELS

    return MODELS[model_name].network and train_config.seeds == 1 and not train_config.refit


def read_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint to resume from, read once with ``weights_only=True``: the dict that is
    checked is the dict training resumes from (:class:`_ResumeCheckpointIO`), so a file
    swapped after the check is never read, and nothing in the file can execute code."""
    raw, _ = read_checkpoint_bytes(read_checkpoint_file(path), source=path)
    return raw


def _check_resume(path: Path, raw: dict[str, Any], spec: Any) -> None:
    """A resumed checkpoint must hold the model the config describes."""
    meta = CheckpointMetadata.from_checkpoint(raw[METADATA_KEY], source=path)
    for key in ("name", "channels", "targets", "distribution", "n_members", "grid_shape"):
        old, new = meta.spec.get(key), getattr(spec, key)
        if tuple(np.atleast_1d(old).tolist()) != tuple(np.atleast_1d(new).tolist()):
            raise CheckpointMismatchError(
                f"resume: checkpoint {path} has {key} = {old!r} but the config gives {new!r}")


class _DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, each checkpoint written to a temporary file beside it and
    committed by :func:`enspp.data.durable.write_via` (flushed, renamed, the rename flushed):
    a killed run or a power loss leaves the previous checkpoint or the new one, never an
    empty or half-written file that a resume or a registration would then read."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("enspp checkpoints take no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        durable.write_via(path, lambda tmp: torch.save(checkpoint, tmp))


class _ResumeCheckpointIO(_DurableCheckpointIO):
    """The durable checkpoint I/O, except that the resume checkpoint is the dict read (and
    checked) before training: Lightning never opens that path again.  Any other load is
    ``weights_only=True``."""

    def __init__(self, path: Path, checkpoint: dict[str, Any]) -> None:
        super().__init__()
        self._path = str(path)
        self._checkpoint: dict[str, Any] | None = checkpoint

    def load_checkpoint(self, path: Any, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if str(path) == self._path and self._checkpoint is not None:
            checkpoint, self._checkpoint = self._checkpoint, None
            return checkpoint
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def make_trainer(train: TrainConfig, *, run_dir: Path, monitor: str,
                 plugins: list[Any] | None = None,
                 callbacks: tuple[Any, ...] = ()) -> L.Trainer:
    """The Lightning Trainer with checkpoints, early stopping, CSV/TensorBoard loggers and
    ``callbacks`` (e.g. :class:`~models.progress.TrainProgress`, whose bar replaces
    Lightning's own)."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename=BEST_NAME, monitor=monitor,
                                 mode="min", save_top_k=1, save_last=False,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    # the latest epoch, every epoch (Lightning's save_last writes only when the monitored
    # checkpoint improved, so a resume would repeat the epochs since the best one)
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename=LAST_NAME, monitor=None, save_top_k=1,
                             auto_insert_metric_name=False, enable_version_counter=False)
    callbacks = [checkpoint, latest, *callbacks]
    if train.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode="min",
                                       patience=train.early_stopping_patience,
                                       min_delta=train.early_stopping_min_delta))
    # one version per session (a resumed run adds version_1, ...): Lightning's CSV logger
    # would otherwise delete the earlier session's metrics.csv
    loggers = [CSVLogger(save_dir=run_dir / "logs", name="csv"),
               TensorBoardLogger(save_dir=run_dir / "logs", name="tensorboard",
                                 default_hp_metric=False)]
    return L.Trainer(
        max_epochs=train.max_epochs, accelerator=train.accelerator, devices=train.devices,
        strategy=train.strategy, num_nodes=train.num_nodes, precision=train.precision,
        deterministic=train.deterministic, gradient_clip_val=train.gradient_clip_val,
        log_every_n_steps=train.log_every_n_steps, enable_progress_bar=False,
        limit_train_batches=train.limit_train_batches,
        limit_val_batches=train.limit_val_batches, callbacks=callbacks, logger=loggers,
        default_root_dir=run_dir, enable_model_summary=False,
        plugins=plugins or [_DurableCheckpointIO()])


def train(pipeline: Any, model: ModelConfig, train_config: TrainConfig, *,
          workdir: str | Path, resume: str | Path | None = None,
          datamodule: Any | None = None) -> TrainResult:
    """Train ``model`` on the pipeline's data; return where the run lives and its scores.

    ``pipeline`` is a ``pipeline.PipelineConfig`` (relative store paths are relative to
    ``workdir``); ``datamodule`` overrides the DataModule
    built from it (tests).  ``resume`` continues from a checkpoint; when it lies in
    ``WORKDIR/runs/<id>/checkpoints`` the run continues in that directory.
    """
    L.seed_everything(train_config.seed, workers=True, verbose=False)
    split = getattr(pipeline, "split", None)
    if split is not None and (problem := validation_split_problem(split)) is not None:
        raise ConfigError(problem)
    pipeline = resolve_store_paths(pipeline, workdir)
    config_text = _config_text(pipeline=pipeline, model=model, train=train_config)
    resumed_dir = run_dir_of_checkpoint(resume) if resume is not None else None
    if resumed_dir is None and train_config.run_id:  # checked before anything is read or written
        check_named_run(Path(workdir) / RUNS_DIR / train_config.run_id, config_text)
    data = datamodule if datamodule is not None else _build_datamodule(pipeline)
    data.setup("fit")
    if hasattr(data, "expect_accelerator"):  # the loaders read before fit pin as it will
        data.expect_accelerator(train_config.accelerator)
    if "val" not in getattr(data, "split_init_times", {"val": None}):  # a DataModule of its own
        raise ConfigError("pipeline.split: the DataModule has no validation split: training "
                          "chooses and scores its checkpoint on validation init times")
    spec = build_spec(data, model, n_members=data.n_members, grid_shape=data.grid_shape,
                      seeds=train_config.seeds)
    from enspp.models.base import MODELS, build_model

    network = MODELS[spec.name].network
    _check_batch_limits(data, train_config, network=network)
    if not network and spec.seeds != 1:  # the exact EMOS fit is deterministic: one model
        spec = dataclasses.replace(spec, seeds=1)
    plugins = None
    if resume is not None:
        resume = Path(resume)
        if network and not resumable(spec.name, train_config):
            raise CheckpointMismatchError(
                f"resume: a run with train.seeds > 1 or train.refit keeps its best weights in "
                f"memory and cannot be resumed from {resume}; start it again")
        checkpoint = read_resume_checkpoint(resume)
        _check_resume(resume, checkpoint, spec)
        plugins = [_ResumeCheckpointIO(resume, checkpoint)]
    metadata = build_metadata(spec, data=data, pipeline=pipeline, model=model, train=train_config)
    run_dir = resumed_dir or (
        Path(workdir) / RUNS_DIR / train_config.run_id if train_config.run_id else
        claim_run_dir(Path(workdir) / RUNS_DIR, new_run_id(train_config.seed)))
    # a resumed run, or a named one that check_named_run let in, is re-entered
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_text)
    if not network:  # EMOS: the exact fit (deterministic: no seeds, no epochs)
        return _train_exact_emos(data, spec, metadata, train_config, run_dir=run_dir)
    if train_config.seeds > 1 or train_config.refit:
        return _train_selected(data, spec, metadata, train_config, run_dir=run_dir)
    net = build_model(spec)
    exact = _fit_exact(net, data, spill_dir=run_dir) if resume is None else None
    module = PostProcessingModule(net, train_config=train_config, metadata=metadata)
    monitor = monitor_name(spec.distribution)
    raw_name = f"val/crps_raw_{train_config.ensemble_estimator}"
    progress = TrainProgress(f"train {model.name}", monitor=monitor, raw=raw_name,
                             bar=train_config.progress_bar)
    trainer = make_trainer(train_config, run_dir=run_dir, monitor=monitor, plugins=plugins,
                           callbacks=(progress,))
    t0 = time.perf_counter()
    ckpt_dir = run_dir / CHECKPOINT_DIR
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        anchor = _anchor_score(module, data, train_config) if exact is not None else None
        start = {k: v.detach().clone() for k, v in net.state_dict().items()} if anchor is not None else None
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        ckpt_cb = trainer.checkpoint_callback
        best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else ckpt_dir / f"{BEST_NAME}.ckpt"
        raw, epochs = trainer.callback_metrics.get(raw_name), int(trainer.current_epoch)
        best_score = (float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None
                      else float("nan"))
        if anchor is not None and start is not None and not best_score < anchor:
            # no epoch beat the untrained network, i.e. its anchor EMOS, on validation: the
            # best checkpoint is that EMOS
            net.load_state_dict(start)
            best, best_score = ckpt_dir / f"{BEST_NAME}.ckpt", anchor
            trainer.save_checkpoint(best, weights_only=False)
            LOGGER.info(f"train {model.name}: no epoch beat the anchor EMOS on validation "
                        f"({monitor} {anchor:.4g}); the best checkpoint is the anchor")
    if not best.is_file():  # never name a checkpoint that is not there
        raise NoBestCheckpointError(
            f"train {model.name} ({run_dir.name}): no epoch logged {monitor}, so no best "
            f"checkpoint was written ({ckpt_dir / f'{LAST_NAME}.ckpt'} holds the last epoch)")
    LOGGER.info(summary_line(f"train {model.name} ({run_dir.name})", train_summary(
        epochs=epochs, best_epoch=progress.best_epoch,
        monitor=monitor, best=best_score, raw_name=raw_name,
        raw=None if raw is None else float(raw)), time.perf_counter() - t0))
    return TrainResult(
        run_dir=run_dir, best_checkpoint=best,
        last_checkpoint=run_dir / CHECKPOINT_DIR / f"{LAST_NAME}.ckpt", monitor=monitor,
        best_score=best_score,
        raw_score=None if raw is None else float(raw), epochs=epochs,
        metrics_csv=Path(trainer.loggers[0].log_dir) / "metrics.csv")


def _check_batch_limits(data: Any, train_config: TrainConfig, *, network: bool) -> None:
    """Refuse a fraction ``train.limit_train_batches`` / ``limit_val_batches`` that leaves
    less than one batch of the split's loader (Lightning would stop with a traceback); the
    training limit only where batches are trained on (a network; the exact EMOS fit reads
    every sample)."""
    limits = [("val", "validation", train_config.limit_val_batches, "val_dataloader")]
    if network:
        limits.insert(0, ("train", "training", train_config.limit_train_batches, "train_dataloader"))
    for key, words, limit, loader in limits:
        if not isinstance(limit, float) or limit >= 1.0:
            continue
        try:
            n = len(getattr(data, loader)())
        except TypeError:  # a loader without a length: Lightning takes a fraction of none
            continue
        if n and int(n * limit) < 1:
            d = len(str(n)) + 1  # two significant digits of 1/n, rounded up
            least = int(np.ceil(10**d / n))
            while int(n * (least / 10**d)) < 1:
                least += 1
            raise ConfigError(
                f"train.limit_{key}_batches: {limit} of the {n} {words} batch"
                f"{'es' if n != 1 else ''} is less than one batch; give a fraction of at "
                f"least {least / 10**d:g} or a number of batches (an int, e.g. 1)")


def _fresh_model(spec: Any, train_config: TrainConfig) -> Any:
    """The untrained model: member ``i`` of a seed ensemble initialised from seed
    ``train.seed + i``; a single network from ``train.seed``."""

    from enspp.models.base import build_model
    from enspp.models.ensemble import SeedEnsemble

    seeds = [train_config.seed + i for i in range(spec.seeds)]
    if spec.seeds > 1:
        return SeedEnsemble(spec, init_seeds=seeds)
    torch.manual_seed(seeds[0])
    return build_model(spec)


def _selection_trainer(train_config: TrainConfig, *, run_dir: Path, callbacks: list,
                       max_epochs: int, validate: bool) -> L.Trainer:
    """A Trainer without checkpoint files (weights are chosen in memory, see models.selection)."""
    return L.Trainer(
        max_epochs=max_epochs, accelerator=train_config.accelerator, devices=train_config.devices,
        strategy=train_config.strategy, num_nodes=train_config.num_nodes,
        precision=train_config.precision, deterministic=train_config.deterministic,
        gradient_clip_val=train_config.gradient_clip_val,
        log_every_n_steps=train_config.log_every_n_steps,
        enable_progress_bar=train_config.progress_bar,
        limit_train_batches=train_config.limit_train_batches,
        limit_val_batches=train_config.limit_val_batches if validate else 0,
        num_sanity_val_steps=0, callbacks=callbacks, enable_checkpointing=False,
        logger=[CSVLogger(save_dir=run_dir / "logs", name="csv")], default_root_dir=run_dir,
        enable_model_summary=False, plugins=[_DurableCheckpointIO()])


def _validation_score(module: PostProcessingModule, data: Any) -> float:
    """The model's validation loss (the combined forecast of a seed ensemble)."""

    loader = data.val_dataloader()
    total, rows = 0.0, 0
    device = next(module.parameters()).device
    module.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int(batch["target"].shape[0])
            total += float(module.model.loss(module.model(batch), batch["target"])) * n
            rows += n
    return total / rows if rows else float("nan")


def _train_selected(data: Any, spec: Any, metadata: CheckpointMetadata, train_config: TrainConfig,
                    *, run_dir: Path) -> TrainResult:
    """Seed ensembles and refits: each member stops at its own best validation epoch
    (:class:`models.selection.MemberSelection`); with ``refit`` a fresh model is then trained on
    training + validation, each member for its chosen number of epochs."""
    import dataclasses

    from enspp.models.selection import EpochSnapshots, MemberSelection

    ckpt_dir = run_dir / CHECKPOINT_DIR
    if "val" not in data.split_init_times:
        raise CheckpointMismatchError("train.seeds > 1 and train.refit choose epochs on the "
                                      "validation split: configure pipeline.split.val")
    selection = MemberSelection(spec.seeds, patience=train_config.early_stopping_patience,
                                min_delta=train_config.early_stopping_min_delta)
    module = PostProcessingModule(_fresh_model(spec, train_config), train_config=train_config,
                                  metadata=metadata, per_target_logs=False)
    if _fit_exact(module.model, data, spill_dir=run_dir) is not None:  # epoch 0, the anchor EMOS, is a candidate
        selection.start_from(module.model, _member_scores(module.model, data))
    trainer = _selection_trainer(train_config, run_dir=run_dir, callbacks=[selection],
                                 max_epochs=train_config.max_epochs, validate=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=data)
    selection.restore(module.model)
    score = _validation_score(module, data)
    raw = trainer.callback_metrics.get(f"val/crps_raw_{train_config.ensemble_estimator}")
    training = {"seeds": [train_config.seed + i for i in range(spec.seeds)],
                "best_epochs": list(selection.best_epoch), "selection_score": score,
                "member_scores": list(selection.best), "refit": False,
                "fit_splits": list(data.fit_splits)}
    module.metadata = dataclasses.replace(metadata, training=training)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    best = ckpt_dir / f"{BEST_NAME}.ckpt"
    trainer.save_checkpoint(best, weights_only=False)
    epochs = int(trainer.current_epoch)
    final = best
    if train_config.refit:
        data.train_on(("train", "val"))
        try:
            snaps = EpochSnapshots(selection.best_epoch)
            refit = PostProcessingModule(_fresh_model(spec, train_config), train_config=train_config,
                                         metadata=dataclasses.replace(metadata, training={
                                             **training, "refit": True, "fit_splits": list(data.fit_splits)}),
                                         per_target_logs=False)
            _fit_exact(refit.model, data, spill_dir=run_dir)  # the anchor on training + validation
            snaps.snapshot_initial(refit.model)
            final = ckpt_dir / "refit.ckpt"
            if max(selection.best_epoch) > 0:
                trainer2 = _selection_trainer(train_config, run_dir=run_dir, callbacks=[snaps],
                                              max_epochs=max(selection.best_epoch), validate=False)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                    warnings.filterwarnings("ignore", message=".*val_dataloader.*")
                    trainer2.fit(refit, datamodule=data)
                snaps.restore(refit.model)
                trainer2.save_checkpoint(final, weights_only=False)
            else:  # every member kept its anchor: nothing to train
                snaps.restore(refit.model)
                write_checkpoint(final, refit.model, refit.metadata)
        finally:
            data.train_on(("train",))
    raw_name = f"val/crps_raw_{train_config.ensemble_estimator}"
    what = (f"{spec.seeds} seeds, each stopped at its best validation epoch "
            f"{list(selection.best_epoch)}" if spec.seeds > 1 else
            f"best at epoch {selection.best_epoch[0]}")
    what += "; refit on training + validation" if train_config.refit else ""
    LOGGER.info(summary_line(
        f"train {spec.name} ({run_dir.name})",
        f"{epochs} epochs ({what}); {metric_words(monitor_name(spec.distribution))} of the "
        f"{'seed ensemble' if spec.seeds > 1 else 'model'} {score:.4g}"
        + ("" if raw is None else f", {metric_words(raw_name)} {float(raw):.4g}"),
        time.perf_counter() - t0))
    return TrainResult(
        run_dir=run_dir, best_checkpoint=final, last_checkpoint=final,
        monitor=monitor_name(spec.distribution), best_score=score,
        raw_score=None if raw is None else float(raw), epochs=epochs,
        metrics_csv=Path(trainer.loggers[0].log_dir) / "metrics.csv",
        selection_checkpoint=best, best_epochs=tuple(selection.best_epoch))


def _fit_exact(net: Any, data: Any, *, spill_dir: Path) -> Any:
    """Fit the anchor EMOS of a network (or of each member of a seed ensemble) exactly on one
    pass over the training batches (:func:`models.emos.fit_anchor`; cases beyond its memory
    are spilled to a temporary folder under ``spill_dir``, the run's); the fit's
    :class:`~models.emos.EMOSFitResult`, or ``None`` for a network without an anchor."""
    from enspp.models.emos import fit_anchor
    from enspp.models.selection import members_of

    t0 = time.perf_counter()
    members = members_of(net)
    result = fit_anchor(members[0], _exact_fit_batches(data), spill_dir=spill_dir)
    if result is None:
        return None
    for m in members[1:]:  # the same fit for every member
        m.anchor.load_state_dict(members[0].anchor.state_dict())
    LOGGER.info(summary_line(f"exact fit of the anchor {type(members[0].anchor).__name__}",
                             _fit_words(result) + _subset_words(data), time.perf_counter() - t0))
    return result


def _member_scores(model: Any, data: Any) -> list[float]:
    """Each member's validation loss (the model itself if it is not a seed ensemble)."""

    from enspp.models.selection import members_of

    members = members_of(model)
    totals, rows = [0.0] * len(members), 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            n = int(batch["target"].shape[0])
            for i, m in enumerate(members):
                totals[i] += float(m.loss(m(batch), batch["target"])) * n
            rows += n
    model.train(was)
    return [t / rows if rows else float("nan") for t in totals]


def _exact_fit_batches(data: Any) -> Any:
    """Every training sample once for an exact fit: the training loader, except on a grid
    trained on random patches, where it is the training init times' whole fields (or tiles,
    ``batches.tile_size``) as the evaluation loader reads them; read by the training loader's
    workers (``EnsembleDataModule.exact_fit_dataloader``)."""
    exact = getattr(data, "exact_fit_dataloader", None)
    return exact() if exact is not None else data.train_dataloader()


def _subset_words(data: Any) -> str:
    """The training init times an exact fit read, where not all (``exact_fit_words``)."""
    words = getattr(data, "exact_fit_words", None)
    return words() if words is not None else ""


def _fit_words(result: Any) -> str:
    spilled = getattr(result, "spilled_bytes", 0)
    return (f"train CRPS (normalised) {result.loss:.4g} (closed-form start {result.start_loss:.4g}), "
            f"{result.iterations} Newton iterations" + ("" if result.converged else " (iteration limit)")
            + (f"; {result.cases} cases beyond its memory, spilled to disk ({spilled / 2**20:.0f} MiB) "
               f"and fitted in {result.ranges} ranges of groups" if spilled else "")
            + (f"; a group has only {result.min_group_cases} cases for its {result.parameters} "
               "parameters: it overfits (more training init times, or a global EMOS)"
               if getattr(result, "overfits", False) else ""))


def _train_exact_emos(data: Any, spec: Any, metadata: CheckpointMetadata, train_config: TrainConfig,
                      *, run_dir: Path) -> TrainResult:
    """An EMOS model fitted exactly (:func:`models.emos.fit_emos`) on one pass over the
    training batches and validated once; with ``train.refit`` fitted again on training +
    validation (``refit.ckpt``, the returned checkpoint). No epochs, no seeds (the fit is
    deterministic)."""
    from enspp.models.base import build_model
    from enspp.models.emos import emos_chunk, fit_emos

    t0 = time.perf_counter()
    ckpt_dir = run_dir / CHECKPOINT_DIR
    model = build_model(spec)
    result = fit_emos(model, (emos_chunk(model, b) for b in _exact_fit_batches(data)), spill_dir=run_dir)
    module = PostProcessingModule(model, train_config=train_config, metadata=metadata)
    module.train_loss = result.loss
    monitor = monitor_name(spec.distribution)
    raw_name = f"val/crps_raw_{train_config.ensemble_estimator}"
    trainer = make_trainer(train_config, run_dir=run_dir, monitor=monitor)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        scores = trainer.validate(module, datamodule=data, verbose=False)
    score = float(scores[0][monitor]) if scores and monitor in scores[0] else float("nan")
    raw = scores[0].get(raw_name) if scores else None
    for name in (BEST_NAME, LAST_NAME):
        trainer.save_checkpoint(ckpt_dir / f"{name}.ckpt", weights_only=False)
    final = ckpt_dir / f"{BEST_NAME}.ckpt"
    if train_config.refit:
        data.train_on(("train", "val"))
        try:
            result = fit_emos(model, (emos_chunk(model, b) for b in _exact_fit_batches(data)),
                              spill_dir=run_dir)
        finally:
            data.train_on(("train",))
        module.train_loss = result.loss
        final = ckpt_dir / "refit.ckpt"
        trainer.save_checkpoint(final, weights_only=False)
    LOGGER.info(summary_line(
        f"train {spec.name} ({run_dir.name})",
        f"exact fit: {_fit_words(result)}{_subset_words(data)}; {metric_words(monitor)} {score:.4g}"
        + ("" if raw is None else f", {metric_words(raw_name)} {float(raw):.4g}")
        + ("; refit on training + validation" if train_config.refit else ""), time.perf_counter() - t0))
    return TrainResult(
        run_dir=run_dir, best_checkpoint=final, last_checkpoint=ckpt_dir / f"{LAST_NAME}.ckpt",
        monitor=monitor, best_score=score, raw_score=None if raw is None else float(raw), epochs=0,
        metrics_csv=Path(trainer.loggers[0].log_dir) / "metrics.csv",
        selection_checkpoint=ckpt_dir / f"{BEST_NAME}.ckpt" if train_config.refit else None)


def _anchor_score(module: Any, data: Any, train: TrainConfig) -> float | None:
    """The validation CRPS of the untrained network (= its fitted anchor EMOS); ``None``
    without a validation split."""
    if "val" not in getattr(data, "split_init_times", {"val": None}):
        return None
    was = module.training
    score = _validation_score(module, data)
    module.train(was)
    return score




def _config_text(*, pipeline: Any, model: ModelConfig, train: TrainConfig) -> str:
    """The run's ``config.yaml``: the pipeline, model and train sections it was trained with."""
    sections = {"pipeline": pipeline.model_dump(mode="json"),
                "model": model.model_dump(mode="json"), "train": train.model_dump(mode="json")}
    return yaml.safe_dump(sections, sort_keys=False)


def check_named_run(run_dir: Path, config_text: str) -> None:
    """Refuse to train into the named run ``run_dir`` (``train.run_id``) when it holds another
    run: a ``config.yaml`` other than ``config_text``, or checkpoints without a config.  A new
    directory, one holding nothing of a run yet (an experiment point creates its directory
    before training), or the same run trained again may be entered."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    hint = "give another train.run_id or remove it (nothing was changed)"
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a run directory; {hint}")
    cfg = run_dir / "config.yaml"
    if cfg.exists() or cfg.is_symlink():
        try:
            same = cfg.is_file() and yaml.safe_load(cfg.read_text(encoding="utf-8")) == \
                yaml.safe_load(config_text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            same = False
        if not same:
            raise RunDirError(f"{run_dir} holds another run (its config differs); {hint}")
    elif (run_dir / CHECKPOINT_DIR).exists():
        raise RunDirError(f"{run_dir} holds another run (checkpoints without a config.yaml); "
                          f"{hint}")


def resolve_store_paths(pipeline: Any, workdir: str | Path) -> Any:
    """``pipeline`` with relative store paths (forecast, analysis, static, statistics) made
    absolute against ``workdir`` (``WORKDIR/stores/forecast.zarr`` is ``stores/forecast.zarr``)."""
    base = Path(workdir).resolve()
    stores = pipeline.stores
    update = {k: base / p for k in ("forecast", "analysis", "static", "statistics")
              if (p := getattr(stores, k)) is not None and not Path(p).is_absolute()}
    if not update:
        return pipeline
    return pipeline.model_copy(update={"stores": stores.model_copy(update=update)})


def _build_datamodule(pipeline: Any) -> Any:
    from enspp.pipeline.datamodule import EnsembleDataModule

    return EnsembleDataModule(pipeline)
