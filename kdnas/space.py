"""The search space: an Optuna trial -> the student's architecture and its distillation settings.

``suggest`` only calls ``trial.suggest_*``, so a stored trial's params replayed through
``optuna.trial.FixedTrial`` rebuild exactly the same student (export and retraining rely on it).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import optuna

from kdnas.config import NumParam, StudyConfig
from kdnas.distill import KDSpec
from kdnas.models import ArchSpec

__all__ = ["suggest", "specs_from_params", "architectures"]


def _suggest_number(trial: optuna.Trial, name: str, param: NumParam) -> float:
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def suggest(trial: optuna.Trial, cfg: StudyConfig, in_channels: int, num_classes: int) -> tuple[ArchSpec, KDSpec]:
    """Sample one candidate: a student architecture and its KD hyperparameters."""
    space, kd = cfg.student, cfg.kd
    base_width = int(_suggest_number(trial, "base_width", space.base_width))
    blocks = tuple(int(_suggest_number(trial, f"blocks_{s + 1}", space.blocks)) for s in range(space.stages))
    arch = ArchSpec(space.arch, in_channels, num_classes, base_width, blocks)
    temperature = _suggest_number(trial, "temperature", kd.temperature)
    alpha = _suggest_number(trial, "alpha", kd.alpha)
    decay = trial.suggest_categorical("alpha_decay", list(kd.alpha_decay.choices))
    # The rate only exists for a decaying alpha: a conditional parameter keeps the space honest.
    rate = _suggest_number(trial, "decay_rate", kd.decay_rate) if decay != "none" else 1.0
    return arch, KDSpec(float(temperature), float(alpha), decay, float(rate))


def specs_from_params(
    params: Mapping[str, Any], cfg: StudyConfig, in_channels: int, num_classes: int
) -> tuple[ArchSpec, KDSpec]:
    """Rebuild a stored trial's candidate from its params."""
    return suggest(optuna.trial.FixedTrial(dict(params)), cfg, in_channels, num_classes)  # type: ignore[arg-type]


def architectures(cfg: StudyConfig, in_channels: int, num_classes: int) -> list[ArchSpec]:
    """Every student network the search space holds: each width with each number of blocks per stage."""
    space = cfg.student
    depths = list(itertools.product(space.blocks.values(), repeat=space.stages))
    return [
        ArchSpec(space.arch, in_channels, num_classes, int(width), tuple(int(b) for b in blocks))
        for width in space.base_width.values()
        for blocks in depths
    ]
