"""The fixed teacher: loaded or trained once per study, and its soft targets computed once.

``runs/<study>/teacher.pt`` holds the weights with what rebuilds the network (a kdnas architecture, or
the ``[teacher]`` section of a source elsewhere, rebuilt through that source), dataset, accuracies, the
SHA-256 of the weights and a fingerprint of everything they depend on (the study's teacher section and
the data; for a checkpoint, also the file's bytes). A later run reuses the file only when the
fingerprint matches; a changed teacher section retrains, and a file that cannot be read, or whose
weights do not match their recorded hash, is reported and never used. Every teacher is kept there but
a kdnas checkpoint, which is used as it is. Training or fine-tuning keeps its state after every epoch in
``runs/<study>/teacher.partial.pt`` (under the same fingerprint): a run interrupted there resumes from
the last finished epoch and ends with the weights an unbroken run would have; the file goes once
``teacher.pt`` is saved.

A teacher from torchvision, timm or an import path (kdnas.teacher_sources) runs behind ``TeacherInput``
at its own input size and normalisation. When its classes are not the data's, its classifier is
replaced and the network fine-tuned on the train split (``[teacher] finetune``, by default
``FinetuneRecipe()``: one epoch at lr 0.01, logged); ``finetune`` given fine-tunes it even when the
classes agree (keeping its classifier).

``runs/<study>/soft_targets.pt`` holds the teacher's logits (fp16) for the view of every training
image in every epoch a student trains. It is keyed by the teacher's weights, not its config: the same
``[teacher]`` section can yield other weights (retrained, trained in another precision, a checkpoint
replaced in place). Views are a pure function of (seed, image, epoch), so a trial that reads the
cache sees what a live teacher would have produced (bit for bit on the CPU; on CUDA up to rare
last-bit fp16 differences between kernels chosen for different batch shapes).
"""

from __future__ import annotations

import contextlib
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

from kdnas.config import FinetuneRecipe, StudyConfig, TeacherConfig, TrainRecipe, dataclass_from_dict, section_hash
from kdnas.data import AugmentedViews, DatasetInfo, ImageData, normalize
from kdnas.errors import KdnasError
from kdnas.families import get_family
from kdnas.files import file_sha256, read_torch_dict, torch_save_atomic
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.progress import percent
from kdnas.teacher_sources import (
    TEACHER_SOURCES,
    TeacherInput,
    TeacherSource,
    load_checkpoint,
    read_state_dict,
    state_dict_mismatch,
)
from kdnas.trainer import EpochCheckpoint, autocast, evaluate, fit, keep_freed_memory, return_freed_memory

__all__ = [
    "Teacher",
    "obtain_teacher",
    "load_stored_teacher",
    "teacher_spec",
    "teacher_fingerprint",
    "checkpoint_sha256",
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
    model: nn.Module  # in eval mode, on the training device; takes the data's normalised views
    spec: ArchSpec | None  # None for a teacher from elsewhere
    val_accuracy: float
    test_accuracy: float
    fingerprint: str  # of what the teacher was made from (see teacher_fingerprint)
    path: Path | None  # where it is stored (None for a checkpoint used as it is)
    source: str = "kdnas"  # the [teacher] source it came from
    label: str = ""  # what it is, for people; "": the spec's
    weights_sha256: str = dataclasses.field(init=False)  # of the model's weights: what derived artefacts key on

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights_sha256", weights_sha256(self.model.state_dict()))

    def describe(self) -> str:
        """A short label: ``resnet w32 b2-2-2``, ``torchvision resnet18 (DEFAULT), fine-tuned, at 224 px``."""
        return self.label or (self.spec.describe() if self.spec else self.source)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.describe(),
            "spec": dataclasses.asdict(self.spec) if self.spec else None,
            "params": count_params(self.model),
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "fingerprint": self.fingerprint,
            "weights_sha256": self.weights_sha256,
            "path": str(self.path) if self.path else None,
        }


def teacher_spec(cfg: StudyConfig, data: ImageData) -> ArchSpec:
    """The kdnas teacher's network for ``data``: a resnet of ``base_width`` and ``blocks``, or the one
    network the ``knobs`` of another family give."""
    t, info = cfg.teacher, data.info
    if t.family == "resnet":
        spec = {"base_width": t.base_width, "blocks": t.blocks}
    else:
        spec = next(get_family(t.family).networks(t.family_knobs(), info.image_size))
    return ArchSpec(t.family, info.in_channels, info.num_classes, spec)


