"""How fast is a kdnas trial, and what does early stopping save? Every figure is measured in this run.

    python bench/speed.py                      # all sections on Fashion-MNIST (hours on 2 CPU cores: 6 studies)
    python bench/speed.py --sections throughput,flops,memory
    python bench/speed.py --es-limit-train 12000 --es-trials 12    # the machinery only (README: Benchmarks)
    python bench/speed.py --tiny               # seconds: checks that the script runs

Sections (figures are printed, never asserted):
- throughput: a naive reference trial (torchvision-style per-image transforms through a DataLoader
  with 2 workers, the teacher run on every batch) against a kdnas trial (device-resident data,
  vectorised augmentation, the teacher's soft targets read from the cache), same student, epochs
  and images; then a cached-teacher trial against a trial with no teacher at all.
- flops: achieved GFLOP/s of student training (forward + backward, counted by FlopCounterMode) in
  float32 and, where the CPU computes in it natively, in bfloat16 autocast, each against a
  matrix-multiply peak of that precision measured here, for the smallest, a ~70k and the largest
  student of the study's space; and whether torch.compile pays for one trial.
- memory: peak resident memory of one trial of the study in a fresh process.
- early-stopping: the study searched with and without its early stopping, for several seeds: the
  training compute (sum over trials of epochs trained x FLOPs per epoch) each needs to reach the
  final hypervolume of the run without early stopping; and that of the run without early stopping
  replayed under the rule (the same trials, stopped in hindsight).
- gpu: on CUDA only, images/s and seconds per CIFAR-10-sized epoch of a ResNet-20-class student.
- runtimes: every network of the study's space (or --runtime-networks drawn at random) timed at
  batch 1 in eager torch and in ONNX Runtime (the deployed export), each runtime side by side as a
  search times it, and the rank correlation of the two.
- anchor: one network of the space timed on the study's runtime beside the anchor network, in rounds a
  few seconds apart (as a search samples a network and kdnas.train times the trained one, minutes or
  hours apart), with exactly `repeats` timed runs and with rounds going on for `min_time_s`: its figure
  alone and scaled to the anchor's first figure, and how far each strays.

Teachers in the throughput and flops sections have untrained weights: speed does not depend on them.
The early-stopping section is in _early_stopping.py, runtimes and anchor in _latency_checks.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from _early_stopping import early_stopping  # bench/ is scripts, not a package
from _latency_checks import anchor, runtimes
from torch.utils.flop_counter import FlopCounterMode

from kdnas.cli import setup_logging
from kdnas.config import StudyConfig, TrainRecipe, load_study
from kdnas.data import AugmentedViews, DatasetInfo, ImageData, load_data
from kdnas.distill import KDSpec, kd_loss
from kdnas.measure import count_macs
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.pruning import EARLY_STOP_POLICIES
from kdnas.space import extreme_student
from kdnas.teacher import Teacher, soft_targets_for, teacher_spec
from kdnas.trainer import autocast, fit, native_bfloat16, resolve_precision

SECTIONS = ("throughput", "flops", "memory", "early-stopping", "gpu", "runtimes", "anchor")
KD = KDSpec(temperature=4.0, alpha=0.7, alpha_decay="none")


def main() -> None:
    args = _parse_args()
    sections = SECTIONS if args.sections == "all" else tuple(args.sections.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"error: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    cfg = load_study(args.study)
    print(f"kdnas bench: torch {torch.__version__}, {args.threads} threads, study {cfg.name!r}")
    data = _subset(load_data(cfg.data, args.data_dir), args.images)
    student = _resnet(data.info, args.student_width, (1, 1, 1))
    teacher = _resnet(data.info, args.teacher_width, (1, 1, 1))
    recipe = TrainRecipe(epochs=args.epochs, batch_size=256, lr=0.2)
    if "throughput" in sections:
        throughput(data, student, teacher, recipe, args.workers)
        threads_or_processes(args, student, recipe)
    if "flops" in sections:
        flops(data, cfg, student, recipe, compile_too=not args.tiny)
    if "memory" in sections:
        memory(args.study, args.data_dir, args.threads)
    if "early-stopping" in sections:
        early_stopping(cfg, args)
    if "gpu" in sections:
        gpu(args.tiny)
    if "runtimes" in sections:
        runtimes(cfg, data.info, args.tiny, args.runtime_networks)
    if "anchor" in sections:
        anchor(cfg, data.info, args.tiny)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", help="study name or path (default: fashion; smoke with --tiny)")
    parser.add_argument("--sections", default="all", help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--images", type=int, default=10_000, help="training images in throughput/flops")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the throughput trials")
    parser.add_argument("--student-width", type=int, default=16, help="base width of the ~70k student")
    parser.add_argument("--teacher-width", type=int, default=64, help="base width of the naive teacher")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive reference")
    parser.add_argument(
        "--runtime-networks", type=int, default=200, help="runtimes: at most this many networks (drawn at random)"
    )
    parser.add_argument("--es-seeds", type=int, default=3)
    parser.add_argument("--es-trials", type=int, help="trials per run without early stopping (default: study's)")
    parser.add_argument(
        "--es-extra", type=float, default=2.0, help="at most this many times --es-trials with early stopping"
    )
    parser.add_argument(
        "--es-limit-train", type=int, help="search on this many training images only (validation set kept)"
    )
    parser.add_argument(
        "--es-replay-only", action="store_true", help="no runs with early stopping: only the replayed figure"
    )
    parser.add_argument(
        "--es-policy",
        choices=[p for p in EARLY_STOP_POLICIES.names() if p != "none"],  # "none" is the run compared against
        help="early stopping's policy (default: the study's)",
    )
    parser.add_argument("--es-sigmas", type=float, help="early stopping's sigmas (default: the study's)")
    parser.add_argument("--es-margin", type=float, help="early stopping's margin (default: the study's)")
    parser.add_argument("--es-min-epochs", type=int, help="early stopping's min_epochs (default: the study's)")
    parser.add_argument(
        "--es-dir",
        type=Path,
        help="keep the early-stopping runs (teacher, soft targets, studies) here instead of a temporary folder; "
        "run again with the same folder to re-read finished seeds without training them again",
    )
    parser.add_argument("--tiny", action="store_true", help="a few seconds per section: checks the script")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.epochs, args.student_width, args.teacher_width = 512, 1, 8, 16
        args.es_seeds, args.es_trials, args.es_extra, args.es_limit_train = 1, 1, 1.0, 512
    args.study = args.study or ("smoke" if args.tiny else "fashion")
    return args


def _subset(data: ImageData, n: int) -> ImageData:
    """The first ``n`` training images (and the full validation split)."""
    train = dataclasses.replace(data.train, images=data.train.images[:n], labels=data.train.labels[:n])
    return dataclasses.replace(data, train=train, fingerprint=f"{data.fingerprint}-{n}")


def _rate(images: int, seconds: float) -> str:
    return f"{images / seconds:9,.0f} images/s"


# ---------------------------------------------------------------------------------------------------
# throughput
# ---------------------------------------------------------------------------------------------------


class _PerImage(torch.utils.data.Dataset):
    """What torchvision's FashionMNIST/CIFAR datasets do per item: a PIL image through a transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images.numpy(), labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        image = self.images[i]
        pil = Image.fromarray(image[0], mode="L") if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0))
        return self.transform(pil), self.labels[i]


