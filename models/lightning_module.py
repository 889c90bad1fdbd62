"""The LightningModule: a PostProcessor trained on its distribution's closed-form CRPS.

Logged (per epoch, CSV/TensorBoard): ``train/crps_<estimator>`` and ``val/crps_<estimator>``
(the loss: CRPS over valid targets divided by each target's global std, so targets in
different units weigh alike), the raw ensemble's ``val/crps_raw_<fair|standard>`` on the same
scale, and per target in physical units ``val/crps_<estimator>/<target>`` and
``val/crps_raw_<fair|standard>/<target>`` (``per_target_logs=False`` leaves these out for a
single target, where they are the normalised values times the target's training std: each
``log`` call costs milliseconds, as much as a whole full-batch epoch of a small model).  Early stopping and the best checkpoint follow
``val/crps_<estimator>`` (:func:`monitor_name`): validation, never test.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from enspp.models.checkpoint import METADATA_KEY, CheckpointMetadata
from enspp.models.config import TrainConfig
from enspp.models.losses import crps_ensemble, distribution_crps, reduce_crps

#: checkpoint entry holding the RNG states, so a resumed run draws what an uninterrupted one would
RNG_KEY = "enspp_rng_states"


def monitor_name(distribution: str) -> str:
    """The validation metric early stopping and the best checkpoint follow."""
    return f"val/crps_{distribution}"


class PostProcessingModule(L.LightningModule):
    """Wrap ``model`` (a PostProcessor with ``spec``) with its loss, optimiser and metadata."""

    def __init__(self, model: torch.nn.Module, *, train_config: TrainConfig,
                 metadata: CheckpointMetadata | None = None, per_target_logs: bool = True) -> None:
        super().__init__()
        self.per_target_logs = per_target_logs
        self.model = model
        self.train_config = train_config
        self.metadata = metadata
        self.distribution: str = model.spec.distribution
        self.targets: tuple[str, ...] = tuple(model.spec.targets)
        #: the training CRPS of a model fitted without epochs (an exact EMOS fit), logged
        #: beside the validation metrics
        self.train_loss: float | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    @property
    def _sync(self) -> bool:
        """Reduce logged values across processes only when there are several."""
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1

    # -- losses ---------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if hasattr(self.model, "training_loss"):  # a seed ensemble: each member its own loss
            loss = self.model.training_loss(batch)
            shown = loss.detach() / len(self.model.members)
        else:
            loss = shown = self.model.loss(self(batch), batch["target"])
        self.log(monitor_name(self.distribution).replace("val/", "train/"), shown,
                 on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["target"].shape[0], sync_dist=self._sync)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._member_sums: torch.Tensor | None = None
        self._member_rows = 0

    def member_val_losses(self) -> torch.Tensor | None:
        """``[N]``: each member's validation loss over the epoch just validated (one value for
        a single model); weighted by batch rows as the logged epoch value is."""
        sums = getattr(self, "_member_sums", None)
        return None if sums is None or not self._member_rows else sums / self._member_rows

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        target = batch["target"]
        n = target.shape[0]
        if hasattr(self.model, "member_outputs"):
            outs = self.model.member_outputs(batch)
            out = self.model.combine(outs)
            member = self.model.member_losses(batch, outs).detach()
        else:
            out = self(batch)
            member = self.model.loss(out, target).detach()[None]
        sums = getattr(self, "_member_sums", None)
        self._member_sums = member * n if sums is None else sums + member * n
        self._member_rows = getattr(self, "_member_rows", 0) + n
        est = self.train_config.ensemble_estimator
        raw = self.model.raw_target_members(batch)
        log = dict(on_step=False, on_epoch=True, batch_size=n, sync_dist=self._sync)
        self.log(monitor_name(self.distribution), self.model.loss(out, target), prog_bar=True,
                 **log)
        self.log(f"val/crps_raw_{est}", self.model.raw_loss(batch, estimator=est), **log)
        ones = torch.ones(1, device=target.device)
        per_target = self.per_target_logs or len(self.targets) > 1
        for t, name in enumerate(self.targets if per_target else ()):
            y = target[:, t:t + 1]
            sub = {k: v[:, t:t + 1] for k, v in out.items() if v.dim() == target.dim()}
            dist_crps = functools.partial(distribution_crps, sub, distribution=self.distribution)
            raw_crps = functools.partial(crps_ensemble, raw[:, :, t:t + 1], estimator=est)
            self.log(f"{monitor_name(self.distribution)}/{name}",
                     reduce_crps(dist_crps, y, target_scale=ones), **log)
            self.log(f"val/crps_raw_{est}/{name}", reduce_crps(raw_crps, y, target_scale=ones), **log)

    def on_validation_epoch_end(self) -> None:
        if self.train_loss is not None:
            self.log(monitor_name(self.distribution).replace("val/", "train/"), float(self.train_loss))

    def configure_optimizers(self) -> Any:
        cfg = self.train_config
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = cls(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        floor = cfg.learning_rate * cfg.lr_min_factor
        if cfg.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs,
                                                               eta_min=floor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if cfg.lr_schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=cfg.lr_plateau_factor,
                patience=cfg.lr_plateau_patience, min_lr=floor)
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": sched, "interval": "epoch", "monitor": monitor_name(self.distribution)}}
        return opt

    # -- checkpoint hooks -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.metadata is not None:
            checkpoint[METADATA_KEY] = self.metadata.to_checkpoint()
        checkpoint[RNG_KEY] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_KEY])


def collect_rng_states() -> dict[str, Any]:
    """The CPU RNG states of torch, numpy and Python as plain types and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(state), "gauss": gauss},
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
