"""Studies for the report, export and train tests: a hand-made one (instant) and a real finished smoke study.

``synthetic_study`` stores trials with chosen values, so fronts, the knee and every pick are known by
hand. ``finished_smoke_study`` runs the real search once per test session (~1-2 min on 2 cores) for
the tests that retrain a student or open the report in a browser.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from _needs import require

from kdnas import search
from kdnas.config import load_study

STUDY = "smoke"  # studies/smoke.toml: its name and space are those of the stored trials

_DISTRIBUTIONS = {
    "base_width": optuna.distributions.IntDistribution(4, 8, step=4),
    "blocks_1": optuna.distributions.IntDistribution(1, 1),
    "blocks_2": optuna.distributions.IntDistribution(1, 1),
    "blocks_3": optuna.distributions.IntDistribution(1, 1),
    "temperature": optuna.distributions.FloatDistribution(1.0, 8.0, log=True),
    "alpha": optuna.distributions.FloatDistribution(0.0, 1.0, step=0.1),
    "alpha_decay": optuna.distributions.CategoricalDistribution(["none", "linear", "cosine", "exponential"]),
    "decay_rate": optuna.distributions.FloatDistribution(0.5, 3.0),
}

# trial -> (status, base width, alpha, decay, val accuracy, params, latency ms, reason).
# Accuracy vs params front: 6, 3, 2 (knee: 3). Accuracy vs latency front: 1, 3, 0, 2.
# Optimal in all three objectives: 0, 1, 2, 3, 6 (8 repeats 2, as the search records a duplicate).
# Without distillation: 0 and 1.
SYNTHETIC_TRIALS = {
    0: ("complete", 8, 0.0, "none", 0.80, 20_000, 1.0, ""),
    1: ("complete", 4, 0.0, "none", 0.70, 5_000, 0.3, ""),
    2: ("complete", 8, 0.5, "linear", 0.85, 20_000, 1.1, ""),
    3: ("complete", 4, 0.7, "cosine", 0.78, 5_000, 0.6, ""),
    4: ("rejected", 8, 0.4, "none", math.nan, 80_000, math.nan, "80,000 params > max_params 50,000"),
    5: ("diverged", 8, 0.9, "exponential", math.nan, 20_000, 1.0, "non-finite loss in epoch 1, step 3"),
    6: ("complete", 4, 0.3, "none", 0.60, 2_000, 0.45, ""),
    7: ("complete", 8, 0.2, "none", 0.65, 20_000, 2.0, ""),
    8: ("duplicate", 8, 0.5, "linear", 0.85, 20_000, 1.1, "same candidate as trial 2; its result reused"),
}
TEACHER = {
    "spec": {"arch": "resnet", "in_channels": 1, "num_classes": 10, "base_width": 8, "blocks": [1, 1, 1]},
    "params": 19_810,
    "val_accuracy": 0.9,
    "test_accuracy": 0.89,
    "fingerprint": "0123456789abcdef",
    "path": "/nonexistent/teacher.pt",
}


def _trial(number: int, metrics: Sequence[str]) -> optuna.trial.FrozenTrial:
    status, width, alpha, decay, accuracy, params, latency, reason = SYNTHETIC_TRIALS[number]
    values = {
        "base_width": width,
        "blocks_1": 1,
        "blocks_2": 1,
        "blocks_3": 1,
        "temperature": 4.0,
        "alpha": alpha,
        "alpha_decay": decay,
    }
    if decay != "none":
        values["decay_rate"] = 1.0
    attrs = {"status": status, "arch": f"resnet w{width} b1-1-1", "params": params, "macs": 100 * params}
    if "size_kb" in metrics:  # the search measures the size only for a study that uses it
        attrs["size_kb"] = 10 + 4 * params / 1024
    if not math.isnan(latency):
        attrs["latency_ms"] = latency
    if reason:
        attrs["reason"] = reason
    trained = status in ("complete", "duplicate")
    if trained:
        attrs.update(val_curve=[accuracy - 0.1, accuracy], train_seconds=10.0 + number, images_per_s=500.0)
    state = {"complete": "COMPLETE", "duplicate": "COMPLETE", "rejected": "PRUNED", "diverged": "FAIL"}[status]
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        params=values,
        distributions={name: _DISTRIBUTIONS[name] for name in values},
        user_attrs=attrs,
        values=[{"val_accuracy": accuracy, "latency_ms": latency, **attrs}[m] for m in metrics] if trained else None,
    )


def synthetic_study(
    run_dir: Path, trials: list[int] | None = None, metrics: Sequence[str] | None = None
) -> optuna.Study:
    """Store a study named ``smoke`` in ``run_dir/study.db`` holding ``trials`` of SYNTHETIC_TRIALS (default all),
    optimising ``metrics`` (default: the smoke study's)."""
    cfg = load_study(STUDY)
    if metrics is not None:
        cfg = dataclasses.replace(cfg, objectives=dataclasses.replace(cfg.objectives, metrics=tuple(metrics)))
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=f"sqlite:///{run_dir / 'study.db'}",
        directions=cfg.objectives.directions,
    )
    study.set_user_attr("config", json.loads(json.dumps(cfg.to_dict(), default=list)))
    study.set_user_attr("teacher", TEACHER)
    for number in SYNTHETIC_TRIALS if trials is None else trials:
        study.add_trial(_trial(number, cfg.objectives.metrics))
    return study


@dataclass(frozen=True)
class FinishedStudy:
    """A real smoke study: run directory (study.db, teacher.pt) and the report written from it."""

    run_dir: Path
    report: Path


_finished: list[FinishedStudy] = []  # each test module that imports the fixture holds its own copy: one search


@pytest.fixture(scope="session")
def finished_smoke_study(tmp_path_factory: pytest.TempPathFactory) -> FinishedStudy:
    """The smoke study searched once per session (3 trials), with its report."""
    from kdnas import report

    require("dataset-fashion-mnist")

    if not _finished:
        run_dir = tmp_path_factory.mktemp("smoke") / "run"
        assert search.main(["--study", STUDY, "--out", str(run_dir), "--device", "cpu", "--no-progress", "-q"]) == 0
        assert report.main(["--study", STUDY, "--out", str(run_dir), "-q"]) == 0
        _finished.append(FinishedStudy(run_dir, run_dir / "report.html"))
    return _finished[0]
