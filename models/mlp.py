"""``mlp``: a per-point distributional regression network (Rasp & Lerch 2018).

Inputs per point: the normalised ensemble mean and std of every channel, the static fields,
and for point data a learned station embedding (looked up by the station index in ``x0``).
Implemented with 1x1 convolutions, so it runs on grids and stations alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from enspp.models.base import ModelSpec, ModelSpecError, PostProcessor, as_sequence
from enspp.models.unet import Conv1x1, zero_head


def pointwise_mlp(c_in: int, hidden: list[int]) -> tuple[nn.Sequential, int]:
    """1x1-convolution MLP with GELU; returns the stack and its output width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [Conv1x1(c_in, width), nn.GELU()]
        c_in = width
    return nn.Sequential(*layers), c_in


class StationEmbedding(nn.Module):
    """A learned vector per station, as ``[B, dim, 1, 1]`` from the station index ``x0``."""

    def __init__(self, n_stations: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_stations, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        idx = x0.to(device=self.embedding.weight.device, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.embedding.num_embeddings):
            raise ModelSpecError(
                f"station index x0 out of range: got {int(idx.min())}..{int(idx.max())}, "
                f"allowed 0..{self.embedding.num_embeddings - 1}"
            )
        return self.embedding(idx)[:, :, None, None]


class MLPModel(PostProcessor):
    """``mlp`` options: ``hidden`` (int or list of widths, default ``[64, 64]``) and
    ``embedding_dim`` (station embedding size for point data; 0 disables)."""

    ANCHORED = True
    DEFAULTS = {"hidden": [64, 64], "embedding_dim": 4}

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        c_in = 2 * len(spec.channels) + spec.n_static_inputs
        emb = int(self.options["embedding_dim"]) if spec.is_point else 0
        self.embedding = StationEmbedding(spec.grid_shape[0], emb) if emb > 0 else None
        self.body, width = pointwise_mlp(c_in + emb, list(as_sequence(self.options["hidden"], "hidden")))
        self.out = zero_head(width, self.head_channels)

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = [self.ensemble_features(batch), self.static(batch)]
        if self.embedding is not None:
            parts.append(self.embedding(batch["x0"]))
        return self.head_from(self.out(self.body(torch.cat(parts, dim=1))), batch)
