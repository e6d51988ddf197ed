"""Run a distillation-aware architecture search.

    python -m kdnas.search --study fashion              # studies/fashion.toml, stored in runs/fashion/
    python -m kdnas.search --study my_study.toml --trials 40 --storage postgresql://user@host/db

The teacher is trained once (or loaded), its soft targets computed once, then an Optuna
multi-objective study trains one student per trial and stores accuracy, parameters and latency.
Running the same command again continues the study up to its trial budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdnas.cli import add_common_arguments, add_study_argument, add_training_arguments, run_cli
from kdnas.config import StudyConfig, load_study, section_hash
from kdnas.errors import KdnasError, first_line
from kdnas.files import write_json
from kdnas.storage import hide_password

__all__ = ["build_parser", "main", "run_search", "open_study", "budget_trials", "pareto_rows"]

log = logging.getLogger("kdnas.search")

# A trial counts against the budget once it has cost training: finished, diverged or stopped early.
_BUDGET_STATUSES = ("complete", "diverged", "stopped")
# Give up after this many candidates in a row were rejected or already trained (the space is used up).
_MAX_CONSECUTIVE_REJECTIONS = 200


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdnas.search",
        description="Search student architectures and distillation settings against a fixed teacher.",
    )
    add_study_argument(parser)
    parser.add_argument("--trials", type=int, help="trained trials the study should hold (default: [budget] trials)")
    parser.add_argument("--timeout", type=float, metavar="MIN", help="stop this run after MIN minutes")
    add_training_arguments(parser)
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<study name>)")
    parser.add_argument(
        "--storage", help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: SQLite in --out)"
    )
    parser.add_argument("--seed", type=int, help="seed of the sampler and the students (default: the study's)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine searching the study (default 1)"
    )
    parser.add_argument(
        "--heartbeat-grace",
        type=int,
        metavar="S",
        help="with an RDB storage: retry a trial whose worker sent no heartbeat for S seconds (default 120)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the stored study and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        cfg = load_study(args.study)
        if args.seed is not None:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        if args.trials is not None or args.timeout is not None:
            budget = dataclasses.replace(
                cfg.budget,
                trials=cfg.budget.trials if args.trials is None else args.trials,
                timeout_min=cfg.budget.timeout_min if args.timeout is None else args.timeout,
            )
            cfg = dataclasses.replace(cfg, budget=budget)
        return run_search(
            cfg,
            args.out or Path("runs") / cfg.name,
            storage=args.storage,
            device=args.device,
            data_dir=args.data_dir,
            fresh=args.fresh,
            progress=not args.no_progress and sys.stderr.isatty(),
            workers=args.workers,
            heartbeat_grace_s=args.heartbeat_grace,
        )

    return run_cli(args, command, interrupted="interrupted: the study is consistent; run the same command to resume")


# ---------------------------------------------------------------------------------------------------
# Storage and study
# ---------------------------------------------------------------------------------------------------


def _sampler(cfg: StudyConfig, stored_trials: int, worker: int = 0):
    """The study's sampler, seeded by (seed, trials already stored, worker).

    A resumed study must not replay the random sequence of its first run (that would train the same
    candidates again), and the same study file, seed and history still give the same proposals.
    """
    import optuna

    s, seed = cfg.sampler, cfg.seed + 1_000_003 * stored_trials + 7_919 * worker
    if s.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=s.startup_trials, multivariate=True, constant_liar=True
        )
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, s.startup_trials))
    return optuna.samplers.RandomSampler(seed=seed)


def search_space_hash(cfg: StudyConfig) -> str:
    """What makes two runs' trials comparable: data, teacher, space, recipe, objectives, measurement."""
    return section_hash(
        cfg.data, cfg.teacher, cfg.student, cfg.kd, cfg.train, cfg.objectives, cfg.constraints, cfg.latency
    )


