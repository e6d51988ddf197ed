"""Pick one student from a finished search and write everything needed to train it again.

    python -m kdnas.export --study fashion                           # the knee -> runs/fashion/best_student.json
    python -m kdnas.export --study fashion --pick max-accuracy --max-params 200000 --out best_student.json
    python -m kdnas.export --study fashion --trial 17 --out trial17.json

Pick policies, among complete trials within ``--max-params`` / ``--max-latency-ms``:

- ``max-accuracy``: the highest validation accuracy (ties: fewer parameters, then lower latency).
- ``smallest``: the fewest parameters (ties: higher accuracy).
- ``fastest``: the lowest latency (ties: higher accuracy).
- ``knee``: the best trade-off on the accuracy-vs-parameters Pareto front. Put the front on the
  plane of (log10 parameters, accuracy), scale both to [0, 1] over the front, and draw the line from
  the smallest to the most accurate front trial; the knee is the front trial farthest from that line,
  where giving up parameters starts to cost the most accuracy. A front of one or two trials has no
  interior point: the knee is then its most accurate trial.

The JSON (format ``kdnas-student/1``) holds the architecture, the KD hyperparameters and schedule,
the objectives as measured, the teacher's path, fingerprint and file hash, and the whole study
config, whose ``train`` section is the training recipe and whose ``data``/``teacher`` sections
rebuild the data and check the teacher. ``python -m kdnas.train --config FILE`` trains it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdnas.cli import add_common_arguments, add_storage_argument, add_study_argument, run_cli
from kdnas.config import StudyConfig, study_from_dict
from kdnas.errors import KdnasError
from kdnas.files import write_json
from kdnas.report import StudyRun, load_run, pareto_front, trials_frame

if TYPE_CHECKING:
    import pandas as pd

    from kdnas.distill import KDSpec
    from kdnas.models import ArchSpec

__all__ = [
    "FORMAT",
    "PICKS",
    "StudentFile",
    "pick_trial",
    "knee",
    "student_record",
    "read_student",
    "file_sha256",
    "kdnas_version",
    "build_parser",
    "main",
]

log = logging.getLogger(__name__)

FORMAT = "kdnas-student/1"
PICKS = ("knee", "max-accuracy", "smallest", "fastest")
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
    max_params: int | None = None,
    max_latency_ms: float | None = None,
    trial: int | None = None,
) -> int:
    """The number of the trial ``pick`` chooses from ``trials_frame`` rows, or the given ``trial``.

    Raises:
        KdnasError: unknown policy or trial, a trial that is not complete, or nothing within the limits
            (the message lists the closest trials).
    """
    import pandas as pd

    if pick not in PICKS:
        raise KdnasError(f"unknown pick {pick!r}; known: {', '.join(PICKS)}")
    complete = df[df["status"] == "complete"]
    # How far each trial is over the limits: the sum of its relative excesses, 0 within them.
    excess = pd.Series(0.0, index=complete.index)
    for column, limit in (("params", max_params), ("latency_ms", max_latency_ms)):
        if limit is not None:
            excess += (complete[column] / limit - 1).clip(lower=0)
    within = complete[excess == 0]
    limits = " and ".join(
        ([f"--max-params {max_params:,}"] if max_params is not None else [])
        + ([f"--max-latency-ms {max_latency_ms:g}"] if max_latency_ms is not None else [])
    )
    if trial is not None:
        rows = df[df["trial"] == trial]
        if rows.empty:
            raise KdnasError(f"the study has no trial {trial}; its trials are 0..{df['trial'].max()}")
        row = rows.iloc[0]
        if row["status"] != "complete":
            reason = f" ({row['reason']})" if row["reason"] else ""
            raise KdnasError(
                f"trial {trial} is {row['status']}{reason}, not complete; "
                f"complete trials: {', '.join(map(str, complete['trial']))}"
            )
        if trial not in set(within["trial"]):
            raise KdnasError(f"trial {trial} is outside {limits}: {_describe(row)}")
        return trial
    if within.empty:
        closest = complete.loc[excess.sort_values(kind="stable").index[:3]]
        raise KdnasError(
            f"no complete trial meets {limits} (of {len(complete)}); closest: "
            f"{', '.join(_describe(r) for r in closest.itertuples())}; relax the limits"
        )
    if pick == "knee":
        return knee(pareto_front(within, "params"))
    by, ascending = _ORDER[pick]
    return int(within.sort_values(by, ascending=ascending).iloc[0]["trial"])


# ---------------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------------


def kdnas_version() -> str:
    """The installed kdnas version ("unknown" when run from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kdnas")
    except PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes: tells a retrained teacher from the one a student was searched with."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _teacher_file(run: StudyRun) -> Path:
    """Where the teacher the search used lies: a checkpoint, the path it recorded, or the run directory's."""
    if run.cfg.teacher.checkpoint:
        return Path(run.cfg.teacher.checkpoint).resolve()
    recorded = (run.study.user_attrs.get("teacher") or {}).get("path")
    if recorded and Path(recorded).is_file():
        return Path(recorded).resolve()
    return (run.out_dir / "teacher.pt").resolve()


def student_record(run: StudyRun, trial_number: int, selection: Mapping[str, Any]) -> dict[str, Any]:
    """The ``kdnas-student/1`` dict of one complete trial of ``run``."""
    from kdnas.data import DATASETS
    from kdnas.space import specs_from_params

    trial = run.study.trials[trial_number]
    cfg, a = run.cfg, trial.user_attrs
    info = DATASETS.get(cfg.data.dataset)
    arch, kd = specs_from_params(trial.params, cfg, info.in_channels, info.num_classes)
    if arch.describe() != a["arch"]:
        raise KdnasError(
            f"trial {trial_number} was {a['arch']!r} but its params rebuild {arch.describe()!r}; "
            "the stored config does not match the study's trials"
        )
    teacher = run.study.user_attrs.get("teacher") or {}
    path = _teacher_file(run)
    if not path.is_file():
        log.warning("the teacher file %s is missing; kdnas.train will need it", path)
    return {
        "format": FORMAT,
        "kdnas_version": kdnas_version(),
        "study": cfg.name,
        "trial": trial_number,
        "selection": dict(selection),
        "arch": dataclasses.asdict(arch),
        "kd": dataclasses.asdict(kd),
        "measured": {
            "val_accuracy": a["val_curve"][-1],
            "val_curve": a["val_curve"],
            "params": a["params"],
            "macs": a["macs"],
            "latency_ms": a["latency_ms"],
            "latency_device": cfg.latency.device,
            "train_seconds": a.get("train_seconds"),
        },
        "teacher": {
            "path": str(path),
            "fingerprint": teacher.get("fingerprint"),
            "sha256": file_sha256(path) if path.is_file() else None,
            "spec": teacher.get("spec"),
            "params": teacher.get("params"),
            "val_accuracy": teacher.get("val_accuracy"),
            "test_accuracy": teacher.get("test_accuracy"),
        },
        "config": json.loads(json.dumps(cfg.to_dict(), default=list)),
    }


@dataclass(frozen=True)
class StudentFile:
    """A validated ``kdnas-student/1`` file."""

    path: Path
    record: dict[str, Any]  # the file's content, as read
    cfg: StudyConfig  # the study config: recipe (cfg.train), seed, data and teacher sections
    arch: ArchSpec
    kd: KDSpec
    trial: int
    measured_params: int
    measured_val_accuracy: float
    teacher_path: Path
    teacher_fingerprint: str
    teacher_sha256: str | None


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the simple type ``hint`` (int, float, str, tuple[int, ...]), or a one-line error."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            raise KdnasError(f"{where} must be a list, got {value!r}")
        return tuple(_typed(v, typing.get_args(hint)[0], where) for v in value)
    ok = isinstance(value, hint) and not isinstance(value, bool)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise KdnasError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return hint(value)


def _spec(cls: type, value: Any, where: str) -> Any:
    """A frozen spec dataclass from a JSON object with exactly its fields."""
    if not isinstance(value, Mapping):
        raise KdnasError(f"{where} must be an object, got {value!r}")
    hints = typing.get_type_hints(cls)
    missing = [name for name in hints if name not in value]
    unknown = [name for name in value if name not in hints]
    if missing or unknown:
        raise KdnasError(
            f"{where} must have exactly the keys {', '.join(hints)}; "
            f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(unknown) or '-'}"
        )
    return cls(**{name: _typed(value[name], hint, f"{where}.{name}") for name, hint in hints.items()})


