"""A search from start to end: checks, storage, teacher, latencies, trials (here or in worker
processes) until the study holds its budget, then the Pareto table and the report."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kdnas.config import StudyConfig
from kdnas.errors import KdnasError
from kdnas.files import write_json
from kdnas.status import BUDGET_STATUSES, TRAINED_STATUSES, TrialStatus
from kdnas.storage import hide_password
from kdnas.study import budget_trials, open_study

if TYPE_CHECKING:
    import optuna

    from kdnas.data import SoftTargetBytes
    from kdnas.objective import Objective

__all__ = ["ensure_writable", "run_search", "print_pareto_table"]

log = logging.getLogger("kdnas.search")

# Give up after this many candidates in a row were rejected or already trained (the space is used up).
_MAX_CONSECUTIVE_REJECTIONS = 200


def ensure_writable(out_dir: Path) -> None:
    """Create `out_dir` and check it takes files, so a bad --out fails before any training."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A probe of its own name: workers sharing --out start together, and one worker's unlink of a
        # shared name made another's fail ("No such file or directory").
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise KdnasError(f"cannot write to {out_dir} ({err.strerror}); pass a writable --out") from None


def _soft_target_bytes(cfg: StudyConfig) -> SoftTargetBytes | None:
    """The soft-target cache's size for a given training split, which the data's memory check adds."""
    from kdnas.teacher import soft_targets_bytes

    if not cfg.kd.may_distill:
        return None
    return lambda images, classes: soft_targets_bytes(images, classes, cfg.train.epochs)


def run_search(
    cfg: StudyConfig,
    out_dir: Path,
    *,
    storage: str | None = None,
    device: str = "auto",
    data_dir: Path = Path("data"),
    fresh: bool = False,
    progress: bool = False,
    workers: int = 1,
    heartbeat_grace_s: int | None = None,
) -> int:
    """Teacher, soft targets, then trials until the study holds ``cfg.budget.trials``; returns an exit code.

    With ``workers`` > 1, that many processes search the same study (the teacher is built here first).

    Raises:
        KdnasError: bad settings, missing data, a storage that cannot be opened or holds other trials;
            all checked before anything is written.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from kdnas.data import load_data
    from kdnas.measure import resolve_device
    from kdnas.prepare import prepare_objective, time_space
    from kdnas.progress import step_bar
    from kdnas.runtimes import runtime_for
    from kdnas.storage import default_url, shareable_url
    from kdnas.teacher import ensure_disk_space, soft_targets_bytes
    from kdnas.trainer import warn_if_emulated
    from kdnas.workers import recover_dead_local_trials

    # Everything that can fail on bad input is checked before anything is written.
    if workers < 1:
        raise KdnasError(f"--workers must be at least 1, got {workers}")
    if heartbeat_grace_s is not None and heartbeat_grace_s < 4:
        raise KdnasError(f"--heartbeat-grace must be at least 4 seconds, got {heartbeat_grace_s}")
    train_device = resolve_device(device)
    runtime_for(cfg.latency).require()
    warn_if_emulated(train_device, cfg.train.precision, cfg.teacher.train.precision)
    with step_bar("decoding", progress) as hook:
        data = load_data(cfg.data, data_dir, cache_dir=out_dir, soft_target_bytes=_soft_target_bytes(cfg), on_step=hook)
    ensure_writable(out_dir)
    storage_url = storage or default_url(out_dir)
    if workers > 1:
        storage_url = shareable_url(storage_url, cfg.name)
    study = open_study(cfg, storage_url, data.info, fresh=fresh, heartbeat_grace_s=heartbeat_grace_s)
    write_json(out_dir / "config.json", cfg.to_dict())
    lost = recover_dead_local_trials(study)
    if lost:
        log.warning("trial(s) %s were left running by dead workers of this host: failed and queued again", lost)

    done = budget_trials(study)
    if done >= cfg.budget.trials:
        log.info(
            "study %r already holds %d trained trials (budget %d); raise --trials to run more",
            cfg.name,
            done,
            cfg.budget.trials,
        )
        _finish(study, cfg, out_dir)
        return 0

    with logging_redirect_tqdm():
        data = data.to(train_device)
        log.info(
            "data: %s, %d train / %d val / %d test images, training on %s",
            data.info.name,
            len(data.train),
            len(data.val),
            len(data.test),
            train_device,
        )
        if cfg.kd.may_distill and not (out_dir / "soft_targets.pt").exists():
            # A full disk must stop the run before the teacher trains, not after.
            needed = soft_targets_bytes(len(data.train), data.info.num_classes, cfg.train.epochs)
            ensure_disk_space(out_dir, needed, "the soft-target cache")
        objective = prepare_objective(cfg, data, out_dir, study, train_device, progress)
        time_space(cfg, objective)
        log.info(
            "search: %d of %d trials done, running %d more with %d worker(s) (storage %s)",
            done,
            cfg.budget.trials,
            cfg.budget.trials - done,
            workers,
            hide_password(storage_url),
        )
        if workers == 1:
            optimize(study, objective, cfg, progress)
        else:
            from kdnas.workers import run_workers

            del objective, data  # the workers load the teacher and soft targets that prepare_objective saved
            if train_device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            level = logging.getLogger().level
            job = WorkerJob(cfg, out_dir, storage_url, device, data_dir, level, workers, heartbeat_grace_s)
            run_workers(job, workers, study, cfg.budget.trials, budget_trials, progress)
    _finish(study, cfg, out_dir)
    print(f"study {cfg.name!r} stored in {hide_password(storage_url)}; run directory {out_dir}")
    return 0


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs to join the study (picklable: workers are spawned)."""

    cfg: StudyConfig
    out_dir: Path
    storage_url: str
    device: str
    data_dir: Path
    log_level: int
    workers: int
    heartbeat_grace_s: int | None

    def __call__(self, index: int) -> None:
        """Worker ``index``: load data, teacher and soft targets, then trials until the budget is reached."""
        import torch

        from kdnas.cli import setup_logging
        from kdnas.data import load_data
        from kdnas.measure import resolve_device
        from kdnas.prepare import prepare_objective

        level = self.log_level
        setup_logging(level <= logging.DEBUG, level >= logging.WARNING, prefix=f"[worker {index}] ")
        try:
            device = self.device
            if device == "auto" and torch.cuda.device_count() > 1:  # one GPU per worker, round robin
                device = f"cuda:{index % torch.cuda.device_count()}"
            train_device = resolve_device(device)
            if train_device.type == "cpu":  # share the cores instead of oversubscribing them
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
            data = load_data(self.cfg.data, self.data_dir, cache_dir=self.out_dir).to(train_device)
            study = open_study(
                self.cfg, self.storage_url, data.info, worker=index, heartbeat_grace_s=self.heartbeat_grace_s
            )
            objective = prepare_objective(self.cfg, data, self.out_dir, study, train_device, progress=False)
            optimize(study, objective, self.cfg, progress=False)
        except KdnasError as err:
            log.error("error: %s", err)
            raise SystemExit(2) from None
        except KeyboardInterrupt:  # its trial is stored as interrupted; the parent reports
            raise SystemExit(130) from None


