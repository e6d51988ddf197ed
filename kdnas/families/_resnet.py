"""``resnet``: the CIFAR ResNet of He et al. (2016), kdnas's first family and the default.

A 3x3 stem, stages of basic blocks whose width doubles (and resolution halves) from one stage to the
next, global average pooling and a linear head. ``base_width`` and ``blocks`` per stage span ~20k to
~11M parameters (ResNet-18 is ``base_width=64, blocks=(2, 2, 2, 2)``). Its knobs and parameter names
are those of the ``[student]`` keys before families existed, so stored studies replay unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from kdnas.config import Knob, NumParam
from kdnas.errors import KdnasError
from kdnas.families._base import Family, joined, require

__all__ = ["ResNetFamily", "ResNet", "BasicBlock"]


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut.

    A strided projection subsamples its input and then applies a stride-1 1x1 convolution: the same
    function and parameters as a strided 1x1 convolution, which torch 2.14 cannot train on AVX2 CPUs in
    channels_last with fewer than 8 input channels (its backward corrupts the heap and kills the process).
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride)
        self.conv2 = _conv_bn(c_out, c_out)
        self.stride = stride
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: batch norm's backward needs its input, not its output, so the activation and the sum
        # may overwrite it, sparing a pass over memory (ReLU and add are memory-bound).
        out = torch.relu_(self.conv1(x))
        skip = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return torch.relu_(self.conv2(out).add_(self.shortcut(skip)))


class ResNet(nn.Module):
    """CIFAR-style residual network; input (N, C, H, W) float, output logits (N, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, base_width: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        counts = [base_width, *blocks]
        if not blocks or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
            raise KdnasError(f"invalid architecture: base_width={base_width}, blocks={list(blocks)}")
        self.stem = nn.Sequential(_conv_bn(in_channels, base_width), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = base_width
        for stage, n_blocks in enumerate(blocks):
            c_out = base_width * 2**stage
            for i in range(n_blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ResNetFamily(Family):
    """Knobs: ``stages`` (fixed), ``base_width`` (channels of the first stage), ``blocks`` (per stage)."""

    name = "resnet"
    knobs: Mapping[str, Knob] = {
        "stages": 3,
        "base_width": NumParam("int", 8, 32, step=4),
        "blocks": NumParam("int", 1, 3),
    }
    per_stage = ("blocks",)

    def check(self, knobs: Mapping[str, Knob]) -> None:
        stages = cast(int, knobs["stages"])
        if stages < 1:
            raise KdnasError(f"stages must be at least 1, got {stages}")
        require("base_width", knobs["base_width"], 1)
        require("blocks", knobs["blocks"], 1)

    def spec(self, values: Mapping[str, Any], image_size: int) -> dict[str, Any]:
        return {"base_width": values["base_width"], "blocks": values["blocks"]}

    def build(self, spec: Mapping[str, Any], num_classes: int, in_channels: int) -> nn.Module:
        return ResNet(in_channels, num_classes, spec["base_width"], tuple(spec["blocks"]))

    def describe(self, spec: Mapping[str, Any]) -> str:
        return f"resnet w{spec['base_width']} b{joined(spec['blocks'])}"
