"""Before the first trial: the teacher and its soft targets (built once, or loaded), and the latency of
every network of the space, timed side by side."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kdnas.config import STUDIES_DIR, StudyConfig
from kdnas.errors import TeacherChanged
from kdnas.objective import Objective
from kdnas.progress import StepHook, duration, percent, step_bar

if TYPE_CHECKING:
    import optuna
    import torch

    from kdnas.data import ImageData

__all__ = ["prepare_objective", "time_space"]

log = logging.getLogger(__name__)

# At most this many networks are timed before the first trial: each costs warm-up + repeats forward
# passes of the latency batch (milliseconds each for Fashion-MNIST students, more for CIFAR ones).
_MAX_TIMED_AHEAD = 500
# A teacher that would train longer than this on a CPU means the study was sized for a GPU: say so early.
_SLOW_TEACHER_S = 3600.0
_TIMED_STEPS = 5  # steps timed, after the first (which warms up), to estimate the teacher's training time


def prepare_objective(
    cfg: StudyConfig, data: ImageData, out_dir: Path, study: optuna.Study, train_device: torch.device, progress: bool
) -> Objective:
    """The teacher and its soft targets (built, or loaded from ``out_dir``), as a trial objective.

    The teacher's summary and the training device are recorded on the study (the report shows them).
    """
    from kdnas.data import AugmentedViews
    from kdnas.files import exclusive
    from kdnas.teacher import obtain_teacher, soft_targets_for

    # Workers sharing --out (on one host or many) build the teacher and its cache once: the first
    # holds the lock while it builds, the others wait and then load what it saved.
    with exclusive(out_dir / ".teacher.lock", "teacher: another worker is building it; waiting"):
        with step_bar("teacher", progress) as hook:
            teacher = obtain_teacher(cfg, data, out_dir, on_step=_warn_if_sized_for_a_gpu(hook, cfg, train_device))
        _refuse_another_teacher(study, teacher.weights_sha256)  # before the soft targets cost anything
        views = AugmentedViews(data)
        soft_targets = None
        if cfg.kd.may_distill:
            with step_bar("soft targets", progress) as hook:
                recipe = cfg.teacher.train
                soft_targets = soft_targets_for(
                    teacher,
                    views,
                    cfg.train.epochs,
                    out_dir,
                    recipe.eval_batch_size,
                    precision=recipe.precision,
                    on_step=hook,
                )
    log.info(
        "teacher: %s, test accuracy %s, val accuracy %s",
        teacher.describe(),
        percent(teacher.test_accuracy),
        percent(teacher.val_accuracy),
    )
    study.set_user_attr("teacher", teacher.summary())
    study.set_user_attr("train_device", str(train_device))
    return Objective(cfg, views, soft_targets, train_device, out_dir)


def _refuse_another_teacher(study: optuna.Study, weights_sha256: str) -> None:
    """Stop a resume whose teacher is not the one the stored trials distilled from: the study is keyed by the
    teacher's settings, not its weights, and a teacher trained anew (on another machine, or after its file
    was deleted) or a checkpoint overwritten in place would mix two teachers in one front.

    Raises:
        TeacherChanged: the study holds finished trials and recorded other teacher weights.
    """
    from optuna.trial import TrialState

    recorded = (study.user_attrs.get("teacher") or {}).get("weights_sha256")
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if recorded is None or recorded == weights_sha256 or not finished:
        return
    raise TeacherChanged(
        f"the {len(finished)} finished trials of study {study.study_name!r} were distilled from teacher weights "
        f"{recorded[:12]}, but the teacher now has weights {weights_sha256[:12]} (trained anew, or its checkpoint "
        "changed); put back the teacher they used (teacher.pt in --out, or the same checkpoint), or start the "
        "study afresh in another --out"
    )


def _warn_if_sized_for_a_gpu(hook: StepHook, cfg: StudyConfig, device: torch.device) -> StepHook:
    """``hook``, plus a warning after the teacher's first steps on a CPU when its training would take more
    than ``_SLOW_TEACHER_S``: the estimate from the measured steps, and the way out (a CPU-sized study)."""
    if device.type != "cpu":
        return hook
    start: float | None = None

    def timed(step: int, total: int) -> None:
        nonlocal start
        hook(step, total)
        if step == 1:
            start = time.perf_counter()
        elif start is not None and step == 1 + _TIMED_STEPS:
            per_step = (time.perf_counter() - start) / _TIMED_STEPS
            start = None
            if per_step * total > _SLOW_TEACHER_S:
                log.warning(
                    "teacher: this study is sized for a GPU: on this CPU its teacher alone would train for about %s "
                    "(%.2f s/step measured, %d steps), and every trial is as slow; %s",
                    duration(per_step * total),
                    per_step,
                    total,
                    _cpu_way_out(cfg),
                )

    return timed


def _cpu_way_out(cfg: StudyConfig) -> str:
    sized_for_cpu = f"{cfg.name}-cpu"
    if (STUDIES_DIR / f"{sized_for_cpu}.toml").is_file():
        return f"run --study {sized_for_cpu} (sized for a CPU), or pass --device cuda on a machine with a GPU"
    return "pass --device cuda on a machine with a GPU, or give [teacher] fewer epochs or a smaller network"


def time_space(cfg: StudyConfig, objective: Objective) -> None:
    """Time every network of the space, side by side, before the first trial.

    Timed one by one as they are sampled, networks are timed in different states of the machine, and
    beside other workers' training when several share it: noise would reorder them.
    """
    from kdnas.space import architectures, space_size

    info = objective.views.data.info
    size = space_size(cfg)
    if size > _MAX_TIMED_AHEAD:
        log.info(
            "latency: more than %d networks in the space, too many to time together; each is timed when sampled",
            _MAX_TIMED_AHEAD,
        )
        return
    archs = architectures(cfg, info.in_channels, info.num_classes, info.image_size)
    start = time.perf_counter()
    timed = objective.latencies.time_all(archs, cfg.constraints.max_params, cfg.constraints.max_macs)
    if timed:
        log.info(
            "latency: timed %d networks of the space on %s (%.0f s)",
            timed,
            cfg.latency.runtime,
            time.perf_counter() - start,
        )
