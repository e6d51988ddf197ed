"""``family = "import:package.module:Space"``: a family of your own, imported by path.

``Space`` is a class with no required arguments, a ``knobs`` attribute (a dict of knob name -> default
in the study file's syntax: a fixed value, a list of choices, or a ``{low, high, step, log}`` range) and
a method ``build(spec, num_classes, in_channels) -> nn.Module``, where ``spec`` maps every knob to one
value. Each knob is one trial parameter of its own name. The study file names the class, so every
worker, host and ``kdnas.train`` imports it again: nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdnas.config import ChoiceParam, Knob, NumParam, parse_knob
from kdnas.errors import KdnasError, first_line, import_object
from kdnas.families._base import Family

__all__ = ["ImportedFamily", "PREFIX"]

PREFIX = "import:"
# The input of the forward pass that checks an imported family when the study loads.
_PROBE_CHANNELS, _PROBE_CLASSES, _PROBE_SIZE = 3, 10, 32


class ImportedFamily(Family):
    """Wraps a user's class; checked when built (imports, protocol) and by ``check`` (a tiny forward pass)."""

    def __init__(self, name: str) -> None:
        self.name = name
        module_name, _, attribute = name.removeprefix(PREFIX).partition(":")
        if not module_name or not attribute:
            raise KdnasError(f'family {name!r}: write it as "import:package.module:Class"')
        cls = import_object(f"family {name!r}", module_name, attribute)
        declared = getattr(cls, "knobs", None)
        if not isinstance(declared, Mapping) or not callable(getattr(cls, "build", None)):
            raise KdnasError(
                f"family {name!r}: {attribute} must have a knobs dict and a method build(spec, num_classes, "
                "in_channels) returning an nn.Module"
            )
        try:
            self.knobs = {str(k): parse_knob(v, f"{attribute}.knobs.{k}") for k, v in declared.items()}
        except KdnasError as err:
            raise KdnasError(f"family {name!r}: {err}") from None
        try:
            self._space = cls()
        except Exception as err:  # the user's code: any failure is reported on one line
            raise KdnasError(f"family {name!r}: {attribute}() fails: {type(err).__name__}: {first_line(err)}") from None

    def check(self, knobs: Mapping[str, Knob]) -> None:
        """Build the network of every knob's first value and run it on a tiny batch."""
        spec = self.spec({name: _first_value(knob) for name, knob in knobs.items()}, _PROBE_SIZE)
        what = f"family {self.name!r}"
        try:
            model = self.build(spec, _PROBE_CLASSES, _PROBE_CHANNELS).eval()
            with torch.no_grad():
                out = model(torch.zeros(2, _PROBE_CHANNELS, _PROBE_SIZE, _PROBE_SIZE))
        except KdnasError:
            raise
        except Exception as err:  # the user's code: any failure is reported on one line
            raise KdnasError(
                f"{what}: {self.describe(spec)} fails on a {_PROBE_SIZE} px batch: {type(err).__name__}: "
                f"{first_line(err)}"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, _PROBE_CLASSES):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise KdnasError(
                f"{what}: its network returns {got} for 2 images, not logits of shape (2, {_PROBE_CLASSES})"
            )

    def build(self, spec: Mapping[str, Any], num_classes: int, in_channels: int) -> nn.Module:
        model = self._space.build(dict(spec), num_classes, in_channels)
        if not isinstance(model, nn.Module):
            raise KdnasError(f"family {self.name!r}: build returned a {type(model).__name__}, not an nn.Module")
        return model

    def describe(self, spec: Mapping[str, Any]) -> str:
        return " ".join([self.name.removeprefix(PREFIX), *(f"{k}={v}" for k, v in spec.items())])


def _first_value(knob: Knob) -> Any:
    """The lowest number of a numeric knob, the first choice of the others."""
    if isinstance(knob, ChoiceParam):
        return knob.choices[0]
    if isinstance(knob, NumParam):
        low = knob.bounds[0]
        return int(low) if knob.kind == "int" else float(low)
    return knob
