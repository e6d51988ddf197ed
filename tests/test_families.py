"""Student families: mbconv's layers and stride schedule, families imported by path, knobs checked at load."""

from __future__ import annotations

import itertools
import textwrap
import uuid

import optuna
import pytest
import torch

from kdnas.config import study_from_dict
from kdnas.errors import KdnasError
from kdnas.families import get_family
from kdnas.families._mbconv import InvertedResidual, make_divisible, stride_schedule
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.results import largest_student_params
from kdnas.space import architectures, space_size, specs_from_params, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

# One stage of one block, 16 -> 16 channels at width 1: the smallest mbconv network.
TINY = {"width_mult": 1.0, "activation": "relu", "depth": [1], "expand": [3.0], "kernel": [3], "se": [False]}


def mbconv(strides=(1, 1), **changes) -> torch.nn.Module:
    return build_model(ArchSpec("mbconv", 3, 10, {**TINY, "strides": list(strides), **changes}))


def study(**student) -> object:
    return study_from_dict({"name": "families", "student": {"family": "mbconv", **student}})


# ---------------------------------------------------------------------------------------------------
# mbconv: what each knob builds
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"width_mult": 0.5}, id="width"),
        pytest.param({"depth": [2]}, id="depth"),
        pytest.param({"expand": [6.0]}, id="expand"),
        pytest.param({"kernel": [5]}, id="kernel"),
        pytest.param({"se": [True]}, id="se"),
    ],
)
def test_every_searched_knob_changes_the_parameter_count(change):
    assert count_params(mbconv(**change)) != count_params(mbconv())


def test_activation_changes_the_layers_not_the_parameters():
    relu, hardswish = mbconv(), mbconv(activation="hardswish")
    assert count_params(relu) == count_params(hardswish)
    assert any(isinstance(m, torch.nn.Hardswish) for m in hardswish.modules())
    assert not any(isinstance(m, torch.nn.Hardswish) for m in relu.modules())


def test_squeeze_excitation_adds_two_biased_1x1_convolutions_of_a_quarter_width():
    hidden = make_divisible(16 * 3.0)  # 48
    squeezed = make_divisible(hidden / 4)  # 16 (rounded up to a multiple of 8)
    added = hidden * squeezed + squeezed + squeezed * hidden + hidden
    assert count_params(mbconv(se=[True])) - count_params(mbconv()) == added


def test_expansion_ratio_one_leaves_the_expansion_out():
    block = next(m for m in mbconv(expand=[1.0]).modules() if isinstance(m, InvertedResidual))
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.groups for c in convs] == [16, 1]  # depthwise, projection


def test_residual_only_where_the_block_keeps_its_shape():
    # Stem 16 ch; stage 1: 16 -> 16 (stride 1), stage 2: 16 -> 24 (stride 2) then 24 -> 24.
    spec = {**TINY, "depth": [1, 2], "expand": [3.0, 3.0], "kernel": [3, 3], "se": [False, False], "strides": [1, 1, 2]}
    blocks = [m for m in build_model(ArchSpec("mbconv", 3, 10, spec)).modules() if isinstance(m, InvertedResidual)]
    assert [b.residual for b in blocks] == [True, False, True]
    for block in blocks:  # a zeroed projection leaves only the skip connection
        last_bn = block.block[-1]
        torch.nn.init.zeros_(last_bn.weight), torch.nn.init.zeros_(last_bn.bias)
    block = blocks[0].eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)
        assert not blocks[1].eval()(x).abs().any()


@pytest.mark.parametrize(
    ("size", "strides", "last"),
    [
        pytest.param(28, [1, 1, 2, 2, 1], 7, id="28px"),
        pytest.param(32, [1, 1, 2, 2, 2], 4, id="32px"),
        pytest.param(64, [2, 1, 2, 2, 2], 4, id="64px"),
        pytest.param(128, [2, 2, 2, 2, 2], 4, id="128px"),
        pytest.param(224, [2, 2, 2, 2, 2], 7, id="224px"),
    ],
)
def test_stride_schedule_follows_the_image_size(size, strides, last):
    assert stride_schedule(4, size) == strides
    cfg = study(width_mult=0.5, depth=1, expand=1, kernel=3, se=False, activation="relu")
    (arch,) = architectures(cfg, 3, 10, size)
    with torch.no_grad():
        features = build_model(arch).eval().features(torch.zeros(1, 3, size, size))
    assert features.shape[-2:] == (last, last)


# ---------------------------------------------------------------------------------------------------
# mbconv: the space
# ---------------------------------------------------------------------------------------------------


