"""Teachers from elsewhere: torchvision, timm and import factories, their input conversion, fine-tuning
when their classes differ, stored and rebuilt with the same weights, and every bad input in one line."""

from __future__ import annotations

import dataclasses
import logging
import sys

import pytest
import torch

from kdnas.config import FinetuneRecipe, StudyConfig, TeacherConfig, TrainRecipe
from kdnas.data import normalize
from kdnas.distill import KDSpec
from kdnas.errors import KdnasError
from kdnas.models import ArchSpec
from kdnas.student_file import StudentFile
from kdnas.teacher import TEACHER_FORMAT, load_stored_teacher, obtain_teacher, teacher_fingerprint
from kdnas.teacher_sources import TEACHER_SOURCES
from kdnas.train import check_teacher

FACTORIES = '''
import torch
from torch import nn


def tiny(classes=10, width=8, channels=3):
    """Solves the quadrant task once trained: a convolution, then one value per quadrant."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, classes),
    )


class Stats(nn.Module):
    """Returns what it was given: per-channel means of its input and the input's side, as (N, 4)."""

    def __init__(self):
        super().__init__()
        self.identity = nn.Conv2d(3, 3, 1, bias=False)  # 3 channels, as the probe sees them
        nn.init.eye_(self.identity.weight.view(3, 3))

    def forward(self, x):
        side = torch.full((len(x), 1), float(x.shape[-1]))
        return torch.cat([self.identity(x).mean((2, 3)), side], 1)


def stats():
    return Stats()


def no_head():
    return nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_module():
    return "a string"
'''

RECIPE = TrainRecipe(epochs=1, batch_size=32, eval_batch_size=64)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module ``kd_factories`` of teacher factories, importable from a folder of its own."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "kd_factories.py").write_text(FACTORIES)
    (folder / "kd_broken.py").write_text("import no_such_dependency_kdnas\n")
    monkeypatch.syspath_prepend(str(folder))
    yield
    for name in ("kd_factories", "kd_broken"):
        sys.modules.pop(name, None)


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


def study(**teacher) -> StudyConfig:
    return StudyConfig(name="sources", teacher=TeacherConfig(train=RECIPE, **teacher))


def imported(factory: str = "kd_factories:tiny", **keys) -> StudyConfig:
    return study(source="import", factory=factory, **keys)


def stored(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_every_source_is_registered():
    assert TEACHER_SOURCES.names() == ["kdnas", "torchvision", "timm", "import"]


# ---------------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------------


def test_torchvision_checkpoint_is_loaded_run_at_its_size_stored_and_reused(tiny_data, out, tmp_path, caplog):
    from torchvision import models

    torch.manual_seed(3)
    net = models.get_model("resnet18", num_classes=4)
    checkpoint = tmp_path / "resnet18.pt"
    torch.save({"model": net.state_dict()}, checkpoint)
    cfg = study(
        source="torchvision", name="resnet18", checkpoint=str(checkpoint), state_dict_key="model", input_size=32
    )
    teacher = obtain_teacher(cfg, tiny_data, out)
    inner = {k.removeprefix("net."): v for k, v in teacher.model.state_dict().items() if k.startswith("net.")}
    assert all(torch.equal(v, inner[k]) for k, v in net.state_dict().items())  # classes fit: nothing fine-tuned
    assert teacher.model.input_size == 32
    assert teacher.summary()["source"] == "torchvision" and teacher.summary()["spec"] is None
    assert teacher.describe() == "torchvision resnet18, at 32 px"
    blob = stored(out / "teacher.pt")
    assert blob["format"] == TEACHER_FORMAT and blob["weights_sha256"] == teacher.weights_sha256
    assert blob["head_classes"] == 4  # the built network's 1000-class fc replaced to take the checkpoint
    with caplog.at_level(logging.INFO):
        again = obtain_teacher(cfg, tiny_data, out)
    assert "teacher: reusing" in caplog.text and again.weights_sha256 == teacher.weights_sha256
    assert again.test_accuracy == teacher.test_accuracy


def test_torchvision_download_that_cannot_happen_names_checkpoint(tiny_data, out, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens there: the download fails at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    cfg = study(source="torchvision", name="resnet18", weights="DEFAULT")
    with pytest.raises(
        KdnasError, match=r"^cannot download the ResNet18_Weights\.IMAGENET1K_V1 weights of resnet18 "
    ) as err:
        obtain_teacher(cfg, tiny_data, out)
    assert 'checkpoint = "file"' in str(err.value) and "\n" not in str(err.value)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (dict(name="resnet81"), r"unknown torchvision model 'resnet81' \(did you mean 'resnet18'\?\)"),
        (dict(name="resnet18", weights="IMAGENET1K_V2"), r"unknown weights of resnet18 'IMAGENET1K_V2' \(did you mean"),
        (dict(name="resnet18", weights="VGG11_Weights.DEFAULT"), r"unknown weights of resnet18"),
        (dict(), r"source 'torchvision' needs name"),
        (
            dict(name="resnet18", factory="a:b"),
            r"factory does not apply to source 'torchvision'; it is for source 'import'",
        ),
    ],
    ids=["model", "weights", "other-enum", "no-name", "foreign-key"],
)
def test_torchvision_names_are_checked_when_the_study_loads(keys, message):
    with pytest.raises(KdnasError, match=message):
        TeacherConfig(source="torchvision", **keys)