def read_student(path: Path) -> StudentFile:
    """Read and check a student file; no data, teacher or model is loaded.

    Raises:
        KdnasError: unreadable, not JSON, another format or version, or invalid contents.
    """
    from kdnas.distill import KDSpec
    from kdnas.models import ArchSpec

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise KdnasError(f"cannot read {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KdnasError(f"{path} is not valid JSON ({err}); export it again") from None
    fmt = record.get("format") if isinstance(record, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("kdnas-student/"):
        raise KdnasError(
            f'{path} is not a kdnas student file (no "format": "{FORMAT}"); write one with python -m kdnas.export'
        )
    if fmt != FORMAT:
        raise KdnasError(
            f"{path} has format {fmt!r}, but this kdnas reads {FORMAT!r}; export it again with this version"
        )
    try:
        for key in ("config", "arch", "kd", "measured", "teacher", "trial"):
            if key not in record:
                raise KdnasError(f"missing key {key!r}")
        cfg = study_from_dict(record["config"])
        arch = _spec(ArchSpec, record["arch"], "arch")
        kd = _spec(KDSpec, record["kd"], "kd")
        measured, teacher = record["measured"], record["teacher"]
        if not isinstance(measured, Mapping) or not isinstance(teacher, Mapping):
            raise KdnasError("measured and teacher must be objects")
        student = StudentFile(
            path=Path(path),
            record=record,
            cfg=cfg,
            arch=arch,
            kd=kd,
            trial=_typed(record["trial"], int, "trial"),
            measured_params=_typed(measured.get("params"), int, "measured.params"),
            measured_val_accuracy=_typed(measured.get("val_accuracy"), float, "measured.val_accuracy"),
            teacher_path=Path(_typed(teacher.get("path"), str, "teacher.path")),
            teacher_fingerprint=_typed(teacher.get("fingerprint"), str, "teacher.fingerprint"),
            teacher_sha256=None if teacher.get("sha256") is None else _typed(teacher["sha256"], str, "teacher.sha256"),
        )
        _check_fits_dataset(student)
    except KdnasError as err:
        raise KdnasError(f"{path}: {err}") from None
    return student


def _check_fits_dataset(student: StudentFile) -> None:
    from kdnas.data import DATASETS
    from kdnas.models import ARCHITECTURES

    ARCHITECTURES.get(student.arch.arch)
    info = DATASETS.get(student.cfg.data.dataset)
    if (student.arch.in_channels, student.arch.num_classes) != (info.in_channels, info.num_classes):
        raise KdnasError(
            f"arch has in_channels={student.arch.in_channels}, num_classes={student.arch.num_classes} "
            f"but {info.name} has {info.in_channels} and {info.num_classes}"
        )


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
    parser.add_argument("--max-params", type=int, metavar="N", help="only trials with at most N parameters")
    parser.add_argument("--max-latency-ms", type=float, metavar="X", help="only trials at most X ms latency")
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
        number = pick_trial(
            df, args.pick, max_params=args.max_params, max_latency_ms=args.max_latency_ms, trial=args.trial
        )
        selection = {
            "pick": "trial" if args.trial is not None else args.pick,
            "max_params": args.max_params,
            "max_latency_ms": args.max_latency_ms,
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
