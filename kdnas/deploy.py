"""The deployed form of a student and its exports: raw pixels in, the data's normalisation built in.

``kdnas.train`` writes these exports (``student.pt2``, ``student.onnx``), and the latency runtimes that
time ONNX files time this same export, so the latency a search ranks networks by is that of the graph
that is deployed, and the size objective is that file's size.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kdnas.errors import KdnasError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["INPUT_NAME", "deployable", "export_program", "export_onnx", "onnx_size_kb", "require_onnx_export"]

INPUT_NAME = "images"  # the ONNX graph's input: float pixels 0..255, (N, C, H, W)
_MAX_BATCH = 65536
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the exporter colours its messages


def deployable(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode behind the input normalisation (``model`` is untouched).

    Args:
        mean, std: per channel (or one value for all), on the 0..1 scale.
    Returns:
        A module from pixel values 0..255, float (N, C, H, W), to logits (N, classes).
    """
    import torch
    from torch import nn

    inner = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)

    class Student(nn.Module):
        """Pixel values 0..255, float (N, C, H, W) -> logits (N, classes)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = inner
            self.register_buffer("mean", 255 * torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", 255 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model((images - self.mean) / self.std)

    return Student().eval()


def _example(input_shape: tuple[int, ...]) -> tuple[tuple[torch.Tensor], tuple[dict[int, object]]]:
    """An example batch of pixels (C, H, W = ``input_shape``) and the dynamic batch dimension of every export."""
    import torch

    batch = {0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)}
    return (torch.rand(2, *input_shape) * 255,), (batch,)


def export_program(deployed: nn.Module, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """``deployed`` (from ``deployable``) as a ``torch.export`` program with a dynamic batch."""
    import torch

    example, dynamic_shapes = _example(input_shape)
    return torch.export.export(deployed, example, dynamic_shapes=dynamic_shapes)


def export_onnx(deployed: nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    """Write ``deployed`` (from ``deployable``) to ``path`` as one ONNX file with its float32 weights inside.

    Raises:
        KdnasError: the exporter cannot handle the network (its first line says why).
    """
    import torch

    # The ONNX exporter's optimiser logs every pass at INFO: keep the user's log to our lines.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    example, dynamic_shapes = _example(input_shape)
    try:
        # A failing export prints the whole traced graph on stderr; the error below says what failed.
        with contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(
                deployed,
                example,
                str(path),
                input_names=[INPUT_NAME],
                output_names=["logits"],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types, for any network a family may build
        cause = err
        while cause.__cause__ is not None:  # the exporter wraps the reason in pages of advice
            cause = cause.__cause__
        raise KdnasError(f"the ONNX export failed: {_ANSI.sub('', first_line(cause))}") from None


def onnx_size_kb(model: nn.Module, input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float]) -> float:
    """The size, in KiB (1,024 bytes), of the ONNX file ``kdnas.train`` would write for ``model``: its float32
    weights and graph. Exported to a temporary folder, which is removed."""
    with tempfile.TemporaryDirectory(prefix="kdnas-size-") as tmp:
        path = Path(tmp) / "student.onnx"
        export_onnx(deployable(model, mean, std), path, input_shape)
        return path.stat().st_size / 1024


def require_onnx_export() -> None:
    """Fail early, before anything is trained or timed, when the ONNX exporter's packages are missing."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise KdnasError(f"the ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)}")
