"""End to end: the real `smoke` study through `kdnas.search.main`, and every bad input the CLI names."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from _needs import require
from _smoke import FEWER_IMAGES, edited_smoke

from kdnas.config import STUDIES_DIR
from kdnas.data import DATASETS
from kdnas.runner import ensure_writable
from kdnas.search import main

pytestmark = pytest.mark.slow
# The tests that run the search on the real data; the bad-input tests fail before any data is read.
needs_data = pytest.mark.needs("dataset-fashion-mnist")


def _load(out: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    require("dataset-fashion-mnist")
    out = tmp_path_factory.mktemp("smoke") / "run"
    code = main(["--study", "smoke", "--out", str(out), "--no-progress"])
    return out, code


def test_smoke_study_stores_complete_trials_with_three_objectives(smoke_run: tuple[Path, int]) -> None:
    out, code = smoke_run
    assert code == 0
    study = _load(out)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:
        accuracy, params, latency = trial.values
        assert 0.0 < accuracy <= 1.0
        assert params == trial.user_attrs["params"] > 0
        assert latency > 0
        assert trial.user_attrs["macs"] > 0
        assert len(trial.user_attrs["val_curve"]) == 2  # one entry per epoch of [train]
    assert (out / "teacher.pt").is_file() and (out / "soft_targets.pt").is_file()
    assert study.user_attrs["teacher"]["test_accuracy"] > 0.5  # a real, trained teacher


def test_one_network_keeps_one_latency_in_a_study(smoke_run: tuple[Path, int]) -> None:
    out, _ = smoke_run
    latencies: dict[str, list[float]] = {}
    for trial in _load(out).trials:  # 3 trials in a space of 2 networks: at least two share one
        latencies.setdefault(trial.user_attrs["arch"], []).append(trial.user_attrs["latency_ms"])
    assert max(len(measured) for measured in latencies.values()) >= 2
    assert all(len(set(measured)) == 1 for measured in latencies.values())


def test_same_study_and_seed_give_the_same_trials(smoke_run: tuple[Path, int]) -> None:
    out, _ = smoke_run
    again = f"sqlite:///{out / 'again.db'}"
    assert main(["--study", "smoke", "--out", str(out), "--storage", again, "--trials", "3", "--no-progress"]) == 0
    first, second = _load(out).trials[:3], optuna.load_study(study_name="smoke", storage=again).trials
    assert [t.params for t in second] == [t.params for t in first]
    # Latency included: each network was timed once in this run directory (latency.json), not again.
    assert [t.values for t in second] == [t.values for t in first]
    assert [t.user_attrs["val_curve"] for t in second] == [t.user_attrs["val_curve"] for t in first]


def test_second_run_reuses_teacher_and_adds_trials(smoke_run: tuple[Path, int], capsys) -> None:
    out, _ = smoke_run
    teacher_mtime = (out / "teacher.pt").stat().st_mtime_ns
    cache_mtime = (out / "soft_targets.pt").stat().st_mtime_ns
    assert main(["--study", "smoke", "--out", str(out), "--trials", "4", "--no-progress"]) == 0
    assert (out / "teacher.pt").stat().st_mtime_ns == teacher_mtime
    assert (out / "soft_targets.pt").stat().st_mtime_ns == cache_mtime
    assert "teacher: reusing" in capsys.readouterr().err
    study = _load(out)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4
    numbers = [t.number for t in study.trials]
    assert numbers == sorted(set(numbers))


def test_run_with_budget_reached_trains_nothing(smoke_run: tuple[Path, int], capsys) -> None:
    out, _ = smoke_run
    before = len(_load(out).trials)
    assert main(["--study", "smoke", "--out", str(out), "--trials", "2", "--no-progress"]) == 0
    assert len(_load(out).trials) == before
    assert "Pareto-optimal trials" in capsys.readouterr().out


def test_changed_space_refuses_to_mix_trials(smoke_run: tuple[Path, int], tmp_path: Path, capsys) -> None:
    out, _ = smoke_run
    changed = edited_smoke(tmp_path, name="smoke", extra="[constraints]\nmax_params = 10_000\n")
    assert main(["--study", str(changed), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different data/teacher/space" in err and "--fresh" in err


def test_a_resume_with_another_teachers_weights_refuses_to_mix_trials(
    smoke_run: tuple[Path, int], tmp_path: Path, capsys
) -> None:
    # As on another machine whose teacher came out otherwise: the stored trials name other weights.
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    study = _load(out)
    teacher = study.user_attrs["teacher"]
    study.set_user_attr("teacher", {**teacher, "weights_sha256": "ab" * 32})
    before = len(study.trials)
    assert main(["--study", "smoke", "--out", str(out), "--trials", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"distilled from teacher weights {'ab' * 6}, but the teacher now has weights" in err
    assert teacher["weights_sha256"][:12] in err and "another --out" in err
    assert len(_load(out).trials) == before
    assert _load(out).user_attrs["teacher"]["weights_sha256"] == "ab" * 32


@needs_data
def test_constraints_reject_before_training(tmp_path: Path) -> None:
    only_width_4 = "[constraints]\nmax_params = 6_000\n"
    path = edited_smoke(tmp_path, FEWER_IMAGES, name="custom", extra=only_width_4)
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--no-progress", "--trials", "2"]) == 0
    study = _load(out, "custom")
    rejected = [t for t in study.trials if t.user_attrs.get("status") == "rejected"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in rejected)
    assert all("max_params" in t.user_attrs["reason"] and "val_curve" not in t.user_attrs for t in rejected)
    assert len(complete) == 2 and all(t.user_attrs["params"] <= 6_000 for t in complete)


@needs_data
def test_a_used_up_space_stops_the_search_with_what_it_trained(tmp_path: Path, capsys) -> None:
    smoke = (STUDIES_DIR / "smoke.toml").read_text()
    one_kd = '[kd]\ntemperature = 4.0\nalpha = 0.9\nalpha_decay = "none"\n\n'
    edits = {**FEWER_IMAGES, smoke[smoke.index("[kd]") : smoke.index("[train]")]: one_kd}
    # Widths 4 and 8, one KD setting; w8 over the constraint.
    path = edited_smoke(tmp_path, edits, name="one", extra="[constraints]\nmax_params = 6_000\n")
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--no-progress", "--trials", "3"]) == 0
    study = _load(out, "one")
    statuses = [t.user_attrs["status"] for t in study.trials]
    assert statuses.count("complete") == 1 and set(statuses) == {"complete", "duplicate", "rejected"}
    # Stopped at the first untrained draw once both candidates were seen, not after 200 draws in a row: the
    # rejection itself when it came last, the next draw after the training otherwise.
    seen = max(statuses.index("complete"), statuses.index("rejected"))
    assert len(statuses) == seen + (2 if statuses[seen] == "complete" else 1), statuses
    err = capsys.readouterr().err
    assert "stopping: each of the 2 candidates of the space is trained or over [constraints]" in err


@needs_data
def test_a_space_rejected_draw_after_draw_stops_the_search(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("kdnas.runner._MAX_CONSECUTIVE_REJECTIONS", 5)
    no_network_fits = "[constraints]\nmax_params = 1_000\n"  # and KD settings are endless
    path = edited_smoke(tmp_path, FEWER_IMAGES, name="custom", extra=no_network_fits)
    assert main(["--study", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--trials", "3"]) == 0
    statuses = [t.user_attrs["status"] for t in _load(tmp_path / "run", "custom").trials]
    assert statuses == ["rejected"] * 5
    assert "the last 5 candidates were all over [constraints] or already trained" in capsys.readouterr().err


@needs_data
def test_a_study_on_onnxruntime_optimises_macs_and_size_and_rejects_by_macs(tmp_path: Path) -> None:
    onnx = {**FEWER_IMAGES, "[latency]\n": '[latency]\nruntime = "onnxruntime"\n'}
    extra = '[objectives]\nmetrics = ["val_accuracy", "macs", "size_kb", "latency_ms"]\n\n[constraints]\n'
    # w4 b1-1-1: 605,408 MACs; w8: 2,364,864
    path = edited_smoke(tmp_path, onnx, name="onnx", extra=f"{extra}max_macs = 1_000_000\n")
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--no-progress", "--trials", "2"]) == 0
    study = _load(out, "onnx")
    (setup, timed), *others = json.loads((out / "latency.json").read_text()).items()
    assert not others and setup.startswith("onnxruntime ")
    assert list(timed) == ["anchor: resnet w8 b1-1-1, 1 -> 10", "resnet w4 b1-1-1, 1 -> 10"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2
    for trial in complete:
        a = trial.user_attrs
        assert trial.values[1:] == [a["macs"], a["size_kb"], a["latency_ms"]] and a["macs"] == 605_408
        assert 4 * a["params"] / 1024 < a["size_kb"] < 4 * a["params"] / 1024 + 64  # float32 weights and the graph
        assert a["latency_ms"] == timed["resnet w4 b1-1-1, 1 -> 10"]
    rejected = [t for t in study.trials if t.user_attrs.get("status") == "rejected"]
    assert all(t.user_attrs["reason"] == "2,364,864 MACs > max_macs 1,000,000" for t in rejected)
    assert all("size_kb" not in t.user_attrs for t in rejected)  # rejected by MACs before the export


@needs_data
def test_diverging_trial_is_failed_with_reason_and_study_goes_on(tmp_path: Path, capsys) -> None:
    path = edited_smoke(tmp_path, {**FEWER_IMAGES, "lr = 0.1\n\n[latency]": "lr = 1e12\n\n[latency]"}, name="diverge")
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--no-progress", "--trials", "2"]) == 0
    trials = _load(out, "diverge").trials
    assert len(trials) == 2
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert all("non-finite loss" in t.user_attrs["reason"] for t in trials)
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "Traceback" not in err  # one line per failed trial


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param("[kd]\ntemperture = 2.0\n", "did you mean 'temperature'", id="unknown-key"),
        pytest.param("[kd]\nalpha = { low = 0.0, high = 1.5 }\n", "alpha", id="alpha-out-of-range"),
        pytest.param("[budget\ntrials = 3\n", "not valid TOML", id="malformed-toml"),
    ],
)
def test_bad_study_file_is_one_line_error(tmp_path: Path, capsys, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_unknown_study_name_lists_known_studies(capsys) -> None:
    assert main(["--study", "smok"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'smoke'" in err and "fashion" in err and err.count("\n") == 1


def test_missing_dataset_says_where_it_looked(tmp_path: Path, capsys, monkeypatch) -> None:
    # Only the download is replaced: this machine is offline, and a real attempt costs ~20 s of DNS time.
    monkeypatch.setattr("kdnas.data._download.torchvision_datasets", _offline)
    path = edited_smoke(tmp_path, {'dataset = "fashion_mnist"': 'dataset = "cifar10"'}, name="cifar_missing")
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--data-dir", str(tmp_path / "empty")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the failed download's log lines
    assert last.startswith("error: CIFAR-10 not found") and str(tmp_path / "empty") in last
    assert not out.exists()


def _offline():
    raise OSError("network is unreachable")


@needs_data
@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("sqlite:////nonexistent-dir/sub/study.db", "cannot open storage", id="sqlite-bad-dir"),
        pytest.param("postgresql://kdnas:secret@127.0.0.1:1/kdnas", "cannot open storage", id="postgres-down"),
        pytest.param("nosuchdb://x", "cannot open storage", id="unknown-scheme"),
    ],
)
def test_unreachable_storage_is_one_line_error(tmp_path: Path, capsys, url: str, message: str) -> None:
    out = tmp_path / "run"
    assert main(["--study", "smoke", "--out", str(out), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "secret" not in err
    assert not (out / "teacher.pt").exists()


@needs_data
def test_fresh_starts_over(tmp_path: Path) -> None:
    out, path = tmp_path / "run", str(edited_smoke(tmp_path, FEWER_IMAGES))
    assert main(["--study", path, "--out", str(out), "--trials", "1", "--no-progress"]) == 0
    assert main(["--study", path, "--out", str(out), "--trials", "1", "--no-progress", "--fresh"]) == 0
    study = _load(out)
    assert [t.number for t in study.trials] == [0]
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("select count(*) from studies").fetchone()[0] == 1


@needs_data
def test_a_soft_target_cache_too_large_for_memory_stops_before_the_teacher_trains(tmp_path: Path, capsys) -> None:
    # 10^9 epochs of soft targets for 3,600 images is 72 TB: more memory than any machine this runs on has.
    path = edited_smoke(tmp_path, {"[train]\nepochs = 2": "[train]\nepochs = 1_000_000_000"}, name="huge_cache")
    out = tmp_path / "run"
    assert main(["--study", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the data needs") and "GiB of soft targets" in err and err.count("\n") == 1
    assert not (out / "teacher.pt").exists()


@needs_data
def test_unwritable_out_is_a_one_line_error_before_any_training(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a regular file where a folder is needed: unwritable even for root
    assert main(["--study", "smoke", "--out", str(blocker / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to {blocker / 'run'}") and err.count("\n") == 1
    assert "pass a writable --out" in err


def test_workers_sharing_an_out_folder_check_it_at_once_without_tripping_each_other(tmp_path: Path) -> None:
    # Workers on one --out start together; each checks the folder is writable before any training.
    def check_many_times() -> None:
        for _ in range(300):
            ensure_writable(tmp_path)

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(check_many_times) for _ in range(4)]:
            done.result()  # raises the worker's KdnasError, if any
    assert list(tmp_path.iterdir()) == []  # and leaves nothing behind


def test_a_new_tpe_study_queues_its_random_startup_trials_smallest_first(tmp_path: Path) -> None:
    from kdnas.config import load_study
    from kdnas.models import build_model, count_params
    from kdnas.space import specs_from_params, suggest
    from kdnas.study import open_study

    cfg = load_study("fashion")
    cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, startup="random"))
    study = open_study(cfg, f"sqlite:///{tmp_path / 'study.db'}", DATASETS.get("fashion_mnist"))
    queued = [t.system_attrs["fixed_params"] for t in study.get_trials(deepcopy=False)]
    assert len(queued) == cfg.sampler.startup_trials
    sizes = [count_params(build_model(specs_from_params(p, cfg, 1, 10, 28)[0])) for p in queued]
    assert sizes == sorted(sizes) and len(set(sizes)) > 1
    # The candidates TPE's own random start-up draws with that seed, in another order.
    tpe = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.sampler.startup_trials)
    )
    drawn = []
    for _ in range(cfg.sampler.startup_trials):
        trial = tpe.ask()
        suggest(trial, cfg, 1, 10, 28)
        drawn.append(trial.params)
    assert sorted(map(str, drawn)) == sorted(map(str, queued))
    # Opened again (a resumed run), nothing more is queued.
    assert len(
        open_study(cfg, f"sqlite:///{tmp_path / 'study.db'}", DATASETS.get("fashion_mnist")).get_trials(deepcopy=False)
    ) == len(queued)


KD_KEYS = ("temperature", "alpha", "alpha_decay", "decay_rate")


def network_params(params: dict) -> dict:
    """A trial's params without its distillation settings: the network it trains."""
    return {k: v for k, v in params.items() if k not in KD_KEYS}


