"""Choosing weights in memory: per-member early stopping, and snapshots for a refit.

``models.train`` uses these callbacks for seed ensembles and refits (``train.seeds > 1`` or
``train.refit``), where the usual checkpoint callbacks do not fit: each member of a seed
ensemble stops at its own best validation epoch (as if trained alone), and a refit on
training + validation data runs each member for the epoch count chosen for it.  Best weights
are kept in memory (no checkpoint file per epoch: small models fit full batches in a few
milliseconds an epoch, and writing files would cost more than the fit).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def members_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The members of a seed ensemble, or the model itself."""
    return list(model.members) if hasattr(model, "members") else [model]


class MemberSelection(Callback):
    """Per member: the best validation loss, its weights and epoch; stop when every member
    went ``patience`` epochs without improving by more than ``min_delta``."""

    def __init__(self, n: int, *, patience: int | None, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best = [math.inf] * n
        self.best_epoch = [0] * n
        self.stale = [0] * n
        self.states: list[dict | None] = [None] * n

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        losses = pl_module.member_val_losses()
        if losses is None:
            return
        members = members_of(pl_module.model)
        epoch = trainer.current_epoch + 1
        for i, value in enumerate(losses.tolist()):
            if value < self.best[i] - self.min_delta:
                self.best[i], self.best_epoch[i], self.stale[i] = value, epoch, 0
                self.states[i] = copy.deepcopy(members[i].state_dict())
            else:
                self.stale[i] += 1
        if self.patience is not None and all(s >= self.patience for s in self.stale):
            trainer.should_stop = True

    def start_from(self, model: torch.nn.Module, losses: Sequence[float]) -> None:
        """Make the untrained members (``epoch 0``, e.g. networks that are their fitted anchor
        EMOS) the candidates to beat, with their validation ``losses``."""
        for i, (member, value) in enumerate(zip(members_of(model), losses)):
            self.best[i], self.best_epoch[i], self.stale[i] = float(value), 0, 0
            self.states[i] = copy.deepcopy(member.state_dict())

    def restore(self, model: torch.nn.Module) -> None:
        """Load each member's best weights into ``model``."""
        for member, state in zip(members_of(model), self.states):
            if state is not None:
                member.load_state_dict(state)


class EpochSnapshots(Callback):
    """Keep member ``i``'s weights at the end of epoch ``epochs[i]`` (a refit)."""

    def __init__(self, epochs: Sequence[int]) -> None:
        self.epochs = [int(e) for e in epochs]
        self.states: list[dict | None] = [None] * len(self.epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        for i, member in enumerate(members_of(pl_module.model)):
            if self.epochs[i] == epoch:
                self.states[i] = copy.deepcopy(member.state_dict())

    def snapshot_initial(self, model: torch.nn.Module) -> None:
        """Keep the untrained weights of the members whose epoch count is 0 (they stay their
        anchor EMOS)."""
        for i, member in enumerate(members_of(model)):
            if self.epochs[i] == 0:
                self.states[i] = copy.deepcopy(member.state_dict())

    def restore(self, model: torch.nn.Module) -> None:
        missing = [i for i, s in enumerate(self.states) if s is None]
        if missing:
            raise RuntimeError(f"refit: members {missing} never reached their epochs "
                               f"{[self.epochs[i] for i in missing]}")
        for member, state in zip(members_of(model), self.states):
            member.load_state_dict(state)
