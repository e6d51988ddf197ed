"""Does searching the student's architecture together with its distillation settings pay? kdnas against
random search, against "search without KD, then distil" and against fixed KD settings, at equal training
compute, over seeds. Every figure is measured in this run or in the kept runs it reads again.

    python bench/methods.py --study fashion --limit-train 12000 --seeds 5 --out runs/bench-methods-fashion
    python bench/methods.py --study cifar-cpu --limit-train 10000 --seeds 5 --out runs/bench-methods-cifar-weak
    python bench/methods.py --study cifar-cpu --limit-train 10000 --seeds 5 --epochs 12 \
        --teacher-all-images --out runs/bench-methods-cifar-strong
    python bench/methods.py --tiny --out /tmp/methods      # seconds: checks that the script runs

Methods, each searched with the same data, space, recipe and teacher, and the same budget of training compute:
random search runs first on each seed, for --trials trials (default the study's budget); every other method
runs at least as many trials and goes on until it has spent as much compute (early stopping buys trials):
  (a) kdnas        the study's sampler over architecture + KD settings, with its early stopping
  (b) random       random search over the same joint space, no early stopping
  (c) arch-then-kd the study's sampler over architectures with alpha = 0 (no KD), then the students on its
                   accuracy-vs-parameters front distilled with T = 4, alpha = 0.9, no decay (counted in its compute)
  (d) fixed-kd     the study's sampler over architectures, KD fixed at T = 4, alpha = 0.9, no decay
  (e) kdnas-no-es  as (a) without early stopping (separates the sampler from the stopping)
and, only where --methods names it:
  (f) kdnas-usual  as (a), its start-up trials each a network with the usual recipe alone, twice as many
                   networks as (a)'s pairs (bench/startup.py's surrogate favours it where distillation pays)

Compute is training FLOPs (epochs x MACs x 6 x training images, as bench/speed.py counts it; the teacher's
soft targets are computed once per folder and not counted). Printed, never asserted: per method the
hypervolume of (validation accuracy, parameters) and of (accuracy, latency) at the end, mean and 95% interval
over seeds; the compute each needs to reach random search's final hypervolume; and the test accuracy of
the student each method would hand over within --sizes parameters (its best by validation accuracy,
trained again with kdnas.train for --retrain-epochs), averaged over seeds; then kdnas minus each method, paired
by seed; every figure for each seed alone; and what distillation is worth by size, fitted to random search's
trials (bench/_kd_effect.py).
methods.html in --out draws hypervolume against compute.

Whether distillation settings matter depends on the regime: by default the teacher is the study's, trained on
the bench's training images (a weak teacher when they are few); --teacher-all-images trains it on all the
study's training images instead (a strong one; once, in --out/teacher-all-images/, the very teacher a search of
the study trains), --teacher-checkpoint distils from a teacher trained elsewhere, and --epochs trains every
student longer than the study does.

Runs are kept in --out (one teacher, soft-target cache and latency table for all): a later invocation reads
finished seeds again, resumes an interrupted one and trains only what is missing. A folder made with other
settings is refused. --record keeps each finished run, with its retrained students, as a small JSON file
(docs/bench-methods/ holds the project's): a run found there is read from it instead of trained, so a
comparison of many hours goes on from another machine, where --out starts empty. Latencies are figures of
the machine that timed them, so every latency hypervolume takes each network at the latency that random
search's seed-0 machine recorded for it. So that another machine trains the same teacher and trials, every
run trains in float32 (--precision) and, on a CPU with AVX-512, with torch, oneDNN and MKL held to their
AVX2 kernels (the script starts itself again with AVX2_KERNELS set; --native-kernels keeps the CPU's own,
whose sums round differently).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import _unfinished as unfinished  # bench/ is scripts, not a package
import torch
from _kd_effect import kd_effect
from _runs import (
    compute_curve,
    fewer_training_images,
    finished_study,
    first_reach,
    search,
    stored_study,
    train_teacher,
    training_flops,
)

from kdnas.cli import setup_logging
from kdnas.config import EarlyStopConfig, KDSpace, StudyConfig, dataclass_from_dict, load_study
from kdnas.distill import KDSpec
from kdnas.files import write_json, write_text
from kdnas.progress import duration, percent
from kdnas.results import KD_PARAMS, hypervolume_history, hypervolume_reference, pareto_front, trials_frame
from kdnas.status import BUDGET_STATUSES, TrialStatus
from kdnas.study import NO_KD, USUAL_KD, budget_trials
from kdnas.trainer import PRECISIONS

METHODS = {
    "kdnas": "(a) the study's sampler over architecture + KD, its early stopping",
    "random": "(b) random search over the same space, no early stopping",
    "arch-then-kd": "(c) the sampler over architectures without KD, then its front distilled (T 4, alpha 0.9)",
    "fixed-kd": "(d) the sampler over architectures, KD fixed at T 4, alpha 0.9",
    "kdnas-no-es": "(e) as (a) without early stopping",
    "kdnas-usual": "(f) as (a), its start-up networks trained with the usual recipe alone (startup = usual)",
}
ISSUE_METHODS = list(METHODS)[:5]  # (a) to (e), the comparison issue 23 asks for: the default --methods
# A run grows to its seed's compute budget up to this many times its trials (a space can be used up).
MAX_GROWTH = 10
USED_UP = "bench: space used up"  # a study attribute: growing it trained nothing more
# Where --teacher-all-images keeps its teacher, in --out.
ALL_IMAGES_TEACHER = Path("teacher-all-images") / "teacher.pt"
# What holds torch (ATen), oneDNN and MKL to their AVX2 kernels: an AVX-512 CPU so trains what AVX2 ones do.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond the table).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}
# What a record keeps of a run's trials: what the figures and the students table read, and the KD settings.
RECORD_COLUMNS = (
    "trial", "status", "arch", *KD_PARAMS, "val_accuracy", "params", "macs", "latency_ms", "epochs",
    "distilled", "retrain_of", "test_accuracy",
)  # fmt: skip


def avx2_kernel_environment(capability: str, environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to start again with so that torch's CPU ``capability`` ("AVX512", "AVX2", ...) trains
    as AVX2 machines do; None where it already does, or where the user chose kernels (ATEN_CPU_CAPABILITY)."""
    if capability != "AVX512" or "ATEN_CPU_CAPABILITY" in environ:
        return None
    return {**environ, **AVX2_KERNELS}