def startup_queue(cfg, folder: Path) -> list[dict]:
    from kdnas.study import open_study

    folder.mkdir(exist_ok=True)
    study = open_study(cfg, f"sqlite:///{folder / 'study.db'}", DATASETS.get("fashion_mnist"))
    return [t.system_attrs["fixed_params"] for t in study.get_trials(deepcopy=False)]


def test_a_pairs_startup_trains_each_architecture_without_distillation_then_with_the_usual_recipe(
    tmp_path: Path,
) -> None:
    from kdnas.config import load_study
    from kdnas.study import KD_ANCHORS

    cfg = load_study("fashion")
    assert cfg.sampler.startup == "pairs"
    queued = startup_queue(cfg, tmp_path)
    assert len(queued) == cfg.sampler.startup_trials
    for without, usual in zip(queued[::2], queued[1::2], strict=True):
        same_network = network_params(without)
        assert same_network == network_params(usual)
        assert (without, usual) == tuple({**same_network, **anchor} for anchor in KD_ANCHORS)
    # The architectures are the first half of the random start-up's draws (same seed).
    drawn = startup_queue(
        dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, startup="random")), tmp_path / "r"
    )
    assert {str(network_params(p)) for p in queued} <= {str(network_params(p)) for p in drawn}
    # An odd count ends with a lone trial without distillation.
    odd = startup_queue(
        dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, startup_trials=3)), tmp_path / "o"
    )
    assert [p["alpha"] for p in odd] == [0.0, 0.9, 0.0]
    # smoke's space holds 2 networks: 3 start-up trials are both networks' pairs cut to 3, no network twice.
    smoke = startup_queue(load_study("smoke"), tmp_path / "s")
    assert [p["alpha"] for p in smoke] == [0.0, 0.9, 0.0] and smoke[0]["base_width"] != smoke[2]["base_width"]


