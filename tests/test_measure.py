"""What a candidate costs: MACs against a hand count, latency honouring its config, device names."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time

import pytest
import torch
from torch import nn

from kdnas.config import LatencyConfig
from kdnas.errors import KdnasError
from kdnas.measure import (
    LatencyTable,
    count_macs,
    device_model,
    measure_latencies,
    resolve_device,
    time_side_by_side,
)
from kdnas.models import ArchSpec, build_model, count_params

FAST = LatencyConfig(warmup=1, repeats=3, min_time_s=0)


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig) -> float:
    return measure_latencies([model], input_shape, cfg)[0]


def conv_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_count_macs_of_conv_and_linear():
    # conv: every output value (4 channels x 8 x 8) needs 2 input channels x 3 x 3 products;
    # linear: 10 outputs x 256 inputs. Biases and ReLU are not multiply-accumulates.
    expected = 4 * 8 * 8 * 2 * 3 * 3 + 256 * 10
    assert expected == 7168
    assert count_macs(conv_linear(), (2, 8, 8)) == expected


def test_count_macs_of_strided_conv():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False))
    assert count_macs(model, (3, 10, 10)) == 6 * 5 * 5 * 3 * 9


def test_count_macs_of_smallest_resnet():
    # w4 b1 on 1x8x8: stem conv 4*64*9, two block convs 4*64*36 each, head 4*10 (pooling and BN are not MACs).
    model = build_model(ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1,)}))
    assert count_macs(model, (1, 8, 8)) == 4 * 64 * 9 + 2 * 4 * 64 * 36 + 40


def test_count_macs_keeps_the_training_mode():
    model = conv_linear().train()
    count_macs(model, (2, 8, 8))
    assert model.training
    model.eval()
    count_macs(model, (2, 8, 8))
    assert not model.training


def test_measure_latency_is_a_positive_float():
    latency = measure_latency(conv_linear(), (2, 8, 8), FAST)
    assert isinstance(latency, float)
    assert latency > 0


def test_measure_latency_runs_warmup_plus_repeats_with_the_configured_batch_and_threads():
    model = conv_linear()
    seen = []
    # The hook travels with the copy latency is measured on; it records each forward pass.
    model.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[0], torch.get_num_threads())))
    cfg = LatencyConfig(batch_size=3, threads=1, warmup=2, repeats=4, min_time_s=0)
    measure_latency(model, (2, 8, 8), cfg)
    assert seen == [(3, 1)] * 6


def test_timing_goes_on_in_rounds_until_it_has_lasted_min_time_s():
    calls = []

    def slow_run() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.002)

    (latency,) = time_side_by_side([slow_run], LatencyConfig(warmup=0, repeats=5, min_time_s=0.15))
    assert calls[-1] - calls[0] >= 0.15 - 0.003  # the last call starts after the rounds have lasted long enough
    assert len(calls) % 10 == 5 and len(calls) >= 65  # 5 asked, then whole rounds of 10 (about 2 ms each)
    assert 2.0 <= latency < 10.0


def test_measure_latency_restores_the_thread_count():
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    measure_latency(conv_linear(), (2, 8, 8), LatencyConfig(threads=target, warmup=0, repeats=1))
    assert torch.get_num_threads() == before


def test_measure_latency_leaves_the_model_untouched():
    model = conv_linear().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    measure_latency(model, (2, 8, 8), FAST)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("name", "expected"),
    [pytest.param("cpu", torch.device("cpu"), id="cpu"), pytest.param("cpu:0", torch.device("cpu:0"), id="cpu:0")],
)
def test_resolve_device_known(name, expected):
    assert resolve_device(name) == expected


def test_resolve_auto_picks_what_is_there():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", [pytest.param("cuda", id="cuda"), pytest.param("cuda:1", id="cuda:1")])
def test_resolve_cuda_without_cuda_is_an_error(name):
    with pytest.raises(KdnasError, match=f"device '{name}' requested but CUDA is not available here; use --device cpu"):
        resolve_device(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("gpu", r"unknown device 'gpu' \(did you mean 'cuda'\?\); use cpu, cuda, cuda:N or auto", id="gpu"),
        pytest.param("cpuu", "unknown device 'cpuu'", id="typo"),
        pytest.param("", "unknown device ''", id="empty"),
        pytest.param("meta", "device 'meta' is not supported; use cpu, cuda, cuda:N or auto", id="meta"),
    ],
)
def test_resolve_unknown_device_is_an_error(name, expected):
    with pytest.raises(KdnasError, match=expected):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_latency_on_missing_cuda_is_a_user_error():
    with pytest.raises(KdnasError, match="CUDA is not available"):
        measure_latency(conv_linear(), (2, 8, 8), LatencyConfig(device="cuda", warmup=0, repeats=1))


ANCHOR = "anchor: resnet w8 b1-1-1, 1 -> 10"


def test_latency_table_times_each_network_once_per_setup(tmp_path, caplog):
    arch = ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1,)})
    model = build_model(arch)
    first = LatencyTable(tmp_path, FAST, (1, 8, 8)).latency_ms(model, arch)
    # Another table on the same file (a later run): the stored figure, not a new timing, which would
    # differ in its last digits.
    assert LatencyTable(tmp_path, FAST, (1, 8, 8)).latency_ms(model, arch) == first
    other_setup = LatencyTable(tmp_path, LatencyConfig(warmup=1, repeats=4), (1, 8, 8))
    assert other_setup.latency_ms(model, arch) != first  # timed again: the setup is part of the key
    stored = json.loads((tmp_path / "latency.json").read_text())
    assert len(stored) == 2 and all(list(networks) == [ANCHOR, "resnet w4 b1, 1 -> 10"] for networks in stored.values())

    (tmp_path / "latency.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="kdnas.measure"):
        again = LatencyTable(tmp_path, FAST, (1, 8, 8)).latency_ms(model, arch)
    assert "unreadable" in caplog.text and "timing networks again" in caplog.text
    assert list(json.loads((tmp_path / "latency.json").read_text())) == [next(iter(stored))]
    assert json.loads((tmp_path / "latency.json").read_text())[next(iter(stored))]["resnet w4 b1, 1 -> 10"] == again


def test_latency_table_times_a_whole_space_once_and_skips_networks_over_the_limit(tmp_path):
    archs = [ArchSpec("resnet", 1, 10, {"base_width": w, "blocks": (1,)}) for w in (4, 8, 16)]
    table = LatencyTable(tmp_path, FAST, (1, 8, 8))
    known = table.latency_ms(build_model(archs[0]), archs[0])
    limit = count_params(build_model(archs[1]))  # w16 is over it: never trained, so never timed
    assert table.time_all(archs, max_params=limit) == 1  # w4 was already in the table
    stored = next(iter(json.loads((tmp_path / "latency.json").read_text()).values()))
    assert list(stored) == [ANCHOR, "resnet w4 b1, 1 -> 10", "resnet w8 b1, 1 -> 10"]
    assert stored["resnet w4 b1, 1 -> 10"] == known
    assert table.time_all(archs, max_params=limit) == 0
    assert table.time_all(archs) == 1 and len(json.loads((tmp_path / "latency.json").read_text())[table.setup]) == 4


def test_measure_latencies_times_the_networks_in_turn_in_rounds():
    models, seen = [conv_linear(), conv_linear()], []
    for name, model in zip("ab", models, strict=True):
        model.register_forward_hook(lambda m, args, out, name=name: seen.append(name))
    latencies = measure_latencies(models, (2, 8, 8), LatencyConfig(warmup=2, repeats=25, min_time_s=0))
    assert len(latencies) == 2 and all(t > 0 for t in latencies)
    # Warm-up of each, then rounds of 10, 10 and 5 runs taking the networks in turn.
    assert "".join(seen) == "aabb" + "a" * 10 + "b" * 10 + "a" * 10 + "b" * 10 + "a" * 5 + "b" * 5


def test_torch_tables_keep_the_setup_words_of_tables_written_before_runtimes_and_min_time(tmp_path):
    # The key of a latency.json figure on torch, timed as before min_time_s: unchanged, so those tables stay
    # valid; a minimum time is another way of timing, so it is another setup.
    words = f"cpu ({device_model('cpu')}), batch 1 x 1x28x28, 1 threads, 10 warm-up + 50 timed runs"
    before = LatencyTable(tmp_path, LatencyConfig(min_time_s=0), (1, 28, 28))
    assert before.setup == f"{words}, torch {torch.__version__}"
    assert LatencyTable(tmp_path, LatencyConfig(), (1, 28, 28)).setup == (
        f"{words} over at least 0.5 s, torch {torch.__version__}"
    )


def test_latency_table_keeps_each_runtime_apart_and_times_on_it(tmp_path):
    arch = ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1,)})
    model = build_model(arch)
    torch_ms = LatencyTable(tmp_path, FAST, (1, 8, 8)).latency_ms(model, arch)
    script = "import sys; print('p50', 7.5, 'ms')"
    cfg = LatencyConfig(runtime="command", command=f"{sys.executable} -c {shlex.quote(script)} {{onnx}}")
    table = LatencyTable(tmp_path, cfg, (1, 8, 8), mean=(0.3,), std=(0.3,))
    assert table.setup.startswith("command `") and table.setup.endswith(f"exported by torch {torch.__version__}")
    assert table.latency_ms(model, arch) == 7.5
    stored = json.loads((tmp_path / "latency.json").read_text())
    assert [networks["resnet w4 b1, 1 -> 10"] for networks in stored.values()] == [torch_ms, 7.5]


def test_figures_timed_at_different_moments_are_scaled_to_the_anchors_first_figure(tmp_path):
    # A command whose machine runs twice as slow at the second call: the anchor (timed beside each network)
    # slows as much, and the stored figure of the second network is in the first call's state.
    script = (
        "import pathlib, sys; calls = pathlib.Path(sys.argv[2]); n = len(calls.read_text()) if calls.exists() else 0; "
        "calls.write_text('x' * (n + 1)); print(2.0 * (1 + n // 2) * (3 if 'network1' in sys.argv[1] else 1))"
    )
    counter = tmp_path / "calls"
    cfg = LatencyConfig(runtime="command", command=f"{sys.executable} -c {shlex.quote(script)} {{onnx}} {counter}")
    table = LatencyTable(tmp_path, cfg, (1, 8, 8), mean=(0.3,), std=(0.3,))
    archs = [ArchSpec("resnet", 1, 10, {"base_width": w, "blocks": (1,)}) for w in (4, 8)]
    assert table.latency_ms(build_model(archs[0]), archs[0]) == 6.0  # anchor 2 ms, the network 3x it
    assert table.latency_ms(build_model(archs[1]), archs[1]) == 6.0  # both twice as slow: 12 ms, 6 in the first state
    assert table.anchor_reference_ms == 2.0


def test_time_all_skips_networks_over_max_macs(tmp_path):
    archs = [ArchSpec("resnet", 1, 10, {"base_width": w, "blocks": (1,)}) for w in (4, 8)]
    table = LatencyTable(tmp_path, FAST, (1, 8, 8))
    assert table.time_all(archs, max_macs=count_macs(build_model(archs[0]), (1, 8, 8))) == 1
    assert list(json.loads((tmp_path / "latency.json").read_text())[table.setup]) == [ANCHOR, "resnet w4 b1, 1 -> 10"]
