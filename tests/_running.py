"""Waiting until a search a test started is inside a trial, where the test's signal or kill is meant to land."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import optuna

from kdnas.storage import default_url, local_file, open_storage


def started_trials(url: str, study_name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    """The running trials in ``url`` whose student is built (being timed or trained); [] before the study
    exists."""
    path = local_file(url)
    if path is not None and not path.exists():  # opening it would create it
        return []
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:  # the storage is there, the study not yet
        return []
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return [t for t in running if "arch" in t.user_attrs]


def wait_for_started_trials(
    storage: Path | str, count: int = 1, *, search: subprocess.Popen | None = None, timeout_s: float = 300
) -> list[optuna.trial.FrozenTrial]:
    """Poll until ``count`` trials are started; those trials.

    ``storage`` is a storage URL, or a run directory (its storage moves from SQLite to a journal when
    workers join, so it is looked up on every poll). ``search``, the process expected to start them,
    must not exit first.
    """
    deadline = time.monotonic() + timeout_s
    while len(started := started_trials(default_url(storage) if isinstance(storage, Path) else storage)) < count:
        if search is not None and search.poll() is not None:
            raise AssertionError(f"the search exited ({search.returncode}) first: {search.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"{count} trial(s) not started within {timeout_s} s"
        time.sleep(0.3)
    return started