def teacher_fingerprint(section: TeacherConfig, data_fingerprint: str, checkpoint_sha256: str | None = None) -> str:
    """What a teacher is made from: its ``[teacher]`` keys, the data and, for a checkpoint, the file's SHA-256."""
    fingerprint = section_hash(section.applied(), data_fingerprint)
    return fingerprint if checkpoint_sha256 is None else section_hash(fingerprint, checkpoint_sha256)


def checkpoint_sha256(section: TeacherConfig) -> str | None:
    """SHA-256 of the section's checkpoint file (None without one).

    Raises:
        KdnasError: the file does not exist.
    """
    if section.checkpoint is None:
        return None
    path = Path(section.checkpoint)
    if not path.is_file():
        raise KdnasError(f"teacher checkpoint {path} does not exist; fix [teacher] checkpoint or remove it")
    return file_sha256(path)


def obtain_teacher(cfg: StudyConfig, data: ImageData, out_dir: Path, *, on_step: StepHook | None = None) -> Teacher:
    """Load the study's teacher, making it first (trained, or built and fine-tuned) if no valid stored one exists.

    Args:
        cfg: the study; its ``[teacher]`` section decides where the teacher comes from and how it is made.
        data: the dataset, already on the training device.
        out_dir: the study's run directory.
        on_step: progress hook for teacher training or fine-tuning, ``on_step(step, total_steps)``.

    Raises:
        KdnasError: a checkpoint named in the study is missing or does not fit the network, a network from
            elsewhere cannot be built (not importable, not downloadable offline) or given the data's classes.
    """
    section, device = cfg.teacher, data.train.images.device
    fingerprint = teacher_fingerprint(section, data.fingerprint, checkpoint_sha256(section))
    if section.checkpoint_as_is:
        spec = teacher_spec(cfg, data)
        model = build_model(spec)
        load_checkpoint(
            model,
            Path(str(section.checkpoint)),
            None,
            f"the architecture {spec.describe()}",
            "fix [teacher] family/base_width/blocks/knobs",
        )
        return _finish(model.to(device), data, fingerprint, None, section, spec=spec)

    path = out_dir / "teacher.pt"
    if path.exists():
        blob = read_torch_dict(path, TEACHER_FORMAT)
        if blob is not None and blob.get("fingerprint") == fingerprint:
            teacher = _from_blob(path, device, blob)
            if teacher is not None:
                log.info("teacher: reusing %s (test accuracy %s)", path, percent(teacher.test_accuracy))
                return teacher
        elif blob is not None:
            again = "retraining" if section.source == "kdnas" else "building it again"
            log.warning("teacher: the [teacher] section or the data changed since %s was made; %s", path, again)

    torch.manual_seed(cfg.data.seed)
    # Hours of teacher training on a CPU survive an interrupt: a later run resumes from the last epoch.
    progress = EpochCheckpoint(out_dir / "teacher.partial.pt", fingerprint)
    if section.source == "kdnas":
        spec = teacher_spec(cfg, data)
        model, head_classes, label = _trained(spec, data, section.train, on_step, progress), None, ""
    else:
        spec = None
        model, head_classes, label = _from_elsewhere(section, data, on_step, progress)
    teacher = _finish(model, data, fingerprint, path, section, spec=spec, label=label)
    torch_save_atomic(
        {
            "format": TEACHER_FORMAT,
            "fingerprint": fingerprint,
            "weights_sha256": teacher.weights_sha256,
            "source": section.source,
            "label": label,
            "spec": dataclasses.asdict(spec) if spec else None,
            "head_classes": head_classes,  # a replaced classifier's outputs, for rebuilding it
            "input_size": model.input_size if isinstance(model, TeacherInput) else None,
            "dataset": data.info.name,
            "val_accuracy": teacher.val_accuracy,
            "test_accuracy": teacher.test_accuracy,
            "teacher_config": dataclasses.asdict(section),
            "torch_version": str(torch.__version__),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        },
        path,
    )
    progress.discard()
    log.info("teacher: saved %s (test accuracy %s)", path, percent(teacher.test_accuracy))
    return teacher


def _trained(
    spec: ArchSpec, data: ImageData, recipe: TrainRecipe, on_step: StepHook | None, progress: EpochCheckpoint
) -> nn.Module:
    """A kdnas network trained from scratch with the ``[teacher] train`` recipe."""
    model = build_model(spec).to(data.train.images.device)
    log.info(
        "teacher: training %s (%s params) for %d epochs", spec.describe(), f"{count_params(model):,}", recipe.epochs
    )
    views = AugmentedViews(data)
    result = fit(model, views, recipe, on_step=on_step, on_epoch=_epoch_logger("", recipe), checkpoint=progress)
    log.info("teacher: trained in %.0f s", result.seconds)
    return model


