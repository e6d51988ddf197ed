"""The fixed teacher: loaded or trained once per study, and its soft targets computed once.

``runs/<study>/teacher.pt`` holds the weights with the architecture, dataset, accuracies, the SHA-256
of the weights and a fingerprint of everything they depend on (the study's teacher section and the
data; for a checkpoint, also the file's bytes). A later run reuses the file only when the fingerprint
matches; a changed teacher section retrains, and a file that cannot be read, or whose weights do not
match their recorded hash, is reported and never used.

``runs/<study>/soft_targets.pt`` holds the teacher's logits (fp16) for the view of every training
image in every epoch a student trains. It is keyed by the teacher's weights, not its config: the same
``[teacher]`` section can yield other weights (retrained, trained in another precision, a checkpoint
replaced in place). Views are a pure function of (seed, image, epoch), so a trial that reads the
cache sees what a live teacher would have produced (bit for bit on the CPU; on CUDA up to rare
last-bit fp16 differences between kernels chosen for different batch shapes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdnas.config import StudyConfig, TeacherConfig, section_hash
from kdnas.data import AugmentedViews, ImageData
from kdnas.errors import KdnasError
from kdnas.files import atomic_write, file_sha256
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.trainer import autocast, evaluate, fit, keep_freed_memory, return_freed_memory

__all__ = [
    "Teacher",
    "obtain_teacher",
    "load_stored_teacher",
    "teacher_spec",
    "teacher_fingerprint",
    "weights_sha256",
    "CachedSoftTargets",
    "LiveTeacher",
    "soft_targets_for",
    "soft_targets_bytes",
    "ensure_disk_space",
]

log = logging.getLogger(__name__)

TEACHER_FORMAT = "kdnas-teacher/1"
SOFT_TARGETS_FORMAT = "kdnas-soft-targets/2"  # /2: keyed by the teacher's weights
StepHook = Callable[[int, int], None]


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order, as on the CPU.

    Memory format and device do not change it (tensors are hashed contiguous, on the CPU).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class Teacher:
    model: nn.Module  # in eval mode, on the training device
    spec: ArchSpec
    val_accuracy: float
    test_accuracy: float
    fingerprint: str  # of what the teacher was made from (see teacher_fingerprint)
    path: Path | None  # where it is stored (None for a checkpoint used as it is)
    weights_sha256: str = dataclasses.field(init=False)  # of the model's weights: what derived artefacts key on

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights_sha256", weights_sha256(self.model.state_dict()))

    def summary(self) -> dict[str, Any]:
        return {
            "spec": dataclasses.asdict(self.spec),
            "params": count_params(self.model),
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "fingerprint": self.fingerprint,
            "weights_sha256": self.weights_sha256,
            "path": str(self.path) if self.path else None,
        }


def teacher_spec(cfg: StudyConfig, data: ImageData) -> ArchSpec:
    t = cfg.teacher
    return ArchSpec(t.arch, data.info.in_channels, data.info.num_classes, t.base_width, t.blocks)


def teacher_fingerprint(section: TeacherConfig, data_fingerprint: str, checkpoint_sha256: str | None = None) -> str:
    """What a teacher is made from: its ``[teacher]`` section, the data and, for a checkpoint, the file's SHA-256."""
    fingerprint = section_hash(section, data_fingerprint)
    return fingerprint if checkpoint_sha256 is None else section_hash(fingerprint, checkpoint_sha256)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` completely or not at all (a crash leaves the old file or none)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _read(path: Path, expected_format: str) -> dict[str, Any] | None:
    """The stored dict, or None (with a warning) if the file is unreadable or of another format."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupted, not a torch file: report, never use
        log.warning("%s is unreadable (%s); it will be rebuilt", path, type(err).__name__)
        return None
    if not isinstance(blob, dict) or blob.get("format") != expected_format:
        log.warning("%s is not a %s file; it will be rebuilt", path, expected_format)
        return None
    return blob


def obtain_teacher(cfg: StudyConfig, data: ImageData, out_dir: Path, *, on_step: StepHook | None = None) -> Teacher:
    """Load the study's teacher, training it first if no valid stored one exists.

    Args:
        cfg: the study; its ``[teacher]`` section decides architecture and recipe.
        data: the dataset, already on the training device.
        out_dir: the study's run directory.
        on_step: progress hook for teacher training, ``on_step(step, total_steps)``.

    Raises:
        KdnasError: a checkpoint named in the study is missing or does not fit the architecture.
    """
    spec = teacher_spec(cfg, data)
    device = data.train.images.device
    if cfg.teacher.checkpoint:
        checkpoint = Path(cfg.teacher.checkpoint)
        model = _load_checkpoint(checkpoint, spec).to(device)
        fingerprint = teacher_fingerprint(cfg.teacher, data.fingerprint, file_sha256(checkpoint))
        return _finish(model, spec, data, fingerprint, None, cfg.teacher.train.eval_batch_size)

    fingerprint = teacher_fingerprint(cfg.teacher, data.fingerprint)
    path = out_dir / "teacher.pt"
    if path.exists():
        blob = _read(path, TEACHER_FORMAT)
        if blob is not None and blob.get("fingerprint") == fingerprint:
            teacher = _from_blob(path, device, blob)
            if teacher is not None:
                log.info("teacher: reusing %s (test accuracy %.2f%%)", path, 100 * teacher.test_accuracy)
                return teacher
        elif blob is not None:
            log.warning("teacher: the [teacher] section or the data changed since %s was trained; retraining", path)

    log.info(
        "teacher: training %s (%s params) for %d epochs",
        spec.describe(),
        f"{count_params(build_model(spec)):,}",
        cfg.teacher.train.epochs,
    )
    torch.manual_seed(cfg.data.seed)
    model = build_model(spec).to(device)
    result = fit(
        model,
        AugmentedViews(data),
        cfg.teacher.train,
        on_step=on_step,
        on_epoch=lambda e, acc: log.info(
            "teacher: epoch %d/%d, val accuracy %.2f%%", e + 1, cfg.teacher.train.epochs, 100 * acc
        ),
    )
    teacher = _finish(model, spec, data, fingerprint, path, cfg.teacher.train.eval_batch_size)
    _atomic_save(
        {
            "format": TEACHER_FORMAT,
            "fingerprint": fingerprint,
            "weights_sha256": teacher.weights_sha256,
            "spec": dataclasses.asdict(spec),
            "dataset": data.info.name,
            "val_accuracy": teacher.val_accuracy,
            "test_accuracy": teacher.test_accuracy,
            "train_seconds": result.seconds,
            "teacher_config": dataclasses.asdict(cfg.teacher),
            "torch_version": str(torch.__version__),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        },
        path,
    )
    log.info("teacher: saved %s (test accuracy %.2f%%, %.0f s)", path, 100 * teacher.test_accuracy, result.seconds)
    return teacher


def load_stored_teacher(path: Path, device: torch.device | str, blob: dict[str, Any] | None = None) -> Teacher:
    """Load a ``teacher.pt`` written by ``obtain_teacher`` (its fingerprint is the caller's to check).

    Raises:
        KdnasError: the file is missing, unreadable, not a kdnas teacher, or its weights are not the
            ones it records the hash of.
    """
    blob = blob if blob is not None else _read(path, TEACHER_FORMAT) if path.is_file() else None
    teacher = None if blob is None else _from_blob(path, device, blob)
    if teacher is None:
        raise KdnasError(f"no usable teacher at {path}; run the search again to train it")
    return teacher


def _from_blob(path: Path, device: torch.device | str, blob: dict[str, Any]) -> Teacher | None:
    """The teacher a ``teacher.pt`` holds, or None (with a warning) if its weights are not what it records."""
    spec = ArchSpec(**{**blob["spec"], "blocks": tuple(blob["spec"]["blocks"])})
    model = build_model(spec)
    model.load_state_dict(blob["state_dict"])
    model.to(device=device, memory_format=torch.channels_last).eval()
    teacher = Teacher(model, spec, blob["val_accuracy"], blob["test_accuracy"], blob["fingerprint"], path)
    recorded = blob.get("weights_sha256")  # absent in files written before the hash was recorded
    if recorded is not None and recorded != teacher.weights_sha256:
        log.warning("%s is corrupt (its weights do not match the SHA-256 it records); it will be rebuilt", path)
        return None
    return teacher


def _finish(
    model: nn.Module, spec: ArchSpec, data: ImageData, fingerprint: str, path: Path | None, batch_size: int
) -> Teacher:
    model.to(memory_format=torch.channels_last).eval()
    val = evaluate(model, data.val, data.info, batch_size)
    test = evaluate(model, data.test, data.info, batch_size)
    return Teacher(model, spec, val, test, fingerprint, path)


def _load_checkpoint(path: Path, spec: ArchSpec) -> nn.Module:
    if not path.is_file():
        raise KdnasError(
            f"teacher checkpoint {path} does not exist; fix [teacher] checkpoint or remove it to train one"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise KdnasError(f"teacher checkpoint {path} is unreadable ({type(err).__name__}); replace it") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    model = build_model(spec)
    try:
        model.load_state_dict(state)  # type: ignore[arg-type]
    except Exception:
        raise KdnasError(
            f"teacher checkpoint {path} does not match the architecture {spec.describe()}; "
            "fix [teacher] arch/base_width/blocks"
        ) from None
    return model


# ---------------------------------------------------------------------------------------------------
# Soft targets
# ---------------------------------------------------------------------------------------------------


class LiveTeacher:
    """Runs the teacher on every batch (what the cache replaces); outputs rounded to fp16 like it.

    ``precision`` is the teacher's (its ``[teacher] train`` precision): the cache and a live teacher
    must use the same one to give the same logits.
    """

    def __init__(self, model: nn.Module, precision: str = "auto") -> None:
        self.model, self.precision = model.eval(), precision

    def __call__(self, epoch: int, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        # TF32 would make a view's logits depend on its batch's composition (cuDNN picks kernels per
        # shape); in float32 cached and live logits agree to the last fp16 bit, nearly always, and in
        # bfloat16 to bfloat16's precision.
        with (
            torch.inference_mode(),
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False),
            autocast(views.device, self.precision),
        ):
            return self.model(views).half().float()


class CachedSoftTargets:
    """Teacher logits for every (epoch, image): a (E, N, C) fp16 tensor on the training device."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, epoch: int, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.logits[epoch, indices].float()


def soft_targets_bytes(images: int, num_classes: int, epochs: int) -> int:
    """Size of the soft-target cache: one fp16 logit per class, image and epoch."""
    return epochs * images * num_classes * 2


def ensure_disk_space(out_dir: Path, needed: int, what: str) -> None:
    """Raise a KdnasError unless ``out_dir`` has room for ``needed`` bytes (plus 10% and 16 MiB to spare)."""
    free = shutil.disk_usage(out_dir).free
    if free < needed * 1.1 + 16 * 2**20:
        raise KdnasError(
            f"not enough disk for {what} in {out_dir}: needs {needed / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB free; free space or pass another --out"
        )


def soft_targets_for(
    teacher: Teacher,
    views: AugmentedViews,
    epochs: int,
    out_dir: Path,
    batch_size: int,
    *,
    precision: str = "auto",
    on_step: StepHook | None = None,
) -> CachedSoftTargets:
    """Load the soft-target cache for ``epochs`` epochs of ``views``, computing it if needed.

    The cache is keyed by what its logits depend on: the teacher's weights (not its config), the
    data and its views, the epochs and ``precision`` (the teacher's, as for ``LiveTeacher``).
    """
    path = out_dir / "soft_targets.pt"
    depends_on = {
        "teacher_weights_sha256": teacher.weights_sha256,
        "data_fingerprint": views.data.fingerprint,
        "epochs": epochs,
        "precision": precision,
    }
    key = section_hash(depends_on)
    device = views.data.train.images.device
    if path.exists():
        blob = _read(path, SOFT_TARGETS_FORMAT)
        if blob is not None and blob.get("key") == key:
            return CachedSoftTargets(blob["logits"].to(device))
        if blob is not None:
            log.info("soft targets: %s; rebuilding", _why_stale(blob, depends_on))

    n, num_classes = len(views), views.data.info.num_classes
    ensure_disk_space(out_dir, soft_targets_bytes(n, num_classes, epochs), "the soft-target cache")
    log.info("soft targets: running the teacher on %d epochs x %d views", epochs, n)
    logits = torch.empty(epochs, n, num_classes, dtype=torch.float16, device=device)
    live = LiveTeacher(teacher.model, precision)
    keep_freed_memory(device)
    steps = epochs * -(-n // batch_size)
    step = 0
    every = torch.arange(n, device=device)
    for epoch in range(epochs):
        params = views.epoch_params(epoch)
        for first in range(0, n, batch_size):
            indices = every[first : first + batch_size]
            logits[epoch, indices] = live(epoch, indices, views.batch(indices, params)).half()
            step += 1
            if on_step is not None:
                on_step(step, steps)
    _atomic_save({"format": SOFT_TARGETS_FORMAT, "key": key, **depends_on, "logits": logits.cpu()}, path)
    return_freed_memory(device)  # the teacher's batches are done; the trials that follow size theirs differently
    return CachedSoftTargets(logits)


def _why_stale(blob: dict[str, Any], depends_on: dict[str, Any]) -> str:
    """Why a soft-target cache written for ``blob``'s inputs does not serve ``depends_on``."""
    built, current = blob.get("teacher_weights_sha256"), depends_on["teacher_weights_sha256"]
    if built != current:
        return f"built for other teacher weights ({str(built)[:12]}) than the current teacher's ({current[:12]})"
    changed = [name.replace("_", " ") for name, value in depends_on.items() if blob.get(name) != value]
    return f"the {' and '.join(changed)} changed since it was built"