def naive_trial(data: ImageData, student: torch.nn.Module, teacher: torch.nn.Module, recipe: TrainRecipe, workers: int):
    """The usual loop: DataLoader with per-image transforms, the teacher on every batch, fp32, NCHW."""
    from torchvision import transforms

    info = data.info
    augment = [transforms.RandomCrop(info.image_size, padding=data.crop_padding)]
    augment += [transforms.RandomHorizontalFlip()] if data.flip else []
    to_tensor = [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
    train = _PerImage(data.train.images, data.train.labels, transforms.Compose(augment + to_tensor))
    val = _PerImage(data.val.images, data.val.labels, transforms.Compose(to_tensor))
    loader = torch.utils.data.DataLoader(train, recipe.batch_size, shuffle=True, num_workers=workers, drop_last=False)
    val_loader = torch.utils.data.DataLoader(val, 1024, num_workers=workers)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    teacher.eval()
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        student.train()
        for x, y in loader:
            with torch.no_grad():
                soft = teacher(x)
            loss = kd_loss(student(x), soft, y, KD.alpha, KD.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        student.eval()
        with torch.no_grad():
            correct = sum((student(x).argmax(1) == y).sum().item() for x, y in val_loader)
        accuracy = correct / len(val)
    return time.perf_counter() - start, accuracy


def throughput(data: ImageData, student: ArchSpec, teacher: ArchSpec, recipe: TrainRecipe, workers: int) -> None:
    n, epochs = len(data.train), recipe.epochs
    teacher_model, student_model = _seeded_model(teacher), _seeded_model(student)
    ratio = count_macs(teacher_model, _shape(data)) / count_macs(student_model, _shape(data))
    print(
        f"\n== throughput: student {student.describe()} ({count_params(student_model):,} params), "
        f"teacher {teacher.describe()} ({ratio:.1f}x its FLOPs), {n:,} images x {epochs} epochs"
    )
    seconds, accuracy = naive_trial(data, student_model, teacher_model, recipe, workers)
    naive = n * epochs / seconds
    print(
        f"naive reference (DataLoader, {workers} workers, live teacher):  {_rate(n * epochs, seconds)}"
        f"  (val {100 * accuracy:.1f}%)"
    )

    views = AugmentedViews(data)
    model = Teacher(teacher_model.eval(), teacher, 0.0, 0.0, f"bench-{teacher.describe()}", None)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = soft_targets_for(model, views, epochs, Path(tmp), batch_size=1024)
        build = time.perf_counter() - start
    precision = resolve_precision(torch.device("cpu"))
    cached = fit(_seeded_model(student), views, recipe, kd=KD, soft_targets=cache)
    print(
        f"kdnas trial, cached soft targets ({precision:>8}):          {_rate(cached.images, cached.seconds)}"
        f"  (val {100 * cached.val_accuracy[-1]:.1f}%)"
    )
    print(f"  speed-up over the naive reference:                  {cached.images_per_s / naive:9.1f}x")
    if precision != "float32":  # what a CPU without native bf16 gets
        fp32 = fit(
            _seeded_model(student), views, dataclasses.replace(recipe, precision="float32"), kd=KD, soft_targets=cache
        )
        print(
            f"kdnas trial, cached soft targets ( float32):          {_rate(fp32.images, fp32.seconds)}"
            f"  (val {100 * fp32.val_accuracy[-1]:.1f}%)"
        )
        print(f"  speed-up over the naive reference:                  {fp32.images_per_s / naive:9.1f}x")
    print(f"  (the cache, built once per study, took {build:.1f} s = {n * epochs / build:,.0f} views/s)")
    plain = fit(_seeded_model(student), views, recipe)
    print(f"kdnas trial, no teacher at all ({precision:>8}):           {_rate(plain.images, plain.seconds)}")
    print(f"  cached-teacher trial / no-teacher trial:            {cached.images_per_s / plain.images_per_s:9.2f}")


def _one_thread_trial(study: str, data_dir: Path, images: int, student: ArchSpec, recipe: TrainRecipe, barrier):
    """In a fresh process: a kdnas trial without teacher on one thread, started with the others; its
    images/s and its (start, end) times."""
    torch.set_num_threads(1)
    data = _subset(load_data(load_study(study).data, data_dir), images)
    views, model = AugmentedViews(data), _seeded_model(student)
    barrier.wait()
    start = time.time()
    result = fit(model, views, recipe)
    return result.images, start, time.time()


def threads_or_processes(args: argparse.Namespace, student: ArchSpec, recipe: TrainRecipe) -> None:
    """One trial on all threads against as many one-thread trials side by side (``--workers N`` on a CPU)."""
    if args.threads < 2:
        return
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(args.threads, mp_context=context) as pool:
        barrier = manager.Barrier(args.threads)
        runs = [
            pool.submit(_one_thread_trial, args.study, args.data_dir, args.images, student, recipe, barrier)
            for _ in range(args.threads)
        ]
        images, starts, ends = zip(*(run.result() for run in runs), strict=True)
    seconds = max(ends) - min(starts)
    print(
        f"{args.threads} one-thread trials side by side, no teacher:      {_rate(sum(images), seconds)}"
        "  (in all: compare with the line above for --workers on a CPU)"
    )


def _seeded_model(spec: ArchSpec) -> torch.nn.Module:
    """The same initial weights for a spec in every section (the naive and kdnas trials start alike)."""
    torch.manual_seed(0)
    return build_model(spec)


def _shape(data: ImageData) -> tuple[int, int, int]:
    info = data.info
    return (info.in_channels, info.image_size, info.image_size)


# ---------------------------------------------------------------------------------------------------
# flops
# ---------------------------------------------------------------------------------------------------


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 512, seconds: float = 1.0) -> float:
    """Sustained GFLOP/s of back-to-back ``size`` x ``size`` matrix multiplies in ``dtype`` for ``seconds``.

    Sustained, not the best single multiply: a cloud CPU's clock moves by a quarter from one second to
    the next (1024^3 float32 on 2 AVX2 cores: best-of-10 from 82 to 128 GFLOP/s in one hour), and the
    training it is compared with is itself a rate over many seconds. 512 is the size that ran fastest
    on the AVX2 and AVX-512 CPUs measured.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks and caches its kernel
    multiplies, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        multiplies += 1
    return 2 * size**3 * multiplies / elapsed / 1e9


def training_gflops(
    data: ImageData, spec: ArchSpec, recipe: TrainRecipe, model: torch.nn.Module | None = None
) -> tuple[float, float]:
    """(achieved GFLOP/s, FLOPs per image) of training steps in ``recipe.precision``: augmentation,
    forward, backward, update."""
    model = (model if model is not None else _seeded_model(spec)).to(memory_format=torch.channels_last).train()
    views = AugmentedViews(data)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    params, order = views.epoch_params(0), views.order(0)
    batches = [
        order[i : i + recipe.batch_size] for i in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size)
    ]
    device = data.train.images.device

    def step(indices: torch.Tensor) -> None:
        with autocast(device, recipe.precision):
            logits = model(views.batch(indices, params))
        loss = kd_loss(logits.float(), None, data.train.labels[indices], 0.0, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    per_image = _training_flops_per_image(spec, views, params, batches[0], recipe.precision)
    for indices in batches[:3]:  # warm-up (and, for a compiled model, compilation)
        step(indices)
    start = time.perf_counter()
    for indices in batches:
        step(indices)
    seconds = time.perf_counter() - start
    return per_image * recipe.batch_size * len(batches) / seconds / 1e9, per_image


def _training_flops_per_image(
    spec: ArchSpec, views: AugmentedViews, params: tuple[torch.Tensor, ...], indices: torch.Tensor, precision: str
) -> float:
    """Forward + backward FLOPs per image of ``spec`` on the batch ``indices``, counted on an eager copy:
    torch warns that a compiled module fires FlopCounterMode's global hooks an extra time."""
    model = _seeded_model(spec).to(memory_format=torch.channels_last).train()
    with FlopCounterMode(display=False) as counter:
        with autocast(views.data.train.images.device, precision):
            logits = model(views.batch(indices, params))
        logits.float().sum().backward()
    return counter.get_total_flops() / len(indices)


def flops(data: ImageData, cfg: StudyConfig, student: ArchSpec, recipe: TrainRecipe, compile_too: bool) -> None:
    cpu = torch.device("cpu")
    dtypes = {"float32": torch.float32}
    if native_bfloat16(cpu):  # emulated bf16 is an order of magnitude slower: no figure worth the wait
        dtypes["bfloat16"] = torch.bfloat16
    trial_precision = resolve_precision(cpu)
    print(
        f"\n== flops: training against the matmul peak of its precision, measured just before and just after it "
        f"(sustained 512^3 multiplies, {torch.get_num_threads()} threads); trials here train in "
        f'{trial_precision} (precision "auto")'
        + ("" if "bfloat16" in dtypes else "; bfloat16 is emulated on this CPU: not measured")
    )
    print(f"{'':>18}  {'student':<18} {'params':>9}  {'MFLOP/image':>11}  " + "  ".join(f"{p:>40}" for p in dtypes))
    smallest, largest = _space_corner(cfg, data, False), _space_corner(cfg, data, True)
    for label, spec in (
        ("smallest in space", smallest),
        ("throughput student", student),
        ("largest in space", largest),
    ):
        cells = []
        for precision, dtype in dtypes.items():
            before = matmul_peak(dtype)
            achieved, per_image = training_gflops(data, spec, dataclasses.replace(recipe, precision=precision))
            peak = (before + matmul_peak(dtype)) / 2
            cells.append(f"{achieved:6.1f} GFLOP/s = {100 * achieved / peak:5.1f}% of {peak:6.1f} peak")
        print(
            f"{label:>18}  {spec.describe():<18} {count_params(build_model(spec)):>9,}  {per_image / 1e6:11.1f}  "
            + "  ".join(f"{cell:>40}" for cell in cells)
        )
    if not compile_too:
        return
    start = time.perf_counter()
    compiled = torch.compile(_seeded_model(student))
    achieved, _ = training_gflops(data, student, dataclasses.replace(recipe, precision=trial_precision), compiled)
    print(
        f"torch.compile, throughput student, {trial_precision}: {achieved:7.1f} GFLOP/s after "
        f"{time.perf_counter() - start:.0f} s (compilation included in that time, per trial)"
    )


# ---------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------


def _space_corner(cfg: StudyConfig, data: ImageData, largest: bool) -> ArchSpec:
    """The smallest or largest student of the study's space."""
    info = data.info
    return extreme_student(cfg, info.in_channels, info.num_classes, info.image_size, largest)


def _resnet(info: DatasetInfo, width: int, blocks: tuple[int, ...]) -> ArchSpec:
    return ArchSpec("resnet", info.in_channels, info.num_classes, {"base_width": width, "blocks": blocks})


def _trial_peak_rss(study: str, data_dir: Path, threads: int) -> tuple[float, str, int]:
    """In a fresh process: one epoch of the study's largest student with cached soft targets; peak RSS in MiB."""
    torch.set_num_threads(threads)
    cfg = load_study(study)
    data = load_data(cfg.data, data_dir)
    spec = _space_corner(cfg, data, True)
    views = AugmentedViews(data)
    teacher_arch = teacher_spec(cfg, data)
    teacher = Teacher(_seeded_model(teacher_arch).eval(), teacher_arch, 0.0, 0.0, "bench", None)
    with tempfile.TemporaryDirectory() as tmp:
        cache = soft_targets_for(teacher, views, cfg.train.epochs, Path(tmp), batch_size=cfg.train.eval_batch_size)
    fit(_seeded_model(spec), views, dataclasses.replace(cfg.train, epochs=1), kd=KD, soft_targets=cache)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, spec.describe(), len(views)


def memory(study: str, data_dir: Path, threads: int) -> None:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        peak, arch, n = pool.submit(_trial_peak_rss, study, data_dir, threads).result()
    print(f"\n== memory: peak RSS of one {study!r} trial ({arch}, {n:,} images, soft-target cache): {peak:,.0f} MiB")


# ---------------------------------------------------------------------------------------------------
# gpu
# ---------------------------------------------------------------------------------------------------


def gpu(tiny: bool) -> None:
    if not torch.cuda.is_available():
        print("\n== gpu: no CUDA device here; skipped")
        return
    from kdnas.data import DATASETS, Split

    info, device = DATASETS.get("cifar10"), torch.device("cuda")
    n = 2_000 if tiny else 50_000  # a CIFAR-10 training epoch; the pixels' values do not change the speed
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = Split(images, torch.randint(0, 10, (n,), generator=g))
    data = ImageData(info, split, Split(images[:1000], split.labels[:1000]), split, 4, True, 0, "bench-cifar").to(
        device
    )
    spec = _resnet(info, 16, (3, 3, 3))  # ResNet-20
    recipe = TrainRecipe(epochs=3, batch_size=512, lr=0.4)
    teacher_arch = _resnet(info, 64, (2, 2, 2))
    teacher = Teacher(_seeded_model(teacher_arch).to(device).eval(), teacher_arch, 0.0, 0.0, "bench", None)
    with tempfile.TemporaryDirectory() as tmp:
        cache = soft_targets_for(teacher, AugmentedViews(data), recipe.epochs, Path(tmp), batch_size=2048)
    fit(
        _seeded_model(spec).to(device),
        AugmentedViews(data),
        dataclasses.replace(recipe, epochs=1),
        kd=KD,
        soft_targets=cache,
    )  # warm-up
    result = fit(_seeded_model(spec).to(device), AugmentedViews(data), recipe, kd=KD, soft_targets=cache)
    torch.cuda.synchronize()
    print(
        f"\n== gpu: {torch.cuda.get_device_name()}, ResNet-20 ({count_params(build_model(spec)):,} params), "
        "cached teacher"
    )
    print(
        f"{_rate(result.images, result.seconds)}, {result.seconds / recipe.epochs:.2f} s per {n:,}-image epoch "
        "(validation included)"
    )


if __name__ == "__main__":
    setup_logging(verbose=False, quiet=False)  # figures on stdout, progress (one line per trial) on stderr
    main()
