"""The search space: an Optuna trial -> the student's architecture and its distillation settings.

``suggest`` only calls ``trial.suggest_*``, so a stored trial's params replayed through
``optuna.trial.FixedTrial`` rebuild exactly the same student (export and retraining rely on it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import optuna

from kdnas.config import ChoiceParam, NumParam, StudyConfig
from kdnas.distill import KDSpec
from kdnas.families import get_family, grid, suggest_value
from kdnas.models import ArchSpec

__all__ = ["suggest", "specs_from_params", "architectures", "space_size", "candidate_count", "extreme_student"]


def suggest(
    trial: optuna.Trial, cfg: StudyConfig, in_channels: int, num_classes: int, image_size: int
) -> tuple[ArchSpec, KDSpec]:
    """Sample one candidate for images (in_channels, image_size, image_size): a student architecture
    and its KD hyperparameters."""
    space, kd = cfg.student, cfg.kd
    spec = get_family(space.family).suggest(trial, space.knobs, image_size)
    arch = ArchSpec(space.family, in_channels, num_classes, spec)
    temperature = suggest_value(trial, "temperature", kd.temperature)
    alpha = suggest_value(trial, "alpha", kd.alpha)
    decay = trial.suggest_categorical("alpha_decay", list(kd.alpha_decay.choices))
    # The rate only exists for a decaying alpha: a conditional parameter keeps the space honest.
    rate = suggest_value(trial, "decay_rate", kd.decay_rate) if decay != "none" else 1.0
    return arch, KDSpec(temperature, alpha, str(decay), rate)


def specs_from_params(
    params: Mapping[str, Any], cfg: StudyConfig, in_channels: int, num_classes: int, image_size: int
) -> tuple[ArchSpec, KDSpec]:
    """Rebuild a stored trial's candidate from its params."""
    trial = optuna.trial.FixedTrial(dict(params))
    return suggest(trial, cfg, in_channels, num_classes, image_size)  # type: ignore[arg-type]


def space_size(cfg: StudyConfig) -> float:
    """How many student networks the space holds (``math.inf`` when a knob is a continuous range)."""
    return get_family(cfg.student.family).count(cfg.student.knobs)


def candidate_count(cfg: StudyConfig) -> float:
    """How many distinct candidates (network and distillation settings) the space holds: ``math.inf`` when
    a knob is a continuous range."""
    kd = cfg.kd
    rates = _count(kd.decay_rate)
    decays = sum(1 if choice == "none" else rates for choice in dict.fromkeys(kd.alpha_decay.choices))
    return space_size(cfg) * _count(kd.temperature) * _count(kd.alpha) * decays


def _count(knob: NumParam | ChoiceParam) -> float:
    values = grid(knob)
    return math.inf if values is None else len(values)


def architectures(cfg: StudyConfig, in_channels: int, num_classes: int, image_size: int) -> Iterator[ArchSpec]:
    """Every student network of the space, one at a time (a finite ``space_size`` only: an mbconv space
    holds millions, so callers take what they need)."""
    space = cfg.student
    for spec in get_family(space.family).networks(space.knobs, image_size):
        yield ArchSpec(space.family, in_channels, num_classes, spec)


def extreme_student(
    cfg: StudyConfig, in_channels: int, num_classes: int, image_size: int, largest: bool = True
) -> ArchSpec:
    """The student of the space with the most (``largest``) or fewest parameters."""
    from kdnas.models import build_model, count_params

    space = cfg.student
    candidates = get_family(space.family).extreme_candidates(space.knobs, image_size, largest)
    archs = [ArchSpec(space.family, in_channels, num_classes, spec) for spec in candidates]
    sign = 1 if largest else -1
    return max(archs, key=lambda arch: sign * count_params(build_model(arch)))