def open_study(
    cfg: StudyConfig, storage_url: str, *, fresh: bool = False, worker: int = 0, heartbeat_grace_s: int | None = None
):
    """Create or load the study named ``cfg.name`` in ``storage_url``; refuse to mix incompatible trials.

    ``worker`` tells concurrent workers' samplers apart (each gets its own random stream);
    ``heartbeat_grace_s`` is how long an RDB trial may go without a heartbeat before it is retried.
    """
    import optuna

    from kdnas.storage import HEARTBEAT_GRACE_S, open_storage

    shown = hide_password(storage_url)
    storage = open_storage(storage_url, heartbeat_grace_s or HEARTBEAT_GRACE_S)
    try:
        if fresh and cfg.name in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
            optuna.delete_study(study_name=cfg.name, storage=storage)
            log.info("deleted the stored study %r (--fresh)", cfg.name)
        # Only the process that creates the study queues its start-up trials: hosts starting at the same
        # instant would otherwise queue them twice and train each candidate twice.
        created = True
        try:
            study = optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.objectives.directions)
        except optuna.exceptions.DuplicatedStudyError:
            created = False
            study = optuna.create_study(
                storage=storage, study_name=cfg.name, directions=cfg.objectives.directions, load_if_exists=True
            )
    except Exception as err:  # server gone, permissions, a study of other directions: all one line
        raise KdnasError(f"cannot open study {cfg.name!r} in {shown}: {first_line(err)}") from None
    space_hash = search_space_hash(cfg)
    stored = study.user_attrs.get("space_hash")
    if stored is not None and stored != space_hash:
        raise KdnasError(
            f"study {cfg.name!r} in {shown} was run with a different data/teacher/space/recipe; "
            "rerun with --fresh to start over, or give the study another name"
        )
    if stored is None:
        study.set_user_attr("space_hash", space_hash)
        if created and cfg.sampler.name == "tpe":
            _queue_startup_smallest_first(study, cfg)
    study.sampler = _sampler(cfg, len(study.get_trials(deepcopy=False)), worker)
    study.set_user_attr("config", json.loads(json.dumps(cfg.to_dict(), default=list)))
    return study


def _queue_startup_smallest_first(study, cfg: StudyConfig) -> None:
    """Queue the random start-up trials, drawn with the study's seed, smallest student first.

    Early stopping judges a trial only against finished trials that are no larger. In the sampler's
    random order, the start-up trials that end off the front tend to come before the trials that beat
    them: in a full-data `fashion` run all four did, and nothing could stop them. Smallest first, every
    trial that could beat one has finished before it starts.
    """
    import optuna

    from kdnas.data import DATASETS
    from kdnas.models import build_model, count_params
    from kdnas.space import suggest

    info = DATASETS.get(cfg.data.dataset)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    candidates = []
    for _ in range(min(cfg.sampler.startup_trials, cfg.budget.trials)):  # none left queued by a small budget
        trial = draws.ask()
        arch, _ = suggest(trial, cfg, info.in_channels, info.num_classes)
        candidates.append((count_params(build_model(arch)), trial.params))
    for _, params in sorted(candidates, key=lambda c: c[0]):  # stable: equal sizes keep their draw order
        study.enqueue_trial(params)


