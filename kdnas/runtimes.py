"""Latency runtimes: what a network's latency is measured on, named by ``[latency] runtime``.

- ``torch``: eager PyTorch on ``device``, the network alone (kdnas's first and default runtime).
- ``onnxruntime``: the deployed ONNX export (``kdnas.deploy``, normalisation built in) in an ONNX Runtime
  ``InferenceSession`` on the CPU execution provider: ``threads`` intra-op threads, sequential execution,
  every graph optimisation, thread spinning off (other processes share the cores while a search runs).
- ``command``: the same ONNX file handed to a command of the user's (for example one that copies it to a
  phone and runs a benchmark there); the last number it prints is the latency in milliseconds.

Each runtime says which ``[latency]`` keys apply to it (``check``, at config load), what this machine must
have (``require``, before a search writes anything) and what its figures depend on (``setup``, the key of
the latency table).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib.util
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kdnas.errors import KdnasError
from kdnas.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from kdnas.config import LatencyConfig

__all__ = ["RUNTIMES", "Runtime", "runtime_for", "COMMAND_FIELDS"]

# [latency] keys every runtime reads.
_EVERY_RUNTIME = ("runtime", "batch_size", "threads")
# The placeholders a command may use: the ONNX file, the batch size and the thread count.
COMMAND_FIELDS = ("onnx", "batch", "threads")
# A number as benchmarks print them: 12, 3.5, .5, 1e-3.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class Runtime(abc.ABC):
    """Times networks for the latency table.

    Args:
        cfg: the ``[latency]`` section; ``cfg.runtime`` is this runtime's name.
    """

    keys: tuple[str, ...] = ()  # [latency] keys this runtime reads, besides runtime, batch_size and threads

    def __init__(self, cfg: LatencyConfig) -> None:
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: LatencyConfig) -> None:
        """At config load: a key this runtime ignores, set away from its default, is refused (never silently
        ignored). Subclasses add their own checks."""
        for f in dataclasses.fields(cfg):
            if f.name not in (*_EVERY_RUNTIME, *cls.keys) and getattr(cfg, f.name) != f.default:
                takes = " or ".join(repr(name) for name in RUNTIMES if f.name in RUNTIMES.get(name).keys)
                raise KdnasError(f"{f.name} does not apply to runtime {cfg.runtime!r}; it is for runtime {takes}")

    def require(self) -> None:  # noqa: B027 - a hook: most runtimes need nothing beyond kdnas's dependencies
        """Raise a KdnasError unless this machine can time on this runtime (before a search writes anything)."""

    @abc.abstractmethod
    def setup(self, input_shape: tuple[int, ...]) -> str:
        """What the figures depend on, in words: the latency table keeps figures per setup."""

    @abc.abstractmethod
    def measure(
        self, models: Sequence[nn.Module], input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float]
    ) -> list[float]:
        """Milliseconds of one inference of a batch of ``cfg.batch_size`` images of ``input_shape`` (C, H, W)
        by each model; ``mean`` and ``std`` are the data's normalisation, built into exported graphs."""

    @abc.abstractmethod
    def time_deployed(
        self,
        model: nn.Module,
        onnx: Path,
        input_shape: tuple[int, ...],
        anchor: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> tuple[float, float]:
        """Milliseconds of a trained student, whose deployed export ``kdnas.train`` wrote to ``onnx`` (the file
        itself for runtimes that time ONNX files, so the figure is the deployed file's), and of ``anchor``,
        timed side by side (``kdnas.measure.LatencyTable``)."""

    def _runs_line(self) -> str:
        """The setup's words for the timed runs (none for ``min_time_s`` 0: tables timed before it existed
        keep their key)."""
        over = f" over at least {self.cfg.min_time_s:g} s" if self.cfg.min_time_s else ""
        return f"{self.cfg.warmup} warm-up + {self.cfg.repeats} timed runs{over}"

    def _batch_line(self, input_shape: tuple[int, ...]) -> str:
        return f"batch {self.cfg.batch_size} x {'x'.join(map(str, input_shape))}, {self.cfg.threads} threads"


RUNTIMES: Registry[type[Runtime]] = Registry("latency runtime")


def runtime_for(cfg: LatencyConfig) -> Runtime:
    """The runtime ``cfg.runtime`` names, set up with ``cfg``."""
    return RUNTIMES.get(cfg.runtime)(cfg)


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """Eager PyTorch on ``cfg.device``, side by side (``kdnas.measure.measure_latencies``)."""

    keys = ("device", "warmup", "repeats", "min_time_s")

    def require(self) -> None:
        from kdnas.measure import resolve_device

        resolve_device(self.cfg.device)

    def setup(self, input_shape: tuple[int, ...]) -> str:
        # The words of the tables written before runtimes existed: their figures stay valid.
        import torch

        from kdnas.measure import device_model

        cfg = self.cfg
        return (
            f"{cfg.device} ({device_model(cfg.device)}), batch {cfg.batch_size} x {'x'.join(map(str, input_shape))}, "
            f"{cfg.threads} threads, {self._runs_line()}, torch {torch.__version__}"
        )

    def measure(
        self, models: Sequence[nn.Module], input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float]
    ) -> list[float]:
        from kdnas.measure import measure_latencies

        return measure_latencies(models, input_shape, self.cfg)

    def time_deployed(
        self,
        model: nn.Module,
        onnx: Path,
        input_shape: tuple[int, ...],
        anchor: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> tuple[float, float]:
        from kdnas.measure import measure_latencies

        student_ms, anchor_ms = measure_latencies([model, anchor], input_shape, self.cfg)
        return student_ms, anchor_ms


class _OnnxFileRuntime(Runtime):
    """A runtime that times the deployed ONNX export of each network, exported to a temporary folder."""

    def measure(
        self, models: Sequence[nn.Module], input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float]
    ) -> list[float]:
        with tempfile.TemporaryDirectory(prefix="kdnas-latency-") as tmp:
            paths = [
                self._export(model, Path(tmp) / f"network{i}.onnx", input_shape, mean, std)
                for i, model in enumerate(models)
            ]
            return self.time_files(paths, input_shape)

    def time_deployed(
        self,
        model: nn.Module,
        onnx: Path,
        input_shape: tuple[int, ...],
        anchor: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="kdnas-latency-") as tmp:
            anchor_file = self._export(anchor, Path(tmp) / "anchor.onnx", input_shape, mean, std)
            student_ms, anchor_ms = self.time_files([onnx, anchor_file], input_shape)
        return student_ms, anchor_ms

    def _export(
        self, model: nn.Module, path: Path, input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float]
    ) -> Path:
        from kdnas.deploy import deployable, export_onnx

        try:
            export_onnx(deployable(model, mean, std), path, input_shape)
        except KdnasError as err:
            raise KdnasError(
                f'{err}; it cannot be timed on runtime {self.cfg.runtime!r}: set [latency] runtime = "torch" '
                "to time networks in eager PyTorch"
            ) from None
        return path

    @abc.abstractmethod
    def time_files(self, paths: Sequence[Path], input_shape: tuple[int, ...]) -> list[float]:
        """Milliseconds of one inference of each ONNX file (input ``images``: pixels, float (N, C, H, W))."""


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(_OnnxFileRuntime):
    """ONNX Runtime's CPU execution provider, sessions timed side by side as eager torch is."""

    keys = ("device", "warmup", "repeats", "min_time_s")

    @classmethod
    def check(cls, cfg: LatencyConfig) -> None:
        super().check(cfg)
        if cfg.device.partition(":")[0] != "cpu":
            raise KdnasError(
                f"runtime 'onnxruntime' times on ONNX Runtime's CPU execution provider; device must be 'cpu', "
                f"got {cfg.device!r}"
            )

    def require(self) -> None:
        from kdnas.deploy import require_onnx_export

        if importlib.util.find_spec("onnxruntime") is None:
            raise KdnasError(
                '[latency] runtime = "onnxruntime" needs ONNX Runtime, which is not installed: '
                'pip install "kdnas[onnx]" (or pip install onnxruntime)'
            )
        require_onnx_export()

    def setup(self, input_shape: tuple[int, ...]) -> str:
        import onnxruntime
        import torch

        from kdnas.measure import device_model

        return (
            f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider on cpu ({device_model('cpu')}), "
            f"{self._batch_line(input_shape)}, {self._runs_line()}, "
            f"exported by torch {torch.__version__}"
        )

    def time_files(self, paths: Sequence[Path], input_shape: tuple[int, ...]) -> list[float]:
        import numpy as np
        import onnxruntime as ort

        from kdnas.deploy import INPUT_NAME
        from kdnas.measure import time_side_by_side

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.cfg.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would steal the cores from the other sessions' runs and from other processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        pixels = 255 * np.random.default_rng(0).random((self.cfg.batch_size, *input_shape), dtype=np.float32)
        sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
        runs = [functools.partial(session.run, None, {INPUT_NAME: pixels}) for session in sessions]
        return time_side_by_side(runs, self.cfg)


