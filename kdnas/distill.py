"""The blended knowledge-distillation loss and the schedules that decay its weight alpha.

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015),
https://arxiv.org/abs/1503.02531. The T^2 factor keeps the soft term's gradients on the scale of the
hard term's when T changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdnas.errors import KdnasError
from kdnas.registry import Registry

__all__ = ["ALPHA_SCHEDULES", "KDSpec", "kd_loss"]

# progress in [0, 1], rate > 0 -> the fraction of the initial alpha still in force.
ALPHA_SCHEDULES: Registry[Callable[[float, float], float]] = Registry("alpha schedule")
ALPHA_SCHEDULES.register("none")(lambda progress, rate: 1.0)
# rate 1 reaches zero exactly at the end of training; larger rates reach it sooner and stay there.
ALPHA_SCHEDULES.register("linear")(lambda progress, rate: max(0.0, 1.0 - rate * progress))
ALPHA_SCHEDULES.register("cosine")(lambda progress, rate: 0.5 * (1.0 + math.cos(math.pi * min(1.0, rate * progress))))
ALPHA_SCHEDULES.register("exponential")(lambda progress, rate: math.exp(-rate * progress))


@dataclass(frozen=True)
class KDSpec:
    """Distillation hyperparameters of one trial.

    Args:
        temperature: T > 0 that softens both distributions.
        alpha: initial weight of the distillation term, in [0, 1]; 0 is plain supervised training.
        alpha_decay: a name in ``ALPHA_SCHEDULES``.
        decay_rate: how fast alpha decays (> 0; ignored by "none").
    """

    temperature: float = 4.0
    alpha: float = 0.5
    alpha_decay: str = "none"
    decay_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise KdnasError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise KdnasError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.decay_rate > 0:
            raise KdnasError(f"decay_rate must be > 0, got {self.decay_rate}")
        ALPHA_SCHEDULES.check(self.alpha_decay)

    def alpha_at(self, progress: float) -> float:
        """alpha after ``progress`` (0 = first step, 1 = end) of training."""
        return self.alpha * ALPHA_SCHEDULES.get(self.alpha_decay)(progress, self.decay_rate)

    def describe(self) -> str:
        decay = "" if self.alpha_decay == "none" else f" {self.alpha_decay}({self.decay_rate:.2g})"
        return f"T={self.temperature:.2g} a={self.alpha:.2g}{decay}"


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The blended loss, averaged over the batch.

    Args:
        student_logits: (N, C).
        teacher_logits: (N, C), any float dtype; may be None when ``alpha == 0``.
        targets: (N,) class indices.
        alpha: weight of the distillation term; exactly 0 returns the cross-entropy alone.
        temperature: T > 0.
        label_smoothing: applied to the cross-entropy term only.

    Returns:
        A scalar tensor.
    """
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    if teacher_logits is None:
        raise ValueError("teacher_logits are required when alpha > 0")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * temperature**2 * kl + (1 - alpha) * ce
