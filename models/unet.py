"""Spatial backbones (U-Net, ResNet) and the paper-style ``unet`` model.

Both backbones are fully convolutional (train on patches, infer on whole fields) and use no
normalisation layer: GroupNorm/InstanceNorm would make a patch's output depend on the patch
extent, BatchNorm on the batch. The U-Net pads ``H``/``W`` up to a multiple of ``2**depth``
(replicate padding) and crops the output back, so any field size works.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from enspp.models.base import ModelSpec, ModelSpecError, PostProcessor


def conv_block(c_in: int, c_out: int, *, dilation: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with GELU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=dilation, dilation=dilation),
        nn.GELU(),
    )


def _fused_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


#: oneDNN's convolution with a fused activation (the primitive torch.compile uses on CPU)
FUSED_CONV_GELU = _fused_available()


def run_block(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a :func:`conv_block`. In inference on CPU (no autograd graph, float32)
    each convolution and its GELU run as one oneDNN primitive: the activation is applied while
    the output tile is in cache instead of in a second pass over a full-resolution tensor
    (measured: the width-32 U-Net's forward on a 361x720 field 10-20 % faster on 2 cores);
    the values are the unfused ones to float rounding (tests/test_models.py)."""
    if (not FUSED_CONV_GELU or torch.is_grad_enabled() or x.device.type != "cpu"
            or x.dtype != torch.float32):
        return block(x)
    for conv in (block[0], block[2]):
        x = torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups, "gelu", [None], "none")
    return x


class UNet(nn.Module):
    """U-Net: ``depth`` average-pool downsamplings, widths ``width * 2**level``, nearest
    upsampling and skip concatenation. Output: ``width`` channels at the input resolution."""

    def __init__(self, c_in: int, *, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        if depth < 0 or width < 1:
            raise ModelSpecError(f"U-Net needs depth >= 0 and width >= 1, got depth={depth}, width={width}")
        self.depth = depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.inc = conv_block(c_in, widths[0])
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(conv_block(widths[i + 1] + widths[i], widths[i]) for i in range(depth))
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = [run_block(self.inc, x)]
        for block in self.down:
            skips.append(run_block(block, F.avg_pool2d(skips[-1], 2)))
        y = skips.pop()
        for block in reversed(self.up):
            y = run_block(block, torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skips.pop()], dim=1))
        return y[..., :h, :w]


class ResNet(nn.Module):
    """Residual stack at full resolution: a 3x3 stem, ``n_blocks`` blocks (two 3x3 convs plus
    identity) with dilations cycling 1, 2, 4 for a wide receptive field."""

    def __init__(self, c_in: int, *, width: int = 32, n_blocks: int = 4) -> None:
        super().__init__()
        if n_blocks < 0 or width < 1:
            raise ModelSpecError(f"ResNet needs n_blocks >= 0 and width >= 1, got {n_blocks}, {width}")
        self.stem = nn.Conv2d(c_in, width, 3, padding=1)
        self.blocks = nn.ModuleList(conv_block(width, width, dilation=2 ** (i % 3)) for i in range(n_blocks))
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.stem(x))
        for block in self.blocks:
            y = y + run_block(block, y)
        return y


def build_backbone(kind: str, c_in: int, *, width: int, depth: int, n_blocks: int) -> nn.Module:
    """``unet`` or ``resnet``."""
    if kind == "unet":
        return UNet(c_in, width=width, depth=depth)
    if kind == "resnet":
        return ResNet(c_in, width=width, n_blocks=n_blocks)
    raise ModelSpecError(f"option backbone={kind!r}: expected 'unet' or 'resnet'")


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution computed as a matrix product over the channel dim.

    Same parameters (and ``state_dict``) as ``nn.Conv2d(c_in, c_out, 1)``, but PyTorch's CPU
    convolution is ~300x slower than ``F.linear`` on point data (``H = W = 1``, large batch):
    measured 28 ms vs 0.1 ms for a ``[6400, 2, 1, 1] -> 32`` layer.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias)
        return y.movedim(-1, 1)


def zero_head(c_in: int, c_out: int) -> nn.Conv2d:
    """A 1x1 convolution initialised to zero (the model starts as the raw ensemble)."""
    conv = Conv1x1(c_in, c_out)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class UNetModel(PostProcessor):
    """``unet``: a U-Net on the normalised ensemble mean and std of every channel plus static
    fields, predicting the mean correction ``a`` and log spread factor ``b`` of each target
    (and ``c`` with ``mean_shift="ensemble+local"``; :meth:`PostProcessor.head`)."""

    ANCHORED = True
    DEFAULTS = {"width": 32, "depth": 2}

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if spec.is_point:
            raise ModelSpecError("model 'unet' needs gridded data; use 'mlp' or 'mixed' for stations")
        c_in = 2 * len(spec.channels) + spec.n_static_inputs
        self.backbone = UNet(c_in, width=int(self.options["width"]), depth=int(self.options["depth"]))
        self.out = zero_head(self.backbone.out_channels, self.head_channels)

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = torch.cat([self.ensemble_features(batch), self.static(batch)], dim=1)
        return self.head_from(self.out(self.backbone(x)), batch)