def test_mbconv_params_replay_to_the_same_spec():
    cfg = study()
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = draws.ask()
        arch, kd = suggest(trial, cfg, 3, 10, 32)
        assert specs_from_params(trial.params, cfg, 3, 10, 32) == (arch, kd)
        draws.tell(trial, 0.0)
    per_stage = {f"{k}_{s}" for k in ("depth", "expand", "kernel", "se") for s in (1, 2, 3, 4)}
    assert per_stage | {"width_mult", "activation"} <= set(trial.params)
    assert arch.spec["strides"] == [1, 1, 2, 2, 2] and len(arch.spec["depth"]) == 4


def test_default_mbconv_space_is_counted_not_listed():
    cfg = study()
    assert space_size(cfg) == 3 * 2 * (3 * 3 * 2 * 2) ** 4
    first = list(itertools.islice(architectures(cfg, 3, 10, 32), 3))
    assert len({a.describe() for a in first}) == 3


def test_every_network_of_a_space_has_its_own_label():
    cfg = study(stages=2, depth=[1, 2], expand=[1, 6], kernel=[3, 5], width_mult=[0.5, 1.0])
    labels = [a.describe() for a in architectures(cfg, 3, 10, 32)]
    assert len(labels) == len(set(labels)) == space_size(cfg) == 2 * 2 * (2 * 2 * 2 * 2) ** 2


def test_largest_student_is_the_largest_network_of_the_space():
    cfg = study(stages=1, depth=[1, 2], expand=3, kernel=[3, 5], width_mult=[0.5, 1.0])
    every = [count_params(build_model(a)) for a in architectures(cfg, 3, 10, 32)]
    assert largest_student_params(cfg, 3, 10, 32) == max(every)


def test_continuous_width_makes_the_space_endless():
    assert space_size(study(width_mult={"low": 0.5, "high": 1.0})) == float("inf")
    assert space_size(study(width_mult={"low": 0.5, "high": 1.0, "step": 0.25}, stages=1)) == 3 * 2 * 3 * 3 * 2 * 2


