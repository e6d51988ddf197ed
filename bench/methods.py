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
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import _unfinished as unfinished  # bench/ is scripts, not a package
import torch
from _figures import report
from _runs import (
    compute_curve,
    fewer_training_images,
    finished_study,
    search,
    stored_study,
    train_teacher,
    training_flops,
)

from kdnas.cli import setup_logging
from kdnas.config import EarlyStopConfig, KDSpace, StudyConfig, dataclass_from_dict, load_study
from kdnas.distill import KDSpec
from kdnas.files import write_json
from kdnas.progress import duration
from kdnas.results import KD_PARAMS, hypervolume_reference, pareto_front, trials_frame
from kdnas.status import TrialStatus
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
    labels = {method: METHODS[method] for method in methods}
    report(runs, labels, args.sizes.split(","), settings["retrain_epochs"], args.out / "methods.html", base.name)


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


if __name__ == "__main__":
    setup_logging(verbose=False, quiet=False)  # figures on stdout, progress on stderr
    main()