def _epoch_logger(what: str, recipe: TrainRecipe) -> Callable[[int, float], None]:
    return lambda e, acc: log.info("teacher: %sepoch %d/%d, val accuracy %.2f%%", what, e + 1, recipe.epochs, 100 * acc)


def _from_elsewhere(
    section: TeacherConfig, data: ImageData, on_step: StepHook | None, progress: EpochCheckpoint
) -> tuple[TeacherInput, int | None, str]:
    """A teacher from a source elsewhere, fitted to the data: (model, classes of a replaced head or None, label).

    Built (pretrained weights downloaded if asked, else the checkpoint loaded), put behind its input
    conversion, probed for its class count, and fine-tuned when that differs or ``finetune`` is given.
    """
    source = TEACHER_SOURCES.get(section.source)
    built = source.build(section, download=True)
    what = f"{section.source} {section.name or section.factory}"
    info = data.info
    head_classes = None if section.checkpoint is None else _load_checkpoint(source, built.module, section, info, what)
    channels = _input_channels(built.module, info.in_channels, what)
    mean, std = (section.mean, section.std) if section.mean is not None else (built.mean, built.std)
    if mean is not None and len(mean) not in (1, channels):
        raise KdnasError(
            f"[teacher] mean/std have {len(mean)} values for a teacher of {channels} channels; give 1 or {channels}"
        )
    size = section.input_size or built.input_size
    model = TeacherInput.converting(built.module, info, channels, mean, std, size).to(data.train.images.device)
    classes = _output_classes(model, data, what)
    label = f"{what}{f' ({section.weights})' if section.weights else ''}"
    new_head = classes != info.num_classes
    if new_head:
        log.info(
            "teacher: %s gives %d classes, the data has %d; replacing its classifier", what, classes, info.num_classes
        )
        source.replace_head(built.module, section, info.num_classes)
        model.to(data.train.images.device)
        if _output_classes(model, data, what) != info.num_classes:
            raise KdnasError(
                f"replacing {what}'s classifier did not give {info.num_classes} outputs; "
                "name the classifier with [teacher] head = \"attribute\" (source 'import')"
            )
        head_classes = info.num_classes
    if new_head or section.finetune is not None:
        recipe = section.finetune or FinetuneRecipe()
        if section.finetune is None:
            log.info(
                "teacher: fine-tuning with the default finetune = { epochs = %d, lr = %g }; [teacher] finetune sets it",
                recipe.epochs,
                recipe.lr,
            )
        on_epoch = _epoch_logger("fine-tuning ", recipe)
        result = fit(model, AugmentedViews(data), recipe, on_step=on_step, on_epoch=on_epoch, checkpoint=progress)
        log.info("teacher: fine-tuned in %.0f s", result.seconds)
        label += f", fine-tuned {recipe.epochs} epochs"
    if model.input_size is not None:
        label += f", at {model.input_size} px"
    return model, head_classes, label


def _load_checkpoint(
    source: TeacherSource, module: nn.Module, section: TeacherConfig, info: DatasetInfo, what: str
) -> int | None:
    """Load the section's checkpoint into ``module``; returns the classes of a classifier replaced for it, or None.

    A checkpoint already fine-tuned for the data's classes differs from the built network only in the
    classifier's shapes: the classifier is replaced for the data's classes first.
    """
    path = Path(str(section.checkpoint))
    state = read_state_dict(path, section.state_dict_key)
    problems = state_dict_mismatch(module, state)
    if not problems:
        module.load_state_dict(state)
        return None
    if state.keys() == module.state_dict().keys():  # only shapes differ: perhaps just the classifier's
        with contextlib.suppress(KdnasError):  # no classifier to replace: the shapes are the problem to report
            source.replace_head(module, section, info.num_classes)
            if not state_dict_mismatch(module, state):
                module.load_state_dict(state)
                return info.num_classes
    fix = "fix [teacher] checkpoint, name or factory, or set state_dict_key"
    raise KdnasError(f"teacher checkpoint {path} does not match {what} ({problems}); {fix}")


def _input_channels(net: nn.Module, data_channels: int, what: str) -> int:
    """The channels ``net`` takes (its first convolution's, else the data's): the data's, or more for grey data."""
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = data_channels if first is None else first.in_channels
    if channels != data_channels and data_channels != 1:
        raise KdnasError(
            f"{what} takes {channels}-channel images, the data has {data_channels} channels; pick another teacher"
        )
    return channels