# ---------------------------------------------------------------------------------------------------
# Bad knobs: one line at load
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        pytest.param({"kernel": [3, 4]}, "kernel: a kernel size must be odd and positive (it pads evenly), got [4]"),
        pytest.param({"kernel": -3}, "kernel: a kernel size must be odd and positive (it pads evenly), got [-3]"),
        pytest.param({"kernel": {"low": 3, "high": 5}}, "got [4]", id="kernel-range"),
        pytest.param({"expand": 0.5}, "expand: values must be in [1, inf], got 0.5"),
        pytest.param({"depth": 0}, "depth: values must be in [1, inf], got 0"),
        pytest.param({"depth": {"low": 0, "high": 2}}, "depth: values must be in [1, inf], got 0..2"),
        pytest.param({"width_mult": 0}, "width_mult: values must be in (0, inf], got 0.0"),
        pytest.param({"stages": 7}, "stages must be in [1, 6], got 7"),
        pytest.param(
            {"activation": "gelu"},
            "activation: unknown activation 'gelu' (did you mean 'relu'?); known: hardswish, relu",
        ),
        pytest.param({"se": "yes"}, "student.se must be true, false or [false, true], got 'yes'"),
        pytest.param({"kernel": 3.5}, "student.kernel must hold integers, got 3.5"),
    ],
)
def test_bad_mbconv_knobs_fail_at_load(knobs, message):
    with pytest.raises(KdnasError) as err:
        study(**knobs)
    assert str(err.value).startswith("[student] ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_teacher_of_another_family_is_one_network_of_its_knobs():
    knobs = {"width_mult": 1.0, "activation": "relu", "depth": 2, "expand": 6, "kernel": 3, "se": True}
    cfg = study_from_dict({"name": "t", "teacher": {"family": "mbconv", "knobs": knobs}})
    (spec,) = get_family("mbconv").networks(cfg.teacher.family_knobs(), 32)
    assert spec["depth"] == [2, 2, 2, 2] and spec["se"] == [True] * 4
    with pytest.raises(KdnasError, match=r"a teacher is one network: give knobs depth, kernel of family 'mbconv'"):
        study_from_dict(
            {"name": "t", "teacher": {"family": "mbconv", "knobs": {**knobs, "depth": [1, 2], "kernel": [3, 5]}}}
        )
    with pytest.raises(KdnasError, match=r"base_width and blocks are for family 'resnet'"):
        study_from_dict({"name": "t", "teacher": {"family": "mbconv", "knobs": knobs, "base_width": 8}})
    with pytest.raises(KdnasError, match=r"knobs is for families other than resnet"):
        study_from_dict({"name": "t", "teacher": {"knobs": {"base_width": 8}}})


# ---------------------------------------------------------------------------------------------------
# A family of your own, imported by path
# ---------------------------------------------------------------------------------------------------

GOOD = """
import torch
from torch import nn

class Space:
    knobs = {"width": {"low": 4, "high": 12, "step": 4}, "pool": ["avg", "max"], "bias": [False, True]}

    def build(self, spec, num_classes, in_channels):
        pool = nn.AdaptiveAvgPool2d(1) if spec["pool"] == "avg" else nn.AdaptiveMaxPool2d(1)
        return nn.Sequential(
            nn.Conv2d(in_channels, spec["width"], 3, bias=spec["bias"]), pool, nn.Flatten(),
            nn.Linear(spec["width"], num_classes),
        )
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Writes a module under a fresh name (families are imported once per process) and returns its name."""

    def write(source: str) -> str:
        name = f"family_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    return write


def test_imported_family_searches_each_knob_under_its_name(module):
    family = f"import:{module(GOOD)}:Space"
    cfg = study_from_dict({"name": "mine", "student": {"family": family, "width": [8, 12]}})
    assert space_size(cfg) == 2 * 2 * 2
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    arch, _ = suggest(trial, cfg, 1, 3, 16)
    assert {"width", "pool", "bias"} <= set(trial.params) and arch.spec["width"] in (8, 12)
    assert specs_from_params(trial.params, cfg, 1, 3, 16)[0] == arch
    assert build_model(arch)(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    assert arch.describe().startswith(family.removeprefix("import:") + " width=")
    assert study_from_dict(cfg.to_dict()) == cfg  # workers and hosts rebuild it from the saved study


def test_imported_family_largest_student_tries_each_choice(module):
    cfg = study_from_dict({"name": "mine", "student": {"family": f"import:{module(GOOD)}:Space"}})
    every = [count_params(build_model(a)) for a in architectures(cfg, 3, 10, 32)]
    assert largest_student_params(cfg, 3, 10, 32) == max(every)


@pytest.mark.parametrize(
    ("source", "attribute", "message"),
    [
        pytest.param(None, "Space", "does not import (No module named", id="no-module"),
        pytest.param("import not_a_module_anywhere\n", "Space", "does not import (No module named", id="broken-import"),
        pytest.param("x = 1\n", "Space", "has no 'Space'", id="no-class"),
        pytest.param(
            "class Space:\n    knobs = {}\n", "Space", "must have a knobs dict and a method build", id="no-build"
        ),
        pytest.param(
            "class Space:\n    knobs = [1]\n    def build(self, spec, n, c): pass\n",
            "Space",
            "must have a knobs dict",
            id="knobs-not-a-dict",
        ),
        pytest.param(
            GOOD.replace('nn.Linear(spec["width"]', 'nn.Linear(spec["width"] + 1'),
            "Space",
            "fails on a 32 px batch: RuntimeError: mat1 and mat2 shapes cannot be multiplied",
            id="forward-fails",
        ),
        pytest.param(
            GOOD.replace('nn.Linear(spec["width"], num_classes)', 'nn.Linear(spec["width"], 4)'),
            "Space",
            "its network returns (2, 4) for 2 images, not logits of shape (2, 10)",
            id="wrong-output",
        ),
        pytest.param(
            "class Space:\n    knobs = {}\n    def build(self, spec, n, c): return 3\n",
            "Space",
            "build returned a int, not an nn.Module",
            id="not-a-module",
        ),
        pytest.param(
            "class Space:\n    knobs = {'w': [1, 'a']}\n    def build(self, spec, n, c): pass\n",
            "Space",
            "Space.knobs.w must hold numbers, names or true/false",
            id="bad-knob",
        ),
    ],
)
def test_imported_family_that_breaks_the_protocol_fails_at_load_on_one_line(module, source, attribute, message):
    name = f"missing_{uuid.uuid4().hex}" if source is None else module(source)
    with pytest.raises(KdnasError) as err:
        study_from_dict({"name": "mine", "student": {"family": f"import:{name}:{attribute}"}})
    assert str(err.value).startswith("[student] ") and f"family 'import:{name}:{attribute}': " in str(err.value)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_import_path_without_a_class_is_refused():
    with pytest.raises(KdnasError, match=r'write it as "import:package.module:Class"'):
        study_from_dict({"name": "mine", "student": {"family": "import:mynets"}})
