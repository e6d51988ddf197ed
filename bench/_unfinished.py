"""Unfinished runs carried to another machine: a run's trials so far, kept as a journal file in the record
folder (``unfinished/``) and put back into a fresh --out, so a machine that goes away mid-run loses only
the trial it was training.

A trial running at the moment of saving is stored failed, with its candidate queued again (as a resume on
the same machine does): the run goes on from the same history wherever it resumes. The folder's latency
table and hypervolume references go with it, so the resumed trials are timed and scored as the first were
(on a machine of the same kind: the table is keyed by the measuring setup, and another setup is timed anew).

A teacher checkpoint is named in the kept study by its file name, not by the saving machine's path; the
machine that resumes checks the kept study against its own (checkpoint by file name too) and puts back its
own path. The teacher's weights themselves are compared by kdnas when the run resumes.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from kdnas.config import StudyConfig
from kdnas.files import atomic_write
from kdnas.storage import journal_url, open_storage
from kdnas.study import search_space_hash, store_config
from kdnas.workers import recover_trials_of

FOLDER = "unfinished"
# The --out files that score a run: the latency table its trials were timed with, and the references.
FOLDER_FILES = ("latency.json", "bench-references.json")


def journal_path(record: Path, run: str) -> Path:
    """Where run ``run``'s trials are kept in record folder ``record``."""
    return record / FOLDER / f"{run}.journal"


def portable(cfg: StudyConfig) -> StudyConfig:
    """``cfg`` with its teacher checkpoint named by its file name, not by this machine's path."""
    checkpoint = cfg.teacher.checkpoint
    if checkpoint is None:
        return cfg
    return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, checkpoint=Path(checkpoint).name))


def _mark_study(study, cfg: StudyConfig) -> None:
    """Store ``cfg`` as the study's settings, as ``kdnas.study.open_study`` does."""
    study.set_user_attr("space_hash", search_space_hash(cfg))
    store_config(study, cfg)


def save(db: Path, cfg: StudyConfig, out: Path, record: Path, run: str) -> int:
    """Keep run ``run``'s trials (its study ``cfg`` in SQLite ``db``) in ``record``; the number kept."""
    import optuna

    journal = journal_path(record, run)
    journal.parent.mkdir(parents=True, exist_ok=True)

    def copy(tmp: Path) -> None:
        # Changed in memory first: a journal keeps every value ever written, the machine's path included.
        staged = optuna.storages.InMemoryStorage()
        optuna.copy_study(from_study_name=cfg.name, from_storage=f"sqlite:///{db}", to_storage=staged)
        study = optuna.load_study(study_name=cfg.name, storage=staged)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for worker in sorted({trial.user_attrs.get("worker", "") for trial in running}):
            recover_trials_of(study, worker)
        _mark_study(study, portable(cfg))
        tmp.unlink(missing_ok=True)
        optuna.copy_study(from_study_name=cfg.name, from_storage=staged, to_storage=open_storage(journal_url(tmp)))

    atomic_write(journal, copy)
    for name in FOLDER_FILES:
        if (out / name).is_file():
            atomic_write(journal.parent / name, lambda tmp, name=name: shutil.copyfile(out / name, tmp))
    return len(optuna.load_study(study_name=cfg.name, storage=open_storage(journal_url(journal))).trials)


def restore(db: Path, cfg: StudyConfig, out: Path, record: Path, run: str) -> int:
    """Put run ``run``'s kept trials (of study ``cfg``) into SQLite ``db`` when it does not exist yet; the
    number restored.

    Raises:
        SystemExit: the kept trials were made with other settings than ``cfg``.
    """
    import optuna

    journal = journal_path(record, run)
    if db.exists() or not journal.is_file():
        return 0
    source = open_storage(journal_url(journal))
    kept = optuna.load_study(study_name=cfg.name, storage=source)
    if kept.user_attrs.get("space_hash") != search_space_hash(portable(cfg)):
        raise SystemExit(f"error: {journal} holds trials made with other settings; delete it to run {run} anew")
    for name in FOLDER_FILES:  # only into a folder that has not timed or scored anything yet
        if (journal.parent / name).is_file() and not (out / name).exists():
            shutil.copyfile(journal.parent / name, out / name)

    def copy(tmp: Path) -> None:
        optuna.copy_study(from_study_name=cfg.name, from_storage=source, to_storage=f"sqlite:///{tmp}")
        _mark_study(optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{tmp}"), cfg)

    atomic_write(db, copy)
    return len(optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{db}").trials)


def forget(record: Path, run: str) -> None:
    """Drop run ``run``'s kept trials (it finished and has its record); the folder goes with the last."""
    journal_path(record, run).unlink(missing_ok=True)
    folder = record / FOLDER
    if folder.is_dir() and not any(folder.glob("*.journal")):
        shutil.rmtree(folder)
