"""Training one network on the tiny quadrant task: it learns, is reproducible, stops and fails clearly."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kdnas import trainer
from kdnas.config import TrainRecipe
from kdnas.data import AugmentedViews, normalize
from kdnas.distill import KDSpec
from kdnas.models import ArchSpec, build_model
from kdnas.teacher import LiveTeacher, Teacher, soft_targets_for
from kdnas.trainer import (
    EpochCheckpoint,
    FitResult,
    TrainingDiverged,
    WeightAverage,
    evaluate,
    fit,
    native_bfloat16,
    predict_logits,
    warn_if_emulated,
)

SPEC = ArchSpec("resnet", 1, 4, {"base_width": 8, "blocks": (1,)})  # the quadrant task: 1 channel, 4 classes
RECIPE = TrainRecipe(epochs=2, batch_size=16, lr=0.3, warmup_epochs=0.5)


def seeded_model(seed: int = 0, spec: ArchSpec = SPEC) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


class Recorder:
    """Soft targets that remember every call: (epoch, indices, logits returned)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, epoch: int, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        out = self.inner(epoch, indices, views)
        self.calls.append((epoch, indices.clone(), out.clone()))
        return out


def test_fit_learns_the_quadrant_task(tiny_data):
    model = seeded_model()
    result = fit(model, AugmentedViews(tiny_data), TrainRecipe(epochs=5, batch_size=16, lr=0.3))
    assert len(result.val_accuracy) == len(result.train_loss) == 5
    assert result.val_accuracy[-1] > 0.9  # chance is 0.25
    assert result.train_loss[-1] < result.train_loss[0]
    assert evaluate(model, tiny_data.test, tiny_data.info, 64) > 0.9


def test_fit_counts_images_and_time(tiny_data):
    result = fit(seeded_model(), AugmentedViews(tiny_data), RECIPE)
    assert result.images == 2 * len(tiny_data.train)
    assert result.seconds > 0 and result.images_per_s == result.images / result.seconds
    assert FitResult().images_per_s == 0.0


def test_weight_average_is_the_plain_mean_until_its_horizon_then_exponential_and_keeps_its_own_buffers():
    model = torch.nn.BatchNorm1d(1)  # a weight, a bias, running statistics and an integer counter
    average = WeightAverage(model, horizon_steps=4)
    seen = []
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running_mean.fill_(-value)
        model.num_batches_tracked.fill_(int(value))
        average.update()
        seen.append(average.module.weight.item())
    # mean of 1, 1-2, 1-3, 1-4; then 3/4 of the average and 1/4 of the new weight
    assert seen == pytest.approx([1.0, 1.5, 2.0, 2.5, 0.75 * 2.5 + 1.25, 0.75 * 3.125 + 1.5])
    # batch-norm statistics are the average's own (refresh_batch_norm), not the raw weights'
    assert average.module.running_mean.item() == 0.0 and average.module.num_batches_tracked.item() == 0
    assert not any(p.requires_grad for p in average.module.parameters())


