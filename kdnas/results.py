"""What a study holds, as data: one row per trial, the Pareto fronts, the hypervolume over trials, and
what distillation bought at each size, like for like.

The table printed at the end of a search, the report, its CSV files, the export's picks and the
benchmarks all read these, so a front is computed one way everywhere. A duplicate trial (a candidate
trained before, carrying its twin's values) is never on a front: its twin is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kdnas.config import DEFAULT_METRICS, METRICS, StudyConfig
from kdnas.status import TrialStatus, status_of

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd

__all__ = [
    "NO_KD_ALPHA",
    "COMPARABLE_SIZE",
    "HYPERVOLUME_MARGIN",
    "FRONT_COLUMNS",
    "trials_frame",
    "pareto_mask",
    "pareto_front",
    "pareto_table",
    "largest_student_params",
    "hypervolume_reference",
    "hypervolume_2d",
    "hypervolume_history",
    "kd_gain",
    "kd_pairs",
]

# A student without distillation stands for "the same size" when it has more than 1/COMPARABLE_SIZE of
# the distilled one's parameters (and no more): a much smaller one would make distillation look better.
COMPARABLE_SIZE = 1.5

# The hypervolume's reference point lies this factor above the largest student a study can keep.
HYPERVOLUME_MARGIN = 1.1
# The distillation settings a trial samples, as its parameters are named.
KD_PARAMS = ("temperature", "alpha", "alpha_decay", "decay_rate")
# Below this initial alpha the soft term barely moves training: such trials are the no-distillation baseline.
NO_KD_ALPHA = 0.05
# Each cost -> the column flagging the front of accuracy against it alone.
FRONT_COLUMNS = {"params": "front_params", "latency_ms": "front_latency", "macs": "front_macs", "size_kb": "front_size"}
# The columns of trials.csv before and after the trial's own parameters.
_LEAD_COLUMNS = ["trial", "status", "state", "reason", "arch"]
_MEASURED_COLUMNS = [
    "val_accuracy",
    "params",
    "macs",
    "latency_ms",
    "size_kb",
    "pareto",
    *FRONT_COLUMNS.values(),
    "distilled",
    "epochs",
    "train_seconds",
    "duration_s",
    "images_per_s",
    "started",
]


def pareto_mask(costs: np.ndarray) -> np.ndarray:
    """For each row of ``costs`` (N, M), all minimised: True where no other row dominates it.

    A row dominates another when it is no worse in every column and better in at least one; equal
    rows do not dominate each other.
    """
    import numpy as np

    costs = np.asarray(costs, dtype=float)
    no_worse = (costs[:, None, :] <= costs[None, :, :]).all(axis=2)  # [j, i]: j no worse than i everywhere
    better = (costs[:, None, :] < costs[None, :, :]).any(axis=2)
    return ~(no_worse & better).any(axis=0)


def _costs(rows: pd.DataFrame, metrics: Sequence[str]) -> np.ndarray:
    """The rows' measurements as costs to minimise (a maximised metric is negated)."""
    import numpy as np

    return np.column_stack([rows[m] if METRICS[m] == "minimize" else -rows[m] for m in metrics])


def pareto_front(rows: pd.DataFrame, size: str) -> pd.DataFrame:
    """The rows no other row beats on both small ``size`` and high ``val_accuracy``, smallest first.

    Rows missing either value are never on it; of equal rows only the first is kept.
    """
    ranked = rows.dropna(subset=[size, "val_accuracy"])
    ranked = ranked.sort_values([size, "val_accuracy"], ascending=[True, False], kind="stable")
    ranked = ranked.drop_duplicates([size, "val_accuracy"])
    return ranked[pareto_mask(_costs(ranked, [size, "val_accuracy"]))]


