"""A search stopped by a scheduler (SIGTERM, as Slurm and Kubernetes send) ends like Ctrl-C: trial stored, one line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _running import wait_for_started_trials
from _smoke import edited_smoke

from kdnas.storage import default_url, open_storage

pytestmark = [pytest.mark.slow, pytest.mark.needs("dataset-fashion-mnist")]

# smoke, smaller (a fifth of its images, one teacher epoch, no soft targets to compute) and with long
# trials: the signal lands inside one.
_EDITS = {
    "limit_train = 4000": "limit_train = 800",
    "train = { epochs = 2,": "train = { epochs = 1,",
    "alpha = { low = 0.0, high = 1.0, step = 0.1 }": "alpha = { low = 0.0, high = 0.0 }",
    "[train]\nepochs = 2": "[train]\nepochs = 20",
}
TERMINATED = "terminated (SIGTERM): the study is consistent; run the same command to resume"


def _terminate_during_a_trial(tmp_path: Path, *extra: str) -> tuple[str, optuna.Study, list[int], float]:
    """Run the search, SIGTERM it once ``workers`` trials train; its stderr, the study, the numbers of those
    trials, seconds to exit."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kdnas.search", "--study", str(edited_smoke(tmp_path, _EDITS)), "--out", str(out)]
    search = subprocess.Popen([*command, "--no-progress", *extra], stderr=subprocess.PIPE, text=True)
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
    try:
        running = wait_for_started_trials(out, workers, search=search, timeout_s=120)
        search.send_signal(signal.SIGTERM)  # to the parent only, as Kubernetes signals PID 1
        start = time.monotonic()
        _, err = search.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        search.kill()
    assert search.returncode == 143, err
    study = optuna.load_study(study_name="smoke", storage=open_storage(default_url(out)))
    return err, study, [t.number for t in running], seconds


def _assert_stopped_cleanly(err: str, study: optuna.Study, numbers: list[int], seconds: float) -> None:
    assert seconds < 15
    assert err.rstrip().splitlines()[-1] == TERMINATED
    assert err.count(TERMINATED) == 1
    assert "Traceback" not in err
    assert not re.search(r"Trial \d+ failed", err)  # Optuna's own lines: only kdnas's, unless -v
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    for trial in (study.trials[n] for n in numbers):
        assert trial.state == optuna.trial.TrialState.FAIL
        assert trial.user_attrs["status"] == "interrupted"
        assert trial.user_attrs["reason"] == "terminated by SIGTERM"
        # Its candidate is queued again: the next run trains it first, instead of a new proposal.
        (retry,) = [w for w in waiting if w.user_attrs.get("retry_of") == trial.number]
        assert retry.system_attrs["fixed_params"] == trial.params


def test_sigterm_stores_the_running_trial_as_interrupted_and_exits_143(tmp_path: Path) -> None:
    _assert_stopped_cleanly(*_terminate_during_a_trial(tmp_path))


def test_sigterm_reaches_the_workers_through_the_parent(tmp_path: Path) -> None:
    err, study, numbers, seconds = _terminate_during_a_trial(tmp_path, "--workers", "2")
    _assert_stopped_cleanly(err, study, numbers, seconds)
    assert "died" not in err  # the workers stopped, each storing its own trial; none was lost
