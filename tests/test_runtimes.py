"""Latency runtimes: ONNX Runtime sessions as the issue prescribes them, a user's command run for real, and
each bad input as one line that names the way out."""

from __future__ import annotations

import importlib.util
import shlex
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from kdnas.config import LatencyConfig
from kdnas.errors import KdnasError
from kdnas.runtimes import RUNTIMES, runtime_for

PYTHON = shlex.quote(sys.executable)
SHAPE = (1, 8, 8)


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 4))


def command(script: str, *args: str, **keys: object) -> LatencyConfig:
    """A command runtime whose command runs the Python ``script`` with ``args`` after it."""
    return LatencyConfig(runtime="command", command=shlex.join([sys.executable, "-c", script, *args]), **keys)


def test_registry_holds_the_three_runtimes_in_order():
    assert RUNTIMES.names() == ["torch", "onnxruntime", "command"]


def test_onnxruntime_times_deployed_exports_side_by_side_in_configured_sessions(tmp_path, monkeypatch):
    sessions, seen = [], []

    class Recording(ort.InferenceSession):
        def __init__(self, path, options, providers):
            super().__init__(path, options, providers=providers)
            self.name, self.options, self.providers = Path(path).stem, options, providers
            sessions.append(self)

        def run(self, outputs, feeds):
            seen.append((self.name, feeds["images"].shape))
            return super().run(outputs, feeds)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cfg = LatencyConfig(runtime="onnxruntime", batch_size=3, threads=2, warmup=2, repeats=12, min_time_s=0)
    latencies = runtime_for(cfg).measure([tiny(), tiny()], SHAPE, (0.3,), (0.3,))
    assert len(latencies) == 2 and all(t > 0 for t in latencies)
    for session in sessions:
        assert session.options.intra_op_num_threads == 2
        assert session.options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert session.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert session.options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert session.providers == ["CPUExecutionProvider"]
    # Warm-up of each, then rounds of 10 and 2 runs taking the networks in turn, on a batch of 3 images.
    names = "".join(name[-1] for name, _ in seen)
    assert names == "0011" + "0" * 10 + "1" * 10 + "00" + "11"
    assert {shape for _, shape in seen} == {(3, *SHAPE)}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("kdnas-")]  # the exported files are gone


def test_onnxruntime_missing_stops_the_search_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from kdnas.search import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    study = tmp_path / "s.toml"
    study.write_text('[latency]\nruntime = "onnxruntime"\n')
    out = tmp_path / "run"
    assert main(["--study", str(study), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert 'runtime = "onnxruntime" needs ONNX Runtime, which is not installed: pip install "kdnas[onnx]"' in err
    assert not out.exists()


class DataDependent(nn.Module):
    """A branch on the input's values: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def test_a_network_the_onnx_exporter_cannot_handle_names_torch_as_the_way_out(capfd):
    cfg = LatencyConfig(runtime="onnxruntime", warmup=0, repeats=1)
    with pytest.raises(KdnasError) as info:
        runtime_for(cfg).measure([DataDependent()], SHAPE, (0.0,), (1.0,))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the ONNX export failed: Could not guard on data-dependent expression")
    assert message.endswith('set [latency] runtime = "torch" to time networks in eager PyTorch')
    assert "GraphModule" not in capfd.readouterr().err  # the exporter's dump of the traced graph is not shown


def test_command_gets_the_exported_file_batch_and_threads_and_its_last_number_is_the_latency():
    script = (
        "import os, sys\n"
        "onnx, batch, threads = sys.argv[1:]\n"
        "ok = os.path.getsize(onnx) > 1000 and (batch, threads) == ('4', '2')\n"
        "print('runs 50, mean 3.5 ms' if ok else 'wrong arguments')\n"
        "print('p50: 3.25 ms', file=sys.stdout if ok else sys.stderr)\n"
        "sys.exit(0 if ok else 1)\n"
    )
    cfg = command(script, "{onnx}", "{batch}", "{threads}", batch_size=4, threads=2)
    assert runtime_for(cfg).measure([tiny()], SHAPE, (0.3,), (0.3,)) == [3.25]


@pytest.mark.parametrize(
    ("script", "message"),
    [
        pytest.param(
            "import sys; print('loading model 1 of 1'); print('boom: no such device', file=sys.stderr); sys.exit(3)",
            "exited with status 3; its last line: 'boom: no such device'",
            id="fails",
        ),
        pytest.param(
            "print('latency 4.0 ms'); print('done')",
            None,
            id="last-number-wins",
        ),
        pytest.param(
            "print('no figure today')",
            "printed no number on standard output; its last line: 'no figure today'",
            id="no-number",
        ),
        pytest.param("pass", "printed no number on standard output; its last line: (no output)", id="no-output"),
        pytest.param("print('-1 ms')", "printed -1 last; a latency must be a number of ms > 0", id="negative"),
    ],
)
def test_command_outcomes(tmp_path, script, message):
    onnx = tmp_path / "network.onnx"
    onnx.write_bytes(b"not really onnx: the command never reads it")
    runtime = runtime_for(command(script, "{onnx}"))
    if message is None:
        assert runtime.time_files([onnx], SHAPE) == [4.0]
        return
    with pytest.raises(KdnasError) as info:
        runtime.time_files([onnx], SHAPE)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"[latency] command {shlex.join([sys.executable, '-c', script, str(onnx)])!r}")
    assert str(info.value).endswith(message)


def test_command_past_its_timeout_is_killed_with_everything_it_started(tmp_path):
    # sh's child sleep would hold the output open after sh alone was killed: the whole group goes.
    cfg = LatencyConfig(runtime="command", command="sh -c 'echo warming up; sleep 30; echo 1' {onnx}", timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(KdnasError, match=r"ran past timeout_s = 0.5 s; its last line: 'warming up'$"):
        runtime_for(cfg).time_files([tmp_path / "network.onnx"], SHAPE)
    assert time.perf_counter() - start < 10


def test_command_that_is_not_installed_fails_before_the_search_starts():
    cfg = LatencyConfig(runtime="command", command="no-such-benchmark-kdnas --model {onnx}")
    with pytest.raises(KdnasError, match="'no-such-benchmark-kdnas' is not a program found on this machine's PATH"):
        runtime_for(cfg).require()


def test_torch_runtime_requires_its_device():
    runtime_for(LatencyConfig()).require()  # the CPU is always there
    if not torch.cuda.is_available():
        with pytest.raises(KdnasError, match="CUDA is not available"):
            runtime_for(LatencyConfig(device="cuda")).require()


def test_train_warns_and_times_nothing_where_the_studys_runtime_is_missing(monkeypatch, caplog):
    from types import SimpleNamespace

    from kdnas.config import StudyConfig
    from kdnas.train import _latency_runtime

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    student = SimpleNamespace(cfg=StudyConfig("x", latency=LatencyConfig(runtime="onnxruntime")))
    with caplog.at_level("WARNING", logger="kdnas.train"):
        assert _latency_runtime(student) is None
    assert 'pip install "kdnas[onnx]"' in caplog.text and "the trained student will not be timed" in caplog.text
    assert _latency_runtime(SimpleNamespace(cfg=StudyConfig("x"))).cfg.runtime == "torch"
