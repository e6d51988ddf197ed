"""The student file (``kdnas-student/1`` JSON): one chosen trial, with everything needed to train it again.

It holds the architecture, the KD hyperparameters and schedule, the objectives as measured, the
teacher's path, fingerprint and file hash, and the whole study config, whose ``train`` section is the
training recipe and whose ``data``/``teacher`` sections rebuild the data and check the teacher.
``python -m kdnas.export`` writes it; ``python -m kdnas.train --config FILE`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdnas.config import StudyConfig, dataclass_from_dict, study_from_dict
from kdnas.errors import KdnasError, first_line
from kdnas.files import file_sha256

if TYPE_CHECKING:
    from kdnas.distill import KDSpec
    from kdnas.models import ArchSpec
    from kdnas.rundir import StudyRun

__all__ = ["FORMAT", "StudentFile", "student_record", "read_student", "kdnas_version"]

log = logging.getLogger(__name__)

FORMAT = "kdnas-student/1"


def kdnas_version() -> str:
    """The installed kdnas version ("unknown" when run from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kdnas")
    except PackageNotFoundError:
        return "unknown"


def student_record(run: StudyRun, trial_number: int, selection: Mapping[str, Any]) -> dict[str, Any]:
    """The ``kdnas-student/1`` dict of one complete trial of ``run``."""
    from kdnas.space import specs_from_params
    from kdnas.study import stored_data_info

    trial = run.study.trials[trial_number]
    cfg, a = run.cfg, trial.user_attrs
    info = stored_data_info(run.study, cfg)
    arch, kd = specs_from_params(trial.params, cfg, info.in_channels, info.num_classes, info.image_size)
    if arch.describe() != a["arch"]:
        raise KdnasError(
            f"trial {trial_number} was {a['arch']!r} but its params rebuild {arch.describe()!r}; "
            "the stored config does not match the study's trials"
        )
    teacher = run.study.user_attrs.get("teacher") or {}
    path = run.teacher_file()
    if not path.is_file():
        log.warning("the teacher file %s is missing; kdnas.train will need it", path)
    return {
        "format": FORMAT,
        "kdnas_version": kdnas_version(),
        "study": cfg.name,
        "run_dir": str(run.out_dir.resolve()),
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
            "latency_anchor_ms": a.get("latency_anchor_ms"),
            "latency_runtime": cfg.latency.runtime,
            "latency_device": cfg.latency.device,
            "size_kb": a.get("size_kb"),
            "train_seconds": a.get("train_seconds"),
        },
        "teacher": {
            "source": teacher.get("source"),
            "label": teacher.get("label"),
            "path": str(path),
            "fingerprint": teacher.get("fingerprint"),
            "sha256": file_sha256(path) if path.is_file() else None,
            "spec": teacher.get("spec"),
            "params": teacher.get("params"),
            "val_accuracy": teacher.get("val_accuracy"),
            "test_accuracy": teacher.get("test_accuracy"),
        },
        "data": json.loads(json.dumps(info.summary(), default=list)),
        "config": json.loads(json.dumps(cfg.to_dict(), default=list)),
    }


@dataclass(frozen=True)
class _Measured:
    """What ``read_student`` needs of the file's ``measured`` object (the rest is for people)."""

    params: int
    val_accuracy: float
    latency_ms: float | None = None  # on the study's [latency] runtime
    latency_anchor_ms: float | None = None  # the anchor's reference figure it is scaled to (kdnas.measure)


@dataclass(frozen=True)
class _TeacherRef:
    """What ``read_student`` needs of the file's ``teacher`` object."""

    path: str
    fingerprint: str
    sha256: str | None = None


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
    measured_latency_ms: float | None = None  # on the study's [latency] runtime; None in files that lack it
    measured_latency_anchor_ms: float | None = None  # the anchor's reference figure; None in files that lack it

    def data_cache_dir(self, fallback: Path) -> Path:
        """Where the search kept the decoded images of an image folder (its run directory), if it still
        exists: kdnas.train reads them instead of decoding again; otherwise ``fallback``."""
        run_dir = self.record.get("run_dir")
        return Path(run_dir) if isinstance(run_dir, str) and Path(run_dir).is_dir() else fallback


def _fields_of(cls: type, table: Any) -> Any:
    """Only ``cls``'s fields of a JSON object (when it is one): the file may record more for people."""
    if not isinstance(table, Mapping):
        return table
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in table.items() if k in names}


def read_student(path: Path) -> StudentFile:
    """Read and check a student file; no data or teacher is loaded, the student is built once to check it.

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
        if not isinstance(record["trial"], int) or isinstance(record["trial"], bool):
            raise KdnasError(f"trial must be an integer, got {record['trial']!r}")
        measured = dataclass_from_dict(_Measured, _fields_of(_Measured, record["measured"]), "measured")
        teacher = dataclass_from_dict(_TeacherRef, _fields_of(_TeacherRef, record["teacher"]), "teacher")
        student = StudentFile(
            path=Path(path),
            record=record,
            cfg=study_from_dict(record["config"]),
            arch=ArchSpec.from_dict(record["arch"], "arch"),
            kd=dataclass_from_dict(KDSpec, record["kd"], "kd", exact=True),
            trial=record["trial"],
            measured_params=measured.params,
            measured_val_accuracy=measured.val_accuracy,
            teacher_path=Path(teacher.path),
            teacher_fingerprint=teacher.fingerprint,
            teacher_sha256=teacher.sha256,
            measured_latency_ms=measured.latency_ms,
            measured_latency_anchor_ms=measured.latency_anchor_ms,
        )
        _check_fits_dataset(student)
    except KdnasError as err:
        raise KdnasError(f"{path}: {err}") from None
    return student


def _check_fits_dataset(student: StudentFile) -> None:
    from kdnas.data import DATASETS
    from kdnas.models import build_model

    try:  # a hand-edited or truncated spec fails here, in one line
        build_model(student.arch)
    except KdnasError:
        raise
    except Exception as err:
        what = f"{student.arch.family} {student.arch.spec}"
        raise KdnasError(f"arch {what} does not build ({type(err).__name__}: {first_line(err)})") from None
    # The data as the search loaded it; files written before it was recorded used built-in datasets only.
    data = student.record.get("data") or DATASETS.get(student.cfg.data.dataset).summary()
    if not isinstance(data, dict):
        raise KdnasError(f"data must be an object, got {data!r}")
    if (student.arch.in_channels, student.arch.num_classes) != (data.get("in_channels"), data.get("num_classes")):
        raise KdnasError(
            f"arch has in_channels={student.arch.in_channels}, num_classes={student.arch.num_classes} "
            f"but {data.get('name')} has {data.get('in_channels')} and {data.get('num_classes')}"
        )
