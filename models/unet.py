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


def fast_path(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the oneDNN inference path: no autograd graph, CPU, float32."""
    return (FUSED_CONV_GELU and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32)


def _conv_gelu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``gelu(conv(x))`` as one oneDNN primitive."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "gelu", [None], "none")


def run_block(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a :func:`conv_block`. In inference on CPU (no autograd graph, float32)
    each convolution and its GELU run as one oneDNN primitive: the activation is applied while
    the output tile is in cache instead of in a second pass over a full-resolution tensor
    (measured: the width-32 U-Net's forward on a 361x720 field 10-20 % faster on 2 cores);
    the values are the unfused ones to float rounding (tests/test_models.py)."""
    if not fast_path(x):
        return block(x)
    for conv in (block[0], block[2]):
        x = _conv_gelu(conv, x)
    return x


def upsampled_weight(weight: torch.Tensor) -> torch.Tensor:
    """The transposed-convolution weight (``[C_in, C_out, 4, 4]``, stride 2, padding 1) that
    computes a 3x3 convolution (padding 1) of the 2x nearest-upsampled input at the input's
    resolution.

    Along one axis, output row ``2i`` of the convolution reads upsampled rows ``2i-1, 2i,
    2i+1``, i.e. input rows ``i-1, i, i`` (taps ``w0``, ``w1 + w2``), and row ``2i+1`` reads
    input rows ``i, i, i+1`` (taps ``w0 + w1``, ``w2``); zero padding of the upsampled input
    is zero padding of the input. The transposed convolution's taps ``3, 1`` (even rows) and
    ``2, 0`` (odd rows) are those sums: 4 multiply-adds per output and input channel pair
    instead of 9, without the upsampled tensor."""
    def axis(w: torch.Tensor, dim: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)

    return axis(axis(weight, 2), 3).transpose(0, 1).contiguous()


def run_up_block(block: nn.Sequential, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``block(cat([upsample(y), skip]))`` (2x nearest upsampling, :class:`UNet`'s decoder).

    In inference on CPU (:func:`run_block`'s conditions, 3x3 convolutions with padding 1) the
    first convolution is split along its input channels: the part reading the upsampled
    ``y`` is a stride-2 transposed convolution of ``y`` itself (:func:`upsampled_weight`:
    4/9 of the multiply-adds), the skip part a convolution added into its output by oneDNN;
    neither the upsampled tensor nor the concatenation is built (measured: the decoder
    blocks of the width-32 U-Net on a 361x720 field ~30 % faster on 2 cores). The values
    are the plain path's to float rounding (tests/test_models.py)."""
    first = block[0]
    if (not fast_path(y) or first.kernel_size != (3, 3) or first.padding != (1, 1)
            or first.stride != (1, 1) or first.dilation != (1, 1) or first.groups != 1
            or skip.shape[-2:] != (2 * y.shape[-2], 2 * y.shape[-1])):
        return run_block(block, torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skip], dim=1))
    c_y = y.shape[1]
    weight = first.weight
    out = torch.ops.mkldnn._convolution_transpose_pointwise(
        y, upsampled_weight(weight[:, :c_y]), None, [1, 1], [0, 0], [2, 2], [1, 1], 1, "none", [], "")
    out = out.contiguous(memory_format=torch.channels_last)
    torch.ops.mkldnn._convolution_pointwise_.binary(
        out, skip, weight[:, c_y:].contiguous(), first.bias, [1, 1], [1, 1], [1, 1], 1, "add",
        1.0, None, [], None)
    # GELU in place through the NHWC view: a contiguous tensor takes oneDNN's GELU (the
    # fused convolutions' own), a channels_last one ATen's, ~1.5x slower
    torch.ops.aten.gelu_(out.permute(0, 2, 3, 1))
    return _conv_gelu(block[2], out)


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
        if fast_path(x):  # oneDNN's preferred layout (a no-op for mixed's input)
            x = x.contiguous(memory_format=torch.channels_last)
        skips = [run_block(self.inc, x)]
        for block in self.down:
            skips.append(run_block(block, F.avg_pool2d(skips[-1], 2)))
        y = skips.pop()
        for block in reversed(self.up):
            y = run_up_block(block, y, skips.pop())
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
