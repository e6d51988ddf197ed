"""The resnet family and ArchSpec: parameter counts against an independent formula, shapes, the registry,
the pre-family record form."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from kdnas.errors import KdnasError
from kdnas.families import FAMILIES
from kdnas.models import ArchSpec, build_model, count_params


def expected_params(in_channels: int, num_classes: int, base_width: int, blocks: tuple[int, ...]) -> int:
    """Count by the architecture's description, not by walking the module.

    3x3 convs have no bias; BatchNorm has a weight and a bias per channel; a block's shortcut is a 1x1
    conv + BN when it changes stride or width; the head is a linear layer with bias.
    """

    def conv3x3_bn(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 2 * c_out

    total = conv3x3_bn(in_channels, base_width)  # stem
    c_in = base_width
    for stage, n_blocks in enumerate(blocks):
        c_out = base_width * 2**stage
        for i in range(n_blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            total += conv3x3_bn(c_in, c_out) + conv3x3_bn(c_out, c_out)
            if stride != 1 or c_in != c_out:
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    return total + c_in * num_classes + num_classes


SPECS = [
    pytest.param(1, 10, 4, (1,), id="fmnist-w4-b1"),
    pytest.param(1, 10, 8, (1, 1, 1), id="fmnist-w8-b1-1-1"),
    pytest.param(3, 10, 16, (2, 2, 2), id="cifar10-w16-b2-2-2"),
    pytest.param(3, 100, 12, (3, 1), id="cifar100-w12-b3-1"),
    pytest.param(3, 10, 4, (1, 2, 3, 1), id="four-stages"),
    pytest.param(1, 2, 1, (1, 1), id="width-1"),
]


@pytest.mark.parametrize(("in_channels", "num_classes", "base_width", "blocks"), SPECS)
def test_parameter_count_matches_formula(in_channels, num_classes, base_width, blocks):
    model = build_model(ArchSpec("resnet", in_channels, num_classes, {"base_width": base_width, "blocks": blocks}))
    assert count_params(model) == expected_params(in_channels, num_classes, base_width, blocks)


def test_parameter_count_golden_values():
    # By hand. w4 b1, 1 channel, 10 classes: stem 36 + 8, block 144 + 8 + 144 + 8, head 40 + 10.
    assert count_params(build_model(ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1,)}))) == 398
    # ResNet-20 (He et al. 2016): 269,722 with zero-padding shortcuts, plus the two 1x1 projections + BN
    # used here: 16*32 + 2*32 + 32*64 + 2*64 = 2,752.
    assert count_params(build_model(ArchSpec("resnet", 3, 10, {"base_width": 16, "blocks": (3, 3, 3)}))) == 272_474


def test_count_params_skips_frozen_parameters_and_bn_statistics():
    model = build_model(ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1,)}))
    model.head.weight.requires_grad_(False)
    assert count_params(model) == 398 - 40
    assert sum(b.numel() for b in model.buffers()) > 0  # running stats exist but are not counted


@pytest.mark.parametrize(
    ("in_channels", "num_classes", "size", "blocks"),
    [
        pytest.param(1, 10, 28, (1, 1, 1), id="28px-3-stages"),
        pytest.param(3, 100, 32, (1, 2), id="32px-2-stages"),
        pytest.param(3, 10, 8, (1, 1, 1, 1), id="8px-4-stages"),
    ],
)
def test_output_shape(in_channels, num_classes, size, blocks):
    model = build_model(ArchSpec("resnet", in_channels, num_classes, {"base_width": 4, "blocks": blocks})).eval()
    with torch.no_grad():
        out = model(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()


def test_registry_lists_resnet_first():
    assert FAMILIES.names()[0] == "resnet"


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(KdnasError, match=r"unknown student family 'vgg'; known: mbconv, resnet, or \"import:"):
        build_model(ArchSpec("vgg", 3, 10, {"base_width": 8, "blocks": (1,)}))


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        FAMILIES.register("resnet")(object)


@pytest.mark.parametrize(
    ("base_width", "blocks"),
    [
        pytest.param(0, (1,), id="width-0"),
        pytest.param(4, (), id="no-stages"),
        pytest.param(4, (1, 0), id="stage-without-blocks"),
    ],
)
def test_invalid_spec_is_rejected(base_width, blocks):
    with pytest.raises(KdnasError, match="invalid architecture"):
        build_model(ArchSpec("resnet", 3, 10, {"base_width": base_width, "blocks": blocks}))


def test_same_seed_builds_the_same_weights():
    spec = ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1, 1)})
    torch.manual_seed(3)
    a = build_model(spec).state_dict()
    torch.manual_seed(3)
    b = build_model(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_describe():
    assert ArchSpec("resnet", 1, 10, {"base_width": 16, "blocks": (1, 2, 1)}).describe() == "resnet w16 b1-2-1"


def test_spec_compares_and_hashes_as_json_reads_it_back():
    spec = ArchSpec("resnet", 1, 10, {"base_width": 16, "blocks": (1, 2)})
    read_back = ArchSpec("resnet", 1, 10, {"blocks": [1, 2], "base_width": 16})
    assert spec == read_back and hash(spec) == hash(read_back)
    assert spec != ArchSpec("resnet", 1, 10, {"base_width": 16, "blocks": [2, 1]})


def test_records_written_before_families_read_as_resnet():
    old = {"arch": "resnet", "in_channels": 1, "num_classes": 10, "base_width": 4, "blocks": [1, 2]}
    assert ArchSpec.from_dict(old, "arch") == ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": [1, 2]})


def test_records_round_trip_through_their_dict():
    spec = ArchSpec("mbconv", 3, 10, {"width_mult": 0.5, "depth": [1]})
    assert ArchSpec.from_dict(dataclasses.asdict(spec), "arch") == spec


@pytest.mark.parametrize("size", [28, 7], ids=["even", "odd"])
def test_strided_shortcut_is_a_strided_1x1_convolution(size):
    block = build_model(ArchSpec("resnet", 1, 10, {"base_width": 4, "blocks": (1, 1)})).stages[1].double().eval()
    x = torch.randn(2, 4, size, size, dtype=torch.float64)
    conv, bn = block.shortcut
    with torch.no_grad():
        expected = bn(torch.nn.functional.conv2d(x, conv.weight, stride=2))
        out = block(x)
    skip = torch.relu(block.conv2(torch.relu(block.conv1(x))) + expected)
    assert out.shape == skip.shape
    torch.testing.assert_close(out, skip)


def test_narrow_students_train_in_channels_last_on_the_cpu():
    # Strided 1x1 convolutions with < 8 input channels crash torch 2.14's backward on AVX2 CPUs; the
    # process would die, so it runs apart from the suite.
    code = (
        "import torch\n"
        "from kdnas.models import ArchSpec, build_model\n"
        "for width in (1, 2, 4, 6):\n"
        "    spec = ArchSpec('resnet', 1, 10, {'base_width': width, 'blocks': (1, 1, 1)})\n"
        "    model = build_model(spec).to(memory_format=torch.channels_last)\n"
        "    for _ in range(3):\n"
        "        model(torch.randn(64, 1, 28, 28)).sum().backward()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
