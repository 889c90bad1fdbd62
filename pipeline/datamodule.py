"""The Lightning DataModule: stores -> aligned, split, normalisation-ready batches."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader

from enspp.data.schema import MEMBER, STATION, spatial_dims
from enspp.pipeline.align import (
    Alignment,
    StoreLike,
    check_grids,
    check_store_kind,
    open_dataset,
    open_static,
    regrid_like,
    source_path,
)
from enspp.pipeline.config import MembersConfig, PipelineConfig, PipelineConfigError
from enspp.pipeline.dataset import EnsembleDataset, EpochSampler, PreloadedBatches, collate_rows
from enspp.pipeline.features import STATIC_NAMES, channel_names, static_fields, target_channels
from enspp.pipeline.handoff import BatchRing
from enspp.pipeline.members import check_members, choose_members, perturbed_members
from enspp.pipeline.reader import StoreReader
from enspp.pipeline.splits import split_samples
from enspp.pipeline.station_features import FeatureScales, StationFeatures, feature_names
from enspp.pipeline.stats import NormStats, compute_stats, provenance_of, source_hash
from enspp.pipeline.tiles import owned_windows, tile_slices
from enspp.pipeline.workers import WorkerCounter, read_threads, start_context

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test"]


class EnsembleDataModule(L.LightningDataModule):
    """Batches of ``inputs [B,K,C,H,W]``, ``static [B,S,H,W]``, ``target [B,T,H,W]``,
    ``init_time``, ``lead_time``, ``y0``, ``x0`` (see ARCHITECTURE.md).

    ``forecast``/``analysis``/``static`` override the config's store paths and may be paths or
    already opened lazy datasets; ``stats`` skips computing/loading statistics; ``pin_memory``
    puts batches in page-locked memory (default: when the trainer runs on a CUDA device).
    Everything is prepared on first use (:meth:`setup`), so ``dm.channels`` etc. work right
    away.
    """

    def __init__(self, config: PipelineConfig, *, forecast: StoreLike | None = None,
                 analysis: StoreLike | None = None, static: StoreLike | None = None,
                 stats: NormStats | None = None, pin_memory: bool | None = None,
                 deterministic: StoreLike | None = None,
                 feature_scales: FeatureScales | None = None):
        super().__init__()
        self.config = config
        self._fc_src = forecast if forecast is not None else config.stores.forecast
        self._an_src = analysis if analysis is not None else config.stores.analysis
        self._st_src = static if static is not None else config.stores.static
        self._det_src = deterministic if deterministic is not None else config.stores.deterministic
        self._feature_scales = feature_scales
        #: the splits the training loader draws from (:meth:`train_on`)
        self.fit_splits: tuple[str, ...] = ("train",)
        self._preloaded: dict[tuple[str, ...], dict] = {}
        if self._fc_src is None or self._an_src is None:
            raise PipelineConfigError("pipeline.stores.forecast and pipeline.stores.analysis must be set "
                             "(or forecast=/analysis= given)")
        self._stats = stats
        self._pin = pin_memory
        self._ready = False
        self._worker_counter: WorkerCounter | None = None
        #: the loaders made so far, one per split set and use (their persistent workers
        #: serve every pass of a fit), with whether they pin batches
        self._loaders: dict[tuple, tuple[bool, DataLoader]] = {}
        self._expect_cuda = False

    # ---- preparation -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        cfg = self.config
        fc, an = open_dataset(self._fc_src), open_dataset(self._an_src)
        check_store_kind(fc, expected="forecast", key="pipeline.stores.forecast",
                         source=self._fc_src if not isinstance(self._fc_src, xr.Dataset)
                         else "the forecast dataset")
        check_store_kind(an, expected="analysis", key="pipeline.stores.analysis",
                         source=self._an_src if not isinstance(self._an_src, xr.Dataset)
                         else "the analysis dataset")
        self._forecast = fc
        self._regrid = check_grids(fc, an, regrid=cfg.regrid)
        self.point = spatial_dims(fc) == (STATION,)
        self.grid_shape = ((fc.sizes[STATION], 1) if self.point else
                           (fc.sizes["latitude"], fc.sizes["longitude"]))
        self.store_members = fc[MEMBER].values.astype(np.int64)
        self.n_members = check_members(self.store_members, config=cfg.members)
        feats = cfg.features
        # every target lead of a sample's init time has its inputs and its analysis
        samples = split_samples(fc, an, features=feats, split=cfg.split)
        self._leads = samples.leads
        self.channels = channel_names(feats.variables, self._leads)
        self.targets = tuple(feats.targets)
        self.target_channels = target_channels(feats.variables, feats.targets)
        #: the lead times (hours) post-processed: a sample is one init time at one of them
        self.target_leads = feats.target_leads
        self._static_index = [STATIC_NAMES.index(n) for n in feats.static]
        self.static_names = tuple(feats.static) + feature_names(feats)
        self.alignments: tuple[Alignment, ...] = samples.alignments
        self.alignment: Alignment = self.alignments[0]
        lead = self.alignment.lead_time
        self.periods = samples.periods
        # one line, whatever the number of leads (samples skipped for absent fields included)
        log.info("alignment: %s", self.alignment.report() if len(self.alignments) == 1 else
                 f"{len(samples.aligned)} init times with every lead aligned ("
                 + "; ".join(a.report() for a in self.alignments) + ")")
        self.split_init_times = samples.init_times
        st = open_static(self._st_src) if self._st_src is not None else None
        self._static = static_fields(fc, st, regrid=cfg.regrid)
        self._reader = StoreReader(self._fc_src, self._an_src, variables=feats.variables,
                                   leads_h=self._leads, targets=feats.targets,
                                   regrid=cfg.regrid if self._regrid else None,
                                   forecast_ds=fc, analysis_ds=an,
                                   cache_mb=cfg.batches.cache_mb,
                                   threads=read_threads(cfg.batches.read_threads,
                                                        num_workers=cfg.batches.num_workers))
        if self._stats is None:
            self._stats = self._load_or_compute_stats(fc, an)
        self.record_features = None
        if feats.past_error is not None or feats.hres:
            # the deterministic store feeds features.hres only (as in predict)
            det = open_dataset(self._det_src) if feats.hres and self._det_src is not None else None
            self.record_features = StationFeatures(
                fc, an, variable=feats.targets[0], lead_time=lead,
                members=self._fixed_members(), features=feats, deterministic=det,
                train_init_times=self.split_init_times["train"], scales=self._feature_scales)
        self._ready = True

    def _fixed_members(self) -> np.ndarray:
        """The members every sample carries (strategies ``first``, ``explicit``, ``all``)."""
        return choose_members(self.store_members, config=self.config.members)

    @property
    def feature_scales(self) -> FeatureScales | None:
        """The training scales of the record features (None without such features)."""
        self.setup()
        return None if self.record_features is None else self.record_features.scales

    def _load_or_compute_stats(self, fc: xr.Dataset, an: xr.Dataset) -> NormStats:
        train = self.split_init_times["train"]
        expected = source_hash(forecast_path=source_path(fc, self._fc_src),
                               analysis_path=source_path(an, self._an_src), init_times=train,
                               channels=self.channels, targets=self.targets,
                               provenance={"forecast": provenance_of(fc),
                                           "analysis": provenance_of(an)})
        path = self.config.stores.statistics
        if path is not None and Path(path).exists():
            return NormStats.from_file(path, expected_source_hash=expected)
        regrid = None
        if self._regrid:
            lat, lon, method = fc["latitude"].values, fc["longitude"].values, self.config.regrid

            def regrid(m: xr.DataArray) -> xr.DataArray:
                return regrid_like(m, latitude=lat, longitude=lon, method=str(method))
        stats = compute_stats(fc, an, channels=self.channels, targets=self.targets,
                              init_times=train, valid_times=train + self.alignment.lead_time,
                              source_hash=expected, regrid_target=regrid)
        if path is not None:
            stats.to_file(path)
        return stats

    # ---- the contract ------------------------------------------------------------------
    @property
    def forecast(self) -> xr.Dataset:
        """The opened (lazy) forecast store: grid coordinates and provenance attributes."""
        self.setup()
        return self._forecast

    @property
    def stats(self) -> NormStats:
        self.setup()
        assert self._stats is not None
        return self._stats

    def __getattr__(self, name: str):
        # contract attributes are filled by setup(); prepare on first access
        if name in {"channels", "targets", "target_channels", "static_names", "grid_shape",
                    "n_members", "point", "alignment", "split_init_times", "periods",
                    "store_members", "record_features", "target_leads", "alignments"} and not self.__dict__.get("_ready", True):
            self.setup()
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- datasets and loaders ----------------------------------------------------------
    def dataset(self, split: Split | tuple[str, ...], *, mode: Literal["train", "eval"] | None = None,
                members: MembersConfig | None = None, member_nan: bool = False) -> EnsembleDataset:
        """The dataset of a split, or of several splits' init times together (a refit);
        ``mode``: ``train`` for the train split, else ``eval``; ``members``: instead of
        ``pipeline.members``; ``member_nan``: see :class:`EnsembleDataset`."""
        splits = (split,) if isinstance(split, str) else tuple(split)
        init_times = self._init_times(splits)
        mode = mode or ("train" if splits == ("train",) else "eval")
        b = self.config.batches
        tiles = None
        if mode == "eval" and not self.point:
            tiles = tile_slices(self.grid_shape, tile=b.tile_size, overlap=b.tile_overlap)
        return EnsembleDataset(
            self._reader, init_times=init_times,
            lead_time=self.alignment.lead_time, channels=self.channels,
            lead_times=tuple(a.lead_time for a in self.alignments),
            members=members or self.config.members, store_members=self.store_members,
            static=self._static, grid_shape=self.grid_shape, point=self.point, mode=mode,
            patch_size=b.patch_size, tiles=tiles, seed=b.seed,
            nan_policy=self.config.nan_policy, stats=self._stats,
            static_index=self._static_index,
            record_features=None if self.record_features is None else self.record_features.at,
            member_nan=member_nan)

    def _init_times(self, splits: tuple[str, ...]) -> np.ndarray:
        """The init times of ``splits``, in order (a split not configured is an error)."""
        self.setup()
        for s in splits:
            if s not in self.split_init_times:
                raise PipelineConfigError(f"split {s!r} is not configured (splits: "
                                          f"{list(self.split_init_times)})")
        return np.concatenate([self.split_init_times[s] for s in splits])

    def _cached(self, key: tuple, build) -> DataLoader:
        """The loader of ``key``, made once (``build()``) and then kept: Lightning, the exact
        fit and the validation scores before training iterate one loader, so its persistent
        workers start once per fit.  Made again when the pinning decision changed."""
        pin = self._feeds_gpu()
        kept = self._loaders.get(key)
        if kept is None or kept[0] != pin:
            self._loaders[key] = kept = (pin, build())
        return kept[1]

    def _loader(self, ds: EnsembleDataset, *, sampler=None) -> DataLoader:
        b = self.config.batches
        workers = b.num_workers
        pin = self._feeds_gpu()
        # with no workers the main process reads straight into page-locked buffers; workers
        # hand over shared-memory batches that the loader's pinning thread copies
        ds.pin_memory = pin and workers == 0
        extra = {}
        if workers > 0:
            context = start_context(b.start_method)
            if self._worker_counter is None:
                self._worker_counter = WorkerCounter(context)
            ds.ring = BatchRing(context, workers)
            if ds.whole is not None:
                ds.whole.ring = ds.ring
            extra = {"multiprocessing_context": context, "persistent_workers": True,
                     "prefetch_factor": b.prefetch_factor,
                     "worker_init_fn": self._worker_counter.init_fn()}
        return DataLoader(ds, batch_size=b.batch_size, sampler=sampler, shuffle=False,
                          num_workers=workers, collate_fn=collate_rows, drop_last=False,
                          pin_memory=pin and workers > 0, **extra)

    @property
    def worker_starts(self) -> int:
        """DataLoader workers started so far by this DataModule's loaders (persistent: once
        per loader and fit, however many epochs)."""
        return 0 if self._worker_counter is None else self._worker_counter.value

    def _feeds_gpu(self) -> bool:
        """Whether batches are pinned: ``pin_memory`` as given, else True when the attached
        trainer runs on a CUDA device."""
        if self._pin is not None:
            return self._pin
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return self._expect_cuda
        try:
            return trainer.strategy.root_device.type == "cuda"
        except (AttributeError, RuntimeError):
            return False

    def expect_accelerator(self, accelerator: str) -> None:
        """The accelerator the coming fit will use (a Trainer's ``accelerator``), so that
        the loaders read before the trainer is attached (an exact fit, validation scores)
        pin batches as the fit will, and the fit reuses them (and their workers)."""
        import torch

        name = str(accelerator).lower()
        self._expect_cuda = name in ("cuda", "gpu") or (name == "auto" and torch.cuda.is_available())

    def train_on(self, splits: tuple[str, ...]) -> None:
        """Draw training batches from ``splits`` (e.g. ``("train", "val")`` for a refit after
        the epoch count was chosen on validation); normalisation statistics stay the
        training split's."""
        self.setup()
        missing = [s for s in splits if s not in self.split_init_times]
        if missing:
            raise PipelineConfigError(f"splits {missing} are not configured (splits: "
                                      f"{list(self.split_init_times)})")
        self.fit_splits = tuple(splits)

    def preloaded(self, splits: tuple[str, ...]) -> dict:
        """Every sample of ``splits`` as one batch of tensors (read once, then kept)."""
        key = tuple(splits)
        if key not in self._preloaded:
            train = set(key) <= set(self.fit_splits)
            pool = None  # a fresh draw per epoch (PreloadedBatches) takes from every member
            if train and self._draws_members():
                pool = MembersConfig(strategy="explicit",
                                     explicit=tuple(perturbed_members(self.store_members)))
            ds = self.dataset(key, mode="train" if train else "eval", members=pool,
                              member_nan=pool is not None)
            self._preloaded[key] = ds.__getitems__(list(range(len(ds))))
        return self._preloaded[key]

    def _draws_members(self) -> bool:
        """Training draws K random members per sample (``members.train_draw: random``)."""
        return self.config.members.train_draw == "random"

    def train_dataloader(self) -> DataLoader:
        b = self.config.batches
        if b.preload:
            draw = self.config.members.training().k if self._draws_members() else None
            return _batches(PreloadedBatches(self.preloaded(self.fit_splits), batch_size=b.batch_size,
                                             seed=b.seed, shuffle=True, draw=draw))

        def build() -> DataLoader:
            ds = self.dataset(self.fit_splits, mode="train")
            if self._patches():
                ds.whole = self.dataset(self.fit_splits, mode="eval")
            sampler = EpochSampler(len(ds), seed=b.seed, shuffle=True,
                                   samples_per_epoch=b.samples_per_epoch)
            return self._loader(ds, sampler=sampler)

        return self._cached(("train", self.fit_splits), build)

    def _patches(self) -> bool:
        """Training reads random patches of a grid."""
        return not self.point and self.config.batches.patch_size is not None

    def exact_fit_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """Every training sample once, for an exact fit (EMOS, a network's anchor): on a
        grid trained on random patches, the training init times' whole fields (or tiles,
        ``batches.tile_size``) as the evaluation loader reads them; otherwise the training
        loader's first epoch as it is without ``batches.samples_per_epoch`` (which sets a
        network epoch's length, never how much an exact fit reads).  Read through the
        training loader, so its workers also serve this pass (none start for it)."""
        keep = self.exact_fit_keep()
        if self.config.batches.preload:  # (never with patches: the config refuses them)
            batches = self.train_dataloader()
            return batches if keep is None else KeptInitTimes(
                batches, self._init_times(self.fit_splits)[keep])
        loader = self.train_dataloader()
        whole = loader.dataset.whole
        ds = loader.dataset if whole is None else whole
        per_init = len(ds) // max(1, len(ds.init_times))
        return self._owned(ExactPass(loader, None if whole is None else len(whole), keep=keep,
                                     per_init=per_init))

    def exact_fit_keep(self) -> np.ndarray | None:
        """Which of the training init times (those of :attr:`fit_splits`, in order) an exact
        fit reads: ``batches.exact_fit_init_times`` of them evenly spread (first and last
        included), as a flag per init time; ``None``: every one."""
        n_keep = self.config.batches.exact_fit_init_times
        n = len(self._init_times(self.fit_splits))
        if n_keep is None or n_keep >= n:
            return None
        keep = np.zeros(n, dtype=bool)
        keep[np.unique(np.round(np.linspace(0, n - 1, n_keep)).astype(np.int64))] = True
        return keep

    def exact_fit_words(self) -> str:
        """How many training init times an exact fit reads, for its log line ("" if all)."""
        keep = self.exact_fit_keep()
        if keep is None:
            return ""
        return (f"; from {int(keep.sum())} of {keep.size} training init times, evenly spread "
                "(pipeline.batches.exact_fit_init_times)")

    def _owned(self, batches: Any) -> Any:
        """``batches`` of overlapping tiles with the target NaN (no case) outside the points
        each tile owns (:func:`~pipeline.tiles.owned_windows`), so an exact fit counts every
        point once; whole fields as they are."""
        b = self.config.batches
        if not self._patches() or b.tile_size is None:
            return batches
        windows = owned_windows(self.grid_shape, tile=b.tile_size, overlap=b.tile_overlap)
        if len(windows) == 1:
            return batches
        return OwnedPoints(batches, windows)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.split_init_times or "val" in self.fit_splits:
            return []
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        b = self.config.batches
        if b.preload:
            return _batches(PreloadedBatches(self.preloaded((split,)), batch_size=b.batch_size,
                                             seed=b.seed, shuffle=False))
        return self._cached((split,), lambda: self._loader(self.dataset(split)))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class ExactPass:
    """One pass of a training loader for an exact fit (:meth:`EnsembleDataModule.exact_fit_dataloader`):
    its sampler yields the pass's items once (``keep``: those of the init times flagged,
    ``per_init`` items each), then the loader trains as before."""

    def __init__(self, loader: DataLoader, n_whole: int | None, *, keep: np.ndarray | None = None,
                 per_init: int = 1):
        self.loader, self.n_whole, self.keep, self.per_init = loader, n_whole, keep, per_init

    def _next(self) -> Any:
        sampler = self.loader.sampler
        sampler.exact_pass_next(self.n_whole, keep=self.keep, per_init=self.per_init)
        return sampler

    def __len__(self) -> int:
        sampler = self._next()
        try:
            n = len(sampler)
        finally:
            sampler.exact_pass_done()
        return -(-n // int(self.loader.batch_size or 1))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sampler = self._next()
        try:
            yield from self.loader
        finally:
            sampler.exact_pass_done()


class KeptInitTimes:
    """Preloaded training batches with the target NaN (no case) in the rows of init times
    other than ``kept`` (``batches.exact_fit_init_times``); the batches' length kept."""

    def __init__(self, batches: Any, kept: np.ndarray):
        self.batches = batches
        self.kept = torch.from_numpy(np.asarray(kept, dtype="datetime64[ns]").astype(np.int64))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            other = ~torch.isin(batch["init_time"], self.kept)
            target = batch["target"].clone()
            target[other] = float("nan")
            yield {**batch, "target": target}


class OwnedPoints:
    """Batches of tiles (``y0``/``x0`` their origins) whose targets are NaN outside each
    tile's owned window (:meth:`EnsembleDataModule._owned`); the batches' length kept."""

    def __init__(self, batches: Any, windows: dict[tuple[int, int], tuple[slice, slice]]):
        self.batches, self.windows = batches, windows
        #: each tile's points it does not own, ``[h, w]``, made on first use
        self.others: dict[tuple[int, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def _others(self, origin: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
        mask = self.others.get(origin)
        if mask is None:  # every batch's tiles have the one tile shape
            sy, sx = self.windows[origin]
            mask = torch.ones(shape, dtype=torch.bool)
            mask[sy, sx] = False
            self.others[origin] = mask
        return mask

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            target = batch["target"].clone()
            shape = tuple(target.shape[-2:])
            for i, origin in enumerate(zip(batch["y0"].tolist(), batch["x0"].tolist())):
                target[i][..., self._others(origin, shape)] = float("nan")
            yield {**batch, "target": target}


def _batches(source: PreloadedBatches) -> DataLoader:
    """A loader over ready-made batches (no collation, no workers)."""
    return DataLoader(source, batch_size=None, num_workers=0)
