"""Start-up designs of the sampler compared in seconds, on a surrogate fitted to a regime's recorded trials.

    python bench/startup.py --record docs/bench-methods/cifar-weak --study cifar-cpu --seeds 30

Real comparisons cost hours a seed (bench/methods.py), too many to try every sampler setting. This fits
validation accuracy to the trials that bench/methods.py recorded for a regime (every method's finished trials):

    accuracy ~ network (one level per architecture) + seed + a + a^2 + a * log(params) + a * log(T)

(``a``: alpha averaged over training, its decay applied), then runs each design on that surrogate with the
noise of a validation figure added: its real start-up queue (``kdnas.study.open_study``), its real sampler,
and every method given random search's compute (training MACs of 20 random trials) on each simulated seed.
No early stopping: the surrogate has no learning curves. What it prints: the fit, then per design the mean
and 95% interval over seeds of the final hypervolume of (accuracy, parameters), the true (noise-free)
accuracy of the student it hands over within 25k, 50k and 100k parameters, its trials and distinct
networks; then each design minus the shipped start-up (pairs), paired by simulated seed. ``--kd-scale``
multiplies what distillation is worth, to ask how a design fares where it pays less, or hurts (negative);
``--startup-trials`` gives the TPE designs another start-up length than the study's.

A surrogate is a model of the regime, not the regime: it ranks designs for a real run to confirm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from _figures import with_interval
from _kd_effect import mean_alpha
from methods import method_study

from kdnas.config import StudyConfig, load_study
from kdnas.data import DATASETS
from kdnas.results import KD_PARAMS, hypervolume_2d
from kdnas.space import suggest
from kdnas.study import NO_KD, USUAL_KD, open_study

SIZES = (25_000, 50_000, 100_000)
SHIPPED = "tpe-pairs"  # the start-up design kdnas ships, which the others are compared with
USED_UP = 50  # proposals in a row that repeat a trained candidate: the space is used up
DESIGNS = {
    "random": "random search",
    "tpe-random": 'TPE, start-up drawn at random (startup = "random")',
    "tpe-pairs": 'TPE, start-up in pairs without / with the usual recipe (startup = "pairs")',
    "tpe-usual": 'TPE, start-up networks with the usual recipe (startup = "usual")',
    "fixed-kd": "TPE over architectures, KD fixed at T 4, alpha 0.9",
}


@dataclasses.dataclass(frozen=True)
class Surrogate:
    networks: pd.DataFrame  # per architecture: params, macs, latency_ms, base (accuracy without distillation)
    reference: float  # the hypervolume's reference in parameters, the records' own
    kd: np.ndarray  # coefficients of a, a^2, a * (log params - mean), a * log T
    mean_log_params: float
    residual_sd: float
    trials: int
    imputed: int  # networks without a finished trial, their base from a line in log params

    def accuracy(self, arch: str, temperature: float, alpha: float, alpha_decay: str, decay_rate: float) -> float:
        a = mean_alpha(temperature, alpha, alpha_decay, decay_rate)
        centred = math.log(self.networks.at[arch, "params"]) - self.mean_log_params
        return float(self.networks.at[arch, "base"] + self.kd @ [a, a * a, a * centred, a * math.log(temperature)])


def fit(record: Path) -> Surrogate:
    """Least squares on every finished trial of the records in ``record`` (a bench/methods.py --record folder)."""
    frames = []
    for path in sorted(record.glob("*-[0-9]*.json")):
        run = json.loads(path.read_text())
        frame = pd.DataFrame(run["frame"]).assign(method=run["method"], seed=run["seed"])
        # Methods that fix the KD settings store none: (d) and (c)'s distilled students used the usual recipe,
        # (c)'s search none.
        fixed = frame["temperature"].isna()
        retrained = frame["retrain_of"].notna() if "retrain_of" in frame else False
        usual = fixed & (retrained | (run["method"] == "fixed-kd"))
        for settings, rows in ((USUAL_KD, usual), (NO_KD, fixed & ~usual)):
            for key, value in {**settings, "decay_rate": 1.0}.items():
                frame[key] = frame[key].astype(object).where(~rows, value)
        frames.append(frame)
    if not frames:
        raise SystemExit(f"error: {record} holds no records of bench/methods.py; pass its --record folder")
    every = pd.concat(frames, ignore_index=True)
    done = every[every["status"].eq("complete") & every["val_accuracy"].notna()]
    a = np.array([mean_alpha(*row) for row in done[list(KD_PARAMS)].itertuples(False)])
    log_params = np.log(done["params"].to_numpy(float))
    mean_log_params = float(log_params.mean())
    archs = sorted(done["arch"].unique())
    seeds = sorted(done["seed"].unique())
    design = np.column_stack(
        [done["arch"].to_numpy(object) == arch for arch in archs]
        + [(done["seed"] == seed).to_numpy() for seed in seeds[1:]]  # seed 0 is the baseline
        + [a, a * a, a * (log_params - mean_log_params), a * np.log(done["temperature"].to_numpy(float))]
    ).astype(float)
    accuracy = done["val_accuracy"].to_numpy(float)
    coef, *_ = np.linalg.lstsq(design, accuracy, rcond=None)
    residual = accuracy - design @ coef
    # Every network a search trained, also one that was only ever stopped early (a search may propose it again):
    # without a finished trial its base comes from a line in log params through the others'.
    trained = every[every["status"].isin(["complete", "stopped"])]
    networks = trained.groupby("arch")[["params", "macs", "latency_ms"]].mean()
    base = pd.Series(coef[: len(archs)], index=archs)
    slope, intercept = np.polyfit(np.log(networks.loc[archs, "params"].to_numpy(float)), base.to_numpy(), 1)
    networks["base"] = base.reindex(networks.index).fillna(intercept + slope * np.log(networks["params"]))
    sd = math.sqrt(float(residual @ residual) / max(1, len(done) - design.shape[1]))
    reference = float(run["references"]["params"])  # the same in every record of a folder
    return Surrogate(networks, reference, coef[-4:], mean_log_params, sd, len(done), len(networks) - len(archs))


def simulate(
    design: str,
    seed: int,
    base: StudyConfig,
    surrogate: Surrogate,
    noise: float,
    budget: float | None,
    startup_trials: int | None = None,
):
    """One simulated search; ``budget`` None: random search's 20 trials, whose MACs become the others' budget;
    ``startup_trials`` None: the study's."""
    method = {"random": "random", "fixed-kd": "fixed-kd"}.get(design, "kdnas")
    cfg = method_study(base, method, seed)
    if design.startswith("tpe-"):
        sampler = dataclasses.replace(cfg.sampler, startup=design[4:])
        if startup_trials is not None:
            sampler = dataclasses.replace(sampler, startup_trials=startup_trials)
        cfg = dataclasses.replace(cfg, sampler=sampler)
    info = DATASETS.get(cfg.data.dataset)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        study = open_study(cfg, f"sqlite:///{folder}/study.db", info)
        seen: dict[str, list[float]] = {}
        rows, spent, repeats = [], 0.0, 0
        # As in a search: a candidate already trained reuses its result at no cost; a space can be used up.
        while repeats < USED_UP and (spent < budget if budget else len(rows) < cfg.budget.trials):
            trial = study.ask()
            arch, kd = suggest(trial, cfg, info.in_channels, info.num_classes, info.image_size)
            name, key = arch.describe(), str(trial.params)
            if key in seen:
                study.tell(trial, seen[key])
                repeats += 1
                continue
            repeats = 0
            true = surrogate.accuracy(name, kd.temperature, kd.alpha, kd.alpha_decay, kd.decay_rate)
            network = surrogate.networks.loc[name]
            seen[key] = [true + rng.normal(0, noise), float(network["params"]), float(network["latency_ms"])]
            study.tell(trial, seen[key])
            rows.append((seen[key][0], seen[key][1], true))
            spent += float(network["macs"]) * cfg.train.epochs
    return rows, spent


