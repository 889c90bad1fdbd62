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
from enspp.models.unet import Conv1x1, build_backbone, fast_path, zero_head


def _onednn_rows(x: torch.Tensor) -> bool:
    """Whether channels-last ``x`` (``[..., H, W, F]``, a grid) takes :func:`linear_last`'s
    oneDNN path: inference on CPU in float32 (:func:`models.unet.run_block`'s conditions)."""
    return (x.dim() >= 4 and x.shape[-3] * x.shape[-2] > 1 and x.is_contiguous()
            and fast_path(x))


def linear_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight.flatten(1), bias)`` over the last dim of channels-last ``x``
    (then GELU when ``gelu``), ``weight`` a 1x1 convolution's ``[F_out, F, 1, 1]``.

    In inference on CPU (:func:`_onednn_rows`) it is that 1x1 convolution run by oneDNN
    on ``x`` seen as an NHWC image (the activation fused): measured on a 361x720 field of
    K=5 members on 2 cores, the encoder's first layer (6 -> 16 and GELU) 44 -> 31 ms, its
    projection (16 -> 8) 25 -> 11 ms: a GEMM with so few output columns runs far below
    the machine's rate, and the separate GELU is another pass through memory. The values
    are :func:`F.linear`'s to float rounding (tests/test_models.py)."""
    if not _onednn_rows(x):
        y = F.linear(x, weight.flatten(1), bias)
        return F.gelu(y) if gelu else y
    *lead, h, w, f = x.shape
    image = x.reshape(-1, h, w, f).permute(0, 3, 1, 2)  # [N, F, H, W], channels_last
    w4 = weight.reshape(weight.shape[0], f, 1, 1)
    y = torch.ops.mkldnn._convolution_pointwise(
        image, w4, bias, [0, 0], [1, 1], [1, 1], 1, "gelu" if gelu else "none",
        [None] if gelu else [], "none" if gelu else "")
    return y.permute(0, 2, 3, 1).reshape(*lead, h, w, weight.shape[0])


def pointwise_last(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply a :func:`~models.mlp.pointwise_mlp` stack to channels-last ``x`` (``[..., F]``);
    a layer and the GELU after it are one :func:`linear_last`."""
    items = list(layers)
    i = 0
    while i < len(items):
        layer = items[i]
        if isinstance(layer, Conv1x1):
            nxt = items[i + 1] if i + 1 < len(items) else None
            gelu = isinstance(nxt, nn.GELU) and nxt.approximate == "none"
            x = linear_last(x, layer.weight, layer.bias, gelu=gelu)
            i += 2 if gelu else 1
        else:
            x = layer(x)
            i += 1
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
        w, bias = self.proj.weight, self.proj.bias
        scratch = not g.requires_grad and g is not features
        if scratch and g.shape[1] >= 2:
            # inference: every member projected first (E < hidden values per member from
            # here on), then the embeddings' mean and their deviations from it, in place
            e = linear_last(g, w, None)  # [B, K, H, W, E], without the bias
            e_mean = e.mean(dim=1)
            var = e.sub_(e_mean.unsqueeze(1)).square_().mean(dim=1)
            return torch.cat([e_mean.add_(bias), var.add_(1e-12).sqrt_()], dim=-1)
        g_mean = g.mean(dim=1)
        mean = linear_last(g_mean, w, bias)  # the projection is affine: the embeddings' mean
        if g.shape[1] < 2:
            return torch.cat([mean, torch.zeros_like(mean)], dim=-1)
        # the embeddings' deviations from their mean are the (bias-free) projections of g's;
        # without an autograd graph the big per-member buffers are reused in place
        dev = linear_last(g.sub_(g_mean.unsqueeze(1)) if scratch else g - g_mean.unsqueeze(1), w, None)
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
        ab = linear_last(y, self.out.weight, self.out.bias).permute(0, 3, 1, 2)
        return self.head_from(ab.contiguous(), batch)
