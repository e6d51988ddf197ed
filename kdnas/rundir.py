"""A search's run directory, read back: the stored study, the config it ran with, and its teacher file.

    runs/<study>/study.db (or study.journal)   the Optuna study; its user attributes hold the config
    runs/<study>/config.json                   the effective config, for people
    runs/<study>/teacher.pt                    the teacher (unless the study names a checkpoint)
    runs/<study>/soft_targets.pt               the teacher's logits per (epoch, image)
    runs/<study>/latency.json                  latencies per measuring setup
    runs/<study>/report.html, trials.csv, pareto.csv

The report, the export and the training of a chosen student open a run through ``load_run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdnas.config import StudyConfig, load_study, study_from_dict
from kdnas.errors import KdnasError
from kdnas.status import TrialStatus, count_line, status_of

if TYPE_CHECKING:
    import optuna

__all__ = ["StudyRun", "default_run_dir", "load_run"]


def default_run_dir(study_name: str) -> Path:
    """Where a study's files go unless ``--out`` says otherwise."""
    return Path("runs") / study_name


@dataclass(frozen=True)
class StudyRun:
    """A stored study with the config it was run with and its run directory (teacher, reports)."""

    study: optuna.Study
    cfg: StudyConfig
    out_dir: Path

    def teacher_file(self) -> Path:
        """Where the teacher the search used lies: a checkpoint, the path it recorded, or the run directory's."""
        if self.cfg.teacher.checkpoint_as_is:
            return Path(self.cfg.teacher.checkpoint).resolve()
        recorded = (self.study.user_attrs.get("teacher") or {}).get("path")
        if recorded and Path(recorded).is_file():
            return Path(recorded).resolve()
        return (self.out_dir / "teacher.pt").resolve()


def load_run(study: str, out: Path | None = None, storage: str | None = None) -> StudyRun:
    """Open the study that ``python -m kdnas.search --study STUDY [--out OUT] [--storage URL]`` wrote.

    Nothing is created: a missing run directory or database is an error, not an empty study.

    Raises:
        KdnasError: unknown study file, nothing stored under that name, or no complete trial yet.
    """
    import optuna

    from kdnas.storage import default_url, hide_password, local_file, open_storage

    file_cfg = load_study(study)
    name = file_cfg.name
    out_dir = out if out is not None else default_run_dir(name)
    if storage is None:
        storage = default_url(out_dir)
        stored_file = local_file(storage)
        if not stored_file.is_file():
            raise KdnasError(
                f"no stored study {name!r}: {stored_file} does not exist; run 'python -m kdnas.search "
                f"--study {study}' first, or pass the --out (or --storage) the search used"
            )
    shown = hide_password(storage)
    try:
        stored = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        raise KdnasError(f"no study named {name!r} in {shown}; run the search first or check --storage") from None
    # The stored config is what the trials were run with (--seed and --trials included).
    cfg = study_from_dict(stored.user_attrs["config"]) if "config" in stored.user_attrs else file_cfg
    trials = stored.get_trials(deepcopy=False)
    if not any(t.user_attrs.get("status") == TrialStatus.COMPLETE for t in trials):
        held = count_line(status_of(t) for t in trials) or "none"
        raise KdnasError(
            f"study {name!r} has no complete trial yet (trials: {held}); "
            f"run 'python -m kdnas.search --study {study}' until one finishes"
        )
    return StudyRun(stored, cfg, out_dir)