@RUNTIMES.register("command")
class CommandRuntime(_OnnxFileRuntime):
    """A command of the user's, run once per network without a shell (``sh -c '...'`` for pipes)."""

    keys = ("command", "timeout_s")

    @classmethod
    def check(cls, cfg: LatencyConfig) -> None:
        super().check(cfg)
        if not cfg.command:
            raise KdnasError('runtime "command" needs command, a command line with {onnx}, e.g. "bench.sh {onnx}"')
        try:
            fields = {name for token in shlex.split(cfg.command) for _, name, _, _ in string.Formatter().parse(token)}
        except ValueError as err:  # an unbalanced quote or brace
            raise KdnasError(f"command {cfg.command!r} cannot be read: {err}") from None
        unknown = sorted(fields - {None, *COMMAND_FIELDS})
        if unknown:
            raise KdnasError(
                f"command {cfg.command!r} has unknown placeholder(s) {', '.join(f'{{{u}}}' for u in unknown)}; "
                f"known: {', '.join(f'{{{f}}}' for f in COMMAND_FIELDS)} (write {{{{ and }}}} for literal braces)"
            )
        if "onnx" not in fields:
            raise KdnasError(f"command {cfg.command!r} lacks {{onnx}}, the ONNX file to time")

    def require(self) -> None:
        from kdnas.deploy import require_onnx_export

        program = shlex.split(self.cfg.command or "")[0]
        if shutil.which(program) is None:
            raise KdnasError(f"[latency] command: {program!r} is not a program found on this machine's PATH")
        require_onnx_export()

    def setup(self, input_shape: tuple[int, ...]) -> str:
        import torch

        return f"command `{self.cfg.command}`, {self._batch_line(input_shape)}, exported by torch {torch.__version__}"

    def time_files(self, paths: Sequence[Path], input_shape: tuple[int, ...]) -> list[float]:
        return [self._run(path) for path in paths]

    def _run(self, onnx: Path) -> float:
        """The last number the command prints on its standard output for ``onnx``."""
        cfg = self.cfg
        values = {"onnx": str(onnx.resolve()), "batch": cfg.batch_size, "threads": cfg.threads}
        argv = [token.format(**values) for token in shlex.split(cfg.command or "")]
        shown = f"[latency] command {shlex.join(argv)!r}"
        try:
            # Its own process group: on a timeout the command and everything it started are killed.
            with subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            ) as process:
                try:
                    out, err = process.communicate(timeout=cfg.timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    out, err = process.communicate()
                    raise KdnasError(
                        f"{shown} ran past timeout_s = {cfg.timeout_s:g} s; its last line: {_last_line(out, err)}"
                    ) from None
        except OSError as error:
            raise KdnasError(f"{shown} cannot start: {error.strerror or error}") from None
        if process.returncode != 0:
            raise KdnasError(f"{shown} exited with status {process.returncode}; its last line: {_last_line(out, err)}")
        numbers = [float(n) for n in _NUMBER.findall(out)]
        if not numbers:
            raise KdnasError(f"{shown} printed no number on standard output; its last line: {_last_line(err, out)}")
        if not 0 < numbers[-1] < float("inf"):
            raise KdnasError(f"{shown} printed {numbers[-1]:g} last; a latency must be a number of ms > 0")
        return numbers[-1]


def _last_line(*outputs: str) -> str:
    """The last non-empty line of the last of ``outputs`` that has one, quoted."""
    for output in reversed(outputs):
        lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
        if lines:
            return repr(lines[-1])
    return "(no output)"
