"""Early stopping that works for multi-objective studies.

Optuna's pruners refuse multi-objective studies (``Trial.report`` is single-objective only). Here
parameters and latency are measured before training and only accuracy moves, so a trial can be
judged after every epoch against the learning curves the study already holds: every trial writes its
curve to the storage after each epoch, so the rule sees the same evidence however many workers share
the study.

- ``pareto``: stop when a finished trial that is no larger and no slower was, at the same epoch, more
  accurate by more than the margin and by more than ``sigmas`` standard errors of the gap. Such a
  trial dominates this one at that epoch; going on would need this one to overtake it, which short
  training rarely does. The standard error is that of two binomial proportions measured on the
  validation set (conservatively taken as independent): on a small validation set, or early when
  accuracies are near 50%, a lead of a point or two is chance and stops nothing.
- ``forecast``: stop when a complete trial that is no larger and no slower ended more accurate than
  this trial's forecast (its accuracy now plus the mean gain the study's complete trials made from this
  epoch to the end) by more than the margin and by more than ``sigmas`` standard deviations of those
  gains. Early epochs rank students loosely (students gain very different amounts after epoch 1): the
  study's own spread of gains says how loosely, and the leader's final accuracy is known, not guessed.
  Nothing stops before ``FORECAST_MIN_TRIALS`` trials are complete.
- ``halving``: asynchronous successive halving whose ranking is Pareto rank instead of a single value
  (in the spirit of MO-ASHA, Schmucker et al. 2021): at rung epochs min_epochs * r**k, a trial goes
  on when it is among the best 1/r of the trials that reached the rung, or on that rung's front.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kdnas.config import EarlyStopConfig
from kdnas.registry import Registry

__all__ = ["EARLY_STOP_POLICIES", "Curve", "EarlyStopper", "pareto_ranks", "rung_epochs"]

# The measurements known before training, all minimised; accuracy is the one that moves.
SIZE_METRICS = ("params", "latency_ms", "macs", "size_kb")
# forecast: the gains of fewer complete trials say too little about their spread.
FORECAST_MIN_TRIALS = 4


@dataclass(frozen=True)
class Curve:
    """One trial's size measurements and its validation accuracy after each epoch so far."""

    number: int
    params: float
    latency_ms: float
    val_accuracy: tuple[float, ...]
    finished: bool  # complete or stopped; False while it is still training
    macs: float = math.nan  # nan where not measured: never "no larger" than anything
    size_kb: float = math.nan

    def size(self, metrics: Sequence[str]) -> tuple[float, ...]:
        return tuple(getattr(self, m) for m in metrics)


def rung_epochs(cfg: EarlyStopConfig, epochs: int) -> list[int]:
    """The epochs (1-based) after which ``halving`` decides, all before the last epoch."""
    rungs, rung = [], cfg.min_epochs
    while rung < epochs:
        rungs.append(rung)
        rung *= cfg.reduction_factor
    return rungs