def main() -> None:
    args = _parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    environment = None if args.native_kernels else avx2_kernel_environment(capability, dict(os.environ))
    if environment is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)  # the libraries read it at start-up
    torch.set_num_threads(args.threads)
    base = _base_study(args)
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args, base)
    _check_settings(args.out, "--out", "runs", settings)
    if args.record:
        args.record.mkdir(parents=True, exist_ok=True)
        _check_settings(args.record, "--record", "records", _settings(args, unfinished.portable(base)))
    print(
        f"kdnas methods bench: torch {torch.__version__} ({capability} kernels), "
        f"{args.threads} threads; study {base.name!r}, "
        f"at least {base.budget.trials} trials, {args.seeds} seeds, training images: {base.data.limit_train or 'all'}, "
        f"student epochs {base.train.epochs}, retrained for {settings['retrain_epochs']}; runs in {args.out}"
    )
    # Random search first, on every seed, even where --methods leaves it out (then read back or run, not
    # reported): the training compute it spends on its trials is every other method's budget for that seed, so
    # all methods are compared at equal compute.
    order = ["random", *(method for method in methods if method != "random")]
    keys = [(method, seed) for seed in range(args.seeds) for method in order]
    recorded = {}
    if args.record:
        found = {key: _read_record(args.record, *key, base) for key in keys}
        recorded = {key: run for key, run in found.items() if run is not None}
    if args.save_unfinished:
        _save_unfinished(base, args, [key for key in keys if key not in recorded])
        return
    if args.record and not args.no_train:
        _restore_unfinished(base, args, [key for key in keys if key not in recorded])
    if args.teacher_all_images and not args.no_train and any(key not in recorded for key in keys):
        _train_teacher_on_all_images(base, args)
    left = None
    if not args.no_train:
        left = _TimeLeft(
            {key: recorded[key].spent if key in recorded else _stored_spent(base, *key, args) for key in keys}
        )
    runs: dict[tuple[str, int], MethodRun] = {}
    for number, (method, seed) in enumerate(keys, 1):
        budget = runs["random", seed].spent if ("random", seed) in runs else None
        run = recorded.get((method, seed))
        if run is not None:
            print(
                f"methods: {method}, seed {seed} (run {number} of {len(keys)}): read from {args.record}",
                file=sys.stderr,
            )
        elif args.no_train:
            run = _kept_run(method, seed, base, args, budget)
            if run is None:  # the first run not finished: report the whole seeds before it
                break
        else:
            print(f"methods: {method}, seed {seed} (run {number} of {len(keys)}; {left})", file=sys.stderr, flush=True)
            run = _run(method, seed, base, args, budget)
        if args.record and run.students_complete and (method, seed) not in recorded:
            _write_record(args.record, method, seed, run)
            unfinished.forget(args.record, f"{method}-{seed}")
        if left is not None:
            left.update((method, seed), run.spent, run.spent if method == "random" else None)
        runs[method, seed] = run
    runs = {key: run for key, run in runs.items() if all((method, key[1]) in runs for method in order)}
    if not runs:
        raise SystemExit(f"error: no seed is finished in {args.out}; run without --no-train to train them")
    runs, own = one_machine_latencies(runs)
    curves = {key: _curves(run) for key, run in runs.items()}
    seeds = len(runs) // len(order)
    _print_teachers(runs)
    _print_hypervolumes(methods, seeds, runs, curves, own)
    _print_students(methods, seeds, args, runs)
    if "kdnas" in methods and len(methods) > 1:
        _print_paired(methods, seeds, args, runs, curves)
    _print_per_seed(methods, seeds, args, runs, curves)
    _print_kd_effect(seeds, args, runs)
    _write_figure(args.out / "methods.html", methods, seeds, curves, base.name)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="fashion")
    parser.add_argument("--limit-train", type=int, default=12_000, help="training images (0: the study's own)")
    parser.add_argument("--trials", type=int, default=0, help="trials per method and seed (0: the study's budget)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 of every method")
    parser.add_argument(
        "--methods",
        default=",".join(ISSUE_METHODS),
        help="comma-separated, of: " + ", ".join(METHODS) + " (random runs in any case: it sets the budgets)",
    )
    parser.add_argument("--epochs", type=int, default=0, help="epochs of every student (0: the study's)")
    parser.add_argument(
        "--teacher-checkpoint",
        type=Path,
        help="a state dict of the study's teacher network, loaded instead of training it",
    )
    parser.add_argument(
        "--teacher-all-images",
        action="store_true",
        help="train the study's teacher on all the study's training images, not only --limit-train's (the strong "
        "regime: the teacher a search of the study trains, the same on every machine)",
    )
    parser.add_argument("--sizes", default="25000,50000,100000", help="parameter budgets of the students table")
    parser.add_argument("--retrain-epochs", type=int, default=0, help="epochs of the retrained students (0: search's)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--native-kernels",
        action="store_true",
        help="on an AVX-512 CPU, train with its own kernels instead of the AVX2 ones (faster or not, but the "
        "teacher and trials then differ from those of AVX2 machines in the same record folder)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS.names(),
        default="float32",
        help="every teacher's and student's training precision (default float32 on every machine: the study's "
        "'auto' trains in bfloat16 where the CPU computes in it natively, and such runs would not compare with "
        "other machines' runs of the same folder)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the folder that keeps every run")
    parser.add_argument(
        "--record",
        type=Path,
        help="a folder of finished runs' records: each run is written there when it finishes, and read from "
        "there instead of trained (for example docs/bench-methods/fashion, kept in the repository)",
    )
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: the figures of the whole seeds already finished, and of students already retrained",
    )
    parser.add_argument(
        "--save-unfinished",
        action="store_true",
        help="train nothing: keep the trials of the runs started in --out and not finished in --record, where a "
        "later invocation (on another machine) resumes them",
    )
    parser.add_argument("--tiny", action="store_true", help="the smoke study, 2 seeds, 2 trials: checks the script")
    args = parser.parse_args()
    if args.teacher_checkpoint and args.teacher_all_images:
        raise SystemExit("error: --teacher-checkpoint and --teacher-all-images both name the teacher; pass one")
    if args.save_unfinished and not args.record:
        raise SystemExit("error: --save-unfinished keeps runs in --record; pass --record FOLDER")
    if args.tiny:
        # 2 trials: with KD fixed, smoke's space holds 2 candidates.
        args.study, args.limit_train, args.seeds, args.sizes = "smoke", 500, 2, "6000,20000"
        args.trials = args.trials or 2
    return args


