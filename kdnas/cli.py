"""What every kdnas command shares: -v/-q/--debug, logging set up once, user errors as one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from kdnas.errors import KdnasError

__all__ = [
    "add_common_arguments",
    "add_storage_argument",
    "add_study_argument",
    "add_training_arguments",
    "run_cli",
    "setup_logging",
]


def setup_logging(verbose: bool, quiet: bool, prefix: str = "") -> None:
    """Messages on stderr, one line each (``prefix`` first: a worker says which it is)."""
    import optuna

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=f"{prefix}%(message)s", stream=sys.stderr, force=True)
    if not verbose:  # a failed trial is one line ("Trial 7 failed ... KeyboardInterrupt()"), not a traceback
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_optuna_traceback)
    # We print one line per trial ourselves; Optuna's own per-trial INFO would repeat it.
    optuna.logging.set_verbosity(logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def _drop_optuna_traceback(record: logging.LogRecord) -> bool:
    if record.name.startswith("optuna"):
        record.exc_info, record.exc_text = None, None
    return True


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
    """Run a CLI's body: logging as -v/-q ask, a KdnasError as one 'error:' line on stderr and exit 2."""
    setup_logging(args.verbose, args.quiet)
    try:
        return command()
    except KdnasError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
