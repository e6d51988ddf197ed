"""One trial of the search: sample a candidate, measure its costs, reject or train it, record the result.

Everything a trial learns is stored on it as user attributes (architecture, parameters, MACs, latency,
the exported model's size when the study uses it, the validation curve after every epoch, status and
reason), so that other workers, the early-stopping rule, the report and the export all read the same
evidence from the storage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kdnas.config import StudyConfig
from kdnas.status import TRAINED_STATUSES, TrialStatus

if TYPE_CHECKING:
    import optuna
    import torch

    from kdnas.data import AugmentedViews
    from kdnas.distill import KDSpec
    from kdnas.models import ArchSpec
    from kdnas.pruning import Curve
    from kdnas.trainer import SoftTargets

__all__ = ["Objective", "MEASURED_ATTRS"]

log = logging.getLogger(__name__)

# What a duplicate trial copies from its trained twin.
MEASURED_ATTRS = ("arch", "params", "macs", "size_kb", "latency_ms", "val_curve", "train_seconds", "images_per_s")
# Trials whose curve is not a training of their own: a duplicate holds its twin's, and a failed trial
# whose candidate was queued again will train it again.
_NOT_A_TRAINING = frozenset({TrialStatus.DUPLICATE, TrialStatus.INTERRUPTED, TrialStatus.WORKER_DIED})


class Objective:
    """One trial: sample, measure, reject or train, record.

    Args:
        cfg: the study.
        views: the augmented training views (and the validation split) on the training device.
        soft_targets: the teacher's logits per (epoch, image), or None when no candidate distils.
        device: the training device.
        out_dir: the run directory (its latency table lives there).
    """

    def __init__(
        self,
        cfg: StudyConfig,
        views: AugmentedViews,
        soft_targets: SoftTargets | None,
        device: torch.device,
        out_dir: Path,
    ) -> None:
        from kdnas.measure import LatencyTable
        from kdnas.pruning import EarlyStopper

        self.cfg, self.views, self.soft_targets, self.device = cfg, views, soft_targets, device
        self.stopper = EarlyStopper(cfg.early_stop, cfg.objectives.metrics, cfg.train.epochs, len(views.data.val))
        info = views.data.info
        self.input_shape = (info.in_channels, info.image_size, info.image_size)
        self.latencies = LatencyTable(out_dir, cfg.latency, self.input_shape, mean=info.mean, std=info.std)
        # The size costs an ONNX export (a second or so): measured only where the study uses it.
        self.needs_size = "size_kb" in cfg.objectives.metrics or cfg.constraints.max_size_kb is not None

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        from kdnas.space import suggest
        from kdnas.workers import worker_id

        cfg, info = self.cfg, self.views.data.info
        trial.set_user_attr("worker", worker_id())  # a dead worker's trial is found by this
        if trial.user_attrs.get("val_curve"):  # a retry inherits the dead trial's partial curve
            trial.set_user_attr("val_curve", [])
        arch, kd = suggest(trial, cfg, info.in_channels, info.num_classes, info.image_size)
        try:
            twin = _trained_twin(trial)
            if twin is not None:  # training is deterministic: the stored result is this candidate's result
                return _reuse(trial, twin)
            return self._measure_and_train(trial, arch, kd)
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM from a scheduler, anywhere once it is sampled
            _set_status(trial, TrialStatus.INTERRUPTED, str(err) or "interrupted by the user")
            # The candidate is trained again by the next run, as the sampler would not propose it twice.
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise

    def _measure_and_train(self, trial: optuna.Trial, arch: ArchSpec, kd: KDSpec) -> tuple[float, ...]:
        """Build the sampled student, measure it, reject it or train it; the trial's objective values."""
        import torch

        from kdnas.deploy import onnx_size_kb
        from kdnas.measure import count_macs
        from kdnas.models import build_model, count_params
        from kdnas.trainer import TrainingDiverged, fit

        cfg, info = self.cfg, self.views.data.info
        torch.manual_seed(cfg.seed)  # same candidate, same initial weights, same result
        model = build_model(arch)
        params, macs = count_params(model), count_macs(model, self.input_shape)
        trial.set_user_attr("arch", arch.describe())
        trial.set_user_attr("params", params)
        trial.set_user_attr("macs", macs)
        limit = cfg.constraints
        if limit.max_params is not None and params > limit.max_params:
            _prune(trial, TrialStatus.REJECTED, f"{params:,} params > max_params {limit.max_params:,}")
        if limit.max_macs is not None and macs > limit.max_macs:
            _prune(trial, TrialStatus.REJECTED, f"{macs:,} MACs > max_macs {limit.max_macs:,}")
        size_kb = math.nan
        if self.needs_size:
            size_kb = onnx_size_kb(model, self.input_shape, info.mean, info.std)
            trial.set_user_attr("size_kb", size_kb)
            if limit.max_size_kb is not None and size_kb > limit.max_size_kb:
                _prune(trial, TrialStatus.REJECTED, f"{size_kb:.1f} KiB > max_size_kb {limit.max_size_kb:g}")
        latency = _known_latency(trial, arch.describe())  # workers of other hosts share the study, not the file
        if latency is None:
            latency = self.latencies.latency_ms(model, arch)
        trial.set_user_attr("latency_ms", latency)
        # What kdnas.train scales the trained student's figure by, to compare it with this one.
        trial.set_user_attr("latency_anchor_ms", self.latencies.anchor_reference_ms)
        if limit.max_latency_ms is not None and latency > limit.max_latency_ms:
            _prune(trial, TrialStatus.REJECTED, f"latency {latency:.3f} ms > max_latency_ms {limit.max_latency_ms}")
        try:
            result = fit(
                model.to(self.device),
                self.views,
                cfg.train,
                kd=kd,
                soft_targets=self.soft_targets,
                on_epoch=self._after_epoch(trial, params, latency, macs, size_kb),
            )
        except TrainingDiverged as err:
            _set_status(trial, TrialStatus.DIVERGED, str(err))
            raise
        trial.set_user_attr("status", TrialStatus.COMPLETE)
        trial.set_user_attr("val_curve", result.val_accuracy)
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("images_per_s", result.images_per_s)
        measured = {
            "val_accuracy": result.val_accuracy[-1],
            "params": float(params),
            "latency_ms": latency,
            "macs": float(macs),
            "size_kb": size_kb,
        }
        return tuple(measured[m] for m in cfg.objectives.metrics)

    def _after_epoch(
        self, trial: optuna.Trial, params: int, latency: float, macs: int, size_kb: float
    ) -> Callable[[int, float], None]:
        """Store the curve after every epoch (other workers judge by it) and stop a beaten trial."""
        from kdnas.pruning import Curve

        curve: list[float] = []
        start = time.perf_counter()

        def after_epoch(epoch: int, accuracy: float) -> None:
            curve.append(accuracy)
            trial.set_user_attr("val_curve", curve)
            trial.set_user_attr("train_seconds", time.perf_counter() - start)
            me = Curve(trial.number, params, latency, tuple(curve), finished=False, macs=macs, size_kb=size_kb)
            reason = self.stopper.reason_to_stop(me, trained_curves(trial.study, exclude=trial.number))
            if reason is not None:
                _prune(trial, TrialStatus.STOPPED, reason)

        return after_epoch


