"""Unfinished runs carried to another machine: a run's trials so far, kept as a journal file in the record
folder (``unfinished/``) and put back into a fresh --out, so a machine that goes away mid-run loses only
the trial it was training.

A trial running at the moment of saving is stored failed, with its candidate queued again (as a resume on
the same machine does): the run goes on from the same history wherever it resumes. The folder's latency
table and hypervolume references go with it, so the resumed trials are timed and scored as the first were
(on a machine of the same kind: the table is keyed by the measuring setup, and another setup is timed anew).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdnas.files import atomic_write
from kdnas.storage import journal_url, open_storage
from kdnas.workers import recover_trials_of

FOLDER = "unfinished"
# The --out files that score a run: the latency table its trials were timed with, and the references.
FOLDER_FILES = ("latency.json", "bench-references.json")


def journal_path(record: Path, run: str) -> Path:
    """Where run ``run``'s trials are kept in record folder ``record``."""
    return record / FOLDER / f"{run}.journal"


def save(db: Path, study_name: str, out: Path, record: Path, run: str) -> int:
    """Keep run ``run``'s trials (its study ``study_name`` in SQLite ``db``) in ``record``; the number kept."""
    import optuna

    journal = journal_path(record, run)
    journal.parent.mkdir(parents=True, exist_ok=True)

    def copy(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        target = open_storage(journal_url(tmp))
        optuna.copy_study(from_study_name=study_name, from_storage=f"sqlite:///{db}", to_storage=target)
        study = optuna.load_study(study_name=study_name, storage=target)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for worker in sorted({trial.user_attrs.get("worker", "") for trial in running}):
            recover_trials_of(study, worker)

    atomic_write(journal, copy)
    for name in FOLDER_FILES:
        if (out / name).is_file():
            atomic_write(journal.parent / name, lambda tmp, name=name: shutil.copyfile(out / name, tmp))
    return len(optuna.load_study(study_name=study_name, storage=open_storage(journal_url(journal))).trials)


def restore(db: Path, study_name: str, out: Path, record: Path, run: str) -> int:
    """Put run ``run``'s kept trials into SQLite ``db`` when it does not exist yet; the number restored."""
    import optuna

    journal = journal_path(record, run)
    if db.exists() or not journal.is_file():
        return 0
    for name in FOLDER_FILES:  # only into a folder that has not timed or scored anything yet
        if (journal.parent / name).is_file() and not (out / name).exists():
            shutil.copyfile(journal.parent / name, out / name)
    source = open_storage(journal_url(journal))
    atomic_write(
        db,
        lambda tmp: optuna.copy_study(from_study_name=study_name, from_storage=source, to_storage=f"sqlite:///{tmp}"),
    )
    return len(optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}").trials)


def forget(record: Path, run: str) -> None:
    """Drop run ``run``'s kept trials (it finished and has its record); the folder goes with the last."""
    journal_path(record, run).unlink(missing_ok=True)
    folder = record / FOLDER
    if folder.is_dir() and not any(folder.glob("*.journal")):
        shutil.rmtree(folder)
