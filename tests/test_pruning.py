"""Early stopping for multi-objective studies: the rules on hand-made curves, then inside a real search."""

from __future__ import annotations

import optuna
import pytest
from _smoke import edited_smoke

from kdnas.config import EarlyStopConfig
from kdnas.pruning import EARLY_STOP_POLICIES, Curve, EarlyStopper, pareto_ranks, rung_epochs

METRICS = ("val_accuracy", "params", "latency_ms")


def _curve(number: int, params: float, latency: float, *accuracy: float, finished: bool = True) -> Curve:
    return Curve(number, params, latency, tuple(accuracy), finished)


VAL_IMAGES = 6_000


def _stopper(policy: str = "pareto", epochs: int = 4, val_images: int = VAL_IMAGES, **kw) -> EarlyStopper:
    return EarlyStopper(EarlyStopConfig(policy=policy, **kw), METRICS, epochs, val_images)


def test_pareto_stops_a_trial_beaten_by_a_smaller_faster_one_at_the_same_epoch() -> None:
    me = _curve(9, 50_000, 1.0, 0.80, finished=False)
    leader = _curve(1, 40_000, 0.9, 0.85, 0.88, 0.90, 0.91)
    reason = _stopper().reason_to_stop(me, [leader])
    assert reason is not None and "trial 1" in reason and "85.00%" in reason and "80.00%" in reason


@pytest.mark.parametrize(
    "other",
    [
        _curve(1, 60_000, 0.9, 0.85, 0.9, 0.9, 0.9),  # larger
        _curve(1, 40_000, 1.1, 0.85, 0.9, 0.9, 0.9),  # slower
        _curve(1, 40_000, 0.9, 0.805, 0.9, 0.9, 0.9),  # ahead by less than the margin
        _curve(1, 40_000, 0.9, 0.85, finished=False),  # still training: not evidence yet
    ],
    ids=["larger", "slower", "within-margin", "running"],
)
def test_pareto_keeps_a_trial_no_finished_trial_dominates(other: Curve) -> None:
    me = _curve(9, 50_000, 1.0, 0.80, finished=False)
    assert _stopper().reason_to_stop(me, [other]) is None


def test_pareto_needs_a_lead_beyond_the_validation_noise() -> None:
    # 3 points at ~50% accuracy: 3.3 standard errors on 6,000 validation images, 0.95 on 500.
    me, leader = _curve(9, 50_000, 1.0, 0.50, finished=False), _curve(1, 40_000, 0.9, 0.53, 0.9, 0.9, 0.9)
    assert _stopper().reason_to_stop(me, [leader]) is not None
    assert _stopper(val_images=500).reason_to_stop(me, [leader]) is None
    assert _stopper(val_images=500, sigmas=0).reason_to_stop(me, [leader]) is not None  # the margin alone
    # Far from 50% the noise is smaller: 4 points at 93-97% on 500 images are 2.9 standard errors.
    near_top = _curve(9, 50_000, 1.0, 0.93, finished=False), _curve(1, 40_000, 0.9, 0.97, 0.9, 0.9, 0.9)
    assert _stopper(val_images=500).reason_to_stop(near_top[0], [near_top[1]]) is not None


def test_pareto_compares_at_the_same_epoch_not_the_final_one() -> None:
    leader = _curve(1, 40_000, 0.9, 0.70, 0.80, 0.90, 0.95)
    assert _stopper().reason_to_stop(_curve(9, 50_000, 1.0, 0.75, 0.82), [leader]) is None
    assert _stopper().reason_to_stop(_curve(9, 50_000, 1.0, 0.75, 0.82, 0.85), [leader]) is not None


# Five complete trials, smaller, faster and far more accurate than any trial judged against them: enough
# evidence for every policy (forecast needs FORECAST_MIN_TRIALS complete trials, halving a rung at epoch 1).
LEADERS = [_curve(n, 1, 0.1, 0.9, 0.9, 0.9, 0.9) for n in range(5)]


@pytest.mark.parametrize("policy", EARLY_STOP_POLICIES.names())
def test_every_policy_but_none_stops_a_hopeless_trial(policy: str) -> None:
    reason = _stopper(policy).reason_to_stop(_curve(9, 2, 1, 0.1, finished=False), LEADERS)
    assert (reason is None) == (policy == "none")


@pytest.mark.parametrize("policy", EARLY_STOP_POLICIES.names())
def test_no_policy_stops_before_min_epochs_or_after_the_last_epoch(policy: str) -> None:
    assert _stopper(policy, min_epochs=2).reason_to_stop(_curve(9, 2, 1, 0.1), LEADERS) is None
    assert _stopper(policy).reason_to_stop(_curve(9, 2, 1, 0.1, 0.1, 0.1, 0.1), LEADERS) is None  # training is over


