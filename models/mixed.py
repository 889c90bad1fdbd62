"""``mixed`` (ours, the default): a member encoder pooled across members, a spatial backbone,
and a Gaussian head anchored on the raw ensemble.

1. Member encoder, shared by all members: a per-point MLP (1x1 convolutions) over each
   member's normalised channels and its deviation from the ensemble mean (both divided by the
   channel std).
2. Pooling across members: mean and std (``ddof=0``) of the embeddings, so any K >= 1 works
   and member order does not matter.
3. Backbone over space (``unet`` or ``resnet``) on the pooled embedding, the normalised
   ensemble mean/std of every channel and the static fields. Point data (stations) use a
   per-point MLP instead, with a station embedding.
4. Head: ``mu = mu_ens + s * a``, ``sigma = s * exp(b) + floor`` (:meth:`PostProcessor.head`)
   with the last layer zero-initialised, so an untrained model is the raw ensemble of the
   target channel.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.base import ModelSpec, PostProcessor, as_sequence
from models.mlp import StationEmbedding, pointwise_mlp
from models.unet import Conv1x1, build_backbone, zero_head


class MemberEncoder(nn.Module):
    """Per-member, per-point embedding pooled over members: ``[B,K,F,H,W] -> [B,2E,H,W]``."""

    def __init__(self, c_in: int, hidden: list[int], dim: int) -> None:
        super().__init__()
        self.mlp, width = pointwise_mlp(c_in, hidden)
        self.proj = Conv1x1(width, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, k = features.shape[:2]
        e = self.proj(self.mlp(features.flatten(0, 1)))
        e = e.reshape(b, k, *e.shape[1:])
        mean = e.mean(dim=1)
        std = e.var(dim=1, unbiased=False).add(1e-12).sqrt() if k > 1 else torch.zeros_like(mean)
        return torch.cat([mean, std], dim=1)


class MixedModel(PostProcessor):
    """``mixed`` options: ``embed_dim`` (32), ``encoder_hidden`` ([32]), ``backbone``
    (``unet`` | ``resnet``), ``width`` (32), ``depth`` (U-Net, 2), ``n_blocks`` (ResNet, 4),
    ``point_hidden`` ([64, 64], stations), ``embedding_dim`` (station embedding, 4)."""

    DEFAULTS = {
        "embed_dim": 32,
        "encoder_hidden": [32],
        "backbone": "unet",
        "width": 32,
        "depth": 2,
        "n_blocks": 4,
        "point_hidden": [64, 64],
        "embedding_dim": 4,
    }

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        n_c, o = len(spec.channels), self.options
        dim = int(o["embed_dim"])
        self.encoder = MemberEncoder(2 * n_c, list(as_sequence(o["encoder_hidden"], "encoder_hidden")), dim)
        c_in = 2 * dim + 2 * n_c + len(spec.static_names)
        self.embedding: StationEmbedding | None = None
        if spec.is_point:
            emb = int(o["embedding_dim"])
            if emb > 0:
                self.embedding = StationEmbedding(spec.grid_shape[0], emb)
            self.backbone, width = pointwise_mlp(c_in + emb, list(as_sequence(o["point_hidden"], "point_hidden")))
        else:
            self.backbone = build_backbone(
                str(o["backbone"]), c_in, width=int(o["width"]), depth=int(o["depth"]), n_blocks=int(o["n_blocks"])
            )
            width = self.backbone.out_channels
        self.out = zero_head(width, 2 * len(spec.targets))

    def member_features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, K, 2C, H, W]``: normalised member values and deviations from the ensemble mean."""
        x = batch["inputs"]
        c_mean, c_std = self.channel_stats(batch)
        c_mean, c_std = c_mean.unsqueeze(1), c_std.unsqueeze(1)
        return torch.cat([(x - c_mean) / c_std, (x - x.mean(dim=1, keepdim=True)) / c_std], dim=2)

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = [self.encoder(self.member_features(batch)), self.ensemble_features(batch), self.static(batch)]
        if self.embedding is not None:
            parts.append(self.embedding(batch["x0"]))
        a, b = self.out(self.backbone(torch.cat(parts, dim=1))).chunk(2, dim=1)
        return self.head(a, b, batch)
