"""What every kdnas command shares: -v/-q/--debug, logging set up once, user errors as one line."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from kdnas.errors import KdnasError, Terminated

__all__ = [
    "add_common_arguments",
    "add_storage_argument",
    "add_study_argument",
    "add_training_arguments",
    "handle_sigterm",
    "run_cli",
    "setup_logging",
]


def setup_logging(verbose: bool, quiet: bool, prefix: str = "") -> None:
    """Messages on stderr, one line each (``prefix`` first: a worker says which it is)."""
    import optuna

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=f"{prefix}%(message)s", stream=sys.stderr, force=True)
    if not verbose:  # a failed trial is kdnas's one line about it; Optuna's own lines only with -v
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_optuna_failed_trial)
    # We print one line per trial ourselves; Optuna's own per-trial INFO would repeat it.
    optuna.logging.set_verbosity(logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


_OPTUNA_FAILED_TRIAL = re.compile(r"Trial \d+ failed with (parameters|value)")


def _drop_optuna_failed_trial(record: logging.LogRecord) -> bool:
    """Optuna's 'Trial N failed with parameters: ...' (and its traceback) and 'failed with value None'."""
    return not (record.name.startswith("optuna") and _OPTUNA_FAILED_TRIAL.match(record.getMessage()))


def handle_sigterm() -> Callable | int | None:
    """Make SIGTERM (how Slurm and Kubernetes stop a job) raise ``Terminated``, a KeyboardInterrupt, once.

    Every Ctrl-C path then runs: the trial is stored as interrupted, the study stays consistent. Later
    SIGTERMs are ignored, so a second one (the job's whole process group signalled, and the parent
    forwarding it too) cannot cut that cleanup short; SIGKILL still ends the process.

    Returns:
        The handler it replaces (``signal.signal`` restores it).
    """

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    return signal.signal(signal.SIGTERM, terminate)


def add_study_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="a study name in studies/ or a path to a .toml file")


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """--storage of the commands that read a stored study."""
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: the run directory's study.db, or study.journal)"
    )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --data-dir of the commands that train."""
    parser.add_argument("--device", default="auto", help="training device: auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where datasets are (default: data)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """-v, -q and --debug, as every kdnas command has them."""
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run_cli(args: argparse.Namespace, command: Callable[[], int], *, interrupted: str = "interrupted") -> int:
    """Run a CLI's body: logging as -v/-q ask, a KdnasError as one 'error:' line on stderr and exit 2.

    Ctrl-C prints ``interrupted`` and exits 130; SIGTERM prints the same line, its leading
    "interrupted" read as "terminated (SIGTERM)", and exits 143 (128 + 15, as if the signal had ended it).
    """
    setup_logging(args.verbose, args.quiet)
    previous = handle_sigterm()
    try:
        return command()
    except KdnasError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM)" + interrupted.removeprefix("interrupted"), file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    finally:  # a CLI called in-process (tests) leaves the caller's handler as it was
        signal.signal(signal.SIGTERM, previous)
