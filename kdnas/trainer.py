"""Train and evaluate one network: students (with soft targets) and the teacher (without).

The hot path has no DataLoader: the training split lives on the training device as one uint8
tensor, every batch is cropped, flipped and normalised there by ``AugmentedViews``, and the teacher's
logits come from a ``SoftTargets`` callable (a cache lookup, or a live teacher).
"""

from __future__ import annotations

import copy
import ctypes
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kdnas.config import TrainRecipe
from kdnas.data import AugmentedViews, DatasetInfo, Split, normalize
from kdnas.distill import KDSpec, kd_loss
from kdnas.files import read_torch_dict, torch_save_atomic
from kdnas.registry import Registry

__all__ = [
    "PRECISIONS",
    "SoftTargets",
    "FitResult",
    "EpochCheckpoint",
    "WeightAverage",
    "TrainingDiverged",
    "fit",
    "evaluate",
    "predict_logits",
    "autocast",
    "native_bfloat16",
    "resolve_precision",
    "warn_if_emulated",
    "keep_freed_memory",
    "return_freed_memory",
]

log = logging.getLogger(__name__)

# How often the running loss is checked for NaN/inf; each check is a device sync point on CUDA.
_FINITE_CHECK_EVERY = 25


class SoftTargets(Protocol):
    """The teacher's logits (B, C) for the views (B, C, H, W) of training images ``indices`` in ``epoch``."""

    def __call__(self, epoch: int, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor: ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says when."""


@dataclass
class FitResult:
    """Per-epoch validation accuracy (0..1) and mean training loss, plus throughput figures."""

    val_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0  # training images processed

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where ``fit`` keeps its whole training state after every epoch, so that training stopped mid-way
    (Ctrl-C, a machine gone) resumes from the last finished epoch and ends with the very weights an unbroken
    run reaches: views and learning rate are functions of (epoch, step), everything else is saved here.

    ``key`` names what is trained (its settings and data); a file saved under another key is not resumed.
    """

    path: Path
    key: str

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None (with a warning when a file is there but cannot serve)."""
        if not self.path.is_file():
            return None
        state = read_torch_dict(self.path, _CHECKPOINT_FORMAT, then="training from the first epoch")
        if state is not None and state.get("key") != self.key:
            log.warning("%s was saved for other settings; training from the first epoch", self.path)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        torch_save_atomic({"format": _CHECKPOINT_FORMAT, "key": self.key, **state}, self.path)

    def discard(self) -> None:
        """Drop the file: the training it was kept for is finished and stored."""
        self.path.unlink(missing_ok=True)


_CHECKPOINT_FORMAT = "kdnas-epoch-checkpoint-1"


def _lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then linear decay to zero at the last step."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: CUDA, or a CPU with AVX512-BF16 or AMX.

    There, bf16 autocast trained at 1.6x the float32 step rate (2-core AVX512-BF16 CPU, bench/speed.py);
    elsewhere bf16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return device.type == "cpu" and any(
        getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


# A TrainRecipe.precision -> what it means on a device: "float32" or "bfloat16". "auto": bfloat16 autocast where
# the hardware computes in it natively (CUDA, CPUs with AVX512-BF16 or AMX), float32 elsewhere.
PRECISIONS: Registry[Callable[[torch.device], str]] = Registry("precision")
PRECISIONS.register("auto")(lambda device: "bfloat16" if native_bfloat16(device) else "float32")
PRECISIONS.register("float32")(lambda device: "float32")
PRECISIONS.register("bfloat16")(lambda device: "bfloat16")


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``float32`` or ``bfloat16``: what ``precision`` (a ``TrainRecipe.precision``) means on ``device``."""
    return PRECISIONS.get(precision)(device)


def warn_if_emulated(device: torch.device, *precisions: str) -> None:
    """Warn where a recipe asks for bfloat16 on a device that only emulates it.

    On a 2-core AVX2 CPU, bf16 autocast trained a 78k-parameter student at 5.9 GFLOP/s against 66 in
    float32 (bench/speed.py): the setting works there, but costs about ten times the time.
    """
    if "bfloat16" in precisions and not native_bfloat16(device):
        log.warning(
            "precision 'bfloat16' is emulated on this %s (no AVX512-BF16 or AMX) and trains about 10x slower "
            'than float32; set precision = "auto" in the study\'s [train] and [teacher] train',
            device.type.upper(),
        )


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for ``precision`` (a ``TrainRecipe.precision``) on ``device``."""
    if resolve_precision(device, precision) == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def keep_freed_memory(device: torch.device) -> None:
    """On CPU, ask glibc to reuse freed blocks of up to 512 MiB instead of returning them to the OS.

    CPU training and inference allocate and free activations of many MiB on every step; by default
    glibc maps fresh pages for each (hundreds of thousands of page faults per epoch), and the page
    faults cost more time than the small networks' arithmetic (figures in docs/benchmarks.md).
    """
    libc = _glibc(device)
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 512 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def return_freed_memory(device: torch.device) -> None:
    """On CPU, hand the memory that ``keep_freed_memory`` kept back to the OS; call between phases.

    The blocks one phase freed (training steps, evaluation, the teacher's batches) rarely fit the next
    phase's differently sized tensors (evaluation in batches of 1,024, the next epoch's steps, a trial
    after the teacher), so without this each phase maps memory of its own beside the last one's and the
    peak grows by a phase's worth.
    """
    libc = _glibc(device)
    if libc is not None:
        libc.malloc_trim(0)


def _glibc(device: torch.device) -> ctypes.CDLL | None:
    """The C library, where training runs on the CPU and it is glibc (whose allocator these tune)."""
    if device.type != "cpu":
        return None
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to load by that name (Windows)
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # else not glibc


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


class WeightAverage:
    """An exponential moving average of a network's weights, with batch-norm statistics of its own.

    Validation accuracy of the raw weights swings by many points from epoch to epoch while the learning
    rate is high, and early stopping compares trials by those numbers. The average over the last fraction
    of an epoch follows where training is heading; once the learning rate has decayed to zero it equals
    the raw weights. Until ``horizon_steps`` steps have passed it is the plain mean of the steps so far,
    so the initial weights never linger in it.

    Batch-norm statistics gathered for the raw weights do not fit the averaged ones (as in SWA,
    Izmailov et al. 2018): ``refresh_batch_norm`` recomputes them before the average is evaluated
    (without it, the average's accuracy after epoch 1 was tens of points lower; docs/benchmarks.md).
    """

    def __init__(self, model: nn.Module, horizon_steps: float) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = 1 - 1 / max(1.0, horizon_steps)
        self.steps = 0
        # Only the parameters are averaged: the buffers (batch-norm statistics) are the average's own,
        # recomputed by refresh_batch_norm.
        self._averaged, self._current = list(self.module.parameters()), list(model.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]

    @torch.no_grad()
    def update(self) -> None:
        """Fold in the model's current weights; call after every optimizer step."""
        self.steps += 1
        torch._foreach_lerp_(self._averaged, self._current, max(1 - self.decay, 1 / self.steps))

    @torch.no_grad()
    def refresh_batch_norm(
        self,
        views: AugmentedViews,
        order: torch.Tensor,
        params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        batch_size: int,
    ) -> None:
        """Recompute the average's batch-norm statistics on training views of an epoch.

        ``order`` and ``params`` are the epoch's (``views.order``, ``views.epoch_params``). A forward pass
        over the first ``_BATCH_NORM_IMAGES`` images of that order (about 1% of a Fashion-MNIST epoch's
        compute), in float32 like the evaluation that follows.
        """
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        self.module.train()
        order = order[:_BATCH_NORM_IMAGES]
        for first in range(0, len(order), batch_size):
            self.module(views.batch(order[first : first + batch_size], params))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


# Images whose batch statistics give the weight average its batch-norm statistics: enough for a small
# network's per-channel means and variances, a small fraction of an epoch.
_BATCH_NORM_IMAGES = 2048


def fit(
    model: nn.Module,
    views: AugmentedViews,
    recipe: TrainRecipe,
    *,
    kd: KDSpec | None = None,
    soft_targets: SoftTargets | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint: EpochCheckpoint | None = None,
) -> FitResult:
    """Train ``model`` in place on ``views`` and evaluate it on the validation split after every epoch.

    With ``recipe.average_epochs`` > 0 the evaluated network is the ``WeightAverage`` of the weights,
    and ``model`` ends holding that average.

    Args:
        model: on the same device as ``views``.
        views: the training split's augmented views; ``views.data.val`` is the validation split.
        recipe: epochs, batch size, SGD and learning-rate schedule.
        kd: distillation hyperparameters; None (or alpha 0) is plain supervised training.
        soft_targets: teacher logits for each batch; required when ``kd.alpha > 0``.
        on_epoch: called after each epoch's evaluation as ``on_epoch(epoch, val_accuracy)``; it may
            raise (e.g. ``optuna.TrialPruned``) to stop training.
        on_step: called after every optimizer step as ``on_step(step, total_steps)``.
        checkpoint: where the training state is saved after every epoch and resumed from, if there.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    distilling = kd is not None and kd.alpha > 0
    if distilling and soft_targets is None:
        raise ValueError("soft_targets are required when kd.alpha > 0")
    device = views.data.train.images.device
    keep_freed_memory(device)
    model.to(device=device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )
    n = len(views)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)
    horizon = recipe.average_epochs * steps_per_epoch
    average = WeightAverage(model, horizon) if horizon > 0 else None
    evaluated = average.module if average else model
    result, first_epoch, step = FitResult(), 0, 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        first_epoch, step = saved["epoch"], saved["step"]
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if average is not None:
            average.load_state_dict(saved["average"])
        result = FitResult(**{kept.name: saved[kept.name] for kept in fields(FitResult)})
        log.info("resuming after epoch %d of %d, saved in %s", first_epoch, recipe.epochs, checkpoint.path)
    start = time.perf_counter() - result.seconds
    for epoch in range(first_epoch, recipe.epochs):
        model.train()
        order, params = views.order(epoch), views.epoch_params(epoch)
        loss_sum = torch.zeros((), device=device)
        for first in range(0, n, recipe.batch_size):
            indices = order[first : first + recipe.batch_size]
            x = views.batch(indices, params)
            y = views.data.train.labels[indices]
            alpha = kd.alpha_at(step / total_steps) if distilling else 0.0
            teacher_logits = soft_targets(epoch, indices, x) if alpha > 0 else None
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup_steps, recipe.lr)
            with autocast(device, recipe.precision):
                logits = model(x)
            loss = kd_loss(
                logits.float(), teacher_logits, y, alpha, kd.temperature if kd else 1.0, recipe.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update()
            loss_sum += loss.detach()
            step += 1
            at_check = step % _FINITE_CHECK_EVERY == 0 or first + recipe.batch_size >= n
            if at_check and not math.isfinite(loss_sum.item()):  # sync point
                raise TrainingDiverged(f"non-finite loss in epoch {epoch + 1}, step {step}")
            if on_step is not None:
                on_step(step, total_steps)
        result.images += n
        result.train_loss.append(loss_sum.item() / steps_per_epoch)
        if average is not None:
            average.refresh_batch_norm(views, order, params, recipe.batch_size)
        return_freed_memory(device)  # the training steps' blocks do not fit evaluation's larger batches
        accuracy = evaluate(evaluated, views.data.val, views.data.info, recipe.eval_batch_size)
        return_freed_memory(device)  # nor do evaluation's blocks fit the next epoch's training steps
        result.val_accuracy.append(accuracy)
        result.seconds = time.perf_counter() - start
        if checkpoint is not None:
            checkpoint.save(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "average": average.state_dict() if average is not None else None,
                    **asdict(result),
                }
            )
        if on_epoch is not None:
            on_epoch(epoch, accuracy)
    if average is not None:  # the trained network is the one whose accuracy was reported
        model.load_state_dict(average.module.state_dict())
    return result


def predict_logits(model: nn.Module, images: torch.Tensor, info: DatasetInfo, batch_size: int) -> torch.Tensor:
    """Logits (N, C) of un-augmented uint8 ``images`` (N, C, H, W), in eval mode and float32.

    Float32 whatever the training precision: reported accuracies are those of the float32 network that
    is exported and deployed, and evaluation is a small part of a trial.
    """
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode():
        for first in range(0, len(images), batch_size):
            batch = images[first : first + batch_size].to(device)
            outputs.append(model(normalize(batch, info)).float())
    return torch.cat(outputs)


def evaluate(model: nn.Module, split: Split, info: DatasetInfo, batch_size: int) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``split``; nan for an empty split (a folder without test/)."""
    if len(split.labels) == 0:
        return math.nan
    logits = predict_logits(model, split.images, info, batch_size)
    return (logits.argmax(1) == split.labels.to(logits.device)).float().mean().item()