def _base_study(args: argparse.Namespace) -> StudyConfig:
    cfg = load_study(args.study)
    trials = args.trials or cfg.budget.trials
    teacher = cfg.teacher
    if args.teacher_checkpoint:
        # Only training reads the file: --no-train and --save-unfinished compare settings, which name it.
        will_train = not (args.no_train or args.save_unfinished)
        if will_train and not args.teacher_checkpoint.is_file():
            raise SystemExit(f"error: --teacher-checkpoint {args.teacher_checkpoint} is not a file; pass a state dict")
        # Absolute: the retrained students find it from their own folders.
        teacher = dataclasses.replace(teacher, checkpoint=str(args.teacher_checkpoint.resolve()))
    if args.teacher_all_images:  # trained there before the first run that trains (_train_teacher_on_all_images)
        teacher = dataclasses.replace(teacher, checkpoint=str((args.out / ALL_IMAGES_TEACHER).resolve()))
    teacher = dataclasses.replace(teacher, train=dataclasses.replace(teacher.train, precision=args.precision))
    return dataclasses.replace(
        cfg,
        data=fewer_training_images(cfg.data, args.limit_train),
        teacher=teacher,
        train=dataclasses.replace(cfg.train, epochs=args.epochs or cfg.train.epochs, precision=args.precision),
        budget=dataclasses.replace(cfg.budget, trials=trials, timeout_min=None),
    )


def _train_teacher_on_all_images(base: StudyConfig, args: argparse.Namespace) -> None:
    """The teacher ``base`` loads, trained (or read again) as a search of the study trains it: on the study's own
    training images, with the bench's precision and kernels."""
    study = load_study(args.study)
    cfg = dataclasses.replace(study, teacher=dataclasses.replace(base.teacher, checkpoint=None))
    images = f"its {study.data.limit_train}" if study.data.limit_train else "all its"
    folder = Path(base.teacher.checkpoint).parent
    print(f"teacher: the study's, trained on {images} training images in {folder}", file=sys.stderr, flush=True)
    train_teacher(cfg, folder, args.data_dir)


def _settings(args: argparse.Namespace, base: StudyConfig) -> dict:
    """What makes runs comparable: the study every method starts from and the retrained students' epochs."""
    return {
        "study": json.loads(json.dumps(base.to_dict(), default=list)),
        "retrain_epochs": args.retrain_epochs or base.train.epochs,
    }


def _check_settings(folder: Path, option: str, what: str, settings: dict) -> None:
    """``settings`` stored in ``folder`` on first use; a folder of ``what`` made with others is refused."""
    path = folder / "bench-settings.json"
    if path.is_file():
        difference = _first_difference(json.loads(path.read_text()), settings)
        if difference:
            raise SystemExit(
                f"error: {folder} holds {what} made with other settings ({difference}); pass another {option}, "
                f"or the options those {what} were made with"
            )
    else:
        write_json(path, settings)


