"""Train an exported student against the teacher it was searched with, and save it for deployment.

    python -m kdnas.train --config runs/fashion/best_student.json                 # the search's recipe
    python -m kdnas.train --config best_student.json --epochs 60 --out students/fashion --device cuda

The teacher is the file the export names; it is used only if its fingerprint equals the one
recomputed from the study's ``[teacher]`` section and the data on this machine, and its bytes are
the ones exported (else the student would learn from other soft targets than in the search;
``--allow-teacher-mismatch`` trains anyway). With the search's epochs the student is rebuilt from the
same seed and trained on the same views, so its validation accuracy reproduces the searched one.

Writes into ``--out`` (default ``runs/<study>/student-trial<N>``): ``student.pt`` (state_dict,
architecture, the export, accuracies), ``student.pt2`` (a ``torch.export`` program) and
``student.onnx``; the last two take float pixel values 0..255 of shape (N, C, H, W), normalisation
built in, and return logits (N, classes). ``student.onnx`` is the export the search's ``onnxruntime`` and
``command`` latency runtimes timed (``kdnas.deploy``); the trained student is timed again on the study's
runtime (that file itself, where the runtime times ONNX files) and printed beside the searched latency.
``result.json`` records what was trained, how it scored and its latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdnas.cli import add_common_arguments, add_training_arguments, run_cli
from kdnas.errors import KdnasError
from kdnas.files import atomic_write, file_sha256, write_json
from kdnas.progress import percent, step_bar
from kdnas.student_file import StudentFile, kdnas_version, read_student

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdnas.data import DatasetInfo, ImageData
    from kdnas.runtimes import Runtime
    from kdnas.teacher import Teacher

__all__ = ["WEIGHTS_FORMAT", "train_student", "check_teacher", "build_parser", "main"]

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "kdnas-student-weights/1"


def check_teacher(student: StudentFile, data: ImageData, device: torch.device, *, allow_mismatch: bool) -> Teacher:
    """Load the exported teacher and make sure it is the one the student was searched with.

    Its file must have the bytes the export recorded (a checkpoint replaced in place, or a retrained
    ``teacher.pt``, is another teacher), and its ``[teacher]`` section and the data here must give the
    fingerprint the export recorded. A teacher from elsewhere is rebuilt from its ``teacher.pt`` through
    its source (the same weights, so the same hash), which must work here: its factory importable, timm
    installed.

    Raises:
        KdnasError: the teacher is missing, cannot be rebuilt here, or differs (unless ``allow_mismatch``,
            which logs a warning).
    """
    from kdnas.teacher import checkpoint_sha256, load_stored_teacher, obtain_teacher, teacher_fingerprint

    cfg, path = student.cfg, student.teacher_path
    recorded_sha256 = student.teacher_sha256
    replaced = recorded_sha256 is not None and file_sha256(path) != recorded_sha256
    if cfg.teacher.checkpoint_as_is:
        teacher = obtain_teacher(cfg, data, path.parent)  # loads the checkpoint, trains nothing
        # A checkpoint's fingerprint covers its bytes: recompute it for the exported bytes, so that a
        # replaced file is reported as replaced, not as a changed section or data.
        recomputed = teacher_fingerprint(cfg.teacher, data.fingerprint, recorded_sha256 or file_sha256(path))
    else:
        teacher = load_stored_teacher(path, device)
        recomputed = teacher_fingerprint(cfg.teacher, data.fingerprint, checkpoint_sha256(cfg.teacher))
    problems = []
    expected = student.teacher_fingerprint
    if recomputed != expected:
        problems.append(
            f"the [teacher] section and the data here give fingerprint {recomputed}, the export recorded "
            f"{expected} (the dataset files, the split or the teacher changed)"
        )
    if not cfg.teacher.checkpoint_as_is and teacher.fingerprint != recomputed:
        problems.append(f"{path} holds a teacher with fingerprint {teacher.fingerprint}, trained for other settings")
    if replaced:
        problems.append(f"{path} was rewritten since the export (its SHA-256 differs): a retrained or replaced teacher")
    if problems:
        message = (
            f"teacher mismatch: {'; '.join(problems)}. The student would learn from other soft targets "
            "than in the search; search and export again, or pass --allow-teacher-mismatch"
        )
        if not allow_mismatch:
            raise KdnasError(message)
        log.warning("%s (training anyway)", message.removesuffix(", or pass --allow-teacher-mismatch"))
    return teacher


def _save(
    model: nn.Module, student: StudentFile, info: DatasetInfo, out_dir: Path, summary: dict[str, Any], export: bool
) -> Path | None:
    """student.pt in ``out_dir``, and (``export``) student.pt2 and student.onnx; the ONNX file's path."""
    import copy

    import torch

    from kdnas.deploy import deployable, export_onnx, export_program

    cpu_model = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    weights = {
        "format": WEIGHTS_FORMAT,
        "arch": dataclasses.asdict(student.arch),
        "state_dict": cpu_model.state_dict(),
        "input": {"mean": list(info.mean), "std": list(info.std), "scale": "(pixel / 255 - mean) / std"},
        "student": student.record,
        **{k: summary[k] for k in ("val_accuracy", "test_accuracy", "epochs")},
    }
    atomic_write(out_dir / "student.pt", lambda tmp: torch.save(weights, tmp))
    if not export:
        return None
    deployed = deployable(cpu_model, info.mean, info.std)
    input_shape = (info.in_channels, info.image_size, info.image_size)
    program = export_program(deployed, input_shape)
    atomic_write(out_dir / "student.pt2", lambda tmp: torch.export.save(program, tmp))
    onnx = out_dir / "student.onnx"
    atomic_write(onnx, lambda tmp: export_onnx(deployed, tmp, input_shape))
    return onnx