def summary(rows: list[tuple[float, float, float]], reference: float) -> dict[str, float]:
    """Hypervolume of (observed accuracy, params); each size's handed-over student (best observed) by true accuracy."""
    out = {"hv": hypervolume_2d([(params / reference, -acc) for acc, params, _ in rows], (1.0, 0.0))}
    for size in SIZES:
        inside = [row for row in rows if row[1] <= size]
        out[size] = max(inside)[2] if inside else math.nan
    out["trials"], out["networks"] = len(rows), len({params for _, params, _ in rows})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True, help="a bench/methods.py --record folder")
    parser.add_argument("--study", default="cifar-cpu", help="the study those records searched")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.012, help="sd of a validation figure (0.012: 1.2 points)")
    parser.add_argument("--startup-trials", type=int, help="the TPE designs' start-up trials (default: the study's)")
    parser.add_argument(
        "--designs", default=",".join(list(DESIGNS)[1:]), help="comma-separated designs besides random search"
    )
    parser.add_argument("--kd-scale", default="1", help="comma-separated factors on what distillation is worth")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)  # trials asked and told, not optimize()
    designs = [design for design in args.designs.split(",") if design != "random"]  # random search runs anyway
    unknown = sorted(set(designs) - set(DESIGNS))
    if unknown:
        raise SystemExit(f"error: unknown design(s) {', '.join(unknown)}; known: {', '.join(DESIGNS)}")
    surrogate = fit(args.record)
    base = load_study(args.study)
    print(
        f"surrogate: {surrogate.trials} finished trials of {len(surrogate.networks)} networks in {args.record}"
        f"{f' ({surrogate.imputed} only stopped early: base from a line in log params)' if surrogate.imputed else ''}; "
        f"residual sd {100 * surrogate.residual_sd:.2f} points; a, a^2, a*log params, a*log T: "
        + ", ".join(f"{c:+.4f}" for c in surrogate.kd)
    )
    for scale in (float(s) for s in args.kd_scale.split(",")):
        scaled = dataclasses.replace(surrogate, kd=scale * surrogate.kd)
        results = {"random": [], **{design: [] for design in designs}}
        for seed in range(args.seeds):
            rows, budget = simulate("random", seed, base, scaled, args.noise, None)
            results["random"].append(summary(rows, surrogate.reference))
            for design in designs:
                rows, _ = simulate(design, seed, base, scaled, args.noise, budget, args.startup_trials)
                results[design].append(summary(rows, surrogate.reference))
        print(
            f"\n== what distillation is worth x {scale:g}; {args.seeds} simulated seeds, random search's compute "
            f"each; mean +- 95% interval; test accuracy: the handed-over student's true accuracy"
        )
        print(
            f"{'design':<11} {'HV params':>17} " + " ".join(f"{f'<= {s:,}':>15}" for s in SIZES) + "  trials networks"
        )
        for design, runs in results.items():
            cells = [with_interval([r[s] for r in runs if not math.isnan(r[s])], "6.2f", 100) for s in SIZES]
            print(
                f"{design:<11} {with_interval([r['hv'] for r in runs], '.4f'):>17} "
                + " ".join(f"{c:>15}" for c in cells)
                + f"  {np.mean([r['trials'] for r in runs]):6.1f} {np.mean([r['networks'] for r in runs]):8.1f}"
            )
        if SHIPPED in results:
            _print_paired(results)


def _print_paired(results: dict[str, list[dict[str, float]]]) -> None:
    """Each design minus the shipped start-up, seed by seed: the designs of a simulated seed share its noise
    draws' seed and random search's budget, so the paired interval is the one that says whether they differ."""
    print(f"-- each design minus {SHIPPED} (shipped), paired by simulated seed (seeds ahead / seeds compared)")
    for design, runs in results.items():
        if design == SHIPPED:
            continue
        cells = []
        for key, spec, scale in (("hv", "+.4f", 1), *((size, "+.2f", 100) for size in SIZES)):
            pairs = [(run[key], base[key]) for run, base in zip(runs, results[SHIPPED], strict=True)]
            differences = [a - b for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
            ahead = sum(difference > 0 for difference in differences)
            cells.append(f"{with_interval(differences, spec, scale)} ({ahead}/{len(differences)})")
        print(f"{design:<11} {cells[0]:>25} " + " ".join(f"{cell:>21}" for cell in cells[1:]))


if __name__ == "__main__":
    main()
