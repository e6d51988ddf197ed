"""The deployed export: the graph kdnas.train writes and the ONNX runtimes time, and the size objective."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kdnas.deploy import INPUT_NAME, deployable, export_onnx, onnx_size_kb
from kdnas.errors import KdnasError
from kdnas.models import ArchSpec, build_model, count_params

SHAPE = (1, 8, 8)


def test_the_onnx_export_takes_pixels_and_normalises_them_itself(tmp_path):
    model = build_model(ArchSpec("resnet", 1, 4, {"base_width": 4, "blocks": (1,)})).train()
    path = tmp_path / "student.onnx"
    export_onnx(deployable(model, (0.3,), (0.2,)), path, SHAPE)
    assert model.training  # the search's model is untouched: deployable works on a copy
    pixels = torch.rand(3, *SHAPE) * 255
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {INPUT_NAME: pixels.numpy()})
    with torch.no_grad():
        expected = model.eval()((pixels / 255 - 0.3) / 0.2)
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_size_is_the_onnx_file_with_float32_weights_in_kib():
    small, large = (build_model(ArchSpec("resnet", 1, 4, {"base_width": w, "blocks": (1,)})) for w in (4, 16))
    for model in (small, large):
        weights_kib = 4 * count_params(model) / 1024
        # The weights, their batch-norm statistics and the graph; nothing else.
        assert weights_kib < onnx_size_kb(model, SHAPE, (0.5,), (0.5,)) < weights_kib + 24


def test_size_of_a_network_the_exporter_cannot_handle_is_a_one_line_error():
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(KdnasError, match=r"^the ONNX export failed: [^\n]+$"):
        onnx_size_kb(Branchy(), SHAPE, (0.5,), (0.5,))
