"""``mbconv``: a MobileNetV2/V3-style network of inverted-residual blocks.

A 3x3 stem, stages of inverted-residual blocks (1x1 expansion, depthwise kxk, optional squeeze-excitation,
1x1 projection; a residual connection where input and output shapes agree), then a 1x1 head convolution,
global average pooling and a linear classifier (Sandler et al. 2018, Howard et al. 2019). Searched per
stage: ``depth`` (blocks), ``expand`` (expansion ratio), ``kernel`` and ``se``; globally ``width_mult``
(scales every channel count) and ``activation``. Channel counts are rounded to multiples of 8, as
torchvision's ``_make_divisible`` rounds them.

The stride schedule follows the image size, so one space suits 28-32 px and 64-224 px inputs: the
resolution halves floor(log2(size / 4)) times, leaving a last feature map of 4-7 px (32 px -> 4, 28 -> 7,
64 -> 4, 224 -> 7), first at stages 2, 3, ..., then in the stem, then in stage 1: small images keep their
full resolution through the stem and the first stage, large ones are reduced early, as MobileNets do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from kdnas.config import ChoiceParam, Knob, NumParam
from kdnas.errors import KdnasError
from kdnas.families._base import Family, grid, joined, require
from kdnas.registry import Registry

__all__ = ["MBConvFamily", "MBConvNet", "InvertedResidual", "SqueezeExcite", "ACTIVATIONS", "stride_schedule"]

# Channels of each stage at width_mult 1 (MobileNetV3-Large's stage widths); their count bounds `stages`.
_STAGE_CHANNELS = (16, 24, 40, 80, 112, 160)
_STEM_CHANNELS = 16
_HEAD_EXPANSION = 4  # the head convolution has this many times the last stage's channels

ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("hardswish")(nn.Hardswish)


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never below it nor more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def stride_schedule(stages: int, image_size: int) -> list[int]:
    """Strides of the stem and of each stage's first block, for square images of ``image_size`` pixels."""
    halvings = max(0, math.floor(math.log2(image_size / 4))) if image_size >= 4 else 0
    strides = [1] * (stages + 1)  # [stem, stage 1, ..., stage S]
    for i in [*range(2, stages + 1), 0, 1][:halvings]:
        strides[i] = 2
    return strides


class SqueezeExcite(nn.Module):
    """Channel attention: global pooling, a bottleneck of a quarter of the channels, a hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = make_divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        scale = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(scale))))
        return x * scale


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int, groups: int, act: type[nn.Module]) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        act(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """1x1 expansion (left out at ratio 1), depthwise kxk, optional squeeze-excitation, 1x1 projection;
    the input is added back when the block keeps its shape (stride 1, as many channels out as in)."""

    def __init__(
        self, c_in: int, c_out: int, expand: float, kernel: int, stride: int, se: bool, act: type[nn.Module]
    ) -> None:
        super().__init__()
        hidden = c_in if expand == 1 else make_divisible(c_in * expand)
        layers = [] if hidden == c_in else _conv_bn_act(c_in, hidden, 1, 1, 1, act)
        layers += _conv_bn_act(hidden, hidden, kernel, stride, hidden, act)
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MBConvNet(nn.Module):
    """Input (N, C, H, W) float, logits (N, num_classes); ``features`` ends with the head convolution."""

    def __init__(self, spec: Mapping[str, Any], num_classes: int, in_channels: int) -> None:
        super().__init__()
        act = ACTIVATIONS.get(spec["activation"])
        width = float(spec["width_mult"])
        stem_stride, *stage_strides = spec["strides"]
        c_in = make_divisible(_STEM_CHANNELS * width)
        layers = _conv_bn_act(in_channels, c_in, 3, stem_stride, 1, act)
        stages = zip(spec["depth"], spec["expand"], spec["kernel"], spec["se"], stage_strides, strict=True)
        for stage, (depth, expand, kernel, se, stride) in enumerate(stages):
            c_out = make_divisible(_STAGE_CHANNELS[stage] * width)
            for i in range(depth):
                layers.append(InvertedResidual(c_in, c_out, expand, kernel, stride if i == 0 else 1, se, act))
                c_in = c_out
        head = make_divisible(_HEAD_EXPANSION * _STAGE_CHANNELS[len(stage_strides) - 1] * width)
        self.features = nn.Sequential(*layers, *_conv_bn_act(c_in, head, 1, 1, 1, act))
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class MBConvFamily(Family):
    """Knobs: ``stages`` (fixed), ``width_mult``, ``activation``; per stage ``depth``, ``expand``,
    ``kernel``, ``se``."""

    name = "mbconv"
    knobs: Mapping[str, Knob] = {
        "stages": 4,
        "width_mult": NumParam("float", choices=(0.5, 0.75, 1.0)),
        "activation": ChoiceParam(("relu", "hardswish")),
        "depth": NumParam("int", 1, 3),
        "expand": NumParam("float", choices=(3.0, 4.0, 6.0)),
        "kernel": NumParam("int", choices=(3, 5)),
        "se": ChoiceParam((False, True)),
    }
    per_stage = ("depth", "expand", "kernel", "se")

    def check(self, knobs: Mapping[str, Knob]) -> None:
        stages = cast(int, knobs["stages"])
        if not 1 <= stages <= len(_STAGE_CHANNELS):
            raise KdnasError(f"stages must be in [1, {len(_STAGE_CHANNELS)}], got {stages}")
        require("width_mult", knobs["width_mult"], 0, open_low=True)
        for name in cast(ChoiceParam, knobs["activation"]).choices:
            try:
                ACTIVATIONS.check(cast(str, name))
            except KdnasError as err:
                raise KdnasError(f"activation: {err}") from None
        require("depth", knobs["depth"], 1)
        require("expand", knobs["expand"], 1)
        kernels = grid(knobs["kernel"]) or []
        bad = [k for k in kernels if k < 1 or k % 2 == 0]
        if bad:
            raise KdnasError(f"kernel: a kernel size must be odd and positive (it pads evenly), got {bad}")

    def spec(self, values: Mapping[str, Any], image_size: int) -> dict[str, Any]:
        spec = {k: v for k, v in values.items() if k != "stages"}
        return {**spec, "strides": stride_schedule(values["stages"], image_size)}

    def build(self, spec: Mapping[str, Any], num_classes: int, in_channels: int) -> nn.Module:
        return MBConvNet(spec, num_classes, in_channels)

    def describe(self, spec: Mapping[str, Any]) -> str:
        return (
            f"mbconv x{spec['width_mult']:g} {spec['activation']} d{joined(spec['depth'])} "
            f"e{joined(spec['expand'])} k{joined(spec['kernel'])} se{joined(spec['se'])}"
        )