def _first_difference(kept, asked, where: str = "") -> str | None:
    """'study.data.limit_train: 12000 there, 10000 here' for the first value that differs, or None."""
    if isinstance(kept, dict) and isinstance(asked, dict):
        for key in sorted(set(kept) | set(asked)):
            found = _first_difference(kept.get(key), asked.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if kept == asked else f"{where}: {kept!r} there, {asked!r} here"


# ---------------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------------


def method_study(base: StudyConfig, method: str, seed: int) -> StudyConfig:
    """The study a method searches: ``base`` with its sampler, KD space or early stopping changed."""
    no_stopping = EarlyStopConfig(policy="none")
    changes = {
        "kdnas": {},
        "random": {"sampler": dataclasses.replace(base.sampler, name="random"), "early_stop": no_stopping},
        "arch-then-kd": {"kd": dataclass_from_dict(KDSpace, NO_KD, "kd")},
        "fixed-kd": {"kd": dataclass_from_dict(KDSpace, USUAL_KD, "kd")},
        "kdnas-no-es": {"early_stop": no_stopping},
        "kdnas-usual": {"sampler": dataclasses.replace(base.sampler, startup="usual")},
    }[method]
    return dataclasses.replace(base, name=f"{base.name}-{method}", seed=seed, **changes)


def _storage(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}-{seed}.db"


def _save_unfinished(base: StudyConfig, args: argparse.Namespace, keys: list[tuple[str, int]]) -> None:
    """--save-unfinished: the trials of every run started in --out and not finished, kept in --record."""
    for method, seed in keys:
        cfg = method_study(base, method, seed)
        if stored_study(cfg, _storage(args.out, method, seed)) is None:
            continue
        run = f"{method}-{seed}"
        kept = unfinished.save(_storage(args.out, method, seed), cfg, args.out, args.record, run)
        print(f"methods: {method}, seed {seed}: {kept} trials kept in {args.record / unfinished.FOLDER}")


def _restore_unfinished(base: StudyConfig, args: argparse.Namespace, keys: list[tuple[str, int]]) -> None:
    """Runs kept unfinished in --record (by --save-unfinished on another machine) put back into --out."""
    for method, seed in keys:
        cfg = method_study(base, method, seed)
        restored = unfinished.restore(_storage(args.out, method, seed), cfg, args.out, args.record, f"{method}-{seed}")
        if restored:
            print(
                f"methods: {method}, seed {seed}: resumes from the {restored} trials kept in "
                f"{args.record / unfinished.FOLDER}",
                file=sys.stderr,
            )


def _stored_spent(base: StudyConfig, method: str, seed: int, args: argparse.Namespace) -> float:
    """Training FLOPs a method's run had spent before this invocation (arch-then-kd: with its distillation)."""
    cfg = method_study(base, method, seed)
    study = stored_study(cfg, _storage(args.out, method, seed))
    if study is None:
        return 0.0
    return _search_spent(method, cfg, study, _references(base, args)["train_images"])


class _TimeLeft:
    """'40% of the compute spent, about 3 h 05 min left': this invocation's time per training FLOP times the
    FLOPs still to spend, every run spending its seed's random-search budget (the mean budget for a seed
    whose random search has not run yet; without random search, the most any run has spent)."""

    def __init__(self, spent: dict[tuple[str, int], float]) -> None:
        self.spent, self.budgets, self.trained, self.start = spent, {}, 0.0, time.perf_counter()

    def update(self, key: tuple[str, int], spent: float, budget: float | None) -> None:
        self.trained += max(0.0, spent - self.spent[key])
        self.spent[key] = spent
        if budget is not None:
            self.budgets[key[1]] = budget

    def __str__(self) -> str:
        if not self.trained:
            return "time left: known once this invocation has trained"
        usual = sum(self.budgets.values()) / len(self.budgets) if self.budgets else max(self.spent.values())
        targets = {key: max(self.budgets.get(key[1], usual), spent) for key, spent in self.spent.items()}
        left = sum(targets[key] - spent for key, spent in self.spent.items())
        share = 1 - left / sum(targets.values())
        seconds = (time.perf_counter() - self.start) / self.trained * left
        return f"{100 * share:.0f}% of the compute spent, about {duration(seconds)} left"


@dataclasses.dataclass
class MethodRun:
    """One method and seed: its study's trials frame (in the order they cost compute), its config, and the
    students it hands over, retrained."""

    cfg: StudyConfig
    frame: object  # pandas.DataFrame: trials_frame rows, then (arch-then-kd) the distilled retrains
    trials: int  # trials that cost training
    spent: float  # training FLOPs, the distillations included
    references: dict[str, float]  # of the folder it ran in: its latency reference was timed there
    machine: str
    teacher: dict[str, object]  # the teacher it distilled from: its test accuracy and weights' SHA-256
    students: dict[str, dict]  # per size (str of --sizes' numbers): its best student within it, retrained
    students_complete: bool  # False where --no-train left a retraining missing


def _run(method: str, seed: int, base: StudyConfig, args: argparse.Namespace, budget: float | None) -> MethodRun:
    """A method's run: its search, grown past its trials until it has spent ``budget`` training FLOPs (when
    given), then (arch-then-kd) its front distilled."""
    cfg = method_study(base, method, seed)
    kept = unfinished.journal_path(args.record, f"{method}-{seed}") if args.record else None
    study = search(cfg, args.out, _storage(args.out, method, seed), args.data_dir, kept)
    references = _references(base, args)
    if budget is not None:
        cfg, study = _grow(method, cfg, study, args, references["train_images"], budget)
    return _finished_run(method, cfg, study, args, references)


def _kept_run(method: str, seed: int, base: StudyConfig, args: argparse.Namespace, budget: float | None):
    """A finished run read back without training anything (--no-train), or None where it is not finished."""
    cfg = method_study(base, method, seed)
    study = finished_study(cfg, _storage(args.out, method, seed))
    if study is None:
        return None
    references = _references(base, args)
    spent = _search_spent(method, cfg, study, references["train_images"])
    if budget is not None and _growing(study, spent, budget, MAX_GROWTH * cfg.budget.trials):
        return None
    return _finished_run(method, cfg, study, args, references)


def _finished_run(method: str, cfg: StudyConfig, study, args: argparse.Namespace, references: dict[str, float]):
    """The run of a finished search: its trials, then (arch-then-kd) its front distilled, and its students
    retrained; None where a distillation is missing and --no-train forbids it."""
    import pandas as pd

    from kdnas.measure import device_model, resolve_device
    from kdnas.trainer import resolve_precision

    frame = trials_frame(study)
    if method == "arch-then-kd":
        front = _front(frame)["trial"]
        distilled = [_distilled_row(cfg, study, int(trial), args, len(frame) + i) for i, trial in enumerate(front)]
        if None in distilled:
            return None
        frame = pd.concat([frame, pd.DataFrame(distilled)], ignore_index=True)
    students, complete = _students(cfg, study, frame, args)
    device = resolve_device("auto")  # where the searches trained and timed
    bfloat16 = resolve_precision(device, cfg.train.precision) == "bfloat16"
    machine = f"{device_model('auto')}{' (bfloat16)' if bfloat16 else ''}, torch {torch.__version__}"
    spent = _spent(frame, cfg, references["train_images"])
    teacher = {key: study.user_attrs["teacher"][key] for key in ("test_accuracy", "weights_sha256")}
    return MethodRun(cfg, frame, budget_trials(study), spent, references, machine, teacher, students, complete)


def _students(cfg: StudyConfig, study, frame, args: argparse.Namespace) -> tuple[dict[str, dict], bool]:
    """Per size of --sizes, the student a run hands over (its best by validation accuracy within the size)
    trained again for the retrained students' epochs; and whether none was missing (--no-train). A student's
    "distilled" says it is arch-then-kd's usual-recipe retraining of search trial "trial"; otherwise it is that
    trial trained again with its own settings, distillation included."""
    epochs = args.retrain_epochs or cfg.train.epochs
    done = frame[frame["status"] == TrialStatus.COMPLETE]
    students, complete = {}, True
    for size in args.sizes.split(","):
        within = done[done["params"] <= int(size)]
        if within.empty:
            continue
        best = within.sort_values(["val_accuracy", "params"], ascending=[False, True]).iloc[0]
        distilled = "retrain_of" in best and not math.isnan(best["retrain_of"])  # arch-then-kd's phase 2
        trial = int(best["retrain_of"] if distilled else best["trial"])
        summary = _retrain(cfg, study, trial, args, epochs, USUAL_KD if distilled else None)
        if summary is None:
            complete = False
            continue
        students[size] = {
            "trial": trial,
            "distilled": distilled,
            "params": summary["params"],
            "test_accuracy": summary["test_accuracy"],
        }
    return students, complete


def _record_path(folder: Path, method: str, seed: int) -> Path:
    return folder / f"{method}-{seed}.json"


def _write_record(folder: Path, method: str, seed: int, run: MethodRun) -> None:
    """A finished run with its retrained students, as the figures read it (what ``_read_record`` reads)."""
    columns = [c for c in RECORD_COLUMNS if c in run.frame.columns]
    record = {
        "method": method,
        "seed": seed,
        "machine": run.machine,
        "teacher": run.teacher,
        "references": run.references,
        "trials": run.trials,
        "spent": run.spent,
        "students": run.students,
        "frame": run.frame[columns].to_dict(orient="records"),  # pandas gives Python's own numbers here
    }
    write_json(_record_path(folder, method, seed), record)


def _read_record(folder: Path, method: str, seed: int, base: StudyConfig) -> MethodRun | None:
    """A run kept by ``_write_record``, or None where there is none."""
    import pandas as pd

    path = _record_path(folder, method, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    frame = pd.DataFrame.from_records(record["frame"])
    for column in frame.columns.difference(["status", "arch", "alpha_decay", "distilled"]):
        frame[column] = pd.to_numeric(frame[column])  # JSON's nulls back to nan
    return MethodRun(
        method_study(base, method, seed),
        frame,
        record["trials"],
        record["spent"],
        record["references"],
        record["machine"],
        record["teacher"],
        record["students"],
        True,
    )


def _front(frame):
    """The complete trials on a frame's accuracy-vs-parameters front."""
    return pareto_front(frame[frame["status"] == TrialStatus.COMPLETE], "params")


def _spent(frame, cfg: StudyConfig, images: int, to_distil: bool = False) -> float:
    """Training FLOPs of a run's rows; with ``to_distil``, plus distilling its front for the search's epochs."""
    cost, _ = compute_curve(frame, cfg, images)
    spent = cost[-1] if cost else 0.0
    if to_distil:
        spent += float(training_flops(cfg.train.epochs, _front(frame)["macs"], images).sum())
    return spent


def _search_spent(method: str, cfg: StudyConfig, study, images: int) -> float:
    """Training FLOPs of a method's search so far, with (arch-then-kd) the distillation of its front to come."""
    return _spent(trials_frame(study), cfg, images, to_distil=method == "arch-then-kd")


def _grow(method: str, cfg: StudyConfig, study, args: argparse.Namespace, images: int, budget: float):
    """``study`` continued until it has spent ``budget`` training FLOPs (arch-then-kd: with its front's
    distillation to come), in rounds of half the trials the mean cost says are missing; it stops early when
    a round trains nothing (the space is used up: noted in the study, so a later invocation does not try
    again) or the run holds ``MAX_GROWTH`` times its trials. The config and study it ends with."""
    most = MAX_GROWTH * cfg.budget.trials
    spent = _search_spent(method, cfg, study, images)
    while _growing(study, spent, budget, most):
        done = budget_trials(study)
        more = min(most - done, max(1, math.ceil(0.5 * (budget - spent) * done / max(spent, 1.0))))
        cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, trials=done + more))
        study = search(cfg, args.out, _storage(args.out, method, cfg.seed), args.data_dir)
        before, spent = spent, _search_spent(method, cfg, study, images)
        if spent <= before:
            study.set_user_attr(USED_UP, True)
    return cfg, study