def optimize(study: optuna.Study, objective: Objective, cfg: StudyConfig, progress: bool) -> None:
    """Run trials in this process until the study holds its budget, the timeout passes, or the space is used up."""
    import optuna
    from tqdm import tqdm

    from kdnas.progress import trial_line
    from kdnas.space import candidate_count
    from kdnas.trainer import TrainingDiverged

    target = cfg.budget.trials
    remaining = target - budget_trials(study)
    bar = tqdm(total=remaining, desc="trials", unit="trial", disable=not progress, dynamic_ncols=True)
    rejected_in_a_row = 0
    candidates = candidate_count(cfg)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal rejected_in_a_row
        log.info("%s", trial_line(trial))
        status = trial.user_attrs.get("status")
        untrained = status in (TrialStatus.REJECTED, TrialStatus.DUPLICATE)
        rejected_in_a_row = rejected_in_a_row + 1 if untrained else 0
        if status in BUDGET_STATUSES:
            bar.update(1)
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if complete:
                best = max(t.user_attrs["val_curve"][-1] for t in complete)
                bar.set_postfix_str(f"best acc {100 * best:.2f}%")
        if budget_trials(study) >= target:
            study.stop()
        elif untrained and len(_candidates_tried(study)) >= candidates:
            log.warning(
                "stopping: each of the %d candidates of the space is trained or over [constraints]; widen the "
                "space for more trials",
                candidates,
            )
            study.stop()
        elif rejected_in_a_row >= _MAX_CONSECUTIVE_REJECTIONS:
            log.warning(
                "stopping: the last %d candidates were all over [constraints] or already trained, so the space "
                "looks used up; widen [constraints] or the space for more trials",
                rejected_in_a_row,
            )
            study.stop()

    timeout = cfg.budget.timeout_min * 60 if cfg.budget.timeout_min else None
    try:
        study.optimize(objective, timeout=timeout, catch=(TrainingDiverged,), callbacks=[after_trial])
    finally:
        bar.close()


def _candidates_tried(study: optuna.Study) -> set[tuple]:
    """The distinct candidates the study trained, stopped or rejected: those a new draw cannot add to."""
    import optuna

    tried = TRAINED_STATUSES | {TrialStatus.REJECTED}
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=states)
    return {tuple(sorted(t.params.items())) for t in trials if t.user_attrs.get("status") in tried}


def _finish(study: optuna.Study, cfg: StudyConfig, out_dir: Path) -> None:
    """The Pareto table on stdout, and the report beside the study."""
    from kdnas.results import pareto_table, trials_frame

    df = trials_frame(study)
    print_pareto_table(pareto_table(df), cfg.name)
    if df["pareto"].any():
        from kdnas.report import write_report

        write_report(study, cfg, out_dir, df)


def print_pareto_table(table, study_name: str) -> None:
    """The Pareto-optimal trials (``kdnas.results.pareto_table`` rows), one line each, on stdout."""
    if table.empty:
        print("no complete trials yet")
        return
    print(f"Pareto-optimal trials of {study_name!r} ({len(table)}):")
    width = max(18, int(table["arch"].str.len().max()))
    sized = bool(table["size_kb"].notna().any())  # measured only by a study that optimises or bounds it
    print(
        f"{'trial':>5}  {'architecture':<{width}} {'T':>5} {'alpha':>5} {'decay':<11} {'val acc':>8} "
        f"{'params':>10} {'MMACs':>7} {'latency':>10}" + (f" {'size':>10}" if sized else "")
    )
    for r in table.itertuples():
        print(
            f"{r.trial:>5}  {r.arch:<{width}} {r.temperature:>5.2f} {r.alpha:>5.2f} {r.alpha_decay:<11} "
            f"{100 * r.val_accuracy:>7.2f}% {r.params:>10,.0f} {r.macs / 1e6:>7.2f} "
            f"{r.latency_ms:>7.3f} ms" + (f" {r.size_kb:>7.1f} KiB" if sized else "")
        )
