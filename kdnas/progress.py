"""Progress shown on a terminal: a bar driven by ``on_step(step, total)`` hooks, and one line per trial.

Library code takes hooks and draws nothing; the CLIs decide whether a bar is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["StepHook", "step_bar", "trial_line"]

StepHook = Callable[[int, int], None]


class step_bar:
    """``with step_bar("teacher", enabled) as hook:`` a tqdm bar that ``hook(step, total)`` moves;
    the hook is None when progress is off (callers pass it on as "no progress")."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.bar = label, enabled, None

    def __enter__(self) -> StepHook | None:
        if not self.enabled:
            return None
        from tqdm import tqdm

        def hook(step: int, total: int) -> None:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.label, unit="step", leave=False, dynamic_ncols=True)
            self.bar.update(step - self.bar.n)

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
