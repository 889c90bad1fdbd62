"""Seed ensembles: several networks of one spec, trained from different seeds, one forecast.

``ModelSpec.seeds = N`` builds :class:`SeedEnsemble`: N members of the same model, each
initialised from its own seed and trained independently (the training loss is the sum of the
members' losses, so each member gets exactly the gradient it would get alone; each member
keeps the weights of its own best validation epoch, see ``models.train``).  The forecast is the
**mean of the members' distribution parameters** (``mu``/``sigma``; ``loc``/``scale`` for a
censored distribution, whose mean and std are then those of the averaged parameters), not
a mixture: averaging the parameters scored as well as the mixture on the station data
(docs/results.md) and keeps the product a single distribution of the same family.

It is a model like any other for the rest of the package: one checkpoint, ``predict``,
the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from enspp.models.base import ModelSpec, build_model
from enspp.models.distributions import censored_logistic_moments


class SeedEnsemble(nn.Module):
    """``spec.seeds`` members of ``spec`` (with ``seeds=1``); ``init_seeds`` seeds each member's
    initialisation (default: the current random state, e.g. when loading a checkpoint)."""

    def __init__(self, spec: ModelSpec, *, init_seeds: Sequence[int] | None = None) -> None:
        super().__init__()
        if init_seeds is not None and len(init_seeds) != spec.seeds:
            raise ValueError(f"{spec.seeds} members need {spec.seeds} seeds, got {len(init_seeds)}")
        self.spec = spec
        single = dataclasses.replace(spec, seeds=1)
        members = []
        for i in range(spec.seeds):
            if init_seeds is not None:
                torch.manual_seed(int(init_seeds[i]))
            members.append(build_model(single))
        self.members = nn.ModuleList(members)
        self.distribution = spec.distribution
        self.crps_estimator = members[0].crps_estimator

    @property
    def norm(self) -> nn.Module:
        """The normalisation buffers (the same in every member)."""
        return self.members[0].norm

    def member_outputs(self, batch: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [m(batch) for m in self.members]

    def combine(self, outs: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The mean of each distribution parameter over the members' outputs."""
        out = {k: torch.stack([o[k] for o in outs]).mean(dim=0) for k in outs[0]}
        if self.distribution == "censored_logistic":
            with torch.no_grad():
                out["mu"], out["sigma"] = censored_logistic_moments(out["loc"], out["scale"])
        return out

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.combine(self.member_outputs(batch))

    def loss(self, out: Mapping[str, torch.Tensor], target: torch.Tensor, *,
             estimator: str | None = None) -> torch.Tensor:
        """The closed-form CRPS of a (combined) output, as :meth:`PostProcessor.loss`."""
        return self.members[0].loss(out, target, estimator=estimator)

    def member_losses(self, batch: Mapping[str, torch.Tensor],
                      outs: Sequence[Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """``[N]``: each member's loss on ``batch``."""
        outs = self.member_outputs(batch) if outs is None else outs
        return torch.stack([m.loss(o, batch["target"]) for m, o in zip(self.members, outs)])

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the members' losses (each member's gradient is its own loss's)."""
        return self.member_losses(batch).sum()

    def raw_target_members(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.members[0].raw_target_members(batch)

    def raw_loss(self, batch: Mapping[str, torch.Tensor], *, estimator: str = "fair") -> torch.Tensor:
        return self.members[0].raw_loss(batch, estimator=estimator)