def _growing(study, spent: float, budget: float, most: int) -> bool:
    """Whether a run short of its compute budget grows on: its space not used up, under ``most`` trials."""
    return spent < budget and not study.user_attrs.get(USED_UP) and budget_trials(study) < most


def _distilled_row(cfg: StudyConfig, study, trial: int, args: argparse.Namespace, number: int) -> dict | None:
    """Trial ``trial`` of an arch-then-kd search distilled with the usual recipe for the search's epochs, as a
    trials-frame row numbered ``number`` (after the search's trials: its compute comes after theirs)."""
    summary = _retrain(cfg, study, trial, args, cfg.train.epochs, USUAL_KD)
    if summary is None:
        return None
    searched = study.trials[trial].user_attrs
    return {
        "trial": number,
        "status": TrialStatus.COMPLETE,
        "arch": summary["arch"],
        "val_accuracy": summary["val_accuracy"],
        "test_accuracy": summary["test_accuracy"],
        "params": summary["params"],
        "macs": searched["macs"],
        "latency_ms": searched["latency_ms"],
        "epochs": summary["epochs"],
        "distilled": True,
        "retrain_of": trial,
    }


def _retrain(cfg: StudyConfig, study, trial: int, args: argparse.Namespace, epochs: int, kd=None) -> dict | None:
    """Trial ``trial`` trained again by kdnas.train for ``epochs`` (with the distillation settings ``kd`` when
    given), its summary; kept in the folder, so a finished retraining is read again and an interrupted one
    redone (None instead with --no-train)."""
    from kdnas.rundir import StudyRun
    from kdnas.student_file import read_student, student_record
    from kdnas.train import train_student

    what = "usual-kd" if kd else "as-searched"
    out_dir = args.out / "retrained" / f"{cfg.name}-s{cfg.seed}-t{trial}-{what}-e{epochs}"
    result = out_dir / "result.json"
    if result.is_file():  # written last by kdnas.train: the training finished
        return json.loads(result.read_text())
    if args.no_train:
        return None
    record = student_record(StudyRun(study, cfg, args.out), trial, {"bench": what})
    if kd is not None:
        record["kd"] = dataclasses.asdict(KDSpec(**kd))
    config = out_dir.with_suffix(".json")
    config.parent.mkdir(parents=True, exist_ok=True)
    write_json(config, record)
    return train_student(read_student(config), out_dir, epochs=epochs, data_dir=args.data_dir, export=False)


