"""The fixed teacher and its soft-target cache: trained once, reused, rebuilt when stale or broken."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

from kdnas.config import StudyConfig, TeacherConfig, TrainRecipe
from kdnas.data import AugmentedViews
from kdnas.errors import KdnasError
from kdnas.files import exclusive
from kdnas.models import ArchSpec, build_model
from kdnas.teacher import (
    SOFT_TARGETS_FORMAT,
    TEACHER_FORMAT,
    CachedSoftTargets,
    LiveTeacher,
    ensure_disk_space,
    load_stored_teacher,
    obtain_teacher,
    soft_targets_for,
    teacher_spec,
    weights_sha256,
)

TEACHER = TeacherConfig(base_width=4, blocks=(1,), train=TrainRecipe(epochs=1, batch_size=32, lr=0.2))


def study(teacher: TeacherConfig = TEACHER) -> StudyConfig:
    return StudyConfig(name="teacher-test", teacher=teacher)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def subdir(parent, name: str):
    folder = parent / name
    folder.mkdir()
    return folder


def stored(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def counting_forwards(model: torch.nn.Module) -> list[int]:
    """A one-element list that counts the forward passes ``model`` runs from now on."""
    count = [0]
    model.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def rebuilt_for_other_weights(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "other teacher weights" in r.getMessage()]


# ---------------------------------------------------------------------------------------------------
# The weights hash
# ---------------------------------------------------------------------------------------------------


def test_weights_hash_ignores_memory_format_and_sees_every_value_and_dtype():
    torch.manual_seed(0)
    model = build_model(ArchSpec("resnet", 1, 4, {"base_width": 4, "blocks": (1,)}))
    plain = weights_sha256(model.state_dict())
    assert len(plain) == 64
    assert weights_sha256(model.to(memory_format=torch.channels_last).state_dict()) == plain
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = sorted(state)[-1]
    state[name].view(-1)[0] += 1
    assert weights_sha256(state) != plain
    halved = {k: v.bfloat16() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert weights_sha256(halved) != plain


# ---------------------------------------------------------------------------------------------------
# obtain_teacher
# ---------------------------------------------------------------------------------------------------


def test_first_call_trains_and_saves(tiny_data, tmp_path):
    teacher = obtain_teacher(study(), tiny_data, tmp_path)
    path = tmp_path / "teacher.pt"
    assert teacher.path == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.pt"]  # no temporary file left behind
    blob = stored(path)
    assert blob["format"] == TEACHER_FORMAT
    assert blob["fingerprint"] == teacher.fingerprint
    assert blob["weights_sha256"] == teacher.weights_sha256 == weights_sha256(blob["state_dict"])
    assert teacher.summary()["weights_sha256"] == teacher.weights_sha256
    assert blob["spec"] == dataclasses.asdict(teacher.spec)
    assert blob["teacher_config"] == dataclasses.asdict(TEACHER)
    assert (blob["val_accuracy"], blob["test_accuracy"]) == (teacher.val_accuracy, teacher.test_accuracy)
    assert teacher.spec == ArchSpec("resnet", 1, 4, {"base_width": 4, "blocks": (1,)})
    assert not teacher.model.training


def test_interrupted_teacher_training_resumes_from_its_last_epoch_to_the_same_weights(tiny_data, tmp_path, caplog):
    cfg = study(dataclasses.replace(TEACHER, train=dataclasses.replace(TEACHER.train, epochs=3)))
    unbroken = obtain_teacher(cfg, tiny_data, subdir(tmp_path, "unbroken"))
    out = subdir(tmp_path, "interrupted")

    def ctrl_c_in_the_last_epoch(step: int, total: int) -> None:
        if step == total - 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        obtain_teacher(cfg, tiny_data, out, on_step=ctrl_c_in_the_last_epoch)
    assert sorted(p.name for p in out.iterdir()) == ["teacher.partial.pt"]
    with caplog.at_level(logging.INFO):
        resumed = obtain_teacher(cfg, tiny_data, out)
    assert any(message.startswith("resuming after epoch 2 of 3") for message in caplog.messages)
    assert resumed.weights_sha256 == unbroken.weights_sha256
    assert sorted(p.name for p in out.iterdir()) == ["teacher.pt"]


def test_teacher_file_written_before_families_is_reused(tiny_data, tmp_path):
    first = obtain_teacher(study(), tiny_data, tmp_path)
    path = tmp_path / "teacher.pt"
    blob = stored(path)
    spec = blob["spec"]
    blob["spec"] = {"arch": spec["family"], "in_channels": 1, "num_classes": 4, **spec["spec"]}  # the old form
    torch.save(blob, path)
    again = obtain_teacher(study(), tiny_data, tmp_path)
    assert again.spec == first.spec and same_weights(again.model, first.model)


def test_teacher_of_another_family_trains_and_is_rebuilt_from_its_file(tiny_data, tmp_path):
    knobs = {
        "stages": 2,
        "width_mult": 0.5,
        "activation": "hardswish",
        "depth": 1,
        "expand": 2,
        "kernel": 3,
        "se": True,
    }
    section = TeacherConfig(family="mbconv", knobs=knobs, train=TEACHER.train)
    first = obtain_teacher(study(section), tiny_data, tmp_path)
    assert first.spec == teacher_spec(study(section), tiny_data)
    assert first.describe() == "mbconv x0.5 hardswish d1-1 e2-2 k3-3 se1-1"
    assert first.spec.spec["strides"] == [1, 1, 2]  # 8 px: one halving, at stage 2
    again = obtain_teacher(study(section), tiny_data, tmp_path)
    assert again.spec == first.spec and same_weights(again.model, first.model)


def test_second_call_reuses_the_stored_teacher(tiny_data, tmp_path, caplog):
    first = obtain_teacher(study(), tiny_data, tmp_path)
    path = tmp_path / "teacher.pt"
    mtime = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdnas.teacher"):
        second = obtain_teacher(study(), tiny_data, tmp_path)
    assert path.stat().st_mtime_ns == mtime
    assert any("reusing" in r.getMessage() for r in caplog.records)
    assert not any(r.getMessage().startswith("teacher: training") for r in caplog.records)
    assert same_weights(first.model, second.model)
    assert (second.val_accuracy, second.test_accuracy, second.fingerprint) == (
        first.val_accuracy,
        first.test_accuracy,
        first.fingerprint,
    )


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(dataclasses.replace(TEACHER, base_width=8), id="width"),
        pytest.param(dataclasses.replace(TEACHER, train=dataclasses.replace(TEACHER.train, epochs=2)), id="epochs"),
        pytest.param(dataclasses.replace(TEACHER, train=dataclasses.replace(TEACHER.train, lr=0.1)), id="lr"),
    ],
)
def test_changed_teacher_section_retrains(tiny_data, tmp_path, caplog, changed):
    first = obtain_teacher(study(), tiny_data, tmp_path)
    with caplog.at_level(logging.INFO, logger="kdnas.teacher"):
        second = obtain_teacher(study(changed), tiny_data, tmp_path)
    assert second.fingerprint != first.fingerprint
    assert any("retraining" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    blob = stored(tmp_path / "teacher.pt")
    assert blob["fingerprint"] == second.fingerprint
    assert blob["teacher_config"] == dataclasses.asdict(changed)


def test_changed_data_retrains(image_data_factory, tmp_path):
    first = obtain_teacher(study(), image_data_factory(seed=0), tmp_path)
    second = obtain_teacher(study(), image_data_factory(seed=1), tmp_path)
    assert second.fingerprint != first.fingerprint
    assert stored(tmp_path / "teacher.pt")["fingerprint"] == second.fingerprint


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        pytest.param(b"\x00garbage\xff" * 50, "unreadable", id="garbage-bytes"),
        pytest.param(b"", "unreadable", id="empty-file"),
        pytest.param("not-a-teacher", f"is not a {TEACHER_FORMAT} file", id="other-torch-file"),
    ],
)
def test_broken_teacher_file_is_reported_and_rebuilt(tiny_data, tmp_path, caplog, content, warning):
    path = tmp_path / "teacher.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"format": "something-else/1", "state_dict": {}}, path)
    with caplog.at_level(logging.WARNING, logger="kdnas.teacher"):
        teacher = obtain_teacher(study(), tiny_data, tmp_path)
    assert any(warning in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    blob = stored(path)
    assert blob["format"] == TEACHER_FORMAT and blob["fingerprint"] == teacher.fingerprint


def test_truncated_teacher_file_is_rebuilt_not_used(tiny_data, tmp_path, caplog):
    obtain_teacher(study(), tiny_data, tmp_path)
    path = tmp_path / "teacher.pt"
    path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="kdnas.teacher"):
        teacher = obtain_teacher(study(), tiny_data, tmp_path)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert stored(path)["fingerprint"] == teacher.fingerprint


def test_stored_teacher_whose_weights_do_not_match_their_hash_is_corrupt(tiny_data, tmp_path, caplog):
    first = obtain_teacher(study(), tiny_data, tmp_path)
    path = tmp_path / "teacher.pt"
    blob = stored(path)
    name = sorted(blob["state_dict"])[0]
    blob["state_dict"][name].view(-1)[0] += 1  # a flipped value, the recorded hash unchanged
    torch.save(blob, path)
    with pytest.raises(KdnasError, match=f"no usable teacher at {path}"):
        load_stored_teacher(path, "cpu")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdnas.teacher"):
        again = obtain_teacher(study(), tiny_data, tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} is corrupt (its weights do not match the SHA-256 it records); it will be rebuilt"
    ]
    assert again.weights_sha256 == first.weights_sha256  # retrained from the same seed on the CPU
    assert stored(path)["weights_sha256"] == weights_sha256(stored(path)["state_dict"])


def test_checkpoint_is_loaded_instead_of_training(tiny_data, tmp_path):
    spec = teacher_spec(study(), tiny_data)
    torch.manual_seed(5)
    source = build_model(spec)
    checkpoint = tmp_path / "weights.pt"
    torch.save(source.state_dict(), checkpoint)
    out = tmp_path / "run"
    out.mkdir()
    teacher = obtain_teacher(study(dataclasses.replace(TEACHER, checkpoint=str(checkpoint))), tiny_data, out)
    assert teacher.path is None
    assert same_weights(teacher.model, source)
    assert teacher.weights_sha256 == weights_sha256(source.state_dict())
    assert list(out.iterdir()) == []  # nothing trained, nothing stored


def test_stored_teacher_file_works_as_a_checkpoint(tiny_data, tmp_path):
    first = obtain_teacher(study(), tiny_data, subdir(tmp_path, "a"))
    cfg = study(dataclasses.replace(TEACHER, checkpoint=str(tmp_path / "a" / "teacher.pt")))
    again = obtain_teacher(cfg, tiny_data, tmp_path)
    assert same_weights(first.model, again.model)


def test_missing_checkpoint_is_a_user_error(tiny_data, tmp_path):
    missing = tmp_path / "nope.pt"
    cfg = study(dataclasses.replace(TEACHER, checkpoint=str(missing)))
    with pytest.raises(KdnasError, match=f"teacher checkpoint {missing} does not exist"):
        obtain_teacher(cfg, tiny_data, tmp_path)


def test_checkpoint_of_another_architecture_is_a_user_error(tiny_data, tmp_path):
    checkpoint = tmp_path / "wide.pt"
    torch.save(build_model(ArchSpec("resnet", 1, 4, {"base_width": 8, "blocks": (1,)})).state_dict(), checkpoint)
    cfg = study(dataclasses.replace(TEACHER, checkpoint=str(checkpoint)))
    shapes = r"16 keys of other shape: stem\.0\.0\.weight \(8, 1, 3, 3\) not \(4, 1, 3, 3\), "
    with pytest.raises(
        KdnasError, match=rf"does not match the architecture resnet w4 b1 \({shapes}.*\); fix \[teacher\]"
    ):
        obtain_teacher(cfg, tiny_data, tmp_path)


def test_unreadable_checkpoint_is_a_user_error(tiny_data, tmp_path):
    checkpoint = tmp_path / "broken.pt"
    checkpoint.write_bytes(b"not a torch file")
    cfg = study(dataclasses.replace(TEACHER, checkpoint=str(checkpoint)))
    with pytest.raises(KdnasError, match="is unreadable"):
        obtain_teacher(cfg, tiny_data, tmp_path)


def test_load_stored_teacher_without_a_file_is_a_user_error(tmp_path):
    with pytest.raises(KdnasError, match="no usable teacher at"):
        load_stored_teacher(tmp_path / "teacher.pt", "cpu")


def test_load_stored_teacher_gives_the_saved_model(tiny_data, tmp_path):
    teacher = obtain_teacher(study(), tiny_data, tmp_path)
    loaded = load_stored_teacher(tmp_path / "teacher.pt", "cpu")
    assert loaded.spec == teacher.spec and same_weights(loaded.model, teacher.model)
    assert loaded.summary()["params"] == teacher.summary()["params"]


# ---------------------------------------------------------------------------------------------------
# Soft targets
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def teacher(tiny_data, tmp_path):
    return obtain_teacher(study(), tiny_data, tmp_path)


def test_soft_targets_are_the_teachers_fp16_logits_for_each_view(teacher, tiny_data, tmp_path):
    views = AugmentedViews(tiny_data)
    cache = soft_targets_for(teacher, views, 2, tmp_path, batch_size=40)
    assert cache.logits.shape == (2, len(tiny_data.train), 4) and cache.logits.dtype == torch.float16
    live = LiveTeacher(teacher.model)
    indices = torch.tensor([0, 17, 99, 127])
    for epoch in (0, 1):
        x = views.batch(indices, views.epoch_params(epoch))
        torch.testing.assert_close(cache(epoch, indices, x), live(epoch, indices, x), rtol=2e-3, atol=1e-3)
    blob = stored(tmp_path / "soft_targets.pt")
    assert blob["format"] == SOFT_TARGETS_FORMAT


def test_soft_targets_are_reused_for_the_same_weights_without_running_the_teacher(teacher, tiny_data, tmp_path):
    views = AugmentedViews(tiny_data)
    first = soft_targets_for(teacher, views, 2, tmp_path, batch_size=64)
    path = tmp_path / "soft_targets.pt"
    mtime = path.stat().st_mtime_ns
    reloaded = load_stored_teacher(tmp_path / "teacher.pt", "cpu")  # another process's teacher: same weights
    forwards = counting_forwards(reloaded.model)
    second = soft_targets_for(reloaded, views, 2, tmp_path, batch_size=64)
    assert forwards == [0]
    assert path.stat().st_mtime_ns == mtime
    assert torch.equal(first.logits, second.logits)


def test_soft_targets_are_rebuilt_for_other_weights_under_the_same_config(teacher, tiny_data, tmp_path, caplog):
    views = AugmentedViews(tiny_data)
    old = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64)
    # teacher.pt replaced by one trained for the same [teacher] section elsewhere (another machine or
    # precision): same fingerprint, other weights, a consistent file.
    path = tmp_path / "teacher.pt"
    torch.manual_seed(7)
    state = build_model(teacher.spec).state_dict()
    torch.save({**stored(path), "state_dict": state, "weights_sha256": weights_sha256(state)}, path)
    current = obtain_teacher(study(), tiny_data, tmp_path)
    assert current.fingerprint == teacher.fingerprint and current.weights_sha256 != teacher.weights_sha256
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdnas.teacher"):
        new = soft_targets_for(current, views, 1, tmp_path, batch_size=64)
    assert rebuilt_for_other_weights(caplog) == [
        f"soft targets: built for other teacher weights ({teacher.weights_sha256[:12]}) than the current "
        f"teacher's ({current.weights_sha256[:12]}); rebuilding"
    ]
    assert not torch.equal(new.logits, old.logits)
    x = views.batch(torch.arange(8), views.epoch_params(0))
    live = LiveTeacher(current.model)(0, torch.arange(8), x)
    torch.testing.assert_close(new(0, torch.arange(8), x), live, rtol=2e-3, atol=1e-3)
    assert stored(tmp_path / "soft_targets.pt")["teacher_weights_sha256"] == current.weights_sha256


def test_soft_targets_are_rebuilt_when_the_epochs_change(teacher, tiny_data, tmp_path, caplog):
    views = AugmentedViews(tiny_data)
    one = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64)
    key_one = stored(tmp_path / "soft_targets.pt")["key"]
    with caplog.at_level(logging.INFO, logger="kdnas.teacher"):
        three = soft_targets_for(teacher, views, 3, tmp_path, batch_size=64)
    assert "soft targets: the epochs changed since it was built; rebuilding" in caplog.messages
    assert three.logits.shape[0] == 3
    assert stored(tmp_path / "soft_targets.pt")["key"] != key_one
    assert torch.equal(three.logits[0], one.logits[0])  # the views of epoch 0 did not change


def test_soft_targets_are_rebuilt_for_another_precision(teacher, tiny_data, tmp_path):
    views = AugmentedViews(tiny_data)
    fp32 = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64, precision="float32")
    bf16 = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64, precision="bfloat16")
    assert not torch.equal(fp32.logits, bf16.logits)
    reread = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64, precision="bfloat16")
    assert torch.equal(reread.logits, bf16.logits)


def test_soft_targets_are_rebuilt_for_another_teacher(tiny_data, tmp_path):
    views = AugmentedViews(tiny_data)
    a = obtain_teacher(study(), tiny_data, subdir(tmp_path, "a"))
    other = dataclasses.replace(TEACHER, base_width=8)
    b = obtain_teacher(study(other), tiny_data, subdir(tmp_path, "b"))
    cache_a = soft_targets_for(a, views, 1, tmp_path, batch_size=64)
    cache_b = soft_targets_for(b, views, 1, tmp_path, batch_size=64)
    assert not torch.equal(cache_a.logits, cache_b.logits)
    live_b = LiveTeacher(b.model)
    x = views.batch(torch.arange(4), views.epoch_params(0))
    torch.testing.assert_close(cache_b(0, torch.arange(4), x), live_b(0, torch.arange(4), x), rtol=2e-3, atol=1e-3)


def test_corrupted_soft_targets_are_reported_and_rebuilt(teacher, tiny_data, tmp_path, caplog):
    views = AugmentedViews(tiny_data)
    good = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64)
    path = tmp_path / "soft_targets.pt"
    path.write_bytes(b"\xde\xad\xbe\xef" * 100)
    with caplog.at_level(logging.WARNING, logger="kdnas.teacher"):
        rebuilt = soft_targets_for(teacher, views, 1, tmp_path, batch_size=64)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert torch.equal(rebuilt.logits, good.logits)
    assert stored(path)["format"] == SOFT_TARGETS_FORMAT


def test_cached_soft_targets_index_by_epoch_and_image():
    logits = torch.arange(2 * 3 * 2, dtype=torch.float16).reshape(2, 3, 2)
    cache = CachedSoftTargets(logits)
    out = cache(1, torch.tensor([2, 0]), torch.empty(0))
    assert out.dtype == torch.float32
    assert out.tolist() == [[10.0, 11.0], [6.0, 7.0]]


def test_soft_targets_follow_new_weights_in_the_same_checkpoint_file(tiny_data, tmp_path, caplog):
    # Replacing the weights behind [teacher] checkpoint (same path) must not reuse the old teacher's logits.
    spec = teacher_spec(study(), tiny_data)
    checkpoint = tmp_path / "weights.pt"
    cfg = study(dataclasses.replace(TEACHER, checkpoint=str(checkpoint)))
    views = AugmentedViews(tiny_data)
    out = subdir(tmp_path, "run")
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save(build_model(spec).state_dict(), checkpoint)
        teachers.append(obtain_teacher(cfg, tiny_data, out))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kdnas.teacher"):
            cache = soft_targets_for(teachers[-1], views, 1, out, batch_size=64)
        x = views.batch(torch.arange(8), views.epoch_params(0))
        live = LiveTeacher(teachers[-1].model)(0, torch.arange(8), x)
        torch.testing.assert_close(cache(0, torch.arange(8), x), live, rtol=2e-3, atol=1e-3)
    first, second = teachers
    assert first.fingerprint != second.fingerprint  # the checkpoint's bytes are part of what a teacher is
    assert rebuilt_for_other_weights(caplog) == [
        f"soft targets: built for other teacher weights ({first.weights_sha256[:12]}) than the current "
        f"teacher's ({second.weights_sha256[:12]}); rebuilding"
    ]


def test_ensure_disk_space_refuses_more_than_is_free(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    ensure_disk_space(tmp_path, 1024, "a small file")
    with pytest.raises(KdnasError, match=r"not enough disk for the cache in .*: needs \d+ MiB, \d+ MiB free"):
        ensure_disk_space(tmp_path, 2 * free, "the cache")


def test_exclusive_waits_while_another_process_holds_the_lock_and_not_after_it_dies(tmp_path, caplog):
    lock = tmp_path / ".teacher.lock"
    hold = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        killer = threading.Timer(1.0, holder.kill)  # a builder killed mid-build: the kernel drops its lock
        killer.start()
        start = time.monotonic()
        with caplog.at_level(logging.INFO, logger="kdnas.files"), exclusive(lock, "waiting for the builder"):
            waited = time.monotonic() - start
        assert waited >= 0.9 and "waiting for the builder" in caplog.text
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    with exclusive(lock, "never logged"):
        assert time.monotonic() - start < 0.5