def test_latency_is_ignored_when_it_is_not_an_objective() -> None:
    stopper = EarlyStopper(EarlyStopConfig(), ("val_accuracy", "params"), 4, VAL_IMAGES)
    slower_but_smaller = _curve(1, 40_000, 5.0, 0.9, 0.9, 0.9, 0.9)
    assert stopper.reason_to_stop(_curve(9, 50_000, 1.0, 0.8), [slower_but_smaller]) is not None


@pytest.mark.parametrize("cost", ["macs", "size_kb"])
def test_macs_and_size_count_as_size_when_they_are_objectives(cost: str) -> None:
    stopper = EarlyStopper(EarlyStopConfig(), ("val_accuracy", cost), 4, VAL_IMAGES)
    me = Curve(9, 50_000, 1.0, (0.8,), False, macs=2e6, size_kb=200.0)
    cheaper = Curve(1, 90_000, 9.0, (0.9,) * 4, True, macs=1e6, size_kb=100.0)  # larger and slower, cheaper in `cost`
    dearer = Curve(2, 10_000, 0.1, (0.9,) * 4, True, macs=3e6, size_kb=300.0)
    unmeasured = Curve(3, 10_000, 0.1, (0.9,) * 4, True)  # a trial stored without that cost is no evidence
    assert stopper.reason_to_stop(me, [cheaper]) is not None
    assert stopper.reason_to_stop(me, [dearer, unmeasured]) is None


def _complete(gains: list[float], first: float = 0.70) -> list[Curve]:
    """Complete trials, larger than any judged here, that gained ``gains`` from epoch 1 to the end."""
    return [_curve(n, 500_000, 9.0, first, first, first, first + g) for n, g in enumerate(gains)]


def test_forecast_stops_a_trial_whose_forecast_a_smaller_faster_trial_beat_at_the_end() -> None:
    consistent = _complete([0.10, 0.11, 0.09, 0.10])  # +10 points from epoch 1, sd 0.8
    leader = _curve(7, 40_000, 0.9, 0.75, 0.80, 0.83, 0.85)  # 85% at the end, +10 from epoch 1
    me = _curve(9, 50_000, 1.0, 0.70, finished=False)  # forecast 80%: 5 points behind the leader's end
    reason = _stopper("forecast", sigmas=1.0).reason_to_stop(me, [*consistent, leader])
    assert reason is not None and "trial 7" in reason and "85.00%" in reason and "forecast 80.00%" in reason
    # Not by a larger or slower trial, nor by a margin's worth of lead.
    for other in (_curve(7, 60_000, 0.9, 0.75, 0.8, 0.83, 0.85), _curve(7, 40_000, 1.1, 0.75, 0.8, 0.83, 0.85)):
        assert _stopper("forecast", sigmas=1.0).reason_to_stop(me, [*consistent, other]) is None
    assert _stopper("forecast", sigmas=1.0, margin=0.06).reason_to_stop(me, [*consistent, leader]) is None


def test_forecast_waits_out_a_wide_spread_of_gains_and_needs_enough_complete_trials() -> None:
    leader = _curve(7, 40_000, 0.9, 0.75, 0.80, 0.83, 0.85)
    me = _curve(9, 50_000, 1.0, 0.70, finished=False)
    spread = _complete([0.05, 0.15, 0.10, 0.00, 0.20])  # mean +10 again, sd 7.9: a slow starter may catch up
    assert _stopper("forecast", sigmas=1.0).reason_to_stop(me, [*spread, leader]) is None
    assert _stopper("forecast", sigmas=0.5).reason_to_stop(me, [*spread, leader]) is not None
    # Three complete trials (the leader among them) say too little about the spread: nothing stops.
    assert _stopper("forecast", sigmas=1.0).reason_to_stop(me, [*_complete([0.10, 0.10]), leader]) is None
    # Stopped and running trials are no evidence of gains to the end.
    partial = [_curve(n, 500_000, 9.0, 0.7, 0.8, finished=n < 3) for n in range(5)]
    assert _stopper("forecast", sigmas=1.0).reason_to_stop(me, [*_complete([0.1, 0.1]), *partial, leader]) is None


def test_pareto_ranks_peel_fronts() -> None:
    # (minimised) points: two on the front, one behind both, one behind that one.
    assert pareto_ranks([(1, 5), (5, 1), (6, 6), (7, 7)]) == [0, 0, 1, 2]
    assert pareto_ranks([(1, 1), (1, 1)]) == [0, 0]  # equal points do not dominate each other


def test_rung_epochs_grow_by_the_reduction_factor_and_stay_before_the_end() -> None:
    assert rung_epochs(EarlyStopConfig(min_epochs=1, reduction_factor=3), 15) == [1, 3, 9]
    assert rung_epochs(EarlyStopConfig(min_epochs=2, reduction_factor=2), 9) == [2, 4, 8]
    assert rung_epochs(EarlyStopConfig(min_epochs=4), 4) == []


