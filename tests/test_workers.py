"""Several local worker processes on one study: journal storage, the budget, and a worker killed mid-trial."""

from __future__ import annotations

import functools
import json
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
from kdnas.storage import default_url, open_storage

pytestmark = pytest.mark.slow

BUDGET_STATUSES = ("complete", "stopped", "diverged")


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=open_storage(default_url(out)))


def _check_consistent(study: optuna.Study, budget: int) -> list[optuna.trial.FrozenTrial]:
    """Budget reached, no trial number twice, every trained trial with its three objective values."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))
    trained = [t for t in trials if t.user_attrs.get("status") in BUDGET_STATUSES]
    assert len(trained) >= budget
    for t in trained:
        assert t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 3
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    return trained


@pytest.mark.needs("dataset-fashion-mnist")
def test_three_local_workers_share_a_journal_and_build_the_teacher_once(tmp_path: Path, capfd) -> None:
    out, path = tmp_path / "run", str(edited_smoke(tmp_path, FEWER_IMAGES))
    assert main(["--study", path, "--out", str(out), "--workers", "3", "--trials", "5", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert "several workers share" in err and (out / "study.journal").is_file() and not (out / "study.db").exists()
    assert err.count("teacher: training") == 1 and err.count("teacher: reusing") == 3  # built once, loaded by each
    # Both networks of the space were timed before any worker trained, and the trials use those figures.
    assert "latency: timed 2 networks of the space on torch" in err
    timed = next(iter(json.loads((out / "latency.json").read_text()).values()))
    trained = _check_consistent(_study(out), 5)
    networks = {name: ms for name, ms in timed.items() if not name.startswith("anchor: ")}
    assert {t.user_attrs["latency_ms"] for t in trained} <= set(networks.values()) and len(networks) == 2
    assert len({t.user_attrs["worker"] for t in trained}) >= 2  # the trials really ran in several processes


@pytest.mark.needs("dataset-fashion-mnist")
def test_a_study_in_sqlite_moves_to_the_journal_when_workers_join(tmp_path: Path, capfd) -> None:
    out, path = tmp_path / "run", str(edited_smoke(tmp_path, FEWER_IMAGES))
    assert main(["--study", path, "--out", str(out), "--trials", "1", "--no-progress"]) == 0
    first = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'study.db'}").trials[0]
    assert main(["--study", path, "--out", str(out), "--workers", "2", "--trials", "3", "--no-progress"]) == 0
    assert (out / "study.db.moved-to-journal").is_file() and not (out / "study.db").exists()
    study = _study(out)
    assert study.trials[0].params == first.params and study.trials[0].values == first.values
    _check_consistent(study, 3)
    assert "moved study 'smoke'" in capfd.readouterr().err


@pytest.mark.needs("dataset-fashion-mnist")
def test_a_worker_killed_mid_trial_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kdnas.search", "--study", "smoke", "--out", str(out), "--no-progress"]
    search = subprocess.Popen([*command, "--workers", "2", "--trials", "4"], stderr=subprocess.PIPE, text=True)
    try:
        (victim, *_) = wait_for_started_trials(out, search=search)
        host, pid = victim.user_attrs["worker"].rsplit(":", 1)
        os.kill(int(pid), signal.SIGKILL)
        _, err = search.communicate(timeout=600)
    finally:
        search.kill()
    assert search.returncode == 0, err[-2000:]
    assert f"trial(s) {victim.number} failed and queued again" in err
    study = _study(out)
    killed = study.trials[victim.number]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["status"] == "worker died"
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retries = [t for t in study.trials if retried(t) == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].user_attrs["status"] == "complete"
    _check_consistent(study, 4)


@pytest.mark.needs("dataset-fashion-mnist")
def test_ctrl_c_ends_cleanly_and_the_next_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Trials long enough (smoke trains in seconds) that the signal surely lands inside the one watched:
    # 10 epochs of 1,000 images, about 15 s on a 2 GHz core.
    study_file = edited_smoke(tmp_path, {**FEWER_IMAGES, "[train]\nepochs = 2": "[train]\nepochs = 10"})
    command = [sys.executable, "-m", "kdnas.search", "--study", str(study_file), "--out", str(out), "--no-progress"]
    command += ["--trials", "1"]  # the resume trains the interrupted trial's candidate again
    # A suite started in the background (`cmd &` without job control) hands its children SIGINT ignored,
    # and Python then leaves Ctrl-C ignored too: give the search the default, as a terminal would.
    restore_ctrl_c = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    search = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=restore_ctrl_c)
    try:
        (victim, *_) = wait_for_started_trials(out, search=search)
        search.send_signal(signal.SIGINT)
        _, err = search.communicate(timeout=120)
    finally:
        search.kill()
    assert search.returncode == 130
    assert err.rstrip().endswith("interrupted: the study is consistent; run the same command to resume")
    assert "Traceback" not in err
    interrupted = _study(out).trials[victim.number]
    assert interrupted.state == optuna.trial.TrialState.FAIL and interrupted.user_attrs["status"] == "interrupted"
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0  # resumes to the budget
    (retried,) = _check_consistent(_study(out), 1)
    assert retried.params == interrupted.params and retried.number > interrupted.number


def test_trials_left_running_by_dead_processes_of_this_host_are_recovered(tmp_path: Path) -> None:
    from kdnas.workers import recover_dead_local_trials, worker_id

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that existed and is gone, as after a whole run was SIGKILLed
    study = optuna.create_study(
        storage=open_storage(f"journal:///{tmp_path.resolve().as_posix().lstrip('/')}/s.journal"),
        directions=["maximize", "minimize"],
    )
    dead, alive = study.ask(), study.ask()
    for trial, pid in ((dead, gone.pid), (alive, os.getpid())):
        trial.suggest_int("base_width", 4, 8)
        trial.set_user_attr("worker", worker_id(pid))
    assert recover_dead_local_trials(study) == [dead.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[dead.number].user_attrs["status"] == "worker died"
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING  # its process still runs
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == trials[dead.number].params
