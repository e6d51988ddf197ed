"""Network architectures: one residual CNN family for students and teachers, built from a spec.

The family is the CIFAR ResNet of He et al. (2016): a 3x3 stem, stages of basic blocks whose width
doubles (and resolution halves) from one stage to the next, global average pooling and a linear head.
``base_width`` and ``blocks`` per stage span ~20k to ~11M parameters (ResNet-18 is
``base_width=64, blocks=(2, 2, 2, 2)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kdnas.errors import KdnasError
from kdnas.registry import Registry

__all__ = ["ARCHITECTURES", "ArchSpec", "build_model", "count_params"]


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a network exactly.

    Args:
        arch: a name in ``ARCHITECTURES``.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR).
        num_classes: outputs of the linear head.
        base_width: channels of the stem and the first stage.
        blocks: residual blocks per stage; stage s has ``base_width * 2**s`` channels.
    """

    arch: str
    in_channels: int
    num_classes: int
    base_width: int
    blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.base_width < 1 or not self.blocks or min(self.blocks) < 1:
            raise KdnasError(f"invalid architecture: base_width={self.base_width}, blocks={list(self.blocks)}")

    def describe(self) -> str:
        """A short human label, e.g. ``resnet w16 b1-2-1``."""
        return f"{self.arch} w{self.base_width} b{'-'.join(map(str, self.blocks))}"


ARCHITECTURES: Registry[Callable[[ArchSpec], nn.Module]] = Registry("architecture")


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

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        width = spec.base_width
        self.stem = nn.Sequential(_conv_bn(spec.in_channels, width), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = width
        for stage, n_blocks in enumerate(spec.blocks):
            c_out = spec.base_width * 2**stage
            for i in range(n_blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


ARCHITECTURES.register("resnet")(ResNet)


def build_model(spec: ArchSpec) -> nn.Module:
    """Instantiate the network ``spec`` describes (weights from the current torch RNG)."""
    return ARCHITECTURES.get(spec.arch)(spec)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
