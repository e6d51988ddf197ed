"""What every student family shares: its knobs turned into trial parameters, and its space enumerated.

A family declares its knobs (name -> default, in the order they are suggested) and which of them are
searched once per stage; this base class turns them into Optuna parameters (``<knob>`` or
``<knob>_1 .. <knob>_<stages>``), enumerates the networks they span, and says how many there are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from kdnas.config import ChoiceParam, Knob, NumParam
from kdnas.errors import KdnasError

if TYPE_CHECKING:
    import optuna
    from torch import nn

__all__ = ["Family", "grid", "joined", "require", "suggest_value"]


def suggest_value(trial: optuna.Trial, name: str, knob: NumParam | ChoiceParam) -> Any:
    """One value of ``knob`` from ``trial``, as the knob's own type (int, float, name or bool)."""
    if isinstance(knob, ChoiceParam):
        return trial.suggest_categorical(name, list(knob.choices))
    if knob.choices is not None:
        value = trial.suggest_categorical(name, list(knob.choices))
    elif knob.kind == "int":
        value = trial.suggest_int(name, int(knob.low), int(knob.high), step=int(knob.step or 1), log=knob.log)
    else:
        value = trial.suggest_float(name, knob.low, knob.high, step=knob.step, log=knob.log)
    return int(value) if knob.kind == "int" else float(value)


def grid(knob: Knob) -> list[Any] | None:
    """Every value ``knob`` can take, in the order Optuna's distributions list them; None for a continuous
    float range (no step)."""
    if isinstance(knob, int):
        return [knob]
    if isinstance(knob, ChoiceParam):
        return list(dict.fromkeys(knob.choices))
    if knob.kind == "int" or knob.choices is not None:
        return [int(v) if knob.kind == "int" else float(v) for v in knob.values()]
    if knob.low == knob.high:
        return [float(knob.low)]
    if knob.step is None:
        return None
    steps = math.floor((knob.high - knob.low) / knob.step + 1e-9)
    return [knob.low + i * knob.step for i in range(steps + 1)]


def require(name: str, knob: Knob, lowest: float, *, open_low: bool = False) -> None:
    """Every value of the numeric ``knob`` must be at least ``lowest`` (above it with ``open_low``); the
    error names the knob."""
    try:
        cast(NumParam, knob).require(lowest, open_low=open_low)
    except KdnasError as err:
        raise KdnasError(f"{name}: {err}") from None


def _extreme(knob: Knob, largest: bool) -> list[Any]:
    """The values of ``knob`` that may give the largest (or smallest) network: a number's highest (lowest),
    every choice."""
    if isinstance(knob, ChoiceParam):
        return list(dict.fromkeys(knob.choices))
    if isinstance(knob, NumParam):
        value = knob.bounds[1 if largest else 0]
        return [int(value) if knob.kind == "int" else float(value)]
    return [knob]


class Family:
    """A student family: knobs, and the ``nn.Module`` a spec (the knobs' sampled values) describes.

    Subclasses set ``knobs`` and ``per_stage`` and implement ``build`` and ``describe``; they may refine
    ``check`` (values they cannot build) and ``spec`` (what a network needs beyond the sampled values).
    ``suggest`` only calls ``trial.suggest_*``, so replaying stored params rebuilds the same spec.
    """

    name: str = ""
    knobs: Mapping[str, Knob] = {}  # name -> default, in the order they are suggested
    per_stage: tuple[str, ...] = ()  # knobs searched for every stage; the int knob "stages" counts them

    def check(self, knobs: Mapping[str, Knob]) -> None:
        """Raise a one-line KdnasError for values the family cannot build; called when the study loads."""

    def spec(self, values: Mapping[str, Any], image_size: int) -> dict[str, Any]:
        """The spec (JSON values) of the network the knobs' ``values`` choose, for images of ``image_size``."""
        return dict(values)

    def build(self, spec: Mapping[str, Any], num_classes: int, in_channels: int) -> nn.Module:
        """The network ``spec`` describes: input (N, in_channels, H, W), logits (N, num_classes)."""
        raise NotImplementedError

    def describe(self, spec: Mapping[str, Any]) -> str:
        """A short label naming every value of ``spec`` (the latency table's key of the network)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------
    # The space of the knobs: the same for every family
    # -------------------------------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial, knobs: Mapping[str, Knob], image_size: int) -> dict[str, Any]:
        """The spec of one network, its values drawn from ``trial``."""
        dimensions = self._dimensions(knobs)
        chosen = {p: k if isinstance(k, int) else suggest_value(trial, p, k) for p, _, k in dimensions}
        return self._spec_of(dimensions, chosen, image_size)

    def count(self, knobs: Mapping[str, Knob]) -> float:
        """How many networks the knobs span (``math.inf`` with a continuous float range)."""
        total = 1.0
        for _, _, knob in self._dimensions(knobs):
            values = grid(knob)
            total *= math.inf if values is None else len(values)
        return total

    def networks(self, knobs: Mapping[str, Knob], image_size: int) -> Iterator[dict[str, Any]]:
        """Every network's spec, one at a time (the space may hold millions); a finite ``count`` only."""
        dimensions = self._dimensions(knobs)
        grids = [grid(knob) for _, _, knob in dimensions]
        if any(values is None for values in grids):
            raise ValueError("a continuous knob spans no finite list of networks; check count() first")
        params = [param for param, _, _ in dimensions]
        for combination in itertools.product(*grids):  # type: ignore[arg-type]
            yield self._spec_of(dimensions, dict(zip(params, combination, strict=True)), image_size)

    def extreme_candidates(
        self, knobs: Mapping[str, Knob], image_size: int, largest: bool = True
    ) -> Iterator[dict[str, Any]]:
        """The networks one of which is the largest (or smallest): every number at its highest (lowest),
        each choice in turn (the same one in every stage)."""
        dimensions, names = self._dimensions(knobs), list(knobs)
        for combination in itertools.product(*(_extreme(knobs[name], largest) for name in names)):
            by_name = dict(zip(names, combination, strict=True))
            yield self._spec_of(dimensions, {p: by_name[name] for p, name, _ in dimensions}, image_size)

    def _dimensions(self, knobs: Mapping[str, Knob]) -> list[tuple[str, str, Knob]]:
        """(parameter name, knob name, knob) of each value a network takes, a per-stage knob once per stage."""
        stages = cast(int, knobs.get("stages", 1))
        out: list[tuple[str, str, Knob]] = []
        for name, knob in knobs.items():
            if name in self.per_stage:
                out.extend((f"{name}_{s + 1}", name, knob) for s in range(stages))
            else:
                out.append((name, name, knob))
        return out

    def _spec_of(
        self, dimensions: list[tuple[str, str, Knob]], chosen: Mapping[str, Any], image_size: int
    ) -> dict[str, Any]:
        """The spec of the network taking value ``chosen[parameter name]`` in each dimension."""
        values: dict[str, Any] = {}
        for param, name, _ in dimensions:
            if name in self.per_stage:
                values.setdefault(name, []).append(chosen[param])
            else:
                values[name] = chosen[param]
        return self.spec(values, image_size)


def joined(values: Sequence[Any]) -> str:
    """``1-2-1`` for [1, 2, 1]; switches as 0/1, numbers as short as they print."""
    return "-".join(str(int(v)) if isinstance(v, bool) else f"{v:g}" for v in values)
