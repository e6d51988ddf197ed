"""What the benches share: a study searched quietly into a kept run folder, and its training compute
against hypervolume (the x and y of every "performance over compute" figure)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

from kdnas.config import DataConfig, StudyConfig
from kdnas.errors import KdnasError, TeacherChanged
from kdnas.status import TrialStatus


def stored_study(cfg: StudyConfig, storage: Path):
    """The study of ``cfg`` stored in SQLite ``storage``, or None before it started."""
    import optuna

    if not storage.is_file():
        return None
    try:
        return optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{storage}")
    except KeyError:  # the file exists, the study was never created in it
        return None


def finished_study(cfg: StudyConfig, storage: Path):
    """The study of ``cfg`` in SQLite ``storage`` once it holds its budget of trials, else None."""
    from kdnas.study import budget_trials

    study = stored_study(cfg, storage)
    return study if study is not None and budget_trials(study) >= cfg.budget.trials else None


def search(cfg: StudyConfig, run_dir: Path, storage: Path, data_dir: Path, kept_in: Path | None = None):
    """Run the search of ``cfg`` in ``run_dir`` (where the teacher, soft targets and latency figures of every
    study sharing its settings are kept once) with its trials in SQLite ``storage``; the stored study. A study
    already holding its budget is read, not searched again (which would load the data and the teacher for
    nothing): kept runs are read again. ``kept_in``: another file its trials are kept in (and put back from),
    which a redo must delete too."""
    from kdnas.runner import run_search

    study = finished_study(cfg, storage)
    if study is not None:
        return study
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the bench prints its own tables; progress on stderr
            code = run_search(cfg, run_dir, storage=f"sqlite:///{storage}", device="auto", data_dir=data_dir)
    except TeacherChanged as err:  # e.g. a run kept from a machine whose teacher came out otherwise
        also = f" and {kept_in}" if kept_in is not None and kept_in.is_file() else ""
        raise SystemExit(f"error: {err}; to redo this run here instead, delete {storage}{also}") from None
    except KdnasError as err:
        raise SystemExit(f"error: {err}") from None
    if code != 0:
        raise SystemExit(f"error: the search of {cfg.name!r} failed (exit code {code})")
    return stored_study(cfg, storage)


def train_teacher(cfg: StudyConfig, run_dir: Path, data_dir: Path) -> Path:
    """The teacher of ``cfg`` as a search of it trains it (the same data, seed and recipe: the same weights),
    kept in ``run_dir`` and read from there again; its file."""
    from kdnas.data import load_data
    from kdnas.measure import resolve_device
    from kdnas.progress import step_bar
    from kdnas.teacher import obtain_teacher

    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = load_data(cfg.data, data_dir, cache_dir=run_dir).to(resolve_device("auto"))
        with step_bar("teacher", False) as hook:  # a line a minute: an hour of training, in a background log
            obtain_teacher(cfg, data, run_dir, on_step=hook)
    except KdnasError as err:
        raise SystemExit(f"error: {err}") from None
    return run_dir / "teacher.pt"


def fewer_training_images(cfg: DataConfig, train_images: int | None) -> DataConfig:
    """``cfg`` limited to ``train_images`` training images (None: all); ``limit_train`` keeps the study's
    validation set (a smaller one would turn every lead into noise)."""
    return cfg if not train_images else dataclasses.replace(cfg, limit_train=train_images)


def compute_curve(df, cfg: StudyConfig, train_images: int) -> tuple[list[float], list[float]]:
    """Cumulative training FLOPs and hypervolume (accuracy vs parameters) after each trial of a trials frame,
    in trial order. A duplicate trained nothing; an interrupted trial (or one whose worker died) is trained
    again by its retry, so its epochs are the machine's loss, not the method's: neither counts."""
    from kdnas.data import DATASETS
    from kdnas.results import hypervolume_history, hypervolume_reference

    info = DATASETS.get(cfg.data.dataset)  # the benches' studies use built-in datasets
    df = df.sort_values("trial")
    hv = hypervolume_history(
        df, hypervolume_reference(cfg, info.in_channels, info.num_classes, info.image_size)
    ).tolist()
    counted = ~df["status"].isin([TrialStatus.DUPLICATE, TrialStatus.INTERRUPTED, TrialStatus.WORKER_DIED])
    cost = training_flops(df["epochs"], df["macs"].fillna(0), train_images).where(counted, 0)
    return cost.cumsum().tolist(), hv


def training_flops(epochs, macs, train_images: int):
    """FLOPs of training networks of ``macs`` multiply-accumulates per image for ``epochs`` (numbers or
    pandas Series): 6 per MAC and image, a multiply-add being 2 FLOPs and backward costing about twice the
    forward."""
    return epochs * macs * 6 * train_images


def first_reach(compute: list[float], hv: list[float], target: float) -> float | None:
    """The cumulative compute at which a hypervolume curve first reached ``target``, or None."""
    return next((c for c, h in zip(compute, hv, strict=True) if h >= target - 1e-12), None)
