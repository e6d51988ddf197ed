"""Picking and exporting a student, on hand-made trials whose fronts and knee are known."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _study_fixture import TEACHER, synthetic_study

from kdnas import export, student_file
from kdnas.config import load_study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """One hand-made study for the module; each test writes its JSON into its own tmp_path."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    synthetic_study(run_dir)
    return run_dir


@pytest.fixture
def out(tmp_path):
    return tmp_path / "s.json"


def _export(study_dir, out, *args: str) -> int:
    return export.main(["--study", "smoke", "--run-dir", str(study_dir), "--out", str(out), *args])


@pytest.mark.parametrize(
    ("args", "trial"),
    [
        pytest.param([], 3, id="knee-by-default"),
        pytest.param(["--pick", "knee"], 3, id="knee"),
        pytest.param(["--pick", "max-accuracy"], 2, id="max-accuracy"),
        pytest.param(["--pick", "smallest"], 6, id="smallest"),
        pytest.param(["--pick", "fastest"], 1, id="fastest"),
        pytest.param(["--pick", "max-accuracy", "--max-params", "10000"], 3, id="max-params"),
        pytest.param(["--pick", "max-accuracy", "--max-latency-ms", "0.5"], 1, id="max-latency"),
        pytest.param(["--pick", "smallest", "--max-params", "5000", "--max-latency-ms", "0.5"], 6, id="both-limits"),
        pytest.param(["--max-params", "10000"], 3, id="knee-of-two-is-most-accurate"),
        pytest.param(["--trial", "7"], 7, id="trial"),
        pytest.param(["--trial", "3", "--max-params", "5000"], 3, id="trial-within-limits"),
        pytest.param(["--pick", "max-accuracy", "--max-macs", "1000000"], 3, id="max-macs"),
    ],
)
def test_export_picks(study_dir, out, capsys, args, trial):
    assert _export(study_dir, out, *args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    record = json.loads(out.read_text())
    assert record["trial"] == trial
    pick = "trial" if "--trial" in args else args[args.index("--pick") + 1] if "--pick" in args else "knee"
    assert record["selection"]["pick"] == pick


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--trial", "4"],
            "trial 4 is rejected (80,000 params > max_params 50,000), not complete; complete trials: 0, 1, 2, 3, 6, 7",
            id="rejected",
        ),
        pytest.param(
            ["--trial", "8"], "trial 8 is duplicate (same candidate as trial 2; its result reused)", id="duplicate"
        ),
        pytest.param(["--trial", "99"], "the study has no trial 99; its trials are 0..8", id="unknown-trial"),
        pytest.param(["--trial", "2", "--max-params", "6000"], "trial 2 is outside --max-params 6,000", id="outside"),
        pytest.param(
            ["--max-size-kb", "50"],
            "--max-size-kb: this study's trials have no figure of KiB of exported ONNX",
            id="unmeasured-size",
        ),
        pytest.param(
            ["--max-params", "1000", "--max-latency-ms", "0.2"],
            "no complete trial meets --max-params 1,000 and --max-latency-ms 0.2 (of 6); closest: trial 6 "
            "(2,000 params, 0.450 ms, 60.00% val), trial 1 (5,000 params, 0.300 ms, 70.00% val)",
            id="nothing-within-limits",
        ),
    ],
)
def test_export_refuses_without_writing(study_dir, out, capsys, args, message):
    assert _export(study_dir, out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_pick_and_trial_are_exclusive(study_dir, out, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _export(study_dir, out, "--pick", "smallest", "--trial", "3")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_exported_file_holds_everything_needed_to_retrain(study_dir, out):
    assert _export(study_dir, out, "--trial", "3") == 0
    record = json.loads(out.read_text())
    assert record["format"] == "kdnas-student/1"
    assert record["study"] == "smoke" and "kdnas_version" in record
    assert record["arch"] == {
        "family": "resnet",
        "in_channels": 1,
        "num_classes": 10,
        "spec": {"base_width": 4, "blocks": [1, 1, 1]},
    }
    assert record["kd"] == {"temperature": 4.0, "alpha": 0.7, "alpha_decay": "cosine", "decay_rate": 1.0}
    assert record["measured"] | {"val_curve": None} == {
        "val_accuracy": 0.78,
        "val_curve": None,
        "params": 5_000,
        "macs": 500_000,
        "latency_ms": 0.6,
        "latency_anchor_ms": None,  # a hand-made study: no anchor figure recorded
        "latency_runtime": "torch",
        "latency_device": "cpu",
        "size_kb": None,  # the smoke study does not optimise the size: not measured
        "train_seconds": 13.0,
    }
    assert student_file.read_student(out).measured_latency_ms == 0.6
    assert record["teacher"]["fingerprint"] == TEACHER["fingerprint"]
    assert record["teacher"]["sha256"] is None  # the hand-made study has no teacher file
    assert record["config"] == json.loads(json.dumps(load_study("smoke").to_dict(), default=list))
    student = student_file.read_student(out)
    assert (student.arch.spec, student.kd.alpha_decay) == ({"base_width": 4, "blocks": [1, 1, 1]}, "cosine")
    assert student.cfg == load_study("smoke") and student.trial == 3


def test_knee_is_the_front_point_farthest_from_the_chord():
    front = pd.DataFrame(
        {
            "trial": [10, 11, 12, 13],
            "params": [1_000, 10_000, 100_000, 1_000_000],
            "val_accuracy": [0.5, 0.6, 0.88, 0.9],
        }
    )
    # On (log10 params, accuracy) scaled to [0, 1]: (0, 0), (1/3, 0.25), (2/3, 0.95), (1, 1).
    assert export.knee(front) == 12
    assert export.knee(front.iloc[:2]) == 11  # no interior point: the most accurate


def test_size_limit_on_a_study_that_measures_the_size(tmp_path):
    from kdnas.results import trials_frame

    df = trials_frame(synthetic_study(tmp_path / "run", metrics=("val_accuracy", "params", "size_kb")))
    # size_kb = 10 + 4 * params / 1024: 50 KiB admits the trials of at most 10,240 params, like --max-params.
    assert export.pick_trial(df, "max-accuracy", limits={"size_kb": 50}) == 3
    assert export.pick_trial(df, "max-accuracy", limits={"params": 10_240}) == 3