def budget_trials(study) -> int:
    """Trials that count against the budget (those that cost training)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") in _BUDGET_STATUSES)


# ---------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------


def _ensure_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise KdnasError(f"cannot write to {out_dir} ({err.strerror}); pass a writable --out") from None


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
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from kdnas.data import load_data
    from kdnas.measure import resolve_device
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
    resolve_device(cfg.latency.device)
    warn_if_emulated(train_device, cfg.train.precision, cfg.teacher.train.precision)
    data = load_data(cfg.data, data_dir)
    _ensure_writable(out_dir)
    storage_url = storage or default_url(out_dir)
    if workers > 1:
        storage_url = shareable_url(storage_url, cfg.name)
    study = open_study(cfg, storage_url, fresh=fresh, heartbeat_grace_s=heartbeat_grace_s)
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
        objective = _prepare(cfg, data, out_dir, study, train_device, progress)
        _time_space(cfg, objective)
        log.info(
            "search: %d of %d trials done, running %d more with %d worker(s) (storage %s)",
            done,
            cfg.budget.trials,
            cfg.budget.trials - done,
            workers,
            hide_password(storage_url),
        )
        if workers == 1:
            _optimize(study, objective, cfg, progress)
        else:
            from kdnas.workers import run_workers

            del objective, data  # the workers load the teacher and soft targets that _prepare saved
            if train_device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            level = logging.getLogger().level
            job = _WorkerJob(cfg, out_dir, storage_url, device, data_dir, level, workers, heartbeat_grace_s)
            run_workers(job, workers, study, cfg.budget.trials, budget_trials, progress)
    _finish(study, cfg, out_dir)
    print(f"study {cfg.name!r} stored in {hide_password(storage_url)}; run directory {out_dir}")
    return 0


def _prepare(cfg: StudyConfig, data, out_dir: Path, study, train_device, progress: bool) -> _Objective:
    """The teacher and its soft targets (built, or loaded from ``out_dir``), as a trial objective."""
    from kdnas.data import AugmentedViews
    from kdnas.files import exclusive
    from kdnas.teacher import obtain_teacher, soft_targets_for

    # Workers sharing --out (on one host or many) build the teacher and its cache once: the first
    # holds the lock while it builds, the others wait and then load what it saved.
    with exclusive(out_dir / ".teacher.lock", "teacher: another worker is building it; waiting"):
        with _bar("teacher", progress) as hook:
            teacher = obtain_teacher(cfg, data, out_dir, on_step=hook)
        views = AugmentedViews(data)
        soft_targets = None
        if cfg.kd.may_distill:
            with _bar("soft targets", progress) as hook:
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
        "teacher: %s, test accuracy %.2f%%, val accuracy %.2f%%",
        teacher.spec.describe(),
        100 * teacher.test_accuracy,
        100 * teacher.val_accuracy,
    )
    study.set_user_attr("teacher", teacher.summary())
    study.set_user_attr("train_device", str(train_device))
    return _Objective(cfg, views, soft_targets, train_device, out_dir)


def _time_space(cfg: StudyConfig, objective: _Objective) -> None:
    """Time every network of the space, side by side, before the first trial.

    Timed one by one as they are sampled, networks are timed in different states of the machine, and
    beside other workers' training when several share it (on 2 cores a 4k-parameter student measured
    1.4-6.8 ms there, against 0.8 ms alone).
    """
    import time

    from kdnas.space import architectures

    info = objective.views.data.info
    archs = architectures(cfg, info.in_channels, info.num_classes)
    if len(archs) > _MAX_TIMED_AHEAD:
        log.info("latency: %d networks in the space, too many to time together; each is timed when sampled", len(archs))
        return
    start = time.perf_counter()
    timed = objective.latencies.time_all(archs, cfg.constraints.max_params)
    if timed:
        log.info(
            "latency: timed %d networks of the space side by side (%.0f s)",
            timed,
            time.perf_counter() - start,
        )


# At most this many networks are timed before the first trial: each costs warm-up + repeats forward
# passes of the latency batch (milliseconds each for Fashion-MNIST students, more for CIFAR ones);
# `fashion` holds 32 networks, `cifar` 189.
_MAX_TIMED_AHEAD = 500


@dataclasses.dataclass(frozen=True)
class _WorkerJob:
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

        level = self.log_level
        setup_logging(level <= logging.DEBUG, level >= logging.WARNING, prefix=f"[worker {index}] ")
        try:
            device = self.device
            if device == "auto" and torch.cuda.device_count() > 1:  # one GPU per worker, round robin
                device = f"cuda:{index % torch.cuda.device_count()}"
            train_device = resolve_device(device)
            if train_device.type == "cpu":  # share the cores instead of oversubscribing them
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
            study = open_study(self.cfg, self.storage_url, worker=index, heartbeat_grace_s=self.heartbeat_grace_s)
            data = load_data(self.cfg.data, self.data_dir).to(train_device)
            objective = _prepare(self.cfg, data, self.out_dir, study, train_device, progress=False)
            _optimize(study, objective, self.cfg, progress=False)
        except KdnasError as err:
            log.error("error: %s", err)
            raise SystemExit(2) from None
        except KeyboardInterrupt:  # its trial is stored as interrupted; the parent reports
            raise SystemExit(130) from None


class _bar:
    """A tqdm bar driven by ``on_step(step, total)`` hooks; a no-op hook when progress is off."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.bar = label, enabled, None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        from tqdm import tqdm

        def hook(step: int, total: int) -> None:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.label, unit="step", leave=False, dynamic_ncols=True)
            self.bar.update(step - self.bar.n)

        return hook

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


_MEASURED_ATTRS = ("arch", "params", "macs", "latency_ms", "val_curve", "train_seconds", "images_per_s")