def pareto_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Non-domination rank of each point (0 = on the front), every coordinate minimised."""

    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    ranks = [-1] * len(points)
    rank, left = 0, set(range(len(points)))
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


class EarlyStopper:
    """Decides, after each epoch of a trial, whether it stops; the reason when it does."""

    def __init__(self, cfg: EarlyStopConfig, metrics: Sequence[str], epochs: int, val_images: int) -> None:
        self.cfg, self.epochs, self.val_images = cfg, epochs, val_images
        self.size_metrics = tuple(m for m in metrics if m in SIZE_METRICS)
        self.rungs = set(rung_epochs(cfg, epochs))

    def reason_to_stop(self, me: Curve, others: Iterable[Curve]) -> str | None:
        """Why ``me`` should stop after its latest epoch, or None to go on.

        ``others`` are the study's other trials (finished or running) with their curves so far.
        """
        done = len(me.val_accuracy)
        if done < self.cfg.min_epochs or done >= self.epochs:
            return None
        return EARLY_STOP_POLICIES.get(self.cfg.policy)(self, me, list(others))

    def complete(self, curve: Curve) -> bool:
        """Whether ``curve``'s trial trained to the end: finished, and not stopped early."""
        return curve.finished and len(curve.val_accuracy) == self.epochs

    def no_larger(self, other: Curve, me: Curve) -> bool:
        """Whether ``other`` is no larger and no slower than ``me`` in the study's size objectives."""
        return all(o <= m for o, m in zip(other.size(self.size_metrics), me.size(self.size_metrics), strict=True))

    def _dominated(self, me: Curve, others: list[Curve]) -> str | None:
        epoch, mine = len(me.val_accuracy), me.val_accuracy[-1]
        for other in others:
            if not other.finished or len(other.val_accuracy) < epoch:
                continue
            theirs = other.val_accuracy[epoch - 1]
            if self.no_larger(other, me) and theirs - mine > self.lead_needed(theirs, mine):
                return (
                    f"after epoch {epoch}: trial {other.number} (no larger, no slower) had "
                    f"{100 * theirs:.2f}% there against {100 * mine:.2f}%"
                )
        return None

    def lead_needed(self, theirs: float, mine: float) -> float:
        """The accuracy lead above which ``theirs`` beats ``mine``: the margin, or the validation noise."""
        variance = (theirs * (1 - theirs) + mine * (1 - mine)) / self.val_images
        return max(self.cfg.margin, self.cfg.sigmas * math.sqrt(variance))

    def _outforecast(self, me: Curve, others: list[Curve]) -> str | None:
        epoch, mine = len(me.val_accuracy), me.val_accuracy[-1]
        complete = [o for o in others if self.complete(o)]
        if len(complete) < FORECAST_MIN_TRIALS:
            return None
        gains = [o.val_accuracy[-1] - o.val_accuracy[epoch - 1] for o in complete]
        mean_gain, spread = statistics.fmean(gains), statistics.stdev(gains)
        forecast = mine + mean_gain
        lead_needed = max(self.cfg.margin, self.cfg.sigmas * spread)
        for other in complete:
            final = other.val_accuracy[-1]
            if self.no_larger(other, me) and final - forecast > lead_needed:
                return (
                    f"after epoch {epoch}: trial {other.number} (no larger, no slower) ended at {100 * final:.2f}%; "
                    f"this one, at {100 * mine:.2f}%, is forecast {100 * forecast:.2f}% (the {len(gains)} complete "
                    f"trials gained {100 * mean_gain:+.2f} +- {100 * spread:.2f} points from epoch {epoch} to the end)"
                )
        return None

    def _below_rung(self, me: Curve, others: list[Curve]) -> str | None:
        epoch = len(me.val_accuracy)
        if epoch not in self.rungs:
            return None
        at_rung = [me] + [o for o in others if len(o.val_accuracy) >= epoch and o.number != me.number]
        points = [(-c.val_accuracy[epoch - 1], *c.size(self.size_metrics)) for c in at_rung]
        ranks = pareto_ranks(points)
        if ranks[0] == 0:
            return None
        # Ties favour the trial being judged: `me` sorts first among equals.
        order = sorted(range(len(at_rung)), key=lambda i: (ranks[i], points[i][0], i))
        keep = max(1, math.floor(len(at_rung) / self.cfg.reduction_factor))
        position = order.index(0)
        if position < keep:
            return None
        return (
            f"at rung epoch {epoch}: Pareto rank {ranks[0]}, place {position + 1} of {len(at_rung)}; "
            f"the best {keep} go on"
        )


# A policy: (the stopper, the trial judged, at min_epochs or later and before its last epoch, the study's
# other trials) -> why that trial stops, or None to go on.
EARLY_STOP_POLICIES: Registry[Callable[[EarlyStopper, Curve, list[Curve]], str | None]] = Registry("early-stop policy")
EARLY_STOP_POLICIES.register("none")(lambda stopper, me, others: None)
EARLY_STOP_POLICIES.register("pareto")(EarlyStopper._dominated)
EARLY_STOP_POLICIES.register("forecast")(EarlyStopper._outforecast)
EARLY_STOP_POLICIES.register("halving")(EarlyStopper._below_rung)
