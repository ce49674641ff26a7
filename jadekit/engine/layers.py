"""Faster, equivalent forms of standard layers, and the literal form to check them against."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

# _PHASE_TAPS[a, m, k]: 1 where kernel row k of the 3x3 conv, applied to a nearest-2x upsampled
# image at an output row of parity a, reads the low-resolution row at offset m - 1.
_PHASE_TAPS = torch.tensor([
    [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]],  # even rows: k=0 -> offset -1; k=1, 2 -> 0
    [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # odd rows:  k=0, 1 -> 0;  k=2 -> +1
])


class UpsampleConv2d(nn.Conv2d):
    """Nearest 2x upsampling, then a 3x3 convolution (padding 1), computed at the input's resolution.

    Each output pixel of the pair reads low-resolution pixels with weights that depend only on
    its position (phase) inside its 2x2 block. So the pair is one 3x3 convolution of the input
    with 4 phase kernels (sums of the original taps) followed by a pixel shuffle: the same
    function and the same parameters (`weight` keeps its 3x3 shape; state_dicts are those of
    the `Conv2d`), without the 4x larger upsampled tensor. On CPU it runs an image-output layer
    (1-3 output channels) 2-4x faster than the pair; with many output channels the 4x wider
    convolution costs more than it saves, so the backbones use it for the output layer only.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.register_buffer("phase_taps", _PHASE_TAPS.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.phase_taps  # a buffer: follows the module's device and dtype
        kernels = torch.einsum("amk,ockl,bnl->oabcmn", t, self.weight, t)  # (O, 2, 2, C, 3, 3)
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        y = F.conv2d(x, kernels.reshape(4 * self.out_channels, self.in_channels, 3, 3), bias, padding=1)
        return F.pixel_shuffle(y, 2)  # channel o*4 + 2a + b -> pixel (2i + a, 2j + b) of map o


class Dropout(nn.Dropout):
    """`nn.Dropout` whose CPU mask is drawn with `torch.rand`: the same distribution, about 3x faster.

    On CPU `nn.Dropout` draws with `bernoulli_`, about 0.5 ms for one 64 x 500 batch on this
    project's 2-core machine, 10 % of a `single` training step; elsewhere it is left as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


def literal_form(model: nn.Module) -> nn.Module:
    """A copy of `model` in the paper's literal layer order (conv, ReLU, pool; upsample, conv), with nn.Dropout.

    The same function and weights without the faster forms above: the plain
    PyTorch reference of `benchmarks/throughput.py`, and what tests compare the fast forms to.
    """
    return _literal(copy.deepcopy(model))


def _literal(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        setattr(module, name, _literal(child))
    return nn.Sequential(*_literal_layers(list(module))) if isinstance(module, nn.Sequential) else module


def _literal_layers(layers: list[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, UpsampleConv2d):
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1, bias=layer.bias is not None)
            conv.load_state_dict(layer.state_dict())
            out += [nn.Upsample(scale_factor=2, mode="nearest"), conv.to(layer.weight.device)]
        elif isinstance(layer, Dropout):
            out.append(nn.Dropout(layer.p))
        elif isinstance(layer, nn.ReLU) and out and isinstance(out[-1], nn.MaxPool2d):
            out.insert(len(out) - 1, layer)
        else:
            out.append(layer)
    return out
