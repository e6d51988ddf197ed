"""What the distillation settings are worth at each student size, read from random search's trials.

Random search samples the joint space without bias, so a least-squares fit of validation accuracy on the
student's size and its KD settings says whether distilling pays here, how strongly, and whether the best
strength changes with size: searching the KD settings together with the architecture only pays if it does.

    accuracy ~ 1 + log(params) + a + a^2 + a * log(params) + log(T)

where ``a`` is alpha averaged over training with its decay applied (alpha 0.9 decayed to zero by mid-training
distils less than alpha 0.5 kept throughout). Intervals: 95% percentile bootstrap over trials.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kdnas.distill import KDSpec
from kdnas.results import KD_PARAMS

ALPHA_GRID = np.linspace(0.0, 1.0, 21)
USUAL_ALPHA = 0.9  # the usual recipe's alpha, no decay
MIN_TRIALS = 12  # twice the fit's six coefficients: fewer fit noise


@dataclasses.dataclass(frozen=True)
class SizeEffect:
    """At one student size: the best mean alpha, and what it and the usual recipe gain over no distillation
    (accuracy, as a fraction), each a fitted value and its 95% interval."""

    params: int
    best_alpha: tuple[float, float, float]
    best_gain: tuple[float, float, float]
    usual_gain: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class KDEffect:
    trials: int
    sizes: list[SizeEffect]
    per_temperature_doubling: tuple[float, float, float]  # accuracy gained when T doubles


def mean_alpha(temperature: float, alpha: float, alpha_decay: str, decay_rate: float) -> float:
    """alpha averaged over training, its decay applied (midpoint rule over 100 steps)."""
    # decay_rate is a conditional parameter (space.suggest): NaN in a trials frame where alpha does not decay.
    spec = KDSpec(temperature, alpha, alpha_decay, decay_rate if alpha_decay != "none" else 1.0)
    return sum(spec.alpha_at((step + 0.5) / 100) for step in range(100)) / 100


def _design(log_params: np.ndarray, alpha: np.ndarray, log_temperature: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(alpha), log_params, alpha, alpha**2, alpha * log_params, log_temperature])


def kd_effect(frame, sizes: list[int], draws: int = 1000, seed: int = 0) -> KDEffect | None:
    """The fit on the finished trials of ``frame`` (a trials frame: params, val_accuracy and the KD settings),
    read at each of ``sizes`` parameters; None when fewer than ``MIN_TRIALS`` trials finished."""
    done = frame[frame["status"].eq("complete") & frame["val_accuracy"].notna()]
    if len(done) < MIN_TRIALS:
        return None
    accuracy = done["val_accuracy"].to_numpy(float)
    log_params = np.log(done["params"].to_numpy(float))
    alpha = np.array([mean_alpha(*row) for row in done[list(KD_PARAMS)].itertuples(False)])
    log_temperature = np.log(done["temperature"].to_numpy(float))
    usual = int(np.argmin(abs(ALPHA_GRID - USUAL_ALPHA)))
    # Each size's design over the alpha grid (at T = 1: T enters without interaction, so gains do not depend on it).
    at_sizes = [
        _design(np.full_like(ALPHA_GRID, math.log(size)), ALPHA_GRID, np.zeros_like(ALPHA_GRID)) for size in sizes
    ]
    rng = np.random.default_rng(seed)
    samples = []  # per draw: per size (best alpha, its gain, the usual recipe's gain), then the T coefficient
    for draw in range(draws + 1):  # draw 0: the trials themselves, the fitted value
        rows = rng.integers(0, len(done), len(done)) if draw else np.arange(len(done))
        coef, *_ = np.linalg.lstsq(
            _design(log_params[rows], alpha[rows], log_temperature[rows]), accuracy[rows], rcond=None
        )
        per_size = []
        for design in at_sizes:
            fitted = design @ coef
            best = int(np.argmax(fitted))
            per_size += [ALPHA_GRID[best], fitted[best] - fitted[0], fitted[usual] - fitted[0]]
        samples.append([*per_size, coef[5] * math.log(2)])
    samples = np.array(samples)

    def estimate(column: int) -> tuple[float, float, float]:
        low, high = np.percentile(samples[1:, column], [2.5, 97.5])
        return float(samples[0, column]), float(low), float(high)

    return KDEffect(
        trials=len(done),
        sizes=[
            SizeEffect(size, estimate(3 * i), estimate(3 * i + 1), estimate(3 * i + 2)) for i, size in enumerate(sizes)
        ],
        per_temperature_doubling=estimate(3 * len(sizes)),
    )
