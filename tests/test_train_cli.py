"""kdnas.train: bad student files are refused in one line; a real exported student retrains exactly."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from _study_fixture import finished_smoke_study, synthetic_study  # noqa: F401  (a fixture)

from kdnas import export, student_file, train
from kdnas.data import load_data
from kdnas.files import file_sha256
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.teacher import teacher_fingerprint

# ---------------------------------------------------------------------------------------------------
# Bad input: nothing is loaded or written
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_record(tmp_path_factory) -> dict:
    """A valid export of hand-made trial 3 (whose recorded parameter count is made up: 5,000)."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    synthetic_study(run_dir)
    out = run_dir / "s.json"
    assert export.main(["--study", "smoke", "--run-dir", str(run_dir), "--trial", "3", "--out", str(out), "-q"]) == 0
    return json.loads(out.read_text())


def _edited(record: dict, path: str, value) -> dict:
    """A deep copy of ``record`` with the dotted ``path`` set to ``value``, or removed when value is ...."""
    copy = json.loads(json.dumps(record))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return copy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param("{not json", "is not valid JSON", id="malformed"),
        pytest.param({"hello": 1}, 'is not a kdnas student file (no "format": "kdnas-student/1")', id="not-a-student"),
        pytest.param(
            ("format", "kdnas-student/2"),
            "has format 'kdnas-student/2', but this kdnas reads 'kdnas-student/1'; export it again with this version",
            id="unknown-version",
        ),
        pytest.param(("arch", ...), "missing key 'arch'", id="no-arch"),
        pytest.param(("arch.spec.base_width", 0), "invalid architecture: base_width=0", id="zero-width"),
        pytest.param(("arch.spec.blocks", []), "invalid architecture: base_width=4, blocks=[]", id="no-blocks"),
        pytest.param(
            ("arch.spec.blocks", [1, "2"]), "invalid architecture: base_width=4, blocks=[1, '2']", id="blocks-type"
        ),
        pytest.param(("arch.spec.base_width", 4.5), "invalid architecture: base_width=4.5", id="float-width"),
        pytest.param(
            ("arch.spec.blocks", ...), "arch resnet {'base_width': 4} does not build (KeyError", id="no-blocks-key"
        ),
        pytest.param(("arch.depth", 3), "unknown key 'depth' in [arch]", id="unknown-arch-key"),
        pytest.param(("arch.family", "vgg"), "unknown student family 'vgg'", id="unknown-family"),
        pytest.param(
            ("arch.family", "import:nowhere_at_all:Space"), "module 'nowhere_at_all' does not import", id="import"
        ),
        pytest.param(("arch.num_classes", 100), "but fashion_mnist has 1 and 10", id="wrong-classes"),
        pytest.param(("kd.alpha", 2.0), "alpha must be in [0, 1], got 2.0", id="alpha"),
        pytest.param(("kd.alpha_decay", "step"), "unknown alpha schedule 'step'", id="schedule"),
        pytest.param(("config.train.epochs", 0), "[train] epochs must be at least 1", id="recipe"),
        pytest.param(("measured.params", "5k"), "measured.params must be of type int", id="measured"),
        pytest.param(None, "has 5,142 parameters but the search measured 5,000 for trial 3", id="param-count"),
    ],
)
def test_train_refuses_bad_student_files_in_one_line(synthetic_record, tmp_path, capsys, edit, message):
    config = tmp_path / "student.json"
    if isinstance(edit, str):
        config.write_text(edit)
    else:
        record = (
            edit if isinstance(edit, dict) else synthetic_record if edit is None else _edited(synthetic_record, *edit)
        )
        config.write_text(json.dumps(record))
    out = tmp_path / "out"
    assert train.main(["--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_train_refuses_a_missing_file_and_bad_epochs(tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err == f"error: cannot read {tmp_path / 'nope.json'}: No such file or directory\n"
    assert train.main(["--config", str(tmp_path / "nope.json"), "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "error: --epochs must be at least 1, got 0\n"


# ---------------------------------------------------------------------------------------------------
# A real student from the smoke study
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(finished_smoke_study, tmp_path_factory) -> Path:  # noqa: F811
    """The export of the smoke study's first distilled student: the teacher checks below need one."""
    import optuna

    path = tmp_path_factory.mktemp("student") / "best_student.json"
    storage = f"sqlite:///{finished_smoke_study.run_dir / 'study.db'}"
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    distilled = next(t.number for t in trials if t.params.get("alpha", 0) > 0)
    argv = [
        "--study",
        "smoke",
        "--run-dir",
        str(finished_smoke_study.run_dir),
        "--trial",
        str(distilled),
        "--out",
        str(path),
    ]
    assert export.main([*argv, "-q"]) == 0
    return path


@pytest.fixture(scope="module")
def trained(exported) -> Path:
    out = exported.parent / "trained"
    assert train.main(["--config", str(exported), "--out", str(out), "--device", "cpu", "--no-progress", "-q"]) == 0
    return out


def test_train_reproduces_the_searched_accuracy_and_size(exported, trained):
    measured = json.loads(exported.read_text())["measured"]
    result = json.loads((trained / "result.json").read_text())
    assert result["epochs"] == len(measured["val_curve"])
    # Same seed, same views, same soft targets, same CPU: the same numbers, not merely close ones.
    assert result["val_curve"] == measured["val_curve"]
    assert result["params"] == measured["params"]
    assert 0 < result["test_accuracy"] <= 1


def test_train_times_the_student_on_the_studys_runtime_beside_the_searched_figure(exported, trained):
    measured = json.loads(exported.read_text())["measured"]
    result = json.loads((trained / "result.json").read_text())
    assert result["latency_runtime"] == measured["latency_runtime"] == "torch"
    assert result["searched_latency_ms"] == measured["latency_ms"] > 0 and result["latency_ms"] > 0
    assert measured["latency_anchor_ms"] > 0  # the search recorded the anchor figure its latencies are scaled to


def test_train_times_the_onnx_file_it_wrote_with_the_studys_command(exported, tmp_path, capsys):
    # The command prints 1.25 ms for the student.onnx kdnas.train wrote and 2.5 ms for the anchor network
    # timed beside it; the machine ran twice as fast when the search timed the anchor at 1.25 ms.
    out = tmp_path / "trained"
    onnx = str((out / "student.onnx").resolve())
    check = f"import sys; print('p50', 1.25 if sys.argv[1] == {onnx!r} else 2.5, 'ms')"
    record = json.loads(exported.read_text())
    record["config"]["latency"] = {"runtime": "command", "command": shlex.join([sys.executable, "-c", check, "{onnx}"])}
    record["measured"]["latency_anchor_ms"] = 1.25
    config = tmp_path / "student.json"
    config.write_text(json.dumps(record))
    argv = ["--config", str(config), "--out", str(out), "--device", "cpu", "--epochs", "1", "--no-progress", "-q"]
    assert train.main(argv) == 0
    assert json.loads((out / "result.json").read_text())["latency_ms"] == 0.625  # in the search's machine state
    searched = record["measured"]["latency_ms"]
    assert f", latency 0.625 ms on command (searched {searched:.3f} ms), 1 epochs;" in capsys.readouterr().out


def test_saved_weights_rebuild_the_student(exported, trained):
    blob = torch.load(trained / "student.pt", weights_only=True)
    assert blob["format"] == "kdnas-student-weights/1"
    model = build_model(ArchSpec.from_dict(blob["arch"], "arch"))
    model.load_state_dict(blob["state_dict"])
    assert count_params(model) == json.loads(exported.read_text())["measured"]["params"]
    assert blob["student"] == json.loads(exported.read_text())


def test_exported_programs_match_the_weights(trained):
    import numpy as np
    import onnx
    import onnxruntime

    blob = torch.load(trained / "student.pt", weights_only=True)
    model = build_model(ArchSpec.from_dict(blob["arch"], "arch"))
    model.load_state_dict(blob["state_dict"])
    images = torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float()
    mean, std = (255 * torch.tensor(blob["input"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.inference_mode():
        expected = model.eval()((images - mean) / std)
        program = torch.export.load(trained / "student.pt2").module()
        torch.testing.assert_close(program(images), expected, rtol=1e-4, atol=1e-4)
        assert program(images[:1]).shape == (1, 10)  # any batch size
    onnx.checker.check_model(onnx.load(trained / "student.onnx"), full_check=True)
    session = onnxruntime.InferenceSession(trained / "student.onnx", providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("fingerprint", "0000000000000000", "the export recorded 0000000000000000", id="fingerprint"),
        pytest.param("sha256", "0" * 64, "was rewritten since the export", id="file-hash"),
    ],
)
def test_train_refuses_another_teacher(exported, tmp_path, capsys, key, value, message):
    config = tmp_path / "student.json"
    config.write_text(json.dumps(_edited(json.loads(exported.read_text()), f"teacher.{key}", value)))
    out = tmp_path / "out"
    assert train.main(["--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: teacher mismatch: ") and message in err and err.count("\n") == 1
    assert "--allow-teacher-mismatch" in err
    assert not out.exists()


def test_train_refuses_a_teacher_file_trained_for_other_settings(exported, tmp_path, capsys):
    record = json.loads(exported.read_text())
    blob = torch.load(record["teacher"]["path"], weights_only=True)
    other = tmp_path / "teacher.pt"
    torch.save({**blob, "fingerprint": "fedcba9876543210"}, other)
    record["teacher"].update(path=str(other), sha256=file_sha256(other))
    config = tmp_path / "student.json"
    config.write_text(json.dumps(record))
    assert train.main(["--config", str(config), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{other} holds a teacher with fingerprint fedcba9876543210, trained for other settings" in err
    assert not (tmp_path / "out").exists()


def checkpoint_export(exported: Path, folder: Path) -> tuple[Path, Path]:
    """The export of a study whose ``[teacher] checkpoint`` is a copy of ``exported``'s teacher, as the search
    and export would have written it; returns (student file, checkpoint)."""
    record = json.loads(exported.read_text())
    checkpoint = folder / "checkpoint.pt"
    shutil.copyfile(record["teacher"]["path"], checkpoint)
    record["config"]["teacher"]["checkpoint"] = str(checkpoint)
    config = folder / "student.json"
    config.write_text(json.dumps(record))
    cfg = student_file.read_student(config).cfg
    sha256 = file_sha256(checkpoint)
    fingerprint = teacher_fingerprint(cfg.teacher, load_data(cfg.data, Path("data")).fingerprint, sha256)
    record["teacher"].update(path=str(checkpoint), sha256=sha256, fingerprint=fingerprint)
    config.write_text(json.dumps(record))
    return config, checkpoint


def test_check_teacher_accepts_the_exported_checkpoint(exported, tmp_path):
    config, checkpoint = checkpoint_export(exported, tmp_path)
    student = student_file.read_student(config)
    data = load_data(student.cfg.data, Path("data"))
    teacher = train.check_teacher(student, data, torch.device("cpu"), allow_mismatch=False)
    assert teacher.path is None  # used as it is, not trained
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in teacher.model.state_dict().items())


def test_train_refuses_a_teacher_checkpoint_replaced_in_place(exported, tmp_path, capsys):
    config, checkpoint = checkpoint_export(exported, tmp_path)
    recorded = json.loads(config.read_text())["teacher"]["spec"]
    spec = ArchSpec.from_dict(recorded, "spec")
    torch.manual_seed(1)
    torch.save(build_model(spec).state_dict(), checkpoint)  # same path and architecture, other weights
    out = tmp_path / "out"
    assert train.main(["--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: teacher mismatch: {checkpoint} was rewritten since the export (its SHA-256 differs): a retrained "
        "or replaced teacher. The student would learn from other soft targets than in the search; search and "
        "export again, or pass --allow-teacher-mismatch\n"
    )
    assert not out.exists()


def test_allow_teacher_mismatch_warns_and_uses_the_teacher(exported, tmp_path, caplog):
    config = tmp_path / "student.json"
    config.write_text(json.dumps(_edited(json.loads(exported.read_text()), "teacher.sha256", "0" * 64)))
    student = student_file.read_student(config)
    data = load_data(student.cfg.data, Path("data"))
    with caplog.at_level(logging.WARNING):
        teacher = train.check_teacher(student, data, torch.device("cpu"), allow_mismatch=True)
    assert teacher.path == student.teacher_path
    assert "teacher mismatch" in caplog.text and "training anyway" in caplog.text