def _latency_runtime(student: StudentFile) -> Runtime | None:
    """The study's latency runtime, when this machine has it (else a warning: the student is trained anyway,
    and the figure is only a check of the searched one)."""
    from kdnas.runtimes import runtime_for

    runtime = runtime_for(student.cfg.latency)
    try:
        runtime.require()
    except KdnasError as err:
        log.warning("latency: %s; the trained student will not be timed", err)
        return None
    return runtime


def train_student(
    student: StudentFile,
    out_dir: Path,
    *,
    epochs: int | None = None,
    device: str = "auto",
    data_dir: Path = Path("data"),
    allow_teacher_mismatch: bool = False,
    progress: bool = False,
    export: bool = True,
) -> dict[str, Any]:
    """Train ``student`` with its study's recipe (``epochs`` overrides), save it, return the summary.

    ``export=False`` saves the weights only: no .pt2 or .onnx file and no latency check, for callers that
    want the accuracy alone (the methods bench retrains many students).

    Raises:
        KdnasError: the rebuilt model's parameter count differs from the search's, the teacher
            mismatches, or the data is missing.
    """
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from kdnas.data import AugmentedViews, load_data
    from kdnas.deploy import require_onnx_export
    from kdnas.measure import anchor_network, anchored, resolve_device
    from kdnas.models import build_model, count_params
    from kdnas.teacher import LiveTeacher
    from kdnas.trainer import TrainingDiverged, evaluate, fit, warn_if_emulated

    cfg = student.cfg
    recipe = cfg.train if epochs is None else dataclasses.replace(cfg.train, epochs=epochs)
    train_device = resolve_device(device)
    warn_if_emulated(train_device, recipe.precision, cfg.teacher.train.precision if student.kd.alpha > 0 else "auto")
    if export:
        require_onnx_export()
    runtime = _latency_runtime(student) if export else None
    torch.manual_seed(cfg.seed)  # as the search did before building every candidate: same initial weights
    model = build_model(student.arch)
    params = count_params(model)
    if params != student.measured_params:
        raise KdnasError(
            f"{student.path}: {student.arch.describe()} has {params:,} parameters but the search "
            f"measured {student.measured_params:,} for trial {student.trial}; the architecture was "
            "edited or the model code changed; export the trial again"
        )
    data = load_data(cfg.data, data_dir, cache_dir=student.data_cache_dir(out_dir)).to(train_device)
    soft_targets = None
    if student.kd.alpha > 0:
        teacher = check_teacher(student, data, train_device, allow_mismatch=allow_teacher_mismatch)
        # Live logits equal the search's cached ones (both fp16-rounded), without writing a cache.
        soft_targets = LiveTeacher(teacher.model, cfg.teacher.train.precision)
    log.info(
        "training %s (%s params), %s, for %d epochs on %s",
        student.arch.describe(),
        f"{params:,}",
        student.kd.describe(),
        recipe.epochs,
        train_device,
    )

    def on_epoch(epoch: int, accuracy: float) -> None:
        log.info("epoch %d/%d: val accuracy %.2f%%", epoch + 1, recipe.epochs, 100 * accuracy)

    views = AugmentedViews(data)
    try:
        with logging_redirect_tqdm(), step_bar("training", progress) as on_step:
            result = fit(
                model.to(train_device),
                views,
                recipe,
                kd=student.kd,
                soft_targets=soft_targets,
                on_epoch=on_epoch,
                on_step=on_step,
            )
    except TrainingDiverged as err:
        raise KdnasError(f"training diverged ({err}); lower config.train.lr in {student.path}") from None
    test_accuracy = evaluate(model, data.test, data.info, recipe.eval_batch_size)
    summary = {
        "study": cfg.name,
        "trial": student.trial,
        "arch": student.arch.describe(),
        "kd": dataclasses.asdict(student.kd),
        "epochs": recipe.epochs,
        "params": params,
        "val_accuracy": result.val_accuracy[-1],
        "val_curve": result.val_accuracy,
        "searched_val_accuracy": student.measured_val_accuracy,
        "test_accuracy": test_accuracy,
        "latency_runtime": cfg.latency.runtime,
        "latency_ms": None,
        "searched_latency_ms": student.measured_latency_ms,
        "train_seconds": result.seconds,
        "device": str(train_device),
        "torch_version": str(torch.__version__),
        "kdnas_version": kdnas_version(),
        "config": str(student.path),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx = _save(model, student, data.info, out_dir, summary, export)
        if runtime is not None:  # the file just written, on the runtime the search timed it on
            info = data.info
            shape = (info.in_channels, info.image_size, info.image_size)
            anchor = anchor_network(info.in_channels)
            latency, anchor_ms = runtime.time_deployed(model, onnx, shape, anchor, info.mean, info.std)
            # In the machine state of the searched figure (kdnas.measure.LatencyTable), where the file says it.
            summary["latency_ms"] = anchored(latency, anchor_ms, student.measured_latency_anchor_ms)
        write_json(out_dir / "result.json", summary)  # last: its presence says the other files are whole
    except OSError as err:
        raise KdnasError(f"cannot write to {out_dir} ({err.strerror}); pass a writable --out") from None
    return summary


def _latency_words(summary: Mapping[str, Any]) -> str:
    """The trained student's latency on the study's runtime beside the searched figure, in words."""
    runtime, measured, searched = summary["latency_runtime"], summary["latency_ms"], summary["searched_latency_ms"]
    searched_words = f"searched {searched:.3f} ms" if searched is not None else "not recorded by the search"
    if measured is None:
        return f"latency on {runtime} not timed here ({searched_words})"
    return f"latency {measured:.3f} ms on {runtime} ({searched_words})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdnas.train",
        description="Train an exported student against its teacher; save weights, a torch.export program and ONNX.",
    )
    parser.add_argument("--config", type=Path, required=True, help="a student file from python -m kdnas.export")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the search's, which reproduces it)")
    parser.add_argument("--out", type=Path, help="output directory (default: runs/<study>/student-trial<N>)")
    add_training_arguments(parser)
    parser.add_argument(
        "--allow-teacher-mismatch",
        action="store_true",
        help="train even if the teacher is not the one the student was searched with",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if args.epochs is not None and args.epochs < 1:
            raise KdnasError(f"--epochs must be at least 1, got {args.epochs}")
        student = read_student(args.config)
        out_dir = args.out or Path("runs") / student.cfg.name / f"student-trial{student.trial}"
        s = train_student(
            student,
            out_dir,
            epochs=args.epochs,
            device=args.device,
            data_dir=args.data_dir,
            allow_teacher_mismatch=args.allow_teacher_mismatch,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        print(
            f"trial {s['trial']} {s['arch']}: val accuracy {100 * s['val_accuracy']:.2f}% (searched "
            f"{100 * s['searched_val_accuracy']:.2f}%), test accuracy {percent(s['test_accuracy'])}, "
            f"{s['params']:,} params, {_latency_words(s)}, {s['epochs']} epochs; saved in {out_dir}"
        )
        return 0

    return run_cli(args, command)


if __name__ == "__main__":
    raise SystemExit(main())