def test_a_usual_startup_trains_twice_the_architectures_each_with_the_usual_recipe(tmp_path: Path) -> None:
    from kdnas.config import STARTUP_DESIGNS, KDSpace, dataclass_from_dict, load_study
    from kdnas.study import STARTUP_ANCHORS, USUAL_KD

    assert set(STARTUP_DESIGNS) == {*STARTUP_ANCHORS, "random"}  # every design the config accepts is queued

    pairs = load_study("fashion")
    usual = dataclasses.replace(pairs, sampler=dataclasses.replace(pairs.sampler, startup="usual"))
    queued = startup_queue(usual, tmp_path)
    assert len(queued) == pairs.sampler.startup_trials
    assert all({key: p[key] for key in USUAL_KD} == USUAL_KD for p in queued)
    networks = [str(network_params(p)) for p in queued]
    assert len(set(networks)) == len(networks)  # no network twice
    # The same draws as the pairs' (same seed), twice as many of them kept.
    assert {str(network_params(p)) for p in startup_queue(pairs, tmp_path / "p")} < set(networks)
    # A KD space without alpha = 0 cannot pair, but still holds the usual recipe.
    kd = {"temperature": {"low": 1.0, "high": 8.0}, "alpha": {"low": 0.5, "high": 1.0, "step": 0.1}}
    strong_kd = dataclasses.replace(usual, kd=dataclass_from_dict(KDSpace, {**kd, "alpha_decay": ["none"]}, "kd"))
    narrower = startup_queue(strong_kd, tmp_path / "s")
    assert len({str(network_params(p)) for p in narrower}) == len(narrower) == pairs.sampler.startup_trials
    assert all({key: p[key] for key in USUAL_KD} == USUAL_KD for p in narrower)


