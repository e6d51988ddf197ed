"""Progress of long work: a bar driven by ``on_step(step, total)`` hooks, or log lines with an ETA where no
bar can be shown, and one line per trial.

Library code takes hooks and draws nothing; the CLIs decide whether a bar is shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["StepHook", "step_bar", "duration", "percent", "trial_line"]

log = logging.getLogger("kdnas.progress")

StepHook = Callable[[int, int], None]
# Without a bar (no terminal, --no-progress), a line at most this often: a teacher trained for an hour on a
# CPU, in a batch job's log, says how far it is and when it will end.
LOG_EVERY_S = 60.0


def duration(seconds: float) -> str:
    """'0 min 45 s', '12 min 03 s', '3 h 05 min'."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s"


def percent(accuracy: float | None) -> str:
    """'88.36%', or 'unavailable (no test images)' for the nan (or None) of an empty split."""
    if accuracy is None or accuracy != accuracy:
        return "unavailable (no test images)"
    return f"{100 * accuracy:.2f}%"


class step_bar:
    """``with step_bar("teacher", enabled) as hook:`` a tqdm bar that ``hook(step, total)`` moves, or, when
    bars are off, a hook that logs the step, the rate and the ETA at most every ``LOG_EVERY_S`` seconds."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.bar = label, enabled, None

    def __enter__(self) -> StepHook:
        if not self.enabled:
            return self._log_hook()
        from tqdm import tqdm

        def hook(step: int, total: int) -> None:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.label, unit="step", leave=False, dynamic_ncols=True)
            self.bar.update(step - self.bar.n)

        return hook

    def _log_hook(self) -> StepHook:
        start = last = time.perf_counter()

        def hook(step: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last < LOG_EVERY_S or step >= total:
                return
            last = now
            per_step = (now - start) / step
            log.info(
                "%s: step %d/%d (%.0f%%), %.2f s/step, about %s left",
                self.label,
                step,
                total,
                100 * step / total,
                per_step,
                duration(per_step * (total - step)),
            )

        return hook

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One finished trial on one line: candidate, KD settings, and what it scored or why it did not."""
    from kdnas.status import TrialStatus

    a, p = trial.user_attrs, trial.params
    kd = f"T={p.get('temperature', 0):.2g} a={p.get('alpha', 0):.2g} {p.get('alpha_decay', '')}"
    if p.get("alpha_decay", "none") != "none":
        kd += f"({p.get('decay_rate', 0):.2g})"
    head = f"trial {trial.number:>3}  {a.get('arch', '?'):<18} {kd:<28}"
    status = a.get("status")
    if status == TrialStatus.COMPLETE:
        return (
            f"{head} acc {100 * a['val_curve'][-1]:6.2f}%  params {a['params']:>9,}  "
            f"lat {a['latency_ms']:7.3f} ms  {a['train_seconds']:6.0f} s"
        )
    return f"{head} {status or trial.state.name.lower()}: {a.get('reason', '')}"