def _output_classes(model: nn.Module, data: ImageData, what: str) -> int:
    """The class count ``model`` gives: one forward pass on two validation images."""
    model.eval()
    with torch.inference_mode():
        out = model(normalize(data.val.images[:2], data.info))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise KdnasError(f"{what} returns {shape}, not logits of shape (N, classes); wrap it in a factory that does")
    return out.shape[1]


def load_stored_teacher(path: Path, device: torch.device | str, blob: dict[str, Any] | None = None) -> Teacher:
    """Load a ``teacher.pt`` written by ``obtain_teacher`` (its fingerprint is the caller's to check).

    Raises:
        KdnasError: the file is missing, unreadable, not a kdnas teacher, or its weights are not the
            ones it records the hash of.
    """
    blob = blob if blob is not None else read_torch_dict(path, TEACHER_FORMAT) if path.is_file() else None
    teacher = None if blob is None else _from_blob(path, device, blob)
    if teacher is None:
        raise KdnasError(f"no usable teacher at {path}; run the search again to train it")
    return teacher


def _from_blob(path: Path, device: torch.device | str, blob: dict[str, Any]) -> Teacher | None:
    """The teacher a ``teacher.pt`` holds, or None (with a warning) if its weights are not what it records.

    Raises:
        KdnasError: a teacher from elsewhere cannot be rebuilt here (its source says why).
    """
    source, spec = blob.get("source", "kdnas"), None  # files written before sources existed hold kdnas teachers
    if source == "kdnas":
        spec = ArchSpec.from_dict(blob["spec"], "spec")
        model = build_model(spec)
    else:
        model = _rebuilt(dataclass_from_dict(TeacherConfig, blob["teacher_config"], "teacher"), blob)
    model.load_state_dict(blob["state_dict"])
    model.to(device=device, memory_format=torch.channels_last).eval()
    teacher = Teacher(
        model,
        spec,
        blob["val_accuracy"],
        blob["test_accuracy"],
        blob["fingerprint"],
        path,
        source,
        blob.get("label", ""),
    )
    recorded = blob.get("weights_sha256")  # absent in files written before the hash was recorded
    if recorded is not None and recorded != teacher.weights_sha256:
        log.warning("%s is corrupt (its weights do not match the SHA-256 it records); it will be rebuilt", path)
        return None
    return teacher


def _rebuilt(section: TeacherConfig, blob: dict[str, Any]) -> TeacherInput:
    """The network of a stored teacher from elsewhere, rebuilt through its source (weights still to load)."""
    source = TEACHER_SOURCES.get(section.source)
    built = source.build(section, download=False)
    if blob["head_classes"] is not None:
        source.replace_head(built.module, section, blob["head_classes"])
    channels = blob["state_dict"]["scale"].shape[1]
    return TeacherInput(built.module, torch.ones(channels), torch.zeros(channels), blob["input_size"])


def _finish(
    model: nn.Module,
    data: ImageData,
    fingerprint: str,
    path: Path | None,
    section: TeacherConfig,
    *,
    spec: ArchSpec | None,
    label: str = "",
) -> Teacher:
    """The teacher with its validation and test accuracy measured."""
    model.to(memory_format=torch.channels_last).eval()
    val = evaluate(model, data.val, data.info, section.train.eval_batch_size)
    test = evaluate(model, data.test, data.info, section.train.eval_batch_size)
    return Teacher(model, spec, val, test, fingerprint, path, section.source, label)


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
        blob = read_torch_dict(path, SOFT_TARGETS_FORMAT)
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
    torch_save_atomic({"format": SOFT_TARGETS_FORMAT, "key": key, **depends_on, "logits": logits.cpu()}, path)
    return_freed_memory(device)  # the teacher's batches are done; the trials that follow size theirs differently
    return CachedSoftTargets(logits)


def _why_stale(blob: dict[str, Any], depends_on: dict[str, Any]) -> str:
    """Why a soft-target cache written for ``blob``'s inputs does not serve ``depends_on``."""
    built, current = blob.get("teacher_weights_sha256"), depends_on["teacher_weights_sha256"]
    if built != current:
        return f"built for other teacher weights ({str(built)[:12]}) than the current teacher's ({current[:12]})"
    changed = [name.replace("_", " ") for name, value in depends_on.items() if blob.get(name) != value]
    return f"the {' and '.join(changed)} changed since it was built"
