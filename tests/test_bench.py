"""The benches (bench/speed.py, families.py, methods.py) run end to end on tiny settings and print their figures
(never asserted); their helpers compute what they claim."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _browser import console_messages, open_in_chromium, rendered_figures
from _study_fixture import finished_smoke_study  # noqa: F401  (a fixture)

from kdnas.config import EarlyStopConfig, load_study
from kdnas.files import read_torch_dict
from kdnas.pruning import EarlyStopper
from kdnas.results import trials_frame
from kdnas.study import search_space_hash, store_config
from kdnas.teacher import TEACHER_FORMAT

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import _unfinished as unfinished  # noqa: E402  (bench/ is scripts, not a package)
import methods  # noqa: E402  (bench/ is scripts, not a package)
from _early_stopping import Clairvoyant, replay_early_stopping, stopped_in_hindsight  # noqa: E402  (bench/ is scripts, not a package)
from _figures import mean_interval, one_machine_latencies, with_interval  # noqa: E402  (bench/ is scripts, not a package)
from _kd_effect import kd_effect, mean_alpha  # noqa: E402  (bench/ is scripts, not a package)
from _latency_checks import rank_correlation  # noqa: E402  (bench/ is scripts, not a package)
from _runs import compute_curve, search, train_teacher  # noqa: E402  (bench/ is scripts, not a package)


@pytest.mark.slow
@pytest.mark.needs("dataset-fashion-mnist")
def test_bench_runs_every_section_on_a_tiny_setting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--threads", "2"],
        cwd=tmp_path,  # nothing may be written beside the repository's files
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for header in ("== throughput", "== flops", "== memory", "== early stopping", "== gpu", "== runtimes", "== anchor"):
        assert header in out, out
    assert "speed-up over the naive reference" in out and "cached-teacher trial / no-teacher trial" in out
    assert "2 one-thread trials side by side" in out
    assert re.search(r"GFLOP/s = +[\d.]+% of +[\d.]+ peak", out) and "MiB" in out
    assert "compute to reach the no-early-stopping hypervolume" in out
    assert "replayed, compute to reach the no-early-stopping hypervolume" in out
    assert re.search(r"rank correlation \(Spearman\) of torch and ONNX Runtime latency over 2 networks: [-\d.]+", out)
    assert re.search(r"^over [\d.]+ s, anchored: [\d.]+ to [\d.]+ ms, at most [\d.]+% from round 0$", out, re.M)
    assert re.search(r"^\d+ runs, alone: [\d.]+ to [\d.]+ ms, at most [\d.]+% from round 0$", out, re.M)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.needs("dataset-fashion-mnist")
def test_families_bench_compares_two_studies_sharing_one_teacher_and_reads_kept_runs_again(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "families.py"), "--tiny", "--threads", "1"]
    command += ["--out", str(tmp_path / "runs")]
    first, again = (subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600) for _ in "12")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("teacher: training") == 1  # the second study reuses the first one's teacher
    out = first.stdout
    assert "'smoke' (resnet), 'smoke-mbconv' (mbconv)" in out and "latency on onnxruntime" in out
    assert re.search(r"smoke-mbconv +0 +2 +0 +[\d.]+ +\d+ +[\d.]+ +[\d.]+ +[\d.]+%", out), out
    assert "accuracy-vs-latency front of 'smoke-mbconv', seed 0" in out
    assert re.search(r"mbconv x0\.5 (relu|hardswish) d1-1-1-1 e3-3-3-3 k3-3-3-3 se0-0-0-0", out), out
    assert "best validation accuracy within a latency budget" in out
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.db")) == ["smoke-0.db", "smoke-mbconv-0.db"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial   0" not in again.stderr and again.stdout == first.stdout


def test_families_bench_refuses_studies_that_differ_beyond_their_students(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "families.py"), "--studies", "fashion,smoke"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: 'smoke' and 'fashion' differ in [data]: the bench compares studies that differ only in [student]"
    ]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.needs("dataset-fashion-mnist", "chromium")
def test_methods_bench_runs_every_method_over_seeds_keeps_records_and_refuses_other_settings(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "methods.py"), "--tiny", "--threads", "1", "--out", "runs"]
    first = subprocess.run([*command, "--record", "kept"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    # An AVX-512 CPU starts the bench again on AVX2 kernels, so it trains what the AVX2 machines do.
    kernels = re.search(r"^kdnas methods bench: torch \S+ \((\S+) kernels\)", out, re.M)
    assert kernels and kernels[1] != "AVX512", out
    assert first.stderr.count("teacher: training") == 1  # one teacher for every method and seed
    # Random search runs first on each seed; its compute is every method's budget there.
    assert "methods: random, seed 0 (run 1 of 10; time left: known once this invocation has trained)" in first.stderr
    last = r"methods: kdnas-no-es, seed 1 \(run 10 of 10; \d+% of the compute spent, about \d+ min \d+ s left\)"
    assert re.search(last, first.stderr), first.stderr
    rows = {}
    for method in ("kdnas", "random", "arch-then-kd", "fixed-kd", "kdnas-no-es"):
        row = re.search(rf"^{method} +[\d.]+ \+- [\d.]+ +[\d.]+ \+- [\d.]+ +([\d.]+) \+- [\d.]+ +([\d.]+) ", out, re.M)
        assert row, out
        rows[method] = float(row[1]), float(row[2])  # TFLOP, trials
    assert all(trials >= 2 for _, trials in rows.values()), out
    assert re.search(r"^teacher: \d+\.\d\d% test accuracy, weights [0-9a-f]{12} \(10 of 10 runs\)$", out, re.M), out
    assert rows["kdnas"][0] >= rows["random"][0], out  # grown to random's compute, not stopped at 2 trials
    assert re.search(r"^random .* \d+% \+- \d+% of random's compute \(2 of 2 seeds\)$", out, re.M), out
    assert not re.search(r"HV latency\n(.*\n)*.* 0\.0000 \+- 0\.0000 ", out)  # the trials lie inside the reference
    assert re.search(r"^kdnas-no-es +[\d.]+ \+- ([\d.]+% \(2\)|-% \(1\)) +[\d.]+ \+- [\d.]+% \(2\)$", out, re.M), out
    # kdnas minus each method, seed by seed: over the same seeds the mean difference is the difference of means.
    hv = {m: float(re.search(rf"^{m} +([\d.]+) \+- ", out, re.M)[1]) for m in ("kdnas", "random")}
    paired = re.search(r"^random +([+-][\d.]+) \+- [\d.]+ \(([012])/2\) ", out, re.M)
    assert paired, out
    assert abs(float(paired[1]) - (hv["kdnas"] - hv["random"])) <= 2e-4, out
    assert not re.search(r"^kdnas +[+-]", out, re.M)  # kdnas is not compared with itself
    # Each seed alone, every method: the summary's means are their means.
    seed_row = r"^([a-z-]+) +([01]) +([\d.]+) +[\d.]+ +[\d.]+ +\d+ +\d+ +\d+ +(\d+) +(-|[\d.]+%) "
    per_seed = re.findall(seed_row, out, re.M)
    assert sorted((m, int(seed)) for m, seed, *_ in per_seed) == sorted((m, s) for m in rows for s in (0, 1)), out
    per_seed_hv = {(m, int(seed)): float(value) for m, seed, value, *_ in per_seed}
    assert abs((per_seed_hv["kdnas", 0] + per_seed_hv["kdnas", 1]) / 2 - hv["kdnas"]) <= 1e-4, out
    for method in rows:  # the seeds on which a method reached random's final HV, as the summary counts them
        reached = re.search(rf"^{method} .*\((\d) of 2 seeds\)$", out, re.M)
        assert int(reached[1]) == sum(reach != "-" for m, *_, reach in per_seed if m == method), out
    assert all(int(networks) >= 1 for _, _, _, networks, _ in per_seed), out
    assert "too few finished trials to fit" in out  # 2 random trials per seed: no fit of what KD is worth
    retrained = tmp_path / "runs" / "retrained"  # weights only: the bench reads the accuracy, exports nothing
    assert sorted({p.name for p in retrained.rglob("student.*")}) == ["student.pt"]
    # The figure page, opened in a real browser: both figures drawn, no console errors.
    page = open_in_chromium(tmp_path / "runs" / "methods.html", tmp_path / "profile", "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    assert rendered_figures(page.stdout) == {"fig-params": True, "fig-latency": True}
    assert console_messages(page.stderr) == []
    # --no-train reports the finished seeds as they are; a folder with none is one line.
    kept = subprocess.run([*command, "--no-train"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert kept.returncode == 0 and kept.stdout == out, kept.stderr[-3000:]
    empty = [*command[:-1], "empty", "--no-train"]
    nothing = subprocess.run(empty, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines()[-1] == (
        "error: no seed is finished in empty; run without --no-train to train them"
    )
    # Again: every run and retrained student is read back, nothing trained, the same figures.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(run 1 of 10; time left: known once this invocation has trained)" in again.stderr
    assert "training" not in again.stderr
    assert again.stdout == out
    # On another machine, where --out starts empty, the records alone give the same figures.
    assert len(list((tmp_path / "kept").glob("*-[01].json"))) == 10
    elsewhere = [*command[:-1], "elsewhere", "--record", "kept", "--no-train"]
    moved = subprocess.run(elsewhere, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "methods: kdnas-no-es, seed 1 (run 10 of 10): read from kept" in moved.stderr
    assert moved.stdout == out.replace("in runs", "in elsewhere").replace("runs/", "elsewhere/"), moved.stdout
    # The same folder with another budget is refused in one line, before anything is trained.
    other = subprocess.run([*command, "--trials", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert other.returncode == 1
    assert other.stderr.strip().splitlines() == [
        "error: runs holds runs made with other settings (study.budget.trials: 2 there, 4 here); pass another "
        "--out, or the options those runs were made with"
    ]
    records_elsewhere = [*command[:-1], "third", "--record", "kept", "--no-train", "--trials", "4"]
    other = subprocess.run(records_elsewhere, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert other.returncode == 1
    assert other.stderr.strip().splitlines() == [
        "error: kept holds records made with other settings (study.budget.trials: 2 there, 4 here); pass another "
        "--record, or the options those records were made with"
    ]


def test_an_unfinished_run_resumes_elsewhere_with_its_running_trial_queued_again(tmp_path: Path) -> None:
    out, record, elsewhere = tmp_path / "out", tmp_path / "record", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "latency.json").write_text('{"cpu, batch 1": {"resnet w8": 1.5}}')
    smoke = load_study("smoke")
    cfg = dataclasses.replace(smoke, teacher=dataclasses.replace(smoke.teacher, checkpoint=str(out / "teacher.pt")))
    db = out / "kdnas-0.db"
    study = optuna.create_study(study_name=cfg.name, storage=f"sqlite:///{db}", directions=["maximize", "minimize"])
    study.set_user_attr("teacher", {"test_accuracy": 0.7})
    store_config(study, cfg)  # as kdnas stores it
    width = {"width": optuna.distributions.IntDistribution(8, 16)}
    study.tell(study.ask(width), [0.5, 100])
    study.enqueue_trial({"width": 12})
    study.enqueue_trial({"width": 16})
    running = study.ask(width)  # the first queued candidate, on a machine that then goes away
    running.set_user_attr("worker", "gone-host:123")

    assert unfinished.save(db, cfg, out, record, "kdnas-0") == 4  # the running trial failed, queued again
    assert str(tmp_path) not in unfinished.journal_path(record, "kdnas-0").read_text()  # no machine's path
    here = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, checkpoint=str(elsewhere / "teacher.pt")))
    assert unfinished.restore(elsewhere / "kdnas-0.db", here, elsewhere, record, "kdnas-0") == 4
    resumed = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{elsewhere / 'kdnas-0.db'}")
    states = [trial.state.name for trial in resumed.trials]
    assert states == ["COMPLETE", "FAIL", "WAITING", "WAITING"]
    assert [resumed.ask(width).params["width"] for _ in "12"] == [16, 12]
    assert resumed.user_attrs["teacher"] == {"test_accuracy": 0.7}
    assert resumed.user_attrs["config"]["teacher"]["checkpoint"] == str(elsewhere / "teacher.pt")
    assert resumed.user_attrs["space_hash"] == search_space_hash(here)  # kdnas resumes it as its own
    assert (elsewhere / "latency.json").read_text() == (out / "latency.json").read_text()
    assert study.trials[1].state == optuna.trial.TrialState.RUNNING  # the run saved is left as it was

    # A folder that already holds the run keeps it; trials kept with other settings are refused.
    assert unfinished.restore(elsewhere / "kdnas-0.db", here, elsewhere, record, "kdnas-0") == 0
    longer = dataclasses.replace(here, train=dataclasses.replace(here.train, epochs=here.train.epochs + 1))
    with pytest.raises(SystemExit, match=r"^error: .*kdnas-0\.journal holds trials made with other settings; "):
        unfinished.restore(tmp_path / "third.db", longer, tmp_path, record, "kdnas-0")
    assert not (tmp_path / "third.db").exists()
    # A finished run's kept trials go.
    unfinished.forget(record, "kdnas-0")
    assert not (record / unfinished.FOLDER).exists()


def test_a_run_kept_from_another_teacher_is_refused_with_the_files_a_redo_deletes(tmp_path: Path, monkeypatch) -> None:
    # The refusal itself is kdnas's (tests/test_search.py); the bench adds what a redo of the run must delete.
    import kdnas.runner
    from kdnas.errors import TeacherChanged

    def another_teacher(*args, **kwargs):
        raise TeacherChanged("the 3 finished trials ... another --out")

    monkeypatch.setattr(kdnas.runner, "run_search", another_teacher)
    journal = tmp_path / "kdnas-0.journal"
    journal.write_text("")
    storage = tmp_path / "kdnas-0.db"
    with pytest.raises(SystemExit) as stopped:
        search(load_study("smoke"), tmp_path, storage, tmp_path, journal)
    assert str(stopped.value) == (
        f"error: the 3 finished trials ... another --out; to redo this run here instead, delete {storage} and {journal}"
    )
    journal.unlink()  # nothing kept elsewhere: only the storage goes
    with pytest.raises(SystemExit, match=f"delete {re.escape(str(storage))}$"):
        search(load_study("smoke"), tmp_path, storage, tmp_path, journal)


def test_compute_counts_trained_epochs_not_duplicates_nor_the_interrupted_trial_its_retry_trains_again() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "trial": [0, 1, 2, 3],
            "status": ["complete", "worker died", "complete", "duplicate"],
            "epochs": [2, 1, 2, 2],
            "macs": [1e6, 2e6, 2e6, 1e6],
            "val_accuracy": [0.5, 0.3, 0.6, 0.5],
            "params": [1000, 2000, 2000, 1000],
        }
    )
    cost, hv = compute_curve(frame, load_study("smoke"), 100)
    assert cost == [1.2e9, 1.2e9, 3.6e9, 3.6e9]  # 6 FLOPs per MAC and image
    assert hv[0] == hv[1] < hv[2] == hv[3]


def test_saving_unfinished_runs_needs_a_record_folder(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["methods.py", "--tiny", "--out", "runs", "--save-unfinished"])
    with pytest.raises(SystemExit, match=r"^error: --save-unfinished keeps runs in --record; pass --record FOLDER$"):
        methods._parse_args()


def test_kd_effect_finds_where_distillation_pays_and_where_it_hurts() -> None:
    import numpy as np
    import pandas as pd

    # Random-search-like trials whose truth is known: distilling helps students below ~63k parameters and hurts
    # those above, in proportion to alpha (decay applied), and the temperature does nothing.
    rng = np.random.default_rng(1)
    n = 200
    params = np.exp(rng.uniform(np.log(2e4), np.log(2e5), n))
    alpha = rng.choice(np.linspace(0.0, 1.0, 11), n)
    decay = rng.choice(["none", "linear"], n)
    mean = np.array([mean_alpha(4.0, a, d, 1.0) for a, d in zip(alpha, decay, strict=True)])
    pivot = np.log(params / 63_246)
    accuracy = 0.5 + 0.05 * pivot - 0.1 * mean * pivot + rng.normal(0, 0.005, n)
    frame = pd.DataFrame(
        {"status": "complete", "val_accuracy": accuracy, "params": params, "alpha": alpha, "alpha_decay": decay,
         "decay_rate": 1.0, "temperature": np.exp(rng.uniform(0, np.log(8), n))}
    )  # fmt: skip
    effect = kd_effect(frame, [20_000, 200_000], draws=200)
    small, large = effect.sizes
    assert effect.trials == n
    assert small.best_alpha[0] == 1.0 and large.best_alpha[0] == 0.0
    assert small.best_gain[1] < 0.1151 < small.best_gain[2]  # 0.1 * ln(63,246 / 20,000)
    assert large.best_gain[0] == 0.0
    assert large.usual_gain[1] < -0.1036 < large.usual_gain[2]  # alpha 0.9 throughout: -0.09 * ln(200,000 / 63,246)
    assert abs(effect.per_temperature_doubling[0]) < 0.002  # T does nothing: under 0.2 points per doubling
    assert mean_alpha(4.0, 0.9, "none", 1.0) == pytest.approx(0.9)
    assert mean_alpha(4.0, 0.9, "linear", 1.0) == pytest.approx(0.45)  # decayed to zero at the end: half on average
    assert kd_effect(frame.head(11), [20_000]) is None  # too few trials to fit six coefficients


def test_each_method_changes_only_its_own_part_of_the_study() -> None:
    base = load_study("cifar-cpu")
    kdnas = methods.method_study(base, "kdnas", 3)
    assert (kdnas.seed, kdnas.name) == (3, "cifar-cpu-kdnas")
    usual = methods.method_study(base, "kdnas-usual", 3)
    assert usual.sampler.startup == "usual" and kdnas.sampler.startup == "pairs"
    assert dataclasses.replace(usual, name=kdnas.name, sampler=kdnas.sampler) == kdnas
    assert methods.ISSUE_METHODS == ["kdnas", "random", "arch-then-kd", "fixed-kd", "kdnas-no-es"]  # the default


def test_the_methods_bench_holds_avx512_cpus_to_avx2_kernels_unless_the_user_chose() -> None:
    assert methods.avx2_kernel_environment("AVX512", {"PATH": "/bin"}) == {"PATH": "/bin", **methods.AVX2_KERNELS}
    assert methods.avx2_kernel_environment("AVX2", {"PATH": "/bin"}) is None  # already trains as AVX2 machines do
    assert methods.avx2_kernel_environment("AVX512", {"ATEN_CPU_CAPABILITY": "avx512"}) is None


def test_methods_bench_regimes_set_the_teacher_checkpoint_and_the_students_epochs(tmp_path, monkeypatch) -> None:
    (tmp_path / "teacher.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    options = {"study": "fashion", "limit_train": 12_000, "trials": 0, "no_train": False, "save_unfinished": False}
    options |= {"precision": "float32", "out": Path("runs"), "teacher_all_images": False}
    default = methods._base_study(argparse.Namespace(**options, epochs=0, teacher_checkpoint=None))
    assert (default.train.epochs, default.teacher.checkpoint) == (load_study("fashion").train.epochs, None)
    # The study says "auto", which is bfloat16 on some CPUs: every machine's runs must train alike.
    assert load_study("fashion").train.precision == "auto"
    assert default.train.precision == default.teacher.train.precision == "float32"
    strong = methods._base_study(argparse.Namespace(**options, epochs=9, teacher_checkpoint=Path("teacher.pt")))
    assert (strong.train.epochs, strong.data.limit_train) == (9, 12_000)
    assert strong.teacher.checkpoint == str(tmp_path.resolve() / "teacher.pt")  # found from any folder
    with pytest.raises(SystemExit, match=r"^error: --teacher-checkpoint gone.pt is not a file; pass a state dict$"):
        methods._base_study(argparse.Namespace(**options, epochs=0, teacher_checkpoint=Path("gone.pt")))
    options["teacher_all_images"] = True  # trained later, by the first run that trains
    strong = methods._base_study(argparse.Namespace(**options, epochs=9, teacher_checkpoint=None))
    assert strong.teacher.checkpoint == str(tmp_path.resolve() / "runs" / "teacher-all-images" / "teacher.pt")
    both = ["--teacher-all-images", "--teacher-checkpoint", "t.pt"]
    monkeypatch.setattr(sys, "argv", ["methods.py", "--out", "runs", *both])
    with pytest.raises(SystemExit, match=r"^error: --teacher-checkpoint and --teacher-all-images both name the"):
        methods._parse_args()


@pytest.mark.needs("dataset-fashion-mnist")
def test_all_images_train_the_teacher_a_search_trains(finished_smoke_study, tmp_path) -> None:  # noqa: F811
    """--teacher-all-images: the strong regime's teacher is the study's own, bit for bit, not one like it."""
    trained = train_teacher(load_study("smoke"), tmp_path / "teacher", Path("data"))
    searched = finished_smoke_study.run_dir / "teacher.pt"
    assert trained == tmp_path / "teacher" / "teacher.pt"
    weights = [read_torch_dict(path, TEACHER_FORMAT)["weights_sha256"] for path in (trained, searched)]
    assert weights[0] == weights[1]


def test_methods_bench_prints_the_strong_records_without_their_teacher(tmp_path: Path) -> None:
    """The docs' strong-regime table is printed from the records on any machine: --no-train reads no teacher."""
    record = ROOT / "docs" / "bench-methods" / "cifar-strong"
    options = ["--study", "cifar-cpu", "--limit-train", "10000", "--epochs", "12", "--seeds", "2"]
    command = [sys.executable, str(ROOT / "bench" / "methods.py"), *options, "--record", str(record)]
    absent = ["--teacher-checkpoint", "absent/teacher.pt", "--out", "out", "--no-train"]
    done = subprocess.run([*command, *absent], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher: 87.67% test accuracy, weights 03607e454a24 (10 of 10 runs)" in done.stdout
    assert (tmp_path / "out" / "methods.html").is_file() and not (tmp_path / "absent").exists()


@pytest.mark.slow
def test_startup_bench_fits_the_records_and_runs_every_design(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "startup.py"), "--study", "cifar-cpu", "--seeds", "2"]
    record = ROOT / "docs" / "bench-methods" / "cifar-weak"
    done = subprocess.run([*command, "--record", str(record), "--kd-scale", "-1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^surrogate: \d+ finished trials of 24 networks in .*; residual sd [\d.]+ points", out, re.M), out
    assert "== what distillation is worth x -1; 2 simulated seeds" in out, out
    rows = re.findall(r"^(random|tpe-\w+|fixed-kd) +[\d.]+ \+- [\d.]+ .* ([\d.]+) +([\d.]+)$", out, re.M)
    assert [name for name, *_ in rows] == ["random", "tpe-random", "tpe-pairs", "tpe-usual", "fixed-kd"], out
    assert all(float(networks) <= 24 for *_, networks in rows), out  # cifar-cpu holds 24 networks
    assert all(float(trials) == 20 for name, trials, _ in rows if name == "random"), out
    paired = re.findall(r"^(random|tpe-\w+|fixed-kd) +[+-][\d.]+ \+- [\d.]+ \((\d)/(\d)\)", out, re.M)
    assert [name for name, *_ in paired] == ["random", "tpe-random", "tpe-usual", "fixed-kd"], out  # minus pairs
    assert all(int(ahead) <= int(compared) == 2 for _, ahead, compared in paired), out
    # The strong regime's seeds 0 and 1 hold a network that was only ever stopped early: it is simulated too.
    strong = tmp_path / "strong"
    strong.mkdir()
    for path in (ROOT / "docs" / "bench-methods" / "cifar-strong").glob("*-[01].json"):
        shutil.copy(path, strong)
    one = subprocess.run(
        [*command[:-1], "1", "--record", str(strong), "--startup-trials", "4"], capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert re.search(r"^surrogate: .* of 24 networks in .* \(1 only stopped early: base from a line", one.stdout, re.M)
    empty = subprocess.run([*command, "--record", str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode != 0 and empty.stderr.strip().count("\n") == 0, empty.stderr
    assert "holds no records of bench/methods.py" in empty.stderr


def test_latencies_of_runs_timed_elsewhere_are_taken_from_random_search_s_seed_0_machine() -> None:
    """Records come from several machines, whose networks' latencies relative to their references differ:
    one machine's figures make the latency hypervolumes compare."""
    import pandas as pd

    def run(reference: float, archs: list[str], latencies: list[float]) -> methods.MethodRun:
        frame = pd.DataFrame({"arch": archs, "latency_ms": latencies})
        return methods.MethodRun(None, frame, len(archs), 0.0, {"latency_ms": reference}, "", {}, {}, True)

    nan = float("nan")
    runs = {
        ("random", 0): run(2.0, ["w8", "w12"], [1.0, 1.5]),
        ("fixed-kd", 0): run(2.0, ["w16"], [1.8]),  # the same machine: its networks join the yardstick
        ("kdnas", 0): run(1.0, ["w8", "w16", "w8"], [0.4, 0.9, nan]),  # a duplicate has no latency
        ("kdnas", 1): run(1.0, ["w8", "w32"], [0.4, 0.95]),  # w32 never timed on seed 0's machine
    }
    same, own = one_machine_latencies(runs)
    assert same["random", 0] is runs["random", 0] and same["fixed-kd", 0] is runs["fixed-kd", 0]
    assert same["kdnas", 0].references["latency_ms"] == 2.0
    assert same["kdnas", 0].frame["latency_ms"].tolist()[:2] == [1.0, 1.8]
    assert math.isnan(same["kdnas", 0].frame["latency_ms"].iloc[2])
    assert same["kdnas", 1] is runs["kdnas", 1] and own == 1


def test_mean_interval_uses_students_t() -> None:
    assert mean_interval([1.0]) == (1.0, 0.0)
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.30 * 1.0 / 3**0.5)


def test_one_seed_shows_no_interval() -> None:
    assert with_interval([0.5], ".4f") == "0.5000 +- -"  # not "+- 0.0000", which claims certainty
    assert with_interval([0.50, 0.52], "6.2f", 100) == " 51.00 +- 12.71"
    assert with_interval([-1.0, 1.0], "+.1f") == "+0.0 +- 12.7"  # a half-width has no sign


def test_rank_correlation_is_spearmans() -> None:
    assert rank_correlation([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)  # one swap
    assert rank_correlation([1.0, 2.0, 3.0], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)


@pytest.mark.slow
@pytest.mark.needs("dataset-fashion-mnist")
def test_bench_replay_only_trains_no_study_with_early_stopping_and_reads_kept_runs_again(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--threads", "1"]
    command += ["--sections", "early-stopping", "--es-replay-only", "--es-dir", str(tmp_path / "es")]
    first, again = (subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600) for _ in "12")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "es-0.db" not in first.stderr and "none-0.db" in first.stderr  # the studies' storages, as logged
    summaries = [line for line in first.stdout.splitlines() if "compute to reach" in line]
    assert [line.split(",")[0] for line in summaries] == ["replayed", "clairvoyant", "bound"], first.stdout
    assert (tmp_path / "es" / "none-0.db").is_file()
    # Run again on the kept folder: no teacher, no trial trained again; the same figures.
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teacher: training" in first.stderr and "teacher: training" not in again.stderr
    assert "trial   0" in first.stderr and "trial   0" not in again.stderr
    assert again.stdout == first.stdout


def _trained(number: int, params: int, curve: list[float], status: str = "complete") -> optuna.trial.FrozenTrial:
    attrs = {"status": status, "params": params, "latency_ms": 1.0, "macs": 1000, "val_curve": curve}
    return optuna.trial.create_trial(
        values=[curve[-1], params],
        params={"w": float(number)},
        distributions={"w": optuna.distributions.FloatDistribution(0, 100)},
        user_attrs=attrs,
    )


def test_replay_stops_in_hindsight_the_trials_the_rule_would_have_stopped() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trained(0, 100, [0.80, 0.85, 0.88, 0.90]))
    study.add_trial(_trained(1, 200, [0.60, 0.70, 0.80, 0.95]))  # larger, behind after epoch 1: stops there
    study.add_trial(_trained(2, 50, [0.70, 0.80, 0.82, 0.85]))  # smaller than every trial: goes on
    study.add_trial(_trained(3, 200, [0.60, 0.70, 0.80, 0.95], "duplicate"))  # trial 1 again: stops, costs nothing
    stopper = EarlyStopper(EarlyStopConfig(margin=0.01, sigmas=0), ("val_accuracy", "params"), 4, 6_000)
    replayed = replay_early_stopping(study, stopper).set_index("trial")
    assert list(replayed["status"]) == ["complete", "stopped", "complete", "stopped"]
    assert list(replayed["epochs"]) == [4, 1, 4, 0]
    assert replayed.at[1, "val_accuracy"] == 0.60  # the accuracy where it stopped, not its final one


def test_the_bound_stops_after_min_epochs_exactly_the_trials_off_the_final_front() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trained(0, 100, [0.80, 0.85, 0.88, 0.90]))
    study.add_trial(_trained(1, 200, [0.85, 0.87, 0.88, 0.89]))  # larger and less accurate in the end: off the front
    study.add_trial(_trained(2, 50, [0.70, 0.80, 0.82, 0.85]))
    study.add_trial(_trained(3, 300, [0.60, 0.70, 0.80, 0.95]))  # behind early, the most accurate in the end
    bound = stopped_in_hindsight(trials_frame(study), min_epochs=2).set_index("trial")
    assert list(bound["status"]) == ["complete", "stopped", "complete", "complete"]
    assert list(bound["epochs"]) == [4, 2, 4, 4]


def test_the_clairvoyant_rule_stops_at_once_exactly_the_trials_that_end_beaten_by_an_earlier_one() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trained(0, 100, [0.80, 0.85, 0.88, 0.90]))
    study.add_trial(_trained(1, 200, [0.85, 0.86, 0.865, 0.87]))  # ahead early, ends behind trial 0
    study.add_trial(_trained(2, 300, [0.60, 0.70, 0.80, 0.95]))  # behind early, ends ahead of all
    study.add_trial(_trained(3, 250, [0.70, 0.80, 0.85, 0.895]))  # ends behind trial 0 by less than the margin
    study.add_trial(_trained(4, 50, [0.70, 0.75, 0.78, 0.80]))  # beaten by no smaller trial
    study.add_trial(_trained(5, 500, [0.70, 0.80, 0.85, 0.92]))  # ends beaten by trial 2 only
    stopper = EarlyStopper(EarlyStopConfig(margin=0.02, min_epochs=2), ("val_accuracy", "params"), 4, 6_000)
    replayed = replay_early_stopping(study, Clairvoyant(stopper, study)).set_index("trial")
    assert list(replayed["status"]) == ["complete", "stopped", "complete", "complete", "complete", "stopped"]
    assert list(replayed["epochs"]) == [4, 2, 4, 4, 4, 2]


def test_decode_bench_prints_the_first_and_the_second_start(tmp_path: Path) -> None:
    from test_imagefolder import SHARED_DATA

    archive = SHARED_DATA / "cifar10-train.tar"
    if not archive.is_file():
        pytest.skip(f"{archive} is not there (../shared beside the repository)")
    command = [sys.executable, str(ROOT / "bench" / "decode.py"), "--archive", str(archive), "--limit", "600"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"600 images: first start [\d.]+ s \(decoding\), second start [\d.]+ s", done.stdout)
    assert list(tmp_path.iterdir()) == []