def _trained_twin(trial):
    """An earlier trial of the same study with exactly these params that trained (or was stopped)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.params == trial.params and other.user_attrs.get("status") in ("complete", "stopped"):
            return other
    return None


def _known_latency(trial, arch: str) -> float | None:
    """The latency an earlier trial of the study measured for the same network, if any.

    Timing a network again gives another figure (machine load, clock), which would make trials of
    one network look different on the latency front and fail early stopping's "no slower" test
    against each other; one network keeps one latency in a study.
    """
    for other in trial.study.get_trials(deepcopy=False):
        a = other.user_attrs
        if other.number != trial.number and a.get("arch") == arch and "latency_ms" in a:
            return a["latency_ms"]
    return None


def _curves(study, exclude: int):
    """The learning curves of the study's trained trials (running ones too), for early stopping.

    A duplicate is left out: it holds its twin's curve, and counting one training twice would narrow
    the spread of gains ``forecast`` allows for and add a trial to each ``halving`` rung.
    """
    import optuna

    from kdnas.pruning import Curve

    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.number == exclude or not a.get("val_curve") or a.get("status") == "duplicate":
            continue
        finished = t.state == optuna.trial.TrialState.COMPLETE or a.get("status") == "stopped"
        yield Curve(t.number, a["params"], a["latency_ms"], tuple(a["val_curve"]), finished)


class _Objective:
    """One trial: sample, measure, reject or train, record."""

    def __init__(self, cfg: StudyConfig, views, soft_targets, device, out_dir: Path) -> None:
        from kdnas.measure import LatencyTable
        from kdnas.pruning import EarlyStopper

        self.cfg, self.views, self.soft_targets, self.device = cfg, views, soft_targets, device
        self.stopper = EarlyStopper(cfg.early_stop, cfg.objectives.metrics, cfg.train.epochs, len(views.data.val))
        info = views.data.info
        self.input_shape = (info.in_channels, info.image_size, info.image_size)
        self.latencies = LatencyTable(out_dir, cfg.latency, self.input_shape)

    def __call__(self, trial) -> tuple[float, ...]:
        import optuna
        import torch

        from kdnas.measure import count_macs
        from kdnas.models import build_model, count_params
        from kdnas.space import suggest
        from kdnas.trainer import TrainingDiverged, fit
        from kdnas.workers import worker_id

        cfg, info = self.cfg, self.views.data.info
        trial.set_user_attr("worker", worker_id())  # a dead worker's trial is found by this
        if trial.user_attrs.get("val_curve"):  # a retry inherits the dead trial's partial curve
            trial.set_user_attr("val_curve", [])
        arch, kd = suggest(trial, cfg, info.in_channels, info.num_classes)
        twin = _trained_twin(trial)
        if twin is not None:  # training is deterministic: the stored result is this candidate's result
            for key in _MEASURED_ATTRS:
                if key in twin.user_attrs:
                    trial.set_user_attr(key, twin.user_attrs[key])
            trial.set_user_attr("status", "duplicate")
            if twin.user_attrs["status"] == "stopped":
                reason = f"same candidate as trial {twin.number}, which was stopped early"
                trial.set_user_attr("reason", reason)
                raise optuna.TrialPruned(reason)
            trial.set_user_attr("reason", f"same candidate as trial {twin.number}; its result reused")
            return tuple(twin.values)
        torch.manual_seed(cfg.seed)  # same candidate, same initial weights, same result
        model = build_model(arch)
        params = count_params(model)
        trial.set_user_attr("arch", arch.describe())
        trial.set_user_attr("params", params)
        trial.set_user_attr("macs", count_macs(model, self.input_shape))
        limit = cfg.constraints
        if limit.max_params is not None and params > limit.max_params:
            self._reject(trial, f"{params:,} params > max_params {limit.max_params:,}")
        latency = _known_latency(trial, arch.describe())  # workers of other hosts share the study, not the file
        if latency is None:
            latency = self.latencies.latency_ms(model, arch)
        trial.set_user_attr("latency_ms", latency)
        if limit.max_latency_ms is not None and latency > limit.max_latency_ms:
            self._reject(trial, f"latency {latency:.3f} ms > max_latency_ms {limit.max_latency_ms}")
        try:
            result = fit(
                model.to(self.device),
                self.views,
                cfg.train,
                kd=kd,
                soft_targets=self.soft_targets,
                on_epoch=self._after_epoch(trial, params, latency),
            )
        except TrainingDiverged as err:
            trial.set_user_attr("status", "diverged")
            trial.set_user_attr("reason", str(err))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", "interrupted by the user")
            raise
        trial.set_user_attr("status", "complete")
        trial.set_user_attr("val_curve", result.val_accuracy)
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("images_per_s", result.images_per_s)
        measured = {"val_accuracy": result.val_accuracy[-1], "params": float(params), "latency_ms": latency}
        return tuple(measured[m] for m in cfg.objectives.metrics)

    def _after_epoch(self, trial, params: int, latency: float) -> Callable[[int, float], None]:
        """Store the curve after every epoch (other workers judge by it) and stop a beaten trial."""
        import optuna

        from kdnas.pruning import Curve

        curve: list[float] = []
        start = time.perf_counter()

        def after_epoch(epoch: int, accuracy: float) -> None:
            curve.append(accuracy)
            trial.set_user_attr("val_curve", curve)
            trial.set_user_attr("train_seconds", time.perf_counter() - start)
            me = Curve(trial.number, params, latency, tuple(curve), finished=False)
            reason = self.stopper.reason_to_stop(me, _curves(trial.study, exclude=trial.number))
            if reason is not None:
                trial.set_user_attr("status", "stopped")
                trial.set_user_attr("reason", reason)
                raise optuna.TrialPruned(reason)

        return after_epoch

    @staticmethod
    def _reject(trial, reason: str) -> None:
        import optuna

        trial.set_user_attr("status", "rejected")
        trial.set_user_attr("reason", reason)
        raise optuna.TrialPruned(reason)


def _trial_line(trial) -> str:
    a, p = trial.user_attrs, trial.params
    kd = f"T={p.get('temperature', 0):.2g} a={p.get('alpha', 0):.2g} {p.get('alpha_decay', '')}"
    if p.get("alpha_decay", "none") != "none":
        kd += f"({p.get('decay_rate', 0):.2g})"
    head = f"trial {trial.number:>3}  {a.get('arch', '?'):<18} {kd:<28}"
    status = a.get("status")
    if status == "complete":
        return (
            f"{head} acc {100 * a['val_curve'][-1]:6.2f}%  params {a['params']:>9,}  "
            f"lat {a['latency_ms']:7.3f} ms  {a['train_seconds']:6.0f} s"
        )
    return f"{head} {status or trial.state.name.lower()}: {a.get('reason', '')}"


def _optimize(study, objective: _Objective, cfg: StudyConfig, progress: bool) -> None:
    import optuna
    from tqdm import tqdm

    from kdnas.trainer import TrainingDiverged

    target = cfg.budget.trials
    remaining = target - budget_trials(study)
    bar = tqdm(total=remaining, desc="trials", unit="trial", disable=not progress, dynamic_ncols=True)
    rejected_in_a_row = 0

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal rejected_in_a_row
        log.info("%s", _trial_line(trial))
        status = trial.user_attrs.get("status")
        rejected_in_a_row = rejected_in_a_row + 1 if status in ("rejected", "duplicate") else 0
        if status in _BUDGET_STATUSES:
            bar.update(1)
            complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
            if complete:
                best = max(t.user_attrs["val_curve"][-1] for t in complete)
                bar.set_postfix_str(f"best acc {100 * best:.2f}%")
        if budget_trials(study) >= target:
            study.stop()
        elif rejected_in_a_row >= _MAX_CONSECUTIVE_REJECTIONS:
            log.warning(
                "the constraints rejected %d candidates in a row; widen [constraints] or narrow the space",
                rejected_in_a_row,
            )
            study.stop()

    timeout = cfg.budget.timeout_min * 60 if cfg.budget.timeout_min else None
    try:
        study.optimize(objective, timeout=timeout, catch=(TrainingDiverged,), callbacks=[after_trial])
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------


def pareto_rows(study) -> list[dict[str, Any]]:
    """The Pareto-optimal complete trials, most accurate first."""
    rows = []
    for t in study.best_trials:
        a, p = t.user_attrs, t.params
        rows.append(
            {
                "trial": t.number,
                "arch": a["arch"],
                "T": p.get("temperature"),
                "alpha": p.get("alpha"),
                "decay": p.get("alpha_decay"),
                "val_accuracy": a["val_curve"][-1],
                "params": a["params"],
                "macs": a["macs"],
                "latency_ms": a["latency_ms"],
            }
        )
    return sorted(rows, key=lambda r: -r["val_accuracy"])


def _finish(study, cfg: StudyConfig, out_dir: Path) -> None:
    """The Pareto table on stdout, and the report beside the study."""
    _print_pareto(study, cfg)
    if pareto_rows(study):
        from kdnas.report import write_report

        write_report(study, cfg, out_dir)


def _print_pareto(study, cfg: StudyConfig) -> None:
    rows = pareto_rows(study)
    if not rows:
        print("no complete trials yet")
        return
    print(f"Pareto-optimal trials of {cfg.name!r} ({len(rows)}):")
    print(
        f"{'trial':>5}  {'architecture':<18} {'T':>5} {'alpha':>5} {'decay':<11} {'val acc':>8} "
        f"{'params':>10} {'MMACs':>7} {'latency':>10}"
    )
    for r in rows:
        print(
            f"{r['trial']:>5}  {r['arch']:<18} {r['T']:>5.2f} {r['alpha']:>5.2f} {r['decay']:<11} "
            f"{100 * r['val_accuracy']:>7.2f}% {r['params']:>10,} {r['macs'] / 1e6:>7.2f} "
            f"{r['latency_ms']:>7.3f} ms"
        )


if __name__ == "__main__":
    raise SystemExit(main())