def test_halving_keeps_the_rung_front_and_the_best_third_only() -> None:
    stopper = _stopper("halving", epochs=9, reduction_factor=3)
    # Six trials of equal size reached epoch 1; the judged one is the fourth best: of 7, 2 go on.
    others = [_curve(n, 10, 1, acc) for n, acc in enumerate([0.9, 0.8, 0.7, 0.5, 0.4, 0.3])]
    reason = stopper.reason_to_stop(_curve(9, 10, 1, 0.6, finished=False), others)
    assert reason is not None and "place 4 of 7" in reason and "best 2" in reason
    assert stopper.reason_to_stop(_curve(9, 10, 1, 0.85, finished=False), others) is None  # second
    # The smallest trial is on the rung's front whatever its accuracy.
    assert stopper.reason_to_stop(_curve(9, 1, 0.5, 0.1, finished=False), others) is None


def test_halving_decides_only_at_rungs_and_counts_running_trials() -> None:
    stopper = _stopper("halving", epochs=9, reduction_factor=3)
    others = [_curve(n, 10, 1, 0.9, 0.9, finished=False) for n in range(6)]
    assert stopper.reason_to_stop(_curve(9, 10, 1, 0.1, 0.1, finished=False), others) is None  # epoch 2: no rung
    assert stopper.reason_to_stop(_curve(9, 10, 1, 0.1, finished=False), others) is not None  # epoch 1: rung


@pytest.mark.slow
@pytest.mark.needs("dataset-fashion-mnist")
def test_search_records_stopped_trials_as_pruned_with_their_partial_curve(tmp_path) -> None:
    from kdnas.search import main

    # Which trials stop must not hang on the machine's arithmetic: a teacher that learned nothing
    # (lr 1e-6), one student architecture, alpha either 0 (labels only, ~56% after an epoch) or 1 (imitate
    # the teacher, ~10%), and four random draws whose alphas do not depend on any result: with seed 10
    # they come as 0, 1, 0, 1 (each with its own temperature: a study trains no parameters twice). Each
    # alpha = 1 trial is then beaten after epoch 1 by the finished alpha = 0 trial, as small as itself, far
    # beyond any noise allowance; the alpha = 0 ones never are.
    edits = {
        "seed = 0": "seed = 10",
        'policy = "none"': 'policy = "pareto"',
        "base_width = { low = 4, high = 8, step = 4 }": "base_width = 4",
        "epochs = 2, batch_size = 64, lr = 0.1 }": "epochs = 2, batch_size = 64, lr = 1e-6 }",
        "alpha = { low = 0.0, high = 1.0, step = 0.1 }": "alpha = { low = 0.0, high = 1.0, step = 1.0 }",
        'alpha_decay = ["none", "linear", "cosine", "exponential"]': 'alpha_decay = ["none"]',
        "startup_trials = 3": "startup_trials = 4",
        "\ntrials = 3": "\ntrials = 4",
    }
    objectives = '[objectives]\nmetrics = ["val_accuracy", "params"]\n'
    path = edited_smoke(tmp_path, edits, name="stopping", extra=objectives)
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--no-progress"]) == 0

    study = optuna.load_study(study_name="stopping", storage=f"sqlite:///{out / 'study.db'}")
    trained = [t for t in study.trials if t.user_attrs.get("status") in ("complete", "stopped")]
    assert [t.params["alpha"] for t in trained] == [0.0, 1.0, 0.0, 1.0]  # stopped trials count against the budget
    for trial in trained:
        curve = trial.user_attrs["val_curve"]
        if trial.params["alpha"] == 1.0:
            assert trial.user_attrs["status"] == "stopped" and trial.state == optuna.trial.TrialState.PRUNED
            assert len(curve) == 1 and curve[0] < 0.3
            assert trial.user_attrs["reason"].startswith(f"after epoch 1: trial {trained[0].number} (no larger")
        else:
            assert trial.user_attrs["status"] == "complete" and trial.state == optuna.trial.TrialState.COMPLETE
            assert len(curve) == 2 and curve[0] > 0.4


def test_the_stopper_sees_each_training_once_finished_or_running_and_no_duplicate() -> None:
    from kdnas.objective import trained_curves

    def trial(status: str, state: str, curve: list[float]) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state),
            values=[curve[-1], 1000.0] if state == "COMPLETE" else None,
            user_attrs={"status": status, "params": 1000, "latency_ms": 1.0, "val_curve": curve},
        )

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(trial("complete", "COMPLETE", [0.7, 0.8]))
    study.add_trial(trial("duplicate", "COMPLETE", [0.7, 0.8]))  # trial 0's curve again: trained once
    study.add_trial(trial("stopped", "PRUNED", [0.5]))
    study.add_trial(trial("rejected", "PRUNED", []))  # never trained
    study.add_trial(trial("running", "RUNNING", [0.6]))
    study.add_trial(trial("running", "RUNNING", [0.65]))  # the trial being judged
    seen = {c.number: c.finished for c in trained_curves(study, exclude=5)}
    assert seen == {0: True, 2: True, 4: False}
