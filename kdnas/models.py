"""A network as kdnas records it: its family, its input and output, and its spec; built on demand.

The families themselves (their knobs and layers) live in ``kdnas.families``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdnas.config import dataclass_from_dict

__all__ = ["ArchSpec", "build_model", "count_params"]


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a network exactly.

    Args:
        family: a student family's name (``resnet``, ``mbconv``, ``import:package.module:Class``).
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR).
        num_classes: outputs of the linear head.
        spec: the family's description of the network (JSON values), e.g. resnet's
            ``{"base_width": 16, "blocks": [1, 2, 1]}``.
    """

    family: str
    in_channels: int
    num_classes: int
    spec: dict

    def __post_init__(self) -> None:
        # As JSON holds it (tuples become lists), so a spec read back from a file compares equal.
        object.__setattr__(self, "spec", json.loads(json.dumps(dict(self.spec))))

    def __hash__(self) -> int:
        return hash((self.family, self.in_channels, self.num_classes, json.dumps(self.spec, sort_keys=True)))

    def describe(self) -> str:
        """A short human label naming every value of the spec, e.g. ``resnet w16 b1-2-1``."""
        from kdnas.families import get_family

        return get_family(self.family).describe(self.spec)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str) -> ArchSpec:
        """An ArchSpec from its ``dataclasses.asdict`` form, or from the form kdnas wrote before families
        (``{arch, in_channels, num_classes, base_width, blocks}``, a resnet) in teacher.pt and student files.

        Raises:
            KdnasError: a key is missing or unknown, or a value has the wrong type.
        """
        if isinstance(record, Mapping) and "arch" in record and "base_width" in record:
            old = dict(record)
            family, spec = old.pop("arch"), {"base_width": old.pop("base_width"), "blocks": old.pop("blocks", None)}
            record = {**old, "family": family, "spec": spec}
        return dataclass_from_dict(cls, record, where, exact=True)


def build_model(arch: ArchSpec) -> nn.Module:
    """Instantiate the network ``arch`` describes (weights from the current torch RNG)."""
    from kdnas.families import get_family

    return get_family(arch.family).build(arch.spec, arch.num_classes, arch.in_channels)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
