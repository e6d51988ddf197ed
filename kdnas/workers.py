"""Several worker processes on one machine searching one study, and what happens when one dies.

The parent process starts the workers (spawned: a fresh interpreter each, no forked CUDA or thread
state), shows the study's progress from the storage, and watches them. A worker that dies without a
word (SIGKILL, out of memory) cannot mark its trial itself: the parent marks that trial failed, queues
the same candidate again, and starts a replacement worker while the budget is not reached. (Workers on
other hosts sharing an RDB storage are covered by Optuna's heartbeats instead; see kdnas.storage.)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kdnas.cli import handle_sigterm
from kdnas.errors import Terminated
from kdnas.status import TrialStatus

if TYPE_CHECKING:
    import optuna

__all__ = ["worker_id", "run_workers", "recover_trials_of", "recover_dead_local_trials"]

log = logging.getLogger("kdnas.search")

_POLL_S = 1.0
# How long stopped workers get to store their trials before they are killed: within the 30 s that Slurm
# (KillWait) and Kubernetes (terminationGracePeriodSeconds) leave between SIGTERM and SIGKILL by default.
_STOP_GRACE_S = 20.0


def worker_id(pid: int | None = None) -> str:
    """'host:pid' of a worker (this process by default), stored on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def recover_trials_of(study: optuna.Study, worker: str) -> list[int]:
    """Fail the running trials of a dead ``worker`` and queue their candidates again; their numbers.

    The retry is queued the way Optuna's heartbeat handling does it (``retried_trial_number`` finds
    the original), so a retry looks the same whichever of the two noticed the death.
    """
    import optuna

    with warnings.catch_warnings():  # marked experimental since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") != worker:
            continue
        storage = study._storage  # as Optuna's own stale-trial handling does
        storage.set_trial_user_attr(trial._trial_id, "status", TrialStatus.WORKER_DIED)
        storage.set_trial_user_attr(trial._trial_id, "reason", f"worker {worker} died during the trial")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        retry(study, trial)  # from the snapshot taken before the death was recorded
        lost.append(trial.number)
    return lost


def recover_dead_local_trials(study: optuna.Study) -> list[int]:
    """Recover the running trials of this host's workers whose process is gone (a whole run killed).

    Journal storage has no heartbeats, so nothing else would ever fail such a trial.
    """
    import optuna

    host, lost = socket.gethostname(), []
    workers = {
        t.user_attrs.get("worker", "")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    }
    for worker in sorted(workers):
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            lost += recover_trials_of(study, worker)
    return lost


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def run_workers(
    job: Callable[[int], None],
    workers: int,
    study: optuna.Study,
    target: int,
    budget_trials: Callable[[optuna.Study], int],
    progress: bool,
) -> None:
    """Run ``job(index)`` in ``workers`` processes until they stop; replace any that dies early.

    ``budget_trials(study)`` counts what the budget ``target`` counts (for the progress bar and to
    decide on replacements).
    """
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    replacements = 0

    def start(index: int) -> None:
        process = context.Process(target=_run_job, args=(job, index), name=f"kdnas-worker-{index}")
        process.start()
        running[index] = process

    for index in range(workers):
        start(index)
    first = budget_trials(study)
    bar = tqdm(total=target - first, desc="trials", unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        while running:
            time.sleep(_POLL_S)
            bar.update(budget_trials(study) - first - bar.n)
            for index, process in list(running.items()):
                if process.is_alive():
                    continue
                del running[index]
                if process.exitcode == 0:
                    continue
                lost = recover_trials_of(study, worker_id(process.pid))
                log.warning(
                    "worker %d (pid %d) died (exit code %s); trial(s) %s failed and queued again",
                    index,
                    process.pid,
                    process.exitcode,
                    ", ".join(map(str, lost)) or "none",
                )
                if budget_trials(study) < target and replacements < 2 * workers:
                    replacements += 1
                    start(index)
    except KeyboardInterrupt as err:
        # Ctrl-C reached every worker from the terminal, SIGTERM only this process (Kubernetes signals
        # PID 1), so it is passed on. Each worker marks its own trial interrupted and exits.
        if isinstance(err, Terminated):
            for process in running.values():
                process.terminate()  # SIGTERM
        for process in _stop(running.values(), _STOP_GRACE_S):
            recover_trials_of(study, worker_id(process.pid))
        raise
    finally:
        bar.close()


def _run_job(job: Callable[[int], None], index: int) -> None:
    """A worker process: SIGTERM stops it as Ctrl-C would (see kdnas.cli.handle_sigterm), then ``job(index)``."""
    handle_sigterm()
    job(index)


def _stop(
    processes: Iterable[multiprocessing.process.BaseProcess], grace_s: float
) -> list[multiprocessing.process.BaseProcess]:
    """Wait up to ``grace_s`` in all for ``processes`` to end, kill the rest; the killed ones."""
    deadline = time.monotonic() + grace_s
    killed = []
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
            killed.append(process)
    return killed
