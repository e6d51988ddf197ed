"""Workers on "many hosts": separate search processes joined through a real PostgreSQL server.

Each worker here is its own `python -m kdnas.search` process with the same --storage and --out, as
on separate hosts; nothing coordinates them but the database and the run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _running import wait_for_started_trials
from _smoke import FEWER_IMAGES, edited_smoke

from kdnas.search import main
from kdnas.storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.needs("postgresql")]

BUDGET_STATUSES = ("complete", "stopped", "diverged")


def _worker(url: str, out: Path, trials: int, *extra: str, study: str = "smoke") -> subprocess.Popen:
    command = [sys.executable, "-m", "kdnas.search", "--study", study, "--out", str(out), "--storage", url]
    # One thread each, as on hosts of their own: three processes each spinning up every core of this
    # machine would mostly wait on each other.
    return subprocess.Popen(
        [*command, "--trials", str(trials), "--no-progress", *extra],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=open_storage(url))


def _check_consistent(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))  # none twice, none missing
    trained = [t for t in trials if t.user_attrs.get("status") in BUDGET_STATUSES]
    assert len(trained) >= budget
    for t in trained:
        assert t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 3
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.mark.needs("dataset-fashion-mnist")
def test_three_workers_on_postgres_build_the_teacher_once_and_share_the_study(postgres_url, tmp_path) -> None:
    out, path = tmp_path / "shared", str(edited_smoke(tmp_path, FEWER_IMAGES))
    workers = [_worker(postgres_url, out, 6, study=path) for _ in range(3)]
    errs = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(e[-1500:] for e in errs)
    assert sum(e.count("teacher: training") for e in errs) == 1  # the others waited, then loaded it
    study = _study(postgres_url)
    _check_consistent(study, 6)
    assert len({t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}) >= 2


@pytest.mark.needs("dataset-fashion-mnist")
def test_a_worker_killed_mid_trial_is_retried_after_its_heartbeat_stops(postgres_url, tmp_path) -> None:
    out = tmp_path / "shared"
    grace = ("--heartbeat-grace", "6")
    first = _worker(postgres_url, out, 5, *grace)
    (victim, *_) = wait_for_started_trials(postgres_url)
    second = _worker(postgres_url, out, 5, *grace)  # the survivor, started once the first trains
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    study = _study(postgres_url)
    assert study.trials[victim.number].state == optuna.trial.TrialState.FAIL
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retries = [t for t in study.trials if retried(t) == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].user_attrs["status"] == "complete"
    _check_consistent(study, 5)


def test_wrong_password_is_a_one_line_error_before_any_training(postgres_url, tmp_path, capsys) -> None:
    user, rest = postgres_url.removeprefix("postgresql://").split(":", 1)
    wrong = f"postgresql://{user}:not-the-password@{rest.split('@', 1)[1]}"
    out = tmp_path / "run"
    assert main(["--study", "smoke", "--out", str(out), "--storage", wrong]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open storage") and "password" in err and err.count("\n") == 1
    assert "not-the-password" not in err and not (out / "teacher.pt").exists()
