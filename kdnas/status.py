"""What became of a trial, as kdnas stores it in the trial's ``status`` user attribute.

Optuna's own states (COMPLETE, PRUNED, FAIL) cannot tell a rejected candidate from one stopped early,
or a diverged training from an interrupted one; this can. The members are strings, so they are stored
and compared as the plain names they always were.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TrialStatus", "BUDGET_STATUSES", "TRAINED_STATUSES"]


class TrialStatus(StrEnum):
    COMPLETE = "complete"  # trained to the last epoch
    STOPPED = "stopped"  # stopped early: beaten by finished trials (stored as pruned)
    DIVERGED = "diverged"  # its loss went non-finite (failed)
    REJECTED = "rejected"  # over a constraint, never trained (pruned)
    DUPLICATE = "duplicate"  # the same candidate as an earlier trained trial, whose result it reuses
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM during training (failed; its candidate queued again)
    WORKER_DIED = "worker died"  # its worker process vanished (failed; its candidate queued again)


# A trial counts against the budget once it has cost training.
BUDGET_STATUSES = frozenset({TrialStatus.COMPLETE, TrialStatus.DIVERGED, TrialStatus.STOPPED})
# A trial whose result another trial of the same candidate may reuse.
TRAINED_STATUSES = frozenset({TrialStatus.COMPLETE, TrialStatus.STOPPED})