def test_torchvision_weights_names_are_accepted_as_torchvision_writes_them():
    for weights in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        TeacherConfig(source="torchvision", name="resnet18", weights=weights)


def test_a_kdnas_section_keeps_its_fingerprint_from_before_sources():
    """Hashed on the keys it had then, so teacher.pt files made before sources existed stay valid."""
    section = TeacherConfig(base_width=4, blocks=(1,))
    assert set(section.applied()) == {"arch", "base_width", "blocks", "checkpoint", "train"}
    assert teacher_fingerprint(section, "d") != teacher_fingerprint(dataclasses.replace(section, base_width=8), "d")


# ---------------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------------


def test_import_teacher_with_other_classes_is_fine_tuned_and_beats_chance(factories, tiny_data, out, caplog):
    recipe = FinetuneRecipe(epochs=6, lr=0.1, batch_size=32, average_epochs=0)
    with caplog.at_level(logging.INFO):
        teacher = obtain_teacher(imported(kwargs={"classes": 10}, finetune=recipe), tiny_data, out)
    assert "gives 10 classes, the data has 4; replacing its classifier" in caplog.text
    assert teacher.model.net[-1].out_features == 4
    assert teacher.val_accuracy > 0.5 and teacher.test_accuracy > 0.5  # chance is 0.25
    assert teacher.describe() == "import kd_factories:tiny, fine-tuned 6 epochs"
    assert stored(out / "teacher.pt")["head_classes"] == 4


def test_other_classes_without_finetune_fine_tune_with_the_logged_default(factories, tiny_data, out, caplog):
    with caplog.at_level(logging.INFO):
        teacher = obtain_teacher(imported(), tiny_data, out)
    assert "fine-tuning with the default finetune = { epochs = 1, lr = 0.01 }" in caplog.text
    assert teacher.model.net[-1].out_features == 4


def test_finetune_with_matching_classes_keeps_the_classifier(factories, tiny_data, out, tmp_path):
    import kd_factories

    torch.manual_seed(0)

    net = kd_factories.tiny(classes=4)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), checkpoint)
    recipe = FinetuneRecipe(epochs=1, batch_size=32)
    teacher = obtain_teacher(
        imported(kwargs={"classes": 4}, checkpoint=str(checkpoint), finetune=recipe), tiny_data, out
    )
    assert stored(out / "teacher.pt")["head_classes"] is None
    assert not torch.equal(teacher.model.net[-1].weight.cpu(), net[-1].weight)  # fine-tuned, same layer