# ---------------------------------------------------------------------------------------------------
# Hypervolume against compute
# ---------------------------------------------------------------------------------------------------


def _references(base: StudyConfig, args: argparse.Namespace) -> dict[str, float]:
    """The hypervolume reference points, fixed per folder: 10% above the largest student the study can keep,
    in parameters, and 10% above the space's largest student's figure in the folder's latency table, where
    the searches timed every candidate (the same anchored machine state)."""
    from kdnas.data import load_data
    from kdnas.measure import LatencyTable
    from kdnas.models import build_model
    from kdnas.space import extreme_student

    path = args.out / "bench-references.json"
    if path.is_file():
        return json.loads(path.read_text())
    data = load_data(base.data, args.data_dir, download=False)
    info = data.info
    shape = (info.in_channels, info.num_classes, info.image_size)
    params = hypervolume_reference(base, *shape)
    largest = extreme_student(base, *shape, largest=True)
    input_shape = (info.in_channels, info.image_size, info.image_size)
    table = LatencyTable(args.out, base.latency, input_shape, mean=info.mean, std=info.std)
    latency = table.latency_ms(build_model(largest), largest)
    references = {"params": params, "latency_ms": 1.1 * latency, "train_images": len(data.train)}
    write_json(path, references)
    return references


def one_machine_latencies(runs: dict) -> tuple[dict, int]:
    """``runs`` with every network at the latency that random search's seed-0 machine timed it at, and its
    reference: runs read from records may come from other machines, where networks' latencies relative to the
    reference differ, so each machine's hypervolumes would measure another yardstick. Every run timed on that
    machine (the same reference: the same latency table) adds the networks it timed. Also how many runs
    keep their own machine's latencies: those with a network it never timed."""
    reference = runs["random", 0].references["latency_ms"]
    table = {}
    for run in runs.values():
        if run.references["latency_ms"] == reference:
            timed = run.frame[run.frame["latency_ms"].notna()]
            table.update(zip(timed["arch"], timed["latency_ms"], strict=True))
    same, own = {}, 0
    for key, run in runs.items():
        timed = run.frame["latency_ms"].notna()
        if run.references["latency_ms"] == reference:
            same[key] = run
        elif not run.frame["arch"][timed].isin(table).all():
            same[key], own = run, own + 1
        else:
            frame = run.frame.assign(latency_ms=run.frame["arch"].map(table).where(timed))
            same[key] = dataclasses.replace(run, frame=frame, references={**run.references, "latency_ms": reference})
    return same, own


