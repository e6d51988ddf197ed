"""What became of a trial, as kdnas stores it in the trial's ``status`` user attribute.

Optuna's own states (COMPLETE, PRUNED, FAIL) cannot tell a rejected candidate from one stopped early,
or a diverged training from an interrupted one; this can. The members are strings, so they are stored
and compared as the plain names they always were.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["TrialStatus", "BUDGET_STATUSES", "TRAINED_STATUSES", "status_of", "count_line"]


class TrialStatus(StrEnum):
    COMPLETE = "complete"  # trained to the last epoch
    STOPPED = "stopped"  # stopped early: beaten by finished trials (stored as pruned)
    DIVERGED = "diverged"  # its loss went non-finite (failed)
    REJECTED = "rejected"  # over a constraint, never trained (pruned)
    DUPLICATE = "duplicate"  # the same candidate as an earlier trained trial, whose result it reuses
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM once sampled (failed; its candidate queued again)
    WORKER_DIED = "worker died"  # its worker process vanished (failed; its candidate queued again)


# A trial counts against the budget once it has cost training.
BUDGET_STATUSES = frozenset({TrialStatus.COMPLETE, TrialStatus.DIVERGED, TrialStatus.STOPPED})
# A trial whose result another trial of the same candidate may reuse.
TRAINED_STATUSES = frozenset({TrialStatus.COMPLETE, TrialStatus.STOPPED})


def status_of(trial: optuna.trial.FrozenTrial) -> str:
    """What became of ``trial``: its kdnas status, or Optuna's state for a trial that never said."""
    return trial.user_attrs.get("status") or trial.state.name.lower()


def count_line(statuses: Iterable[str]) -> str:
    """'6 complete, 1 diverged, 1 rejected': most frequent first, then by name."""
    counts = Counter(statuses)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
