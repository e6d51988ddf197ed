"""A study on the user's own image folder, from the search to kdnas.train: the study keeps what the data
is (channels, classes), so reading it back never needs a built-in dataset's description, and a folder
without a test split says that its test accuracy is unavailable instead of printing nan."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from test_imagefolder import write_folder

from kdnas import export, search, train
from kdnas.config import load_study
from kdnas.errors import KdnasError
from kdnas.rundir import load_run
from kdnas.study import stored_data_info

STUDY = """
seed = 0

[data]
dataset = "imagefolder"
path = "shapes"

[teacher]
base_width = 4
blocks = [1, 1]
train = { epochs = 1, batch_size = 32 }

[student]
stages = 2
base_width = { low = 4, high = 8, step = 4 }
blocks = { low = 1, high = 1 }

[train]
epochs = 1
batch_size = 32

[latency]
warmup = 1
repeats = 10
min_time_s = 0

[budget]
trials = 2

[sampler]
startup_trials = 2

[early_stop]
policy = "none"
"""


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    """A finished two-trial study on a 3-class colour folder with train/ and val/ but no test/, searched by
    two worker processes (each reads the decoded images the parent kept)."""
    root = tmp_path_factory.mktemp("folder")
    write_folder(root / "shapes" / "train", {"circle": 40, "square": 40, "star": 40}, size=10)
    write_folder(root / "shapes" / "val", {"circle": 10, "square": 10, "star": 10}, size=10, seed=1)
    study = root / "shapes.toml"
    study.write_text(STUDY)
    out = root / "run"
    argv = ["--study", str(study), "--out", str(out), "--data-dir", str(root), "--workers", "2", "--no-progress"]
    code = search.main(argv)
    assert code == 0
    return root, study, out, "shapes"


def test_the_study_keeps_the_folders_channels_and_classes(folder_run) -> None:
    root, study_file, out, name = folder_run
    info = stored_data_info(load_run(str(study_file), out).study, load_study(str(study_file)))
    assert (info.name, info.in_channels, info.num_classes) == ("imagefolder", 3, 3)
    assert (out / "report.html").is_file()  # the report's hypervolume reference needs the same description


def test_export_and_train_on_a_folder_without_test_images(folder_run, capsys) -> None:
    root, study_file, out, _ = folder_run
    assert export.main(["--study", str(study_file), "--run-dir", str(out)]) == 0
    text = (out / "best_student.json").read_text()
    assert "NaN" not in text  # JSON has no nan: an unmeasured test accuracy is null
    record = json.loads(text)
    assert record["teacher"]["test_accuracy"] is None
    assert (record["data"]["in_channels"], record["data"]["num_classes"]) == (3, 3)
    assert record["arch"]["num_classes"] == 3
    assert record["teacher"]["source"] == "kdnas" and record["config"]["data"]["path"] == "shapes"
    capsys.readouterr()
    code = train.main(
        ["--config", str(out / "best_student.json"), "--data-dir", str(root), "--out", str(root / "student")]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "test accuracy unavailable (no test images)" in printed and "nan" not in printed
    # The images the search decoded are read back from its run directory, not decoded again.
    assert f"decoded images read from {out.resolve()}" in captured.err and "data: decoding" not in captured.err
    assert not list((root / "student").glob("decoded-*"))
    assert json.loads((root / "student" / "result.json").read_text())["test_accuracy"] is None


def test_a_folder_study_from_before_the_data_was_recorded_says_how_to_fix_it(folder_run) -> None:
    _, study_file, out, _ = folder_run
    # A study without the record, in memory: the stored study stays as it is.
    copy = optuna.create_study(directions=load_run(str(study_file), out).study.directions)
    with pytest.raises(KdnasError, match="run kdnas.search on it once more"):
        stored_data_info(copy, load_study(str(study_file)))
