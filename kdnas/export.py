"""Pick one student from a finished search and write everything needed to train it again.

    python -m kdnas.export --study fashion                           # the knee -> runs/fashion/best_student.json
    python -m kdnas.export --study fashion --pick max-accuracy --max-params 200000 --out best_student.json
    python -m kdnas.export --study fashion --trial 17 --out trial17.json

Pick policies, among complete trials within the limits given (``--max-params``, ``--max-latency-ms``,
``--max-macs``, ``--max-size-kb``):

- ``max-accuracy``: the highest validation accuracy (ties: fewer parameters, then lower latency).
- ``smallest``: the fewest parameters (ties: higher accuracy).
- ``fastest``: the lowest latency (ties: higher accuracy).
- ``knee``: the best trade-off on the accuracy-vs-parameters Pareto front. Put the front on the
  plane of (log10 parameters, accuracy), scale both to [0, 1] over the front, and draw the line from
  the smallest to the most accurate front trial; the knee is the front trial farthest from that line,
  where giving up parameters starts to cost the most accuracy. A front of one or two trials has no
  interior point: the knee is then its most accurate trial.

The JSON is a student file (``kdnas.student_file``); ``python -m kdnas.train --config FILE`` trains it.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdnas.cli import add_common_arguments, add_storage_argument, add_study_argument, run_cli
from kdnas.errors import KdnasError
from kdnas.files import write_json
from kdnas.results import pareto_front, trials_frame
from kdnas.rundir import load_run
from kdnas.status import TrialStatus
from kdnas.student_file import student_record

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PICKS", "LIMITS", "pick_trial", "knee", "build_parser", "main"]

log = logging.getLogger(__name__)

PICKS = ("knee", "max-accuracy", "smallest", "fastest")
# The trials_frame column each limit bounds -> (its flag, the type it takes, what it bounds).
LIMITS = {
    "params": ("--max-params", int, "parameters"),
    "latency_ms": ("--max-latency-ms", float, "ms latency"),
    "macs": ("--max-macs", int, "multiply-accumulates per image"),
    "size_kb": ("--max-size-kb", float, "KiB of exported ONNX"),
}
# Sort keys (and ascending flags) of the simple picks; later keys break ties.
_ORDER = {
    "max-accuracy": (["val_accuracy", "params", "latency_ms", "trial"], [False, True, True, True]),
    "smallest": (["params", "val_accuracy", "latency_ms", "trial"], [True, False, True, True]),
    "fastest": (["latency_ms", "val_accuracy", "params", "trial"], [True, False, True, True]),
}


# ---------------------------------------------------------------------------------------------------
# Choosing a trial
# ---------------------------------------------------------------------------------------------------


def knee(front: pd.DataFrame) -> int:
    """The knee trial of an accuracy-vs-params front (rows sorted by params, accuracy rising)."""
    if len(front) < 3:
        return int(front["trial"].iloc[-1])
    x = front["params"].astype(float).map(math.log10)
    y = front["val_accuracy"].astype(float)
    x, y = (x - x.iloc[0]) / (x.iloc[-1] - x.iloc[0]), (y - y.iloc[0]) / (y.iloc[-1] - y.iloc[0])
    # Both ends are at (0, 0) and (1, 1) now: the distance to their line is |y - x| / sqrt(2).
    return int(front["trial"].loc[(y - x).abs().idxmax()])


def _describe(row: Any) -> str:
    return f"trial {row.trial} ({row.params:,.0f} params, {row.latency_ms:.3f} ms, {100 * row.val_accuracy:.2f}% val)"


def pick_trial(
    df: pd.DataFrame,
    pick: str = "knee",
    *,
    limits: Mapping[str, float] | None = None,
    trial: int | None = None,
) -> int:
    """The number of the trial ``pick`` chooses from ``trials_frame`` rows, or the given ``trial``, among
    those within ``limits`` (a ``LIMITS`` column -> its highest value).

    Raises:
        KdnasError: unknown policy or trial, a trial that is not complete, or nothing within the limits
            (the message lists the closest trials).
    """
    import pandas as pd

    if pick not in PICKS:
        raise KdnasError(f"unknown pick {pick!r}; known: {', '.join(PICKS)}")
    complete = df[df["status"] == TrialStatus.COMPLETE]
    # How far each trial is over the limits: the sum of its relative excesses, 0 within them.
    limits = dict(limits or {})
    for column in limits:
        if complete[column].isna().all():
            flag, _, what = LIMITS[column]
            raise KdnasError(
                f"{flag}: this study's trials have no figure of {what} (it measures one it optimises or constrains)"
            )
    # A trial without the figure is over the limit: nan fills as 1.
    excess = pd.Series(0.0, index=complete.index)
    for column, limit in limits.items():
        excess += (complete[column] / limit - 1).clip(lower=0).fillna(1.0)
    within = complete[excess == 0]
    named = " and ".join(f"{LIMITS[column][0]} {limit:,g}" for column, limit in limits.items())
    if trial is not None:
        rows = df[df["trial"] == trial]
        if rows.empty:
            raise KdnasError(f"the study has no trial {trial}; its trials are 0..{df['trial'].max()}")
        row = rows.iloc[0]
        if row["status"] != TrialStatus.COMPLETE:
            reason = f" ({row['reason']})" if row["reason"] else ""
            raise KdnasError(
                f"trial {trial} is {row['status']}{reason}, not complete; "
                f"complete trials: {', '.join(map(str, complete['trial']))}"
            )
        if trial not in set(within["trial"]):
            raise KdnasError(f"trial {trial} is outside {named}: {_describe(row)}")
        return trial
    if within.empty:
        closest = complete.loc[excess.sort_values(kind="stable").index[:3]]
        raise KdnasError(
            f"no complete trial meets {named} (of {len(complete)}); closest: "
            f"{', '.join(_describe(r) for r in closest.itertuples())}; relax the limits"
        )
    if pick == "knee":
        return knee(pareto_front(within, "params"))
    by, ascending = _ORDER[pick]
    return int(within.sort_values(by, ascending=ascending).iloc[0]["trial"])


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdnas.export",
        description="Pick a student from a finished search and write it as JSON for python -m kdnas.train.",
        epilog="knee: on the accuracy-vs-params Pareto front, scaled to [0, 1] on (log10 params, accuracy), "
        "the trial farthest from the line joining the smallest and the most accurate front trials.",
    )
    add_study_argument(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pick", choices=PICKS, default="knee", help="how to choose (default: knee)")
    which.add_argument("--trial", type=int, metavar="N", help="export trial N instead of picking one")
    for column, (flag, kind, what) in LIMITS.items():
        parser.add_argument(flag, type=kind, dest=f"max_{column}", metavar="X", help=f"only trials of at most X {what}")
    parser.add_argument("--out", type=Path, help="the JSON file to write (default: <run dir>/best_student.json)")
    parser.add_argument("--run-dir", type=Path, help="the search's run directory (default: runs/<study name>)")
    add_storage_argument(parser)
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        run = load_run(args.study, args.run_dir, args.storage)
        df = trials_frame(run.study)
        given = {column: getattr(args, f"max_{column}") for column in LIMITS}
        limits = {column: limit for column, limit in given.items() if limit is not None}
        number = pick_trial(df, args.pick, limits=limits, trial=args.trial)
        selection = {
            "pick": "trial" if args.trial is not None else args.pick,
            **{f"max_{c}": v for c, v in given.items()},
        }
        record = student_record(run, number, selection)
        out = args.out or run.out_dir / "best_student.json"
        try:
            write_json(out, record)
        except OSError as err:
            raise KdnasError(f"cannot write {out} ({err.strerror}); pass a writable --out") from None
        row = df[df["trial"] == number].iloc[0]
        log.info("exported %s: %s, %s", _describe(row), row["arch"], selection["pick"])
        print(out)
        return 0

    return run_cli(args, command)


if __name__ == "__main__":
    raise SystemExit(main())
