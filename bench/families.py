"""Which student family gives the better accuracy-vs-latency front on the same data, teacher and trial budget?

    python bench/families.py                       # fashion (resnet) against fashion-mbconv, 12,000 images, 20 trials
    python bench/families.py --studies fashion,fashion-mbconv --limit-train 12000 --trials 20 --seeds 2
    python bench/families.py --tiny                # seconds: checks that the script runs

Every study is searched with the same training images, trial budget and seed, into one run folder (one
teacher and one soft-target cache for all, since the studies must differ only in their `[student]` section),
and every candidate is timed on one runtime (`--runtime`, default `onnxruntime`: the graph that ships). Runs
are kept in `--out`: a later invocation reads finished studies again and trains only what is missing.

Printed (never asserted): per study and seed, the trials, early stops, training compute and the hypervolume
of accuracy against latency (one reference for all studies, printed) and against parameters; each study's
accuracy-vs-latency front; and the best validation accuracy of each study within latency budgets (every
front point of every study is a budget), the comparison a user choosing a family needs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import tomllib
from pathlib import Path

import torch
from _runs import compute_curve, fewer_training_images, search  # bench/ is scripts, not a package

from kdnas.cli import setup_logging
from kdnas.config import StudyConfig, load_study, resolve_study_path, study_from_dict
from kdnas.data import load_data
from kdnas.results import hypervolume_2d, pareto_front, trials_frame
from kdnas.status import TrialStatus

# --tiny: the smoke study against itself with the smallest MobileNet-style students (2 in all: the
# activation is their only choice, so timing the space takes seconds).
TINY_MBCONV = {"family": "mbconv", "width_mult": 0.5, "depth": 1, "expand": 3.0, "kernel": 3, "se": False}


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    studies = _studies(args)
    print(
        f"kdnas families bench: torch {torch.__version__}, {args.threads} threads; "
        f"{', '.join(f'{c.name!r} ({c.student.family})' for c in studies)}; {studies[0].budget.trials} trials, "
        f"{_train_images(studies[0])} training images; latency on {studies[0].latency.runtime}, "
        f"batch {studies[0].latency.batch_size}, {studies[0].latency.threads} thread(s)"
    )
    with _run_folder(args) as folder:
        run_dir = Path(folder)
        run_dir.mkdir(parents=True, exist_ok=True)
        frames = {
            (cfg.name, seed): trials_frame(
                search(dataclasses.replace(cfg, seed=seed), run_dir, run_dir / f"{cfg.name}-{seed}.db", args.data_dir)
            )
            for seed in range(args.seeds)
            for cfg in studies
        }
    report(studies, frames, args.seeds, len(load_data(studies[0].data, args.data_dir, download=False).train))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default="fashion,fashion-mbconv", help="comma-separated studies to compare")
    parser.add_argument("--limit-train", type=int, default=12_000, help="training images (0: the studies' own)")
    parser.add_argument("--trials", type=int, default=20, help="trials of every study and seed")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of every study")
    parser.add_argument("--runtime", default="onnxruntime", help="the latency runtime every study is timed on")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for training")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="smoke against smoke with mbconv students, 2 trials")
    return parser.parse_args()


def _studies(args: argparse.Namespace) -> list[StudyConfig]:
    """The studies to compare, on the bench's images, budget and runtime; refused unless they differ only in
    their students (a different teacher or recipe would make the fronts incomparable)."""
    if args.tiny:
        table = tomllib.loads(resolve_study_path("smoke").read_text())
        studies = [load_study("smoke"), study_from_dict({**table, "name": "smoke-mbconv", "student": TINY_MBCONV})]
        args.limit_train, args.trials = 1000, 2
    else:
        studies = [load_study(name) for name in args.studies.split(",")]
    studies = [
        dataclasses.replace(
            cfg,
            data=fewer_training_images(cfg.data, args.limit_train),
            latency=dataclasses.replace(cfg.latency, runtime=args.runtime),
            budget=dataclasses.replace(cfg.budget, trials=args.trials, timeout_min=None),
        )
        for cfg in studies
    ]
    first = studies[0]
    for cfg in studies[1:]:
        for section in (f.name for f in dataclasses.fields(StudyConfig)):
            if section not in ("name", "student") and getattr(cfg, section) != getattr(first, section):
                raise SystemExit(
                    f"error: {cfg.name!r} and {first.name!r} differ in [{section}]: the bench compares studies that "
                    "differ only in [student]"
                )
    return studies


def _run_folder(args: argparse.Namespace):
    if args.out is None:
        return tempfile.TemporaryDirectory(prefix="kdnas-families-")
    return contextlib.nullcontext(args.out)


def _train_images(cfg: StudyConfig) -> str:
    return f"{cfg.data.limit_train:,}" if cfg.data.limit_train else "all"


def report(studies: list[StudyConfig], frames: dict, seeds: int, train_images: int) -> None:
    """Print the summary per study and seed, each study's latency front, and the accuracy within budgets."""
    complete = {key: df[df["status"] == TrialStatus.COMPLETE] for key, df in frames.items()}
    slowest = max(df["latency_ms"].max() for df in complete.values())
    reference_ms = 1.1 * slowest
    print(
        f"\n== summary: hypervolume of (validation accuracy, latency) with reference 0% at {reference_ms:.3f} ms "
        f"(10% above the slowest trained student), and of (accuracy, parameters) as the report draws it"
    )
    print(
        f"{'study':<16} {'seed':>4} {'trials':>6} {'stopped':>7} {'TFLOP':>8} {'train s':>8} {'HV latency':>10} "
        f"{'HV params':>9} {'best acc':>8}"
    )
    for cfg in studies:
        for seed in range(seeds):
            df, done = frames[cfg.name, seed], complete[cfg.name, seed]
            cost, hv_params = compute_curve(df, cfg, train_images)
            points = [
                (1 - a, ms / reference_ms) for a, ms in zip(done["val_accuracy"], done["latency_ms"], strict=True)
            ]
            print(
                f"{cfg.name:<16} {seed:>4} {len(df):>6} {(df['status'] == TrialStatus.STOPPED).sum():>7} "
                f"{cost[-1] / 1e12:8.2f} {df['train_seconds'].sum():8.0f} {hypervolume_2d(points, (1.0, 1.0)):10.4f} "
                f"{hv_params[-1]:9.4f} {100 * done['val_accuracy'].max():7.2f}%"
            )
    fronts = {key: pareto_front(done, "latency_ms") for key, done in complete.items()}
    for (name, seed), front in fronts.items():
        print(f"\n== accuracy-vs-latency front of {name!r}, seed {seed}")
        print(f"{'latency ms':>10} {'params':>9} {'MACs':>11} {'val acc':>8}  architecture")
        for row in front.itertuples():
            accuracy = 100 * row.val_accuracy
            print(f"{row.latency_ms:10.3f} {row.params:9,.0f} {row.macs:11,.0f} {accuracy:7.2f}%  {row.arch}")
    budgets = sorted({ms for front in fronts.values() for ms in front["latency_ms"]})
    print("\n== best validation accuracy within a latency budget (each budget the latency of a front point)")
    print(f"{'<= ms':>8} " + " ".join(f"{f'{name} s{seed}':>18}" for name, seed in fronts))
    for budget in budgets:
        cells = []
        for key in fronts:
            within = complete[key][complete[key]["latency_ms"] <= budget]["val_accuracy"]
            cells.append(f"{100 * within.max():17.2f}%" if len(within) else f"{'-':>18}")
        print(f"{budget:8.3f} " + " ".join(cells))


if __name__ == "__main__":
    setup_logging(verbose=False, quiet=False)  # figures on stdout, progress (one line per trial) on stderr
    main()
