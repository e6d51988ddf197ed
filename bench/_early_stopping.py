"""bench/speed.py's early-stopping section: the study searched with and without its early stopping, and the
run without replayed under the rule (as it is, told every trial's end, and the bound no rule that keeps the
front can beat)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import tempfile
from pathlib import Path

from _runs import compute_curve, fewer_training_images, first_reach, search  # bench/ is scripts, not a package

from kdnas.config import EarlyStopConfig, StudyConfig
from kdnas.data import load_data
from kdnas.pruning import Curve, EarlyStopper
from kdnas.results import trials_frame


def replay_early_stopping(study, stopper: EarlyStopper | Clairvoyant):
    """The trials frame of a study run without early stopping, as if ``stopper`` had judged each trial
    after each epoch against the trials before it (one worker): the same candidates, so the figure is
    the rule's own saving, free of the sampler's different path through a study that really stops."""
    df = trials_frame(study).set_index("trial")
    judged: list[Curve] = []
    for t in sorted(study.trials, key=lambda t: t.number):
        full = t.user_attrs.get("val_curve")
        if df.at[t.number, "status"] not in ("complete", "duplicate") or not full:
            continue
        duplicate = df.at[t.number, "status"] == "duplicate"
        curve = []
        for accuracy in full:
            curve.append(accuracy)
            me = Curve(t.number, t.user_attrs["params"], t.user_attrs["latency_ms"], tuple(curve), False)
            if stopper.reason_to_stop(me, judged) is not None:
                trained = 0 if duplicate else len(curve)  # a duplicate trains nothing
                df.loc[t.number, ["status", "val_accuracy", "epochs"]] = ["stopped", accuracy, trained]
                break
        if not duplicate:  # its twin's curve is judged already (as in the search)
            judged.append(Curve(t.number, me.params, me.latency_ms, tuple(curve), True))
    return df.reset_index()


class Clairvoyant:
    """The issue's rule told every trial's final accuracy: after ``min_epochs`` it stops exactly the trials
    that will end more than the margin behind a complete trial (finished before them) that is no larger
    and no slower. A real rule must guess where a trial ends; a rule that stops only trials really beaten
    by the margin cannot do better than this one, which never guesses wrong and always stops at once."""

    def __init__(self, stopper: EarlyStopper, study) -> None:
        self.stopper = stopper
        self.finals = {t.number: t.user_attrs["val_curve"][-1] for t in study.trials if t.user_attrs.get("val_curve")}

    def reason_to_stop(self, me: Curve, others: list[Curve]) -> str | None:
        rule, final = self.stopper, self.finals[me.number]
        if len(me.val_accuracy) != rule.cfg.min_epochs or rule.cfg.min_epochs >= rule.epochs:
            return None
        for other in others:
            if rule.complete(other) and rule.no_larger(other, me) and other.val_accuracy[-1] - final > rule.cfg.margin:
                return f"ends {100 * final:.2f}%, trial {other.number} ended {100 * other.val_accuracy[-1]:.2f}%"
        return None


def stopped_in_hindsight(df, min_epochs: int):
    """A trials frame as if every trial that ends off the (accuracy, parameters) front had stopped after
    ``min_epochs``: the least compute a rule that never stops a front trial could spend on these trials."""
    df = df.copy()
    off_front = (df["status"] == "complete") & ~df["front_params"].astype(bool)
    df.loc[off_front, "epochs"] = df.loc[off_front, "epochs"].clip(upper=min_epochs)
    df.loc[off_front, "status"] = "stopped"
    return df


def _reached(df, cfg: StudyConfig, train_images: int, target: float) -> tuple[float | None, float]:
    """The compute at which the trials frame ``df`` first reached hypervolume ``target`` (or None), and
    its own final hypervolume."""
    cost, hv = compute_curve(df, cfg, train_images)
    return first_reach(cost, hv, target), hv[-1]


def early_stopping(cfg: StudyConfig, args: argparse.Namespace) -> None:
    """Per seed: the study without early stopping, then with it, grown by a quarter of the trials at a
    time until it reaches the first run's final hypervolume, spends as much compute, or holds
    ``es_extra`` x the trials; and the first run replayed with the rule applied in hindsight."""
    policy = cfg.early_stop if cfg.early_stop.policy != "none" else EarlyStopConfig(policy="pareto")
    overrides = {
        "policy": args.es_policy,
        "sigmas": args.es_sigmas,
        "margin": args.es_margin,
        "min_epochs": args.es_min_epochs,
    }
    policy = dataclasses.replace(policy, **{k: v for k, v in overrides.items() if v is not None})
    data_cfg = cfg.data
    if args.es_limit_train:
        data_cfg = fewer_training_images(cfg.data, args.es_limit_train)
    trials = args.es_trials or cfg.budget.trials
    base = dataclasses.replace(
        cfg, data=data_cfg, budget=dataclasses.replace(cfg.budget, trials=trials, timeout_min=None)
    )
    data = load_data(data_cfg, args.data_dir, download=False)
    train_images = len(data.train)
    stopper = EarlyStopper(policy, cfg.objectives.metrics, cfg.train.epochs, len(data.val))
    print(
        f"\n== early stopping: {cfg.name!r}, {train_images:,} training images, {trials} trials without early "
        f"stopping, up to {math.ceil(trials * args.es_extra)} with it ({policy.policy}, margin {policy.margin}, "
        f"sigmas {policy.sigmas}, min_epochs {policy.min_epochs}), {args.es_seeds} seeds; compute in TFLOP; "
        "'replayed': the trials of the run without, judged by the rule after each epoch; 'clairvoyant': "
        "judged by the rule told each trial's final accuracy (stopped after min_epochs when it will end more than "
        "the margin behind a complete, no larger, no slower trial); 'bound': those trials with every one that "
        "ends off the front stopped after min_epochs (no rule that keeps the front can spend less on them)"
    )
    print(
        f"{'seed':>4}  {'no ES: TFLOP':>12} {'final HV':>9} {'reached at':>10}  {'ES: TFLOP':>9} {'trials':>6} "
        f"{'stopped':>7} {'final HV':>9}  {'ES TFLOP to reach no-ES HV':>27}  {'replayed: stopped':>17} "
        f"{'final HV':>9} {'TFLOP to reach it':>23}  {'clairvoyant: TFLOP to reach it':>30}  "
        f"{'bound: TFLOP to reach it':>24}",
        flush=True,
    )
    # Per figure, the share of the run without early stopping each seed needed to reach its hypervolume.
    fractions: dict[str, list[float]] = {"": [], "replayed, ": [], "clairvoyant, ": [], "bound, ": []}
    runs = contextlib.nullcontext(args.es_dir) if args.es_dir else tempfile.TemporaryDirectory()
    with runs as folder:
        run_dir = Path(folder)  # one teacher and soft-target cache for every run
        run_dir.mkdir(parents=True, exist_ok=True)
        for seed in range(args.es_seeds):
            plain = dataclasses.replace(base, seed=seed, early_stop=EarlyStopConfig(policy="none"))
            plain_study = search(plain, run_dir, run_dir / f"none-{seed}.db", args.data_dir)
            plain_trials = trials_frame(plain_study)
            cost0, hv0 = compute_curve(plain_trials, base, train_images)
            if args.es_replay_only:
                live, reach = "-", None
            else:
                study, cost1, hv1, reach = _grow_until_reached(
                    dataclasses.replace(base, seed=seed, early_stop=policy),
                    run_dir,
                    args,
                    train_images,
                    cost0[-1],
                    hv0[-1],
                )
                stopped = sum(1 for t in study.trials if t.user_attrs.get("status") == "stopped")
                live = f"{cost1[-1] / 1e12:9.3f} {len(study.trials):>6} {stopped:>7} {hv1[-1]:9.5f}"
            own = first_reach(cost0, hv0, hv0[-1])  # the no-ES run may have had its final front early
            replayed = replay_early_stopping(plain_study, stopper)
            reach2, hv2 = _reached(replayed, base, train_images, hv0[-1])
            reach3, _ = _reached(stopped_in_hindsight(plain_trials, policy.min_epochs), base, train_images, hv0[-1])
            foreseen = replay_early_stopping(plain_study, Clairvoyant(stopper, plain_study))
            reach4, _ = _reached(foreseen, base, train_images, hv0[-1])
            for what, found in zip(fractions, (reach, reach2, reach4, reach3), strict=True):
                if found is not None:
                    fractions[what].append(found / cost0[-1])
            print(
                f"{seed:>4}  {cost0[-1] / 1e12:12.3f} {hv0[-1]:9.5f} {own / 1e12:10.3f}  {live:>34}  "
                f"{_share(reach, cost0[-1]) if live != '-' else '-':>27}  "
                f"{(replayed['status'] == 'stopped').sum():>17} {hv2:9.5f} {_share(reach2, cost0[-1]):>23}  "
                f"{_share(reach4, cost0[-1]):>30}  {_share(reach3, cost0[-1]):>24}",
                flush=True,
            )
    for what, kept in fractions.items():
        if kept:
            print(
                f"{what}compute to reach the no-early-stopping hypervolume: mean {100 * sum(kept) / len(kept):.1f}% "
                f"of the run without ({len(kept)} of {args.es_seeds} seeds reached it)"
            )


def _grow_until_reached(
    cfg: StudyConfig, run_dir: Path, args: argparse.Namespace, train_images: int, cost0: float, hv0: float
):
    """The study ``cfg`` (with early stopping) searched, then resumed with a quarter of its trials more
    at a time, until it reaches hypervolume ``hv0``, spends ``cost0`` or holds ``es_extra`` x its trials;
    the study, its compute and hypervolume curves, and the compute at which it reached ``hv0`` (or None)."""
    trials, budget = cfg.budget.trials, cfg.budget.trials
    while True:  # the same study, resumed with a larger budget: the same trials, then more
        grown = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, trials=budget))
        study = search(grown, run_dir, run_dir / f"es-{cfg.seed}.db", args.data_dir)
        cost, hv = compute_curve(trials_frame(study), cfg, train_images)
        reach = first_reach(cost, hv, hv0)
        if reach is not None or cost[-1] >= cost0 or budget >= trials * args.es_extra:
            return study, cost, hv, reach
        budget = min(math.ceil(trials * args.es_extra), budget + max(1, trials // 4))


def _share(reach: float | None, total: float) -> str:
    """``reach`` TFLOP and its share of ``total``, or that it was never reached."""
    return f"{reach / 1e12:9.3f} = {100 * reach / total:5.1f}%" if reach is not None else "not reached"