def _study_metrics(study: optuna.Study) -> tuple[str, ...]:
    """The objectives the study was run with (all of them for a study stored without its config)."""
    stored = study.user_attrs.get("config", {}).get("objectives", {}).get("metrics")
    return tuple(stored) if stored else DEFAULT_METRICS


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: parameters, measurements, status, reason, durations and Pareto flags.

    Columns: ``trial``, ``status`` (complete, rejected, diverged, interrupted, stopped, duplicate, or
    Optuna's state for a trial that never said), ``state``, ``reason``, ``arch``, every searched
    parameter, ``val_accuracy`` (0..1, last epoch), ``params``, ``macs``, ``latency_ms``, ``size_kb`` (nan
    where the study does not use it), ``pareto`` (optimal in all the study's objectives among complete
    trials; never a duplicate, which reuses an earlier trial's result), ``front_params`` /
    ``front_latency`` / ``front_macs`` / ``front_size`` (``FRONT_COLUMNS``: optimal for accuracy against
    that one cost, among complete trials), ``distilled`` (alpha >= NO_KD_ALPHA), ``epochs``, ``train_seconds``,
    ``duration_s`` (wall time of the trial), ``images_per_s``, ``started``.
    """
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    # Every distillation column, even one no trial sampled (decay_rate when every decay is "none").
    param_names = list(dict.fromkeys([*(name for t in trials for name in t.params), *KD_PARAMS]))
    rows = []
    for t in trials:
        a = t.user_attrs
        curve = a.get("val_curve") or []
        ended = t.datetime_complete
        rows.append(
            {
                "trial": t.number,
                "status": status_of(t),
                "state": t.state.name.lower(),
                "reason": a.get("reason", t.system_attrs.get("fail_reason", "")),
                "arch": a.get("arch", ""),
                **{name: t.params.get(name) for name in param_names},
                "val_accuracy": curve[-1] if curve else math.nan,
                "params": a.get("params", math.nan),
                "macs": a.get("macs", math.nan),
                "latency_ms": a.get("latency_ms", math.nan),
                "size_kb": a.get("size_kb", math.nan),
                "pareto": False,
                **dict.fromkeys(FRONT_COLUMNS.values(), False),
                "distilled": t.params.get("alpha", 0.0) >= NO_KD_ALPHA,
                "epochs": len(curve),
                "train_seconds": a.get("train_seconds", math.nan),
                "duration_s": (ended - t.datetime_start).total_seconds() if ended and t.datetime_start else math.nan,
                "images_per_s": a.get("images_per_s", math.nan),
                "started": t.datetime_start,
            }
        )
    df = pd.DataFrame(rows, columns=[*_LEAD_COLUMNS, *param_names, *_MEASURED_COLUMNS])
    done = df[df["status"] == TrialStatus.COMPLETE]
    df.loc[done.index[pareto_mask(_costs(done, _study_metrics(study)))], "pareto"] = True
    for size, flag in FRONT_COLUMNS.items():
        df.loc[pareto_front(done, size).index, flag] = True
    return df


def pareto_table(df: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal trials of ``trials_frame`` rows, most accurate first (the search's last table,
    the report's table and ``pareto.csv``)."""
    return df[df["pareto"]].sort_values(["val_accuracy", "params"], ascending=[False, True])


def largest_student_params(cfg: StudyConfig, in_channels: int, num_classes: int, image_size: int) -> int:
    """Parameters of the largest student the search space allows (the hypervolume reference derives from it)."""
    from kdnas.models import build_model, count_params
    from kdnas.space import extreme_student

    return count_params(build_model(extreme_student(cfg, in_channels, num_classes, image_size)))


def hypervolume_reference(cfg: StudyConfig, in_channels: int, num_classes: int, image_size: int) -> int:
    """Parameters of the hypervolume's reference point: 10% above the largest student the study can keep,
    the space's largest or ``max_params`` when that is smaller (so the largest kept students still add area,
    and a space mostly beyond the limit does not shrink every study's figure)."""
    largest = largest_student_params(cfg, in_channels, num_classes, image_size)
    if cfg.constraints.max_params is not None:
        largest = min(largest, cfg.constraints.max_params)
    return math.ceil(HYPERVOLUME_MARGIN * largest)


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` (both coordinates minimised) and bounded by ``reference``.

    Swept in order of the first coordinate: each point that lowers the best second coordinate so far
    adds the strip between the two, from its first coordinate to the reference's.
    """
    area, best = 0.0, reference[1]
    for x, y in sorted(points):
        if x < reference[0] and y < best:
            area += (reference[0] - x) * (best - y)
            best = y
    return area


def hypervolume_history(df: pd.DataFrame, reference: float, cost: str = "params") -> pd.Series:
    """Hypervolume of (accuracy, ``cost``) after each trial, normalised to [0, 1].

    The reference point is 0% accuracy at ``reference`` of the cost (parameters by default); 1.0 would be
    a perfect student that costs nothing. Points are (1 - accuracy, cost / reference), minimised.
    """
    import pandas as pd

    ordered = df.sort_values("trial")
    points: list[tuple[float, float]] = []
    history = []
    for row in ordered.itertuples():
        spent = getattr(row, cost)
        if row.status == TrialStatus.COMPLETE and spent <= reference:
            points.append((1.0 - row.val_accuracy, spent / reference))
        history.append(hypervolume_2d(points, (1.0, 1.0)))
    return pd.Series(history, index=ordered["trial"].to_numpy(), name="hypervolume")


def kd_gain(df: pd.DataFrame) -> pd.DataFrame:
    """What distillation bought at each size, like for like.

    Rows are the sizes (parameter counts) on either front, without and with distillation. ``kd`` /
    ``no_kd`` are the best validation accuracy of complete trials with / without it of a comparable size:
    at most that many parameters and more than 1 / ``COMPARABLE_SIZE`` of it (``smallest``), NaN where that
    side has no such trial (a 38k-parameter student without distillation says nothing about what
    distillation bought at 170k). ``gain`` is ``kd - no_kd``; ``kd_trial``, ``no_kd_trial``,
    ``temperature``, ``alpha`` and ``alpha_decay`` name the two trials and the settings of the distilled
    one (does the best temperature or alpha change with size?).
    """
    import pandas as pd

    done = df[df["status"] == TrialStatus.COMPLETE]
    sides = {"no_kd": done[~done["distilled"].astype(bool)], "kd": done[done["distilled"].astype(bool)]}
    sizes = sorted(set().union(*(pareto_front(side, "params")["params"] for side in sides.values())))
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"params": size, "smallest": math.floor(size / COMPARABLE_SIZE) + 1}
        for column, side in sides.items():
            within = side[(side["params"] <= size) & (side["params"] >= row["smallest"])]
            best = within.sort_values(["val_accuracy", "params"], ascending=[False, True]).head(1)
            row[column] = best["val_accuracy"].iloc[0] if len(best) else math.nan
            row[f"{column}_trial"] = best["trial"].iloc[0] if len(best) else math.nan
            if column == "kd":
                for name in ("temperature", "alpha", "alpha_decay"):
                    row[name] = best[name].iloc[0] if len(best) and name in best else math.nan
        rows.append(row)
    columns = ["params", "smallest", "no_kd", "no_kd_trial", "kd", "kd_trial", "temperature", "alpha", "alpha_decay"]
    table = pd.DataFrame(rows, columns=columns)
    table["gain"] = table["kd"] - table["no_kd"]
    return table


def kd_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Architectures trained both without and with distillation: the best validation accuracy each way and
    the gain, exactly like for like; most parameters last."""
    import pandas as pd

    done = df[df["status"] == TrialStatus.COMPLETE]
    rows = []
    for (arch, params), group in done.groupby(["arch", "params"], sort=False):
        distilled = group["distilled"].astype(bool)
        if distilled.all() or not distilled.any():
            continue
        no_kd, kd = group[~distilled]["val_accuracy"].max(), group[distilled]["val_accuracy"].max()
        rows.append({"arch": arch, "params": params, "no_kd": no_kd, "kd": kd, "gain": kd - no_kd})
    return pd.DataFrame(rows, columns=["arch", "params", "no_kd", "kd", "gain"]).sort_values("params", kind="stable")
