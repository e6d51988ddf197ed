"""The report's data (trials_frame, fronts, KD gain, hypervolume) on hand-made trials, and its CLI."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from _study_fixture import SYNTHETIC_TRIALS, synthetic_study

from kdnas import report, results
from kdnas.config import load_study


@pytest.fixture
def synthetic_frame(tmp_path) -> pd.DataFrame:
    return results.trials_frame(synthetic_study(tmp_path / "run"))


def _trials(df: pd.DataFrame, column: str) -> set[int]:
    return set(df.loc[df[column], "trial"])


def test_trials_frame_has_one_row_per_trial_with_params_and_measurements(synthetic_frame):
    df = synthetic_frame
    assert list(df["trial"]) == list(SYNTHETIC_TRIALS)
    for column in (
        "base_width",
        "blocks_1",
        "temperature",
        "alpha",
        "alpha_decay",
        "decay_rate",
        "val_accuracy",
        "params",
        "macs",
        "latency_ms",
        "train_seconds",
        "duration_s",
        "started",
    ):
        assert column in df.columns
    row = df.set_index("trial").loc[3]
    assert (row["base_width"], row["alpha"], row["alpha_decay"], row["decay_rate"]) == (4, 0.7, "cosine", 1.0)
    assert (row["val_accuracy"], row["params"], row["macs"], row["latency_ms"]) == (0.78, 5_000, 500_000, 0.6)
    assert math.isnan(df.set_index("trial").loc[0, "decay_rate"])  # conditional: no decay, no rate


def test_trials_frame_states_and_reasons(synthetic_frame):
    df = synthetic_frame.set_index("trial")
    assert df.loc[4, ["status", "state"]].tolist() == ["rejected", "pruned"]
    assert df.loc[4, "reason"] == "80,000 params > max_params 50,000"
    assert math.isnan(df.loc[4, "latency_ms"]) and math.isnan(df.loc[4, "val_accuracy"])
    assert df.loc[5, ["status", "state"]].tolist() == ["diverged", "fail"]
    assert df.loc[5, "reason"] == "non-finite loss in epoch 1, step 3"
    assert df.loc[0, ["status", "state", "reason"]].tolist() == ["complete", "complete", ""]
    assert df.loc[8, ["status", "state"]].tolist() == ["duplicate", "complete"]
    assert df.loc[8, "reason"] == "same candidate as trial 2; its result reused"


def test_trials_frame_pareto_flags(synthetic_frame):
    assert _trials(synthetic_frame, "pareto") == {0, 1, 2, 3, 6}  # all three objectives
    assert _trials(synthetic_frame, "front_params") == {2, 3, 6}
    assert _trials(synthetic_frame, "front_latency") == {0, 1, 2, 3}
    assert _trials(synthetic_frame, "front_macs") == {2, 3, 6}  # recorded for every trial
    assert not synthetic_frame["front_size"].any() and synthetic_frame["size_kb"].isna().all()  # not measured
    assert _trials(synthetic_frame, "distilled") == {2, 3, 4, 5, 6, 7, 8}


def test_pareto_front_keeps_one_of_equal_points_and_skips_missing():
    rows = pd.DataFrame({"trial": [0, 1, 2, 3], "params": [10, 10, 20, math.nan], "val_accuracy": [0.5, 0.5, 0.4, 0.9]})
    assert results.pareto_front(rows, "params")["trial"].tolist() == [0]


def test_kd_gain_compares_best_accuracy_within_each_size(synthetic_frame):
    gain = results.kd_gain(synthetic_frame)
    assert gain["params"].tolist() == [2_000, 5_000, 20_000]
    assert math.isnan(gain["no_kd"].iloc[0])  # nothing without distillation is that small
    assert gain["gain"].iloc[1:].tolist() == pytest.approx([0.08, 0.05])
    assert gain["kd_trial"].tolist() == [6, 3, 2] and gain["no_kd_trial"].iloc[1:].tolist() == [1, 0]
    assert gain["alpha"].tolist() == [0.3, 0.7, 0.5] and gain["alpha_decay"].tolist() == ["none", "cosine", "linear"]


def _student(trial: int, params: int, accuracy: float, alpha: float, arch: str = "") -> dict:
    return {
        "trial": trial,
        "status": "complete",
        "arch": arch or f"net{trial}",
        "params": params,
        "val_accuracy": accuracy,
        "distilled": alpha >= results.NO_KD_ALPHA,
        "temperature": 4.0,
        "alpha": alpha,
        "alpha_decay": "none",
    }


def test_kd_gain_never_compares_a_distilled_student_with_a_much_smaller_one():
    # The case: a 170k distilled student against the only student without KD, of 38k parameters.
    df = pd.DataFrame([_student(0, 38_000, 0.88, 0.0), _student(1, 170_000, 0.91, 0.8), _student(2, 36_000, 0.87, 0.6)])
    gain = results.kd_gain(df).set_index("params")
    assert math.isnan(gain.loc[170_000, "no_kd"]) and math.isnan(gain.loc[170_000, "gain"])
    assert gain.loc[170_000, "smallest"] == 113_334 and gain.loc[170_000, "kd"] == 0.91
    assert gain.loc[38_000, "gain"] == pytest.approx(-0.01)  # 36k distilled against 38k without: comparable


def test_kd_pairs_lists_architectures_trained_both_ways():
    df = pd.DataFrame(
        [
            _student(0, 20_000, 0.80, 0.0, "a"),
            _student(1, 20_000, 0.84, 0.9, "a"),
            _student(2, 20_000, 0.83, 0.5, "a"),
            _student(3, 9_000, 0.70, 0.5, "b"),  # distilled only: no pair
        ]
    )
    pairs = results.kd_pairs(df)
    assert pairs["arch"].tolist() == ["a"] and pairs["gain"].tolist() == pytest.approx([0.04])


def test_hypervolume_history_is_cumulative_and_normalised(synthetic_frame):
    history = results.hypervolume_history(synthetic_frame, 40_000)
    assert list(history.index) == list(SYNTHETIC_TRIALS)
    assert history.is_monotonic_increasing
    # Trial 0 alone: (1 - 0.8) error at 20k of 40k params dominates 0.8 * 0.5 of the unit square.
    assert history.loc[0] == pytest.approx(0.8 * 0.5)
    assert history.loc[4] == history.loc[3]  # a rejected trial adds nothing
    # Against latency: trial 0 (80% at 1.0 ms of 2.0) covers 0.8 * 0.5; trial 7 (2.0 ms) is at the reference.
    latency = results.hypervolume_history(synthetic_frame, 2.0, "latency_ms")
    assert latency.loc[0] == pytest.approx(0.8 * 0.5)
    assert latency.loc[7] == latency.loc[6]


def test_largest_student_params_is_the_widest_deepest_student():
    cfg = load_study("smoke")
    assert results.largest_student_params(cfg, 1, 10, 28) == 19_810  # resnet w8 b1-1-1, as the smoke search measures it


def test_hypervolume_reference_is_ten_percent_above_the_largest_student_the_study_can_keep():
    cfg = load_study("smoke")
    assert results.hypervolume_reference(cfg, 1, 10, 28) == math.ceil(1.1 * 19_810)
    # fashion-mbconv's largest network (738,562 params) lies beyond its max_params: the limit bounds the area.
    mbconv = load_study("fashion-mbconv")
    assert results.largest_student_params(mbconv, 1, 10, 28) > mbconv.constraints.max_params == 300_000
    assert results.hypervolume_reference(mbconv, 1, 10, 28) == 330_000


def test_report_of_a_study_whose_alpha_never_decays_has_every_distillation_column(tmp_path):
    study = synthetic_study(tmp_path, trials=[0, 1, 6, 7])  # alpha_decay "none" in all: decay_rate never sampled
    df = results.trials_frame(study)
    assert df["decay_rate"].isna().all()
    assert report.write_report(study, load_study("smoke"), tmp_path, df).is_file()


def test_report_cli_writes_report_and_tables(tmp_path, capsys):
    run_dir = tmp_path / "run"
    synthetic_study(run_dir)
    assert report.main(["--study", "smoke", "--out", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == len(SYNTHETIC_TRIALS)
    assert pd.read_csv(run_dir / "pareto.csv")["trial"].tolist() == [2, 0, 3, 1, 6]  # most accurate first
    page = (run_dir / "report.html").read_text()
    for div in ("fig-params", "fig-latency", "fig-kd", "fig-hypervolume", "fig-importance", "fig-parallel"):
        assert f'id="{div}"' in page
    assert 'id="fig-macs"' not in page and 'id="fig-size"' not in page  # costs the study does not optimise
    assert "<script src=" not in page  # plotly.js is inlined: the page opens with no network
    assert "<th>size</th>" not in page  # not measured
    assert "teacher: 90.00% val" in page
    assert "6 complete, 1 diverged, 1 duplicate, 1 rejected" in page


def test_a_study_of_macs_and_size_has_their_fronts_and_figures(tmp_path):
    run_dir = tmp_path / "run"
    df = results.trials_frame(synthetic_study(run_dir, metrics=("val_accuracy", "macs", "size_kb")))
    # MACs and size grow with the parameters here: the same front as accuracy vs params.
    assert _trials(df, "front_macs") == _trials(df, "front_size") == _trials(df, "front_params") == {2, 3, 6}
    assert _trials(df, "pareto") == {2, 3, 6}  # latency is no objective of this study
    assert df.set_index("trial").loc[3, "size_kb"] == 10 + 4 * 5_000 / 1024
    assert report.main(["--study", "smoke", "--out", str(run_dir), "-q"]) == 0
    page = (run_dir / "report.html").read_text()
    for div in ("fig-params", "fig-latency", "fig-macs", "fig-size"):
        assert f'id="{div}"' in page
    assert "ONNX file size (KiB)" in page and "ONNX file 29.5 KiB" in page  # the axis, and trial 3's hover text
    assert "<th>size</th>" in page and "<td>29.5 KiB</td>" in page  # the Pareto table's column


def test_report_flags_the_students_that_beat_the_teacher(tmp_path):
    run_dir = tmp_path / "run"
    study = synthetic_study(run_dir)
    assert report.main(["--study", "smoke", "--out", str(run_dir), "-q"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "<th>vs teacher</th>" in page and "beat the teacher" not in page  # 90% val: no student reaches it
    study.set_user_attr("teacher", {**study.user_attrs["teacher"], "val_accuracy": 0.79})
    assert report.main(["--study", "smoke", "--out", str(run_dir), "-q"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "Trial(s) 2, 0 beat the teacher (79.00% val)" in page  # 0.85 and 0.80; 0.78 does not
    assert "<td>+6.00 pt</td>" in page


def test_report_with_one_complete_trial_notes_missing_importances(tmp_path):
    run_dir = tmp_path / "run"
    synthetic_study(run_dir, trials=[2, 4])
    assert report.main(["--study", "smoke", "--out", str(run_dir), "-q"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "No importances: they need at least 2 complete trials." in page
    assert "No complete trial without distillation" in page
    assert 'id="fig-importance"' not in page


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--study", "smok"], "no study named 'smok' (did you mean 'smoke'?)", id="unknown-study"),
        pytest.param(["--study", "smoke"], "no stored study 'smoke'", id="never-searched"),
        pytest.param(
            ["--study", "smoke", "--storage", "sqlite:///{tmp}/other.db"],
            "no study named 'smoke' in",
            id="not-in-storage",
        ),
    ],
)
def test_report_refuses_unknown_study_without_writing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/other.db")  # holds another study
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert report.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_report_refuses_a_study_without_complete_trials(tmp_path, capsys):
    run_dir = tmp_path / "run"
    synthetic_study(run_dir, trials=[4, 5])
    assert report.main(["--study", "smoke", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: study 'smoke' has no complete trial yet (trials: 1 diverged, 1 rejected); "
        "run 'python -m kdnas.search --study smoke' until one finishes\n"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == ["study.db"]