def _set_status(trial: optuna.Trial, status: TrialStatus, reason: str) -> None:
    trial.set_user_attr("status", status)
    trial.set_user_attr("reason", reason)


def _prune(trial: optuna.Trial, status: TrialStatus, reason: str) -> None:
    """End the trial as pruned (rejected, stopped early, or a stopped candidate's duplicate)."""
    import optuna

    _set_status(trial, status, reason)
    raise optuna.TrialPruned(reason)


def _reuse(trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> tuple[float, ...]:
    """Record ``trial`` as a duplicate of its trained ``twin``, with the twin's measurements and outcome."""
    for key in MEASURED_ATTRS:
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    if twin.user_attrs["status"] == TrialStatus.STOPPED:
        _prune(trial, TrialStatus.DUPLICATE, f"same candidate as trial {twin.number}, which was stopped early")
    _set_status(trial, TrialStatus.DUPLICATE, f"same candidate as trial {twin.number}; its result reused")
    return tuple(twin.values)


def _trained_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """An earlier trial of the same study with exactly these params that trained (or was stopped)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.params == trial.params and other.user_attrs.get("status") in TRAINED_STATUSES:
            return other
    return None


def _known_latency(trial: optuna.Trial, arch: str) -> float | None:
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


def trained_curves(study: optuna.Study, exclude: int) -> Iterator[Curve]:
    """The learning curves of the study's trainings (running ones too), for early stopping.

    Each training counts once: a duplicate is left out (it holds its twin's curve, and counting one
    training twice would narrow the spread of gains ``forecast`` allows for and add a trial to each
    ``halving`` rung), and so is an interrupted trial, whose candidate is queued to train again.
    """
    import optuna

    from kdnas.pruning import Curve

    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        status = a.get("status")
        if t.number == exclude or not a.get("val_curve") or status in _NOT_A_TRAINING:
            continue
        finished = t.state == optuna.trial.TrialState.COMPLETE or status == TrialStatus.STOPPED
        yield Curve(
            t.number,
            a["params"],
            a["latency_ms"],
            tuple(a["val_curve"]),
            finished,
            macs=a.get("macs", math.nan),
            size_kb=a.get("size_kb", math.nan),
        )