def test_input_is_un_normalised_repeated_resized_and_normalised_for_the_teacher(factories, tiny_data, out):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    teacher = obtain_teacher(imported("kd_factories:stats", mean=mean, std=std, input_size=16), tiny_data, out)
    images = tiny_data.test.images[:8]
    got = teacher.model(normalize(images, tiny_data.info))
    pixels = (images.double() / 255).expand(-1, 3, -1, -1)
    resized = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True)
    expected = ((resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).mean((2, 3))
    torch.testing.assert_close(got[:, :3].double(), expected, atol=1e-5, rtol=1e-5)
    assert (got[:, 3] == 16).all()


def test_input_at_the_datas_size_and_normalisation_is_the_view_repeated(factories, tiny_data, out):
    teacher = obtain_teacher(imported("kd_factories:stats"), tiny_data, out)
    views = normalize(tiny_data.test.images[:8], tiny_data.info)
    got = teacher.model(views)
    torch.testing.assert_close(got[:, :3], views.mean((2, 3)).expand(-1, 3), atol=1e-6, rtol=1e-6)
    assert teacher.model.input_size is None and (got[:, 3] == 8).all()


def test_check_teacher_rebuilds_an_import_teacher_with_the_same_weights(factories, tiny_data, out, monkeypatch):
    cfg = imported(finetune=FinetuneRecipe(epochs=1, batch_size=32))
    teacher = obtain_teacher(cfg, tiny_data, out)
    path = out / "teacher.pt"
    student = StudentFile(
        path=out / "best_student.json",
        record={},
        cfg=cfg,
        arch=ArchSpec("resnet", 1, 4, {"base_width": 4, "blocks": (1,)}),
        kd=KDSpec(temperature=2.0, alpha=0.5),
        trial=0,
        measured_params=0,
        measured_val_accuracy=0.0,
        teacher_path=path,
        teacher_fingerprint=teacher.fingerprint,
        teacher_sha256=None,
    )
    sys.modules.pop("kd_factories")  # another process: the factory is imported again
    again = check_teacher(student, tiny_data, torch.device("cpu"), allow_mismatch=False)
    assert again.weights_sha256 == teacher.weights_sha256 and again.source == "import"
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("code")])
    sys.modules.pop("kd_factories")
    with pytest.raises(KdnasError, match=r"factory 'kd_factories:tiny': no module named 'kd_factories'"):
        check_teacher(student, tiny_data, torch.device("cpu"), allow_mismatch=False)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (dict(factory="no_such_package_kdnas.models:make"), r"no module named 'no_such_package_kdnas\.models'"),
        (dict(factory="kd_factories.make"), r"factory must be \"package\.module:function\", got 'kd_factories\.make'"),
        (dict(factory="kd_factories:tiny", name="resnet18"), r"name does not apply to source 'import'"),
        (dict(factory="kd_factories:tiny", mean=(0.5,)), r"give mean and std together"),
    ],
    ids=["module", "syntax", "foreign-key", "mean-alone"],
)
def test_import_sections_are_checked_when_the_study_loads(factories, keys, message):
    with pytest.raises(KdnasError, match=message):
        TeacherConfig(source="import", **keys)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (dict(factory="kd_broken:make"), r"module 'kd_broken' does not import \(No module named 'no_such_dependency"),
        (dict(factory="kd_factories:missing"), r"module 'kd_factories' has no 'missing'"),
        (dict(factory="kd_factories:not_a_module"), r"returned a str, not an nn\.Module"),
        (
            dict(factory="kd_factories:no_head"),
            r"has no nn\.Linear classifier .*; set \[teacher\] head = \"attribute\"",
        ),
        (dict(factory="kd_factories:tiny", head="2"), r"head '2' has no nn\.Linear classifier"),
        (dict(factory="kd_factories:tiny", head="body"), r"head 'body' is not a submodule"),
        (
            dict(factory="kd_factories:tiny", mean=(0.5, 0.5), std=(0.2, 0.2)),
            r"mean/std have 2 values for a teacher of 3",
        ),
    ],
    ids=["does-not-import", "no-function", "not-a-module", "no-head", "head-no-linear", "head-missing", "mean"],
)
def test_bad_import_teachers_are_one_line_errors_and_write_nothing(factories, tiny_data, out, keys, message):
    with pytest.raises(KdnasError, match=message) as err:
        obtain_teacher(study(source="import", **keys), tiny_data, out)
    assert "\n" not in str(err.value)
    assert list(out.iterdir()) == []


def test_checkpoint_with_other_keys_names_the_first_few(factories, tiny_data, out, tmp_path):
    import kd_factories

    state = kd_factories.tiny(classes=10).state_dict()
    state = {f"backbone.{k}": v for k, v in state.items()}
    checkpoint = tmp_path / "renamed.pt"
    torch.save(state, checkpoint)
    with pytest.raises(KdnasError) as err:
        obtain_teacher(imported(checkpoint=str(checkpoint)), tiny_data, out)
    message = str(err.value)
    assert "9 keys missing: 0.weight, 0.bias, 1.weight, ..." in message
    assert "9 keys unexpected: backbone.0.weight, backbone.0.bias, backbone.1.weight, ..." in message
    assert "set state_dict_key" in message and list(out.iterdir()) == []


def test_checkpoint_without_the_named_key_lists_what_it_holds(factories, tiny_data, out, tmp_path):
    checkpoint = tmp_path / "nested.pt"
    torch.save({"model": {}, "epoch": 3}, checkpoint)
    with pytest.raises(KdnasError, match=r"has no 'ema'; it holds model, epoch$"):
        obtain_teacher(imported(checkpoint=str(checkpoint), state_dict_key="ema"), tiny_data, out)
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm gives
    with pytest.raises(KdnasError, match=r"^source 'timm' needs the timm package; pip install kdnas\[timm\]$"):
        TeacherConfig(source="timm", name="resnet18")


def test_timm_teacher_gets_a_new_classifier_and_is_rebuilt_from_teacher_pt(tiny_data, out):
    pytest.importorskip("timm", reason="needs the timm extra: pip install kdnas[timm]")
    cfg = study(source="timm", name="test_resnet", input_size=32, finetune=FinetuneRecipe(epochs=1, batch_size=64))
    teacher = obtain_teacher(cfg, tiny_data, out)
    assert teacher.model.net.get_classifier().out_features == 4
    loaded = load_stored_teacher(out / "teacher.pt", "cpu")
    assert loaded.weights_sha256 == teacher.weights_sha256 and loaded.source == "timm"


def test_timm_names_are_checked_when_the_study_loads():
    pytest.importorskip("timm", reason="needs the timm extra: pip install kdnas[timm]")
    with pytest.raises(KdnasError, match=r"unknown timm model 'resnet81' \(did you mean 'resnet18'\?\)"):
        TeacherConfig(source="timm", name="resnet81")
