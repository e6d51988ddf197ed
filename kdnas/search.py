"""Run a distillation-aware architecture search.

    python -m kdnas.search --study fashion              # studies/fashion.toml, stored in runs/fashion/
    python -m kdnas.search --study my_study.toml --trials 40 --storage postgresql://user@host/db

The teacher is trained once (or loaded), its soft targets computed once, then an Optuna
multi-objective study trains one student per trial and stores accuracy, parameters and latency.
Running the same command again continues the study up to its trial budget. This module is the command
line only; ``kdnas.runner`` runs the search (``study``: opening it, ``objective``: one trial).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from kdnas.cli import add_common_arguments, add_study_argument, add_training_arguments, run_cli
from kdnas.config import load_study
from kdnas.rundir import default_run_dir

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdnas.search",
        description="Search student architectures and distillation settings against a fixed teacher.",
    )
    add_study_argument(parser)
    parser.add_argument("--trials", type=int, help="trained trials the study should hold (default: [budget] trials)")
    parser.add_argument("--timeout", type=float, metavar="MIN", help="stop this run after MIN minutes")
    add_training_arguments(parser)
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<study name>)")
    parser.add_argument(
        "--storage", help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: SQLite in --out)"
    )
    parser.add_argument("--seed", type=int, help="seed of the sampler and the students (default: the study's)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine searching the study (default 1)"
    )
    parser.add_argument(
        "--heartbeat-grace",
        type=int,
        metavar="S",
        help="with an RDB storage: retry a trial whose worker sent no heartbeat for S seconds (default 120)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the stored study and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        from kdnas.runner import run_search

        cfg = load_study(args.study)
        if args.seed is not None:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        if args.trials is not None or args.timeout is not None:
            budget = dataclasses.replace(
                cfg.budget,
                trials=cfg.budget.trials if args.trials is None else args.trials,
                timeout_min=cfg.budget.timeout_min if args.timeout is None else args.timeout,
            )
            cfg = dataclasses.replace(cfg, budget=budget)
        return run_search(
            cfg,
            args.out or default_run_dir(cfg.name),
            storage=args.storage,
            device=args.device,
            data_dir=args.data_dir,
            fresh=args.fresh,
            progress=not args.no_progress and sys.stderr.isatty(),
            workers=args.workers,
            heartbeat_grace_s=args.heartbeat_grace,
        )

    return run_cli(args, command, interrupted="interrupted: the study is consistent; run the same command to resume")


if __name__ == "__main__":
    raise SystemExit(main())
