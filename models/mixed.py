"""``mixed`` (ours, the default): a member encoder pooled across members, a spatial backbone,
and a Gaussian head anchored on the raw ensemble.

1. Member encoder, shared by all members: a per-point MLP over each member's normalised
   channels and its deviation from the ensemble mean (both divided by the channel std).
2. Pooling across members: mean and std (``ddof=0``) of the embeddings, so any K >= 1 works
   and member order does not matter.
3. Backbone over space (``unet`` or ``resnet``) on the pooled embedding, the normalised
   ensemble mean/std of every channel and the static fields. Point data (stations) use a
   per-point MLP instead, with a station embedding.
4. Head: ``mu = mu_ens + s * a``, ``sigma = s * exp(b) + floor`` (:meth:`PostProcessor.head`;
   with ``mean_shift="ensemble+local"`` also ``+ t * c``, ``t`` the target's local training
   std) with the last layer zero-initialised, so an untrained model is the raw ensemble of the
   target channel.

Layout: everything before the head is computed channels-last (``[B, (K,) H, W, features]``):
the per-point layers are plain matrix products on contiguous rows, pooling over members is a
reduction over an outer axis, and the backbone's convolutions get a ``channels_last`` input
(oneDNN's fast path on CPU; also the tensor-core layout on GPUs). Parameters and their
``state_dict`` are those of the 1x1-convolution formulation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from enspp.models.base import ModelSpec, PostProcessor, as_sequence, ensemble_moments
from enspp.models.mlp import StationEmbedding, pointwise_mlp
from enspp.models.unet import Conv1x1, build_backbone, zero_head


def pointwise_last(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply a :func:`~models.mlp.pointwise_mlp` stack to channels-last ``x`` (``[..., F]``)."""
    for layer in layers:
        if isinstance(layer, Conv1x1):
            x = F.linear(x, layer.weight.flatten(1), layer.bias)
        else:
            x = layer(x)
    return x


class MemberEncoder(nn.Module):
    """Per-member, per-point embedding pooled over members:
    ``[B, K, H, W, F] -> [B, H, W, 2E]`` (mean, then std with ``ddof=0``)."""

    def __init__(self, c_in: int, hidden: list[int], dim: int) -> None:
        super().__init__()
        self.mlp, width = pointwise_mlp(c_in, hidden)
        self.proj = Conv1x1(width, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        g = pointwise_last(self.mlp, features)  # [B, K, H, W, hidden]
        w, bias = self.proj.weight.flatten(1), self.proj.bias
        g_mean = g.mean(dim=1)
        mean = F.linear(g_mean, w, bias)  # the projection is affine: the embeddings' mean
        if g.shape[1] < 2:
            return torch.cat([mean, torch.zeros_like(mean)], dim=-1)
        # the embeddings' deviations from their mean are the (bias-free) projections of g's;
        # without an autograd graph the big per-member buffers are reused in place
        scratch = not g.requires_grad and g is not features
        dev = F.linear(g.sub_(g_mean.unsqueeze(1)) if scratch else g - g_mean.unsqueeze(1), w)
        var = (dev.square_() if scratch else dev.square()).mean(dim=1)
        return torch.cat([mean, var.add(1e-12).sqrt()], dim=-1)


class MixedModel(PostProcessor):
    """``mixed`` options: ``embed_dim`` (8), ``encoder_hidden`` ([16]), ``backbone``
    (``unet`` | ``resnet``), ``width`` (32), ``depth`` (U-Net, 2), ``n_blocks`` (ResNet, 4),
    ``point_hidden`` ([64, 64], stations), ``embedding_dim`` (station embedding, 4).

    The gridded defaults are the capacity chosen on the synthetic world's validation year
    (docs/results_synthetic.md, "Capacity chosen on validation": width 32 against 16, the
    8-wide embedding against a 16-wide one with a wider encoder); inference cost measured by
    ``tests/benchmarks/bench_models.py``."""

    ANCHORED = True
    DEFAULTS = {
        "embed_dim": 8,
        "encoder_hidden": [16],
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
        c_in = 2 * dim + 2 * n_c + spec.n_static_inputs
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
        self.out = zero_head(width, self.head_channels)

    def normalised_members(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Channels-last members in units of the channel statistics, ``[B, K, H, W, C]``."""
        x = batch["inputs"].permute(0, 1, 3, 4, 2).contiguous()
        c_mean, c_std = (s.permute(0, 2, 3, 1).unsqueeze(1) for s in self.channel_stats(batch))
        return (x - c_mean) / c_std

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.normalised_members(batch)
        # the normalised ensemble mean/std of every channel: (mean - c_mean) / c_std, std / c_std
        z_mean, z_std = ensemble_moments(z, member_dim=1)
        # encoder input per member: z and its deviation from the ensemble mean
        features = torch.cat([z, z - z_mean.unsqueeze(1)], dim=-1)
        parts = [self.encoder(features), z_mean, z_std, self.static(batch).permute(0, 2, 3, 1)]
        if self.embedding is not None:
            parts.append(self.embedding(batch["x0"]).permute(0, 2, 3, 1))
        h = torch.cat(parts, dim=-1)  # [B, H, W, features]
        if self.spec.is_point:
            y = pointwise_last(self.backbone, h)
        else:  # an NCHW view of channels_last memory in and out
            y = self.backbone(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        ab = F.linear(y, self.out.weight.flatten(1), self.out.bias).permute(0, 3, 1, 2)
        return self.head_from(ab.contiguous(), batch)
