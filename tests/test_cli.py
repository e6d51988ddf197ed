"""What every kdnas command shares: SIGTERM handled like Ctrl-C, and Optuna's failed-trial lines only with -v."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

import pytest

from kdnas.cli import run_cli, setup_logging
from kdnas.errors import Terminated

RESUME = "interrupted: the study is consistent; run the same command to resume"


def _args(verbose: bool = False) -> argparse.Namespace:
    return argparse.Namespace(verbose=verbose, quiet=False, debug=False)


def test_sigterm_is_one_line_and_exit_143_and_the_handler_is_restored(capsys) -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def command() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises in this thread at once
        except Terminated as err:
            seen.append(str(err))  # what the objective stores as the trial's reason
            os.kill(os.getpid(), signal.SIGTERM)  # a second one (forwarded, or the group's) is ignored
            raise
        return 0

    assert run_cli(_args(), command, interrupted=RESUME) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM): the study is consistent; run the same command to resume\n"
    assert seen == ["terminated by SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_is_still_exit_130(capsys) -> None:
    def command() -> int:
        raise KeyboardInterrupt

    assert run_cli(_args(), command, interrupted=RESUME) == 130
    assert capsys.readouterr().err == RESUME + "\n"


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
def test_optunas_failed_trial_lines_only_with_verbose(verbose: bool, capsys) -> None:
    setup_logging(verbose=verbose, quiet=False)
    optuna_log = logging.getLogger("optuna.study._optimize")
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as err:
        optuna_log.warning("Trial 7 failed with parameters: {'alpha': 0.5} because of: %r", err, exc_info=True)
    optuna_log.warning("Trial 7 failed with value None.")
    optuna_log.warning("heartbeat: trial 3 is stale")  # any other Optuna warning is kept
    logging.getLogger("kdnas.search").warning("trial   7  interrupted")
    err = capsys.readouterr().err
    assert "heartbeat: trial 3 is stale" in err and "trial   7  interrupted" in err
    assert ("Trial 7 failed with parameters" in err) == verbose
    assert ("Trial 7 failed with value None" in err) == verbose
    assert ("Traceback" in err) == verbose