def test_refreshed_batch_norm_statistics_are_those_of_the_averaged_weights(tiny_data):
    views, model = AugmentedViews(tiny_data), seeded_model()
    average = WeightAverage(model, horizon_steps=4)
    norm = average.module.stem[0][1]
    norm.running_mean.fill_(5.0)  # statistics that belong to other weights
    order, params = views.order(1), views.epoch_params(1)
    average.refresh_batch_norm(views, order, params, batch_size=64)  # 128 images: two equal batches
    with torch.no_grad():
        stem_out = average.module.stem[0][0](views.batch(order, params))
    torch.testing.assert_close(norm.running_mean, stem_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # the mean of two batch variances, not the variance of all 128 images: close, not equal
    torch.testing.assert_close(norm.running_var, stem_out.var((0, 2, 3)), rtol=0.05, atol=1e-4)
    assert norm.momentum == 0.1  # restored for anything that trains the module later


def test_fit_reports_and_returns_the_averaged_weights(tiny_data):
    views, recipe = AugmentedViews(tiny_data), replace(RECIPE, epochs=3, average_epochs=0.5)
    averaged, raw = seeded_model(), seeded_model()
    result = fit(averaged, views, recipe)
    plain = fit(raw, views, replace(recipe, average_epochs=0))
    assert result.train_loss == plain.train_loss  # averaging changes what is evaluated, not the training
    assert result.val_accuracy[-1] == evaluate(averaged, tiny_data.val, tiny_data.info, 64)
    assert plain.val_accuracy[-1] == evaluate(raw, tiny_data.val, tiny_data.info, 64)
    assert not torch.equal(averaged.head.weight, raw.head.weight)


def test_bfloat16_training_computes_in_bfloat16_and_still_learns(tiny_data):
    results = {
        precision: fit(seeded_model(), AugmentedViews(tiny_data), replace(RECIPE, epochs=4, precision=precision))
        for precision in ("float32", "bfloat16")
    }
    assert results["bfloat16"].train_loss != results["float32"].train_loss  # autocast really ran
    assert results["bfloat16"].val_accuracy[-1] > 0.8  # chance is 0.25


def test_auto_precision_is_bfloat16_exactly_where_the_cpu_has_it(tiny_data):
    native = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"  # spelled out: the rule under test
    auto, explicit = (
        fit(seeded_model(), AugmentedViews(tiny_data), replace(RECIPE, precision=precision))
        for precision in ("auto", native)
    )
    assert auto.train_loss == explicit.train_loss


@pytest.mark.parametrize("native", [True, False], ids=["native", "emulated"])
def test_bfloat16_where_it_is_emulated_is_warned_about(monkeypatch, caplog, native):
    monkeypatch.setattr(trainer, "native_bfloat16", lambda device: native)
    with caplog.at_level(logging.WARNING, logger="kdnas.trainer"):
        warn_if_emulated(torch.device("cpu"), "auto", "float32")
        assert not caplog.records
        warn_if_emulated(torch.device("cpu"), "float32", "bfloat16")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == (
        [] if native else ["precision 'bfloat16' is emulated on this CPU"]
    )


def test_same_seed_gives_identical_results(tiny_data):
    kd_free = [fit(seeded_model(3), AugmentedViews(tiny_data), RECIPE) for _ in range(2)]
    assert kd_free[0].train_loss == kd_free[1].train_loss
    assert kd_free[0].val_accuracy == kd_free[1].val_accuracy


def test_same_seed_gives_identical_weights(tiny_data):
    a, b = seeded_model(3), seeded_model(3)
    fit(a, AugmentedViews(tiny_data), RECIPE)
    fit(b, AugmentedViews(tiny_data), RECIPE)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _interrupted_after_epoch(last: int):
    """An ``on_epoch`` that stops training, as Ctrl-C would, once epoch ``last`` (0-based) is evaluated."""

    def on_epoch(epoch: int, accuracy: float) -> None:
        if epoch == last:
            raise KeyboardInterrupt

    return on_epoch


def test_training_resumed_from_its_epoch_checkpoint_ends_as_an_unbroken_run(tiny_data, tmp_path, caplog):
    views, recipe = AugmentedViews(tiny_data), replace(RECIPE, epochs=3, average_epochs=0.5, momentum=0.9)
    unbroken = seeded_model(3)
    expected = fit(unbroken, views, recipe)
    checkpoint = EpochCheckpoint(tmp_path / "partial.pt", key="run")
    with pytest.raises(KeyboardInterrupt):
        fit(seeded_model(3), views, recipe, checkpoint=checkpoint, on_epoch=_interrupted_after_epoch(1))
    resumed = seeded_model(4)  # another start: every weight must come from the checkpoint
    with caplog.at_level(logging.INFO, logger="kdnas.trainer"):
        result = fit(resumed, views, recipe, checkpoint=checkpoint)
    assert f"resuming after epoch 2 of 3, saved in {checkpoint.path}" in caplog.messages
    assert (result.val_accuracy, result.train_loss, result.images) == (
        expected.val_accuracy,
        expected.train_loss,
        expected.images,
    )
    pairs = zip(resumed.state_dict().values(), unbroken.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("content", ["other key", "garbage"])
def test_an_epoch_checkpoint_of_other_settings_or_unreadable_is_not_resumed(tiny_data, tmp_path, caplog, content):
    views = AugmentedViews(tiny_data)
    path = tmp_path / "partial.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        stop = _interrupted_after_epoch(0)
        with pytest.raises(KeyboardInterrupt):
            fit(seeded_model(3), views, RECIPE, checkpoint=EpochCheckpoint(path, "a"), on_epoch=stop)
    with caplog.at_level(logging.WARNING, logger="kdnas.trainer"):
        result = fit(seeded_model(3), views, RECIPE, checkpoint=EpochCheckpoint(path, "b"))
    assert result.train_loss == fit(seeded_model(3), views, RECIPE).train_loss  # trained from the first epoch
    assert [r.getMessage().split(";")[1] for r in caplog.records] == [" training from the first epoch"]


def test_different_data_seed_changes_the_run(image_data_factory):
    losses = [fit(seeded_model(3), AugmentedViews(image_data_factory(seed=s)), RECIPE).train_loss for s in (0, 1)]
    assert losses[0] != losses[1]


def test_alpha_zero_trains_without_soft_targets(tiny_data):
    result = fit(seeded_model(), AugmentedViews(tiny_data), RECIPE, kd=KDSpec(alpha=0.0), soft_targets=None)
    assert all(math.isfinite(loss) for loss in result.train_loss)


def test_alpha_zero_equals_plain_training(tiny_data):
    plain = fit(seeded_model(), AugmentedViews(tiny_data), RECIPE)
    zero = fit(seeded_model(), AugmentedViews(tiny_data), RECIPE, kd=KDSpec(temperature=3.0, alpha=0.0))
    assert plain.train_loss == zero.train_loss


def test_positive_alpha_without_soft_targets_is_an_error(tiny_data):
    with pytest.raises(ValueError, match="soft_targets are required"):
        fit(seeded_model(), AugmentedViews(tiny_data), RECIPE, kd=KDSpec(alpha=0.5))


def test_huge_learning_rate_diverges_with_a_message_saying_where(tiny_data):
    with pytest.raises(TrainingDiverged, match=r"^non-finite loss in epoch \d+, step \d+$"):
        fit(seeded_model(), AugmentedViews(tiny_data), TrainRecipe(epochs=3, batch_size=16, lr=1e6))


def test_nan_soft_targets_diverge_in_the_first_epoch(tiny_data):
    def nan_targets(epoch, indices, views):
        return torch.full((len(indices), 4), float("nan"))

    steps_per_epoch = len(tiny_data.train) // RECIPE.batch_size
    with pytest.raises(TrainingDiverged, match=rf"epoch 1, step {steps_per_epoch}$"):
        fit(seeded_model(), AugmentedViews(tiny_data), RECIPE, kd=KDSpec(alpha=0.5), soft_targets=nan_targets)


def test_on_epoch_is_called_once_per_epoch_with_the_accuracy(tiny_data):
    calls = []
    result = fit(
        seeded_model(),
        AugmentedViews(tiny_data),
        TrainRecipe(epochs=3, batch_size=32, lr=0.3),
        on_epoch=lambda epoch, acc: calls.append((epoch, acc)),
    )
    assert calls == list(enumerate(result.val_accuracy))


def test_on_epoch_can_stop_training_by_raising(tiny_data):
    class Stop(Exception):
        pass

    calls = []

    def stop_after_second(epoch, acc):
        calls.append(epoch)
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(
            seeded_model(),
            AugmentedViews(tiny_data),
            TrainRecipe(epochs=5, batch_size=32, lr=0.3),
            on_epoch=stop_after_second,
        )
    assert calls == [0, 1]


def test_on_step_sees_every_step(tiny_data):
    steps = []
    fit(
        seeded_model(),
        AugmentedViews(tiny_data),
        TrainRecipe(epochs=2, batch_size=48, lr=0.3),
        on_step=lambda step, total: steps.append((step, total)),
    )
    assert steps == [(s, 6) for s in range(1, 7)]  # 128 images in batches of 48: 3 steps per epoch


def test_soft_targets_see_every_image_once_per_epoch_in_the_views_order(tiny_data):
    views = AugmentedViews(tiny_data)
    recorder = Recorder(lambda epoch, indices, x: torch.zeros(len(indices), 4))
    fit(seeded_model(), views, RECIPE, kd=KDSpec(alpha=0.5), soft_targets=recorder)
    for epoch in range(RECIPE.epochs):
        seen = torch.cat([indices for e, indices, _ in recorder.calls if e == epoch])
        assert torch.equal(seen, views.order(epoch))


def test_soft_targets_are_not_asked_once_alpha_has_decayed_to_zero(tiny_data):
    # linear with rate 2: alpha is zero from half-way on; 2 epochs x 8 steps, so only the first 8 steps ask.
    recorder = Recorder(lambda epoch, indices, x: torch.zeros(len(indices), 4))
    kd = KDSpec(alpha=0.5, alpha_decay="linear", decay_rate=2.0)
    fit(seeded_model(), AugmentedViews(tiny_data), RECIPE, kd=kd, soft_targets=recorder)
    assert [epoch for epoch, _, _ in recorder.calls] == [0] * 8


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cached_and_live_soft_targets_give_the_same_training(tiny_data, tmp_path, precision):
    views = AugmentedViews(tiny_data)
    teacher_model = seeded_model(11, ArchSpec("resnet", 1, 4, {"base_width": 8, "blocks": (1, 1)}))
    fit(teacher_model, views, TrainRecipe(epochs=2, batch_size=32, lr=0.3))
    teacher = Teacher(
        teacher_model.eval(),
        ArchSpec("resnet", 1, 4, {"base_width": 8, "blocks": (1, 1)}),
        0.0,
        0.0,
        "test-teacher",
        None,
    )
    # A cache batch size unlike the student's, so the teacher sees other groupings than during training.
    cache = soft_targets_for(teacher, views, RECIPE.epochs, tmp_path, batch_size=50, precision=precision)
    kd = KDSpec(temperature=3.0, alpha=0.7, alpha_decay="cosine", decay_rate=1.0)
    cached, live = Recorder(cache), Recorder(LiveTeacher(teacher.model, precision))
    result_cached = fit(seeded_model(2), views, RECIPE, kd=kd, soft_targets=cached)
    result_live = fit(seeded_model(2), views, RECIPE, kd=kd, soft_targets=live)
    assert len(cached.calls) == len(live.calls) == 16
    for (e1, i1, out1), (e2, i2, out2) in zip(cached.calls, live.calls, strict=True):
        assert e1 == e2 and torch.equal(i1, i2)
        # Both are fp16-rounded teacher logits; a different batch grouping may move one by an fp16 ulp.
        torch.testing.assert_close(out1, out2, rtol=2e-3, atol=1e-3)
    for a, b in zip(result_cached.train_loss, result_live.train_loss, strict=True):
        assert math.isclose(a, b, rel_tol=1e-4), (result_cached.train_loss, result_live.train_loss)
    assert result_cached.val_accuracy == result_live.val_accuracy


def test_evaluate_matches_a_single_forward_pass(tiny_data):
    model = seeded_model()
    fit(model, AugmentedViews(tiny_data), RECIPE)
    model.eval()
    with torch.no_grad():
        expected = model(normalize(tiny_data.val.images, tiny_data.info)).argmax(1) == tiny_data.val.labels
    assert evaluate(model, tiny_data.val, tiny_data.info, batch_size=7) == pytest.approx(expected.float().mean().item())


def test_predict_logits_shape_and_eval_mode(tiny_data):
    model = seeded_model().train()
    logits = predict_logits(model, tiny_data.val.images, tiny_data.info, batch_size=10)
    assert logits.shape == (len(tiny_data.val), 4) and logits.dtype == torch.float32
    assert not model.training


_KEEP_THEN_RETURN = """
import torch
from kdnas.trainer import keep_freed_memory, return_freed_memory

def rss_mib():
    return int(dict(line.split(":", 1) for line in open("/proc/self/status"))["VmRSS"].split()[0]) // 1024

cpu = torch.device("cpu")
keep_freed_memory(cpu)
before = rss_mib()
blocks = [torch.ones(1 << 20) for _ in range(64)]  # 64 blocks of 4 MiB, as activations are
del blocks
kept = rss_mib()
return_freed_memory(cpu)
print(before, kept, rss_mib())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_freed_activations_are_kept_for_reuse_then_returned_between_phases():
    out = subprocess.run([sys.executable, "-c", _KEEP_THEN_RETURN], capture_output=True, text=True, check=True)
    before, kept, returned = map(int, out.stdout.split())
    assert kept - before > 200  # kept: the next step reuses them without page faults
    assert kept - returned > 200  # returned: the next phase's differently sized tensors do not pile on top