def _curves(run: MethodRun) -> dict[str, list[float]]:
    """Cumulative compute and both hypervolumes after each row of a method's frame."""
    cost, hv_params = compute_curve(run.frame, run.cfg, run.references["train_images"])
    hv_latency = hypervolume_history(run.frame, run.references["latency_ms"], "latency_ms").tolist()
    return {"compute": cost, "params": hv_params, "latency_ms": hv_latency}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% interval (Student's t; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def with_interval(values: list[float], spec: str, scale: float = 1.0, unit: str = "") -> str:
    """'mean +- half-width' of the scaled values in format `spec`; one value has no interval to show."""
    mean, half = mean_interval([scale * value for value in values])
    shown = f"{half:{spec.replace('+', '')}}".strip() + unit if len(values) > 1 else "-"
    return f"{mean:{spec}}{unit} +- {shown}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _print_teachers(runs: dict) -> None:
    """The teacher every run distilled from: one, unless runs read from records trained it on other machines
    (its training is seeded, but floating-point sums differ between CPUs), which makes their seeds differ."""
    teachers = collections.Counter(
        (run.teacher["weights_sha256"], run.teacher["test_accuracy"]) for run in runs.values()
    )
    described = [
        f"{percent(accuracy)} test accuracy, weights {sha[:12]} ({count} of {len(runs)} runs)"
        for (sha, accuracy), count in teachers.most_common()
    ]
    print(f"\nteacher{'s' if len(described) > 1 else ''}: {'; '.join(described)}")


def _print_hypervolumes(methods: list[str], seeds: int, runs: dict, curves: dict, own: int) -> None:
    params = sorted({run.references["params"] for run in runs.values()})
    latencies = sorted({round(run.references["latency_ms"], 3) for run in runs.values()})
    machines = " as random search's seed-0 machine timed every network"
    if own:
        machines = f"{machines}, and {own} run(s) timed elsewhere, with a network it never timed, at their own"
    print(
        "\n== hypervolume at the end, every method given random search's compute on each seed "
        f"(mean +- 95% interval over {_seeds(seeds)}); "
        f"references: 0% accuracy at {', '.join(f'{p:,.0f}' for p in params)} parameters, "
        f"at {', '.join(f'{ms:.3f}' for ms in latencies)} ms{machines}; compute in TFLOP; trials that cost training"
    )
    print(
        f"{'method':<13} {'HV params':>17} {'HV latency':>17} {'TFLOP':>16} {'trials':>6}   "
        "to reach random's final HV (params)"
    )
    for method in methods:
        trials = sum(runs[method, s].trials for s in range(seeds)) / seeds
        hv_p = with_interval([curves[method, s]["params"][-1] for s in range(seeds)], ".4f")
        hv_l = with_interval([curves[method, s]["latency_ms"][-1] for s in range(seeds)], ".4f")
        spent = with_interval([curves[method, s]["compute"][-1] for s in range(seeds)], ".3g", 1e-12)
        shares = [share for s in range(seeds) if (share := _reach_share(curves, method, s)) is not None]
        if shares:
            share = with_interval(shares, ".0f", 100, "%")
            reach = f"{share} of random's compute ({len(shares)} of {_seeds(seeds)})"
        else:
            reach = f"not reached (0 of {_seeds(seeds)})"
        print(f"{method:<13} {hv_p:>17} {hv_l:>17} {spent:>16} {trials:6.1f}   {reach}")


def _reach_share(curves: dict, method: str, seed: int) -> float | None:
    """The share of random search's compute a method spent to first reach random's final hypervolume
    (accuracy vs parameters) on a seed, or None where it never did."""
    goal = curves["random", seed]
    found = first_reach(curves[method, seed]["compute"], curves[method, seed]["params"], goal["params"][-1])
    return None if found is None else found / goal["compute"][-1]


def _print_students(methods: list[str], seeds: int, args: argparse.Namespace, runs: dict) -> None:
    """Per method and size: the student it would hand over (best validation accuracy within the size), retrained."""
    sizes = args.sizes.split(",")
    epochs = args.retrain_epochs or next(iter(runs.values())).cfg.train.epochs
    print(
        f"\n== test accuracy of the student each method hands over within a size (its best by validation "
        f"accuracy), trained again for {epochs} epochs; mean +- 95% interval over seeds (seeds with one)"
    )
    print(f"{'method':<13} " + " ".join(f"{f'<= {int(size):,}':>22}" for size in sizes))
    for method in methods:
        cells = []
        for size in sizes:
            students = [runs[method, seed].students.get(size) for seed in range(seeds)]
            accuracies = [student["test_accuracy"] for student in students if student]
            if accuracies:
                cells.append(f"{with_interval(accuracies, '6.2f', 100)}% ({len(accuracies)})")
            else:
                cells.append("-")
        print(f"{method:<13} " + " ".join(f"{cell:>22}" for cell in cells))


def _print_paired(methods: list[str], seeds: int, args: argparse.Namespace, runs: dict, curves: dict) -> None:
    """kdnas minus every other method, seed by seed: a difference's interval is narrower than two methods'
    intervals side by side, since a seed's data split and teacher are shared by all its methods."""
    sizes = args.sizes.split(",")
    print(
        "\n== kdnas minus each method, paired by seed: final hypervolumes, and test accuracy (points) of the "
        "students handed over within a size; mean +- 95% interval (seeds where kdnas is ahead / seeds compared)"
    )
    print(
        f"{'method':<13} {'HV params':>24} {'HV latency':>24} "
        + " ".join(f"{f'<= {int(size):,}':>22}" for size in sizes)
    )

    def cell(differences: list[float], digits: int, width: int) -> str:
        if not differences:
            return f"{'-':>{width}}"
        ahead = sum(d > 0 for d in differences)
        text = f"{with_interval(differences, f'+.{digits}f')} ({ahead}/{len(differences)})"
        return f"{text:>{width}}"

    for method in methods:
        if method == "kdnas":
            continue
        cells = [
            cell([curves["kdnas", s][cost][-1] - curves[method, s][cost][-1] for s in range(seeds)], 4, 24)
            for cost in ("params", "latency_ms")
        ]
        for size in sizes:
            pairs = [(runs["kdnas", s].students.get(size), runs[method, s].students.get(size)) for s in range(seeds)]
            differences = [
                100 * (ours["test_accuracy"] - theirs["test_accuracy"]) for ours, theirs in pairs if ours and theirs
            ]
            cells.append(cell(differences, 2, 22))
        print(f"{method:<13} " + " ".join(cells))


def _print_per_seed(methods: list[str], seeds: int, args: argparse.Namespace, runs: dict, curves: dict) -> None:
    """Every figure of the sections above for each seed alone: with few seeds a mean and its interval hide
    whether one method leads on every seed or on one by much."""
    sizes = args.sizes.split(",")
    print(
        "\n== per seed: final hypervolumes, compute (TFLOP), trials that cost training, share of random's compute "
        "to reach its final HV (params), test accuracy (%) of the retrained student handed over within a size"
    )
    print(
        f"{'method':<13} {'seed':>4} {'HV params':>9} {'HV latency':>10} {'TFLOP':>8} {'trials':>6} {'stopped':>7} "
        f"{'duplicates':>10} {'networks':>8} {'reach':>6} " + " ".join(f"{f'<= {int(size):,}':>10}" for size in sizes)
    )
    for method in methods:
        for seed in range(seeds):
            run, curve, share = runs[method, seed], curves[method, seed], _reach_share(curves, method, seed)
            statuses = run.frame["status"].value_counts()
            students = [run.students.get(size) for size in sizes]
            print(
                f"{method:<13} {seed:>4} {curve['params'][-1]:9.4f} {curve['latency_ms'][-1]:10.4f} "
                f"{curve['compute'][-1] / 1e12:8.2f} {run.trials:6d} {statuses.get(TrialStatus.STOPPED, 0):7d} "
                f"{statuses.get(TrialStatus.DUPLICATE, 0):10d} {_networks(run.frame):8d} "
                f"{'-' if share is None else f'{100 * share:.1f}%':>6} "
                + " ".join(f"{100 * s['test_accuracy']:10.2f}" if s else f"{'-':>10}" for s in students)
            )


def _networks(frame) -> int:
    """Distinct architectures a run's search trained (arch-then-kd's distilled retrains are not others)."""
    trained = frame[frame["status"].isin(BUDGET_STATUSES)]
    if "retrain_of" in trained:
        trained = trained[trained["retrain_of"].isna()]
    return trained["arch"].nunique()


def _print_kd_effect(seeds: int, args: argparse.Namespace, runs: dict) -> None:
    import pandas as pd

    sizes = [int(size) for size in args.sizes.split(",")]
    effect = kd_effect(pd.concat([runs["random", s].frame for s in range(seeds)]), sizes)
    print(
        "\n== what distillation is worth by size, fitted to random search's trials (an unbiased sample of the joint "
        "space): val accuracy ~ log params + a + a^2 + a log params + log T, a = alpha averaged over training "
        "(decay applied); fitted value [95% bootstrap interval]"
    )
    if effect is None:
        print("too few finished trials to fit")
        return
    print(f"{effect.trials} trials")
    print(f"{'params':>9}  {'best a':>18}  {'its gain (points)':>24}  {'gain of a = 0.9, no decay (points)':>34}")

    def cell(value: tuple[float, float, float], scale: float, sign: str) -> str:
        return f"{scale * value[0]:{sign}.2f} [{scale * value[1]:{sign}.2f}, {scale * value[2]:{sign}.2f}]"

    for size in effect.sizes:
        print(
            f"{size.params:>9,}  {cell(size.best_alpha, 1, ''):>18}  {cell(size.best_gain, 100, '+'):>24}  "
            f"{cell(size.usual_gain, 100, '+'):>34}"
        )
    print(f"doubling T: {cell(effect.per_temperature_doubling, 100, '+')} points")


def _write_figure(path: Path, methods: list[str], seeds: int, curves: dict, study: str) -> None:
    """Hypervolume against compute, mean and 95% band over seeds per method, in one self-contained page."""
    import plotly.graph_objects as go
    from plotly.colors import hex_to_rgb, qualitative
    from plotly.offline import get_plotlyjs

    divs = []
    for cost, title, name in (("params", "parameters", "fig-params"), ("latency_ms", "latency", "fig-latency")):
        figure = go.Figure()
        means = []
        for colour, method in zip(itertools.cycle(qualitative.Plotly), methods):
            runs = [curves[method, s] for s in range(seeds)]
            # From the compute where every seed has a trial on: before it, the mean would mix in zeros.
            start = max(run["compute"][0] for run in runs)
            grid = sorted({c for run in runs for c in run["compute"] if c >= start})
            bands = [mean_interval([_value_at(run["compute"], run[cost], x) for run in runs]) for x in grid]
            x = [c / 1e12 for c in grid]
            step = {"x": x, "mode": "lines", "line_shape": "hv", "legendgroup": method}
            # The band: its upper edge, then its lower edge filled up to it ("tonexty"), both as steps like the
            # mean, in the method's colour, so a click on the legend hides a method's band with its line. A
            # hypervolume lies in [0, 1]: the band (Student's t, wide over few seeds) is clipped to it.
            edge = {**step, "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"}
            figure.add_trace(go.Scatter(**edge, y=[min(m + h, 1.0) for m, h in bands]))
            lower = [max(m - h, 0.0) for m, h in bands]
            # Faint, so that five overlapping bands stay readable.
            red, green, blue = hex_to_rgb(colour)
            faint = f"rgba({red}, {green}, {blue}, 0.15)"
            figure.add_trace(go.Scatter(**edge, y=lower, fill="tonexty", fillcolor=faint))
            mean = [m for m, _ in bands]
            means += mean
            figure.add_trace(go.Scatter(**step, y=mean, name=METHODS[method], line={"color": colour}))
        # The axis spans the means, not the bands, which would flatten the curves on few seeds.
        pad = max(0.05 * (max(means) - min(means)), 0.005)
        figure.update_yaxes(range=[min(means) - pad, max(means) + pad])
        seeds_words = f"{seeds} seed{'s' if seeds > 1 else ''}"
        figure.update_layout(
            title=f"{study}: hypervolume of (accuracy, {title}) against training compute, mean and 95% band "
            f"over {seeds_words}",
            xaxis_title="training compute (TFLOP)",
            yaxis_title="hypervolume",
            template="plotly_white",
            # Below the plot, so the curves get the page's width (the five names are long).
            legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0},
            height=560,
        )
        divs.append(figure.to_html(full_html=False, include_plotlyjs=False, div_id=name))
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdnas methods: {study}</title>"
        f"<script>{get_plotlyjs()}</script></head><body>{''.join(divs)}</body></html>"
    )
    write_text(path, page)
    print(f"\nfigure: {path}")


def _value_at(compute: list[float], values: list[float], x: float) -> float:
    """A step curve's value at compute ``x`` (0 before its first point)."""
    found = 0.0
    for c, v in zip(compute, values, strict=True):
        if c > x:
            break
        found = v
    return found


if __name__ == "__main__":
    setup_logging(verbose=False, quiet=False)  # figures on stdout, progress on stderr
    main()
