"""Training progress in the style of every other step (:mod:`data.progress`): one bar over
the run's training batches, ``epoch 3/8`` beside it with the last validation scores, named
for what they are; and the run's summary line.

Lightning's own bar is not used: it writes to stdout (into logs, where it is noise), shows
the epoch from 0 (``Epoch 7/7`` for the eighth of eight) and truncates metric names such as
``val/crps_gaussian``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from enspp.data.progress import Step


def metric_words(name: str) -> str:
    """A logged metric name in words: ``val/crps_gaussian`` -> ``val CRPS (gaussian,
    normalised)``; per-target metrics (``.../t2m``) are in the target's units."""
    head, _, target = name.partition("/crps_")
    split = head.split("/")[-1] if head else ""
    est, _, per = target.partition("/")
    raw = est.startswith("raw_")
    est = est.removeprefix("raw_")
    what = f"{split} CRPS{' of the raw ensemble' if raw else ''}"
    return f"{what} ({est}, {'units of ' + per if per else 'normalised'})"


class TrainProgress(L.Callback):
    """A bar over every training batch of the run (``bar``; hidden when stderr is not a
    terminal) with ``epoch e/E`` (from 1) and the latest normalised train/val CRPS and the
    raw ensemble's on the same scale; remembers the epoch (from 1) of the best validation
    CRPS (:attr:`best_epoch`)."""

    def __init__(self, what: str, *, monitor: str, raw: str, bar: bool = True) -> None:
        self.what = what
        self.monitor = monitor
        self.raw = raw
        self.bar = bar
        self.best_epoch: int | None = None
        self._best = math.inf
        self._step: Step | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_epoch = trainer.num_training_batches
        total = None if not math.isfinite(per_epoch) else int(per_epoch) * int(trainer.max_epochs)
        self._step = Step(self.what, total=total, unit="batch", bar=self.bar)
        if trainer.current_epoch and total:  # a resumed run starts where it stopped
            self._step.update(int(per_epoch) * int(trainer.current_epoch))

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        if self._step is not None:
            self._step.update()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._note(trainer)

    def on_validation_end(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get(self.monitor)
        if val is not None and float(val) < self._best:
            self._best, self.best_epoch = float(val), trainer.current_epoch + 1
        self._note(trainer)

    def state_dict(self) -> dict[str, Any]:  # a resumed run remembers its best epoch
        return {"best_epoch": self.best_epoch, "best": self._best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self._best = state.get("best_epoch"), state.get("best", math.inf)

    def _note(self, trainer: L.Trainer) -> None:
        if self._step is None:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {min(trainer.current_epoch + 1, trainer.max_epochs)}/{trainer.max_epochs}"]
        train = m.get(self.monitor.replace("val/", "train/"))
        val, raw = m.get(self.monitor), m.get(self.raw)
        if train is not None:
            parts.append(f"train {float(train):.4g}")
        if val is not None:
            parts.append(f"val {float(val):.4g}" + (f" (raw {float(raw):.4g})" if raw is not None else ""))
        if len(parts) > 1:
            parts.append("normalised CRPS")
        self._step.note(" · ".join(parts))

    def on_train_end(self, *_: Any) -> None:
        self._close()

    def on_exception(self, *_: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._step is not None:
            self._step.close()
            self._step = None


def train_summary(*, epochs: int, best_epoch: int | None, monitor: str,
                  best: float, raw_name: str, raw: float | None) -> str:
    """The middle of the run's summary line: epochs, the best validation CRPS and the raw
    ensemble's, both named for what they are."""
    best_at = f", best at epoch {best_epoch}" if best_epoch else ""
    text = (f"{epochs} epoch{'s' if epochs != 1 else ''}{best_at}; best {metric_words(monitor)} "
            f"{best:.4g}")
    if raw is not None:
        text += f", {metric_words(raw_name)} {raw:.4g}"
    return text