def test_a_study_whose_kd_space_lacks_an_anchor_draws_its_startup_at_random(tmp_path: Path) -> None:
    from kdnas.config import KDSpace, dataclass_from_dict, load_study

    cfg = load_study("fashion")
    fixed = dataclass_from_dict(KDSpace, {"temperature": 4.0, "alpha": 0.9, "alpha_decay": "none"}, "kd")
    queued = startup_queue(dataclasses.replace(cfg, kd=fixed), tmp_path)
    random = dataclasses.replace(cfg, kd=fixed, sampler=dataclasses.replace(cfg.sampler, startup="random"))
    assert queued == startup_queue(random, tmp_path / "r")  # as before pairs existed: bench records stay valid
    assert len({str(p) for p in queued}) == cfg.sampler.startup_trials


def test_only_the_process_that_creates_a_study_queues_its_startup_trials(tmp_path: Path) -> None:
    from kdnas.config import load_study
    from kdnas.study import open_study

    cfg = load_study("fashion")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Another host created it an instant ago and has not queued its trials yet.
    optuna.create_study(storage=url, study_name=cfg.name, directions=cfg.objectives.directions)
    assert open_study(cfg, url, DATASETS.get("fashion_mnist")).get_trials(deepcopy=False) == []


@pytest.mark.parametrize(
    ("study", "way_out"),
    [("cifar", "run --study cifar-cpu (sized for a CPU)"), ("fashion", "give [teacher] fewer epochs")],
)
def test_a_teacher_sized_for_a_gpu_is_named_on_a_cpu_with_the_time_it_would_take(study, way_out, caplog) -> None:
    import time

    import torch

    from kdnas.config import load_study
    from kdnas.prepare import _warn_if_sized_for_a_gpu

    hook = _warn_if_sized_for_a_gpu(lambda step, total: None, load_study(study), torch.device("cpu"))
    with caplog.at_level("WARNING", logger="kdnas.prepare"):
        for step in range(1, 10):
            time.sleep(0.01)
            hook(step, 1_000_000)  # >= 10 ms a step for 10^6 steps: hours
    [message] = [r.getMessage() for r in caplog.records]
    assert "sized for a GPU" in message and " h " in message and way_out in message


def test_a_teacher_that_trains_quickly_on_the_cpu_gets_no_warning(caplog) -> None:
    import torch

    from kdnas.config import load_study
    from kdnas.prepare import _warn_if_sized_for_a_gpu

    hook = _warn_if_sized_for_a_gpu(lambda step, total: None, load_study("cifar"), torch.device("cpu"))
    with caplog.at_level("WARNING", logger="kdnas.prepare"):
        for step in range(1, 10):
            hook(step, 100)
    assert caplog.records == []
