"""Study files: every bad input fails with a KdnasError that says what and where; good inputs load."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kdnas.config import (
    STUDIES_DIR,
    ChoiceParam,
    NumParam,
    StudyConfig,
    load_study,
    resolve_study_path,
    study_from_dict,
)
from kdnas.data import DATASETS
from kdnas.distill import ALPHA_SCHEDULES
from kdnas.errors import KdnasError
from kdnas.families import FAMILIES
from kdnas.pruning import EARLY_STOP_POLICIES
from kdnas.samplers import SAMPLERS
from kdnas.trainer import PRECISIONS

SHIPPED = sorted(STUDIES_DIR.glob("*.toml"))


def write_study(tmp_path: Path, text: str, name: str = "mine") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write_study(tmp_path, text)
    with pytest.raises(KdnasError) as info:
        load_study(str(path))
    message = str(info.value)
    assert "\n" not in message, "a user error is one line"
    return message


# ---------------------------------------------------------------------------------------------------
# Finding the file
# ---------------------------------------------------------------------------------------------------


def test_unknown_study_name_suggests_the_closest_and_lists_the_known_ones():
    with pytest.raises(KdnasError) as info:
        load_study("smok")
    message = str(info.value)
    assert "'smok'" in message
    assert "did you mean 'smoke'?" in message
    known = message.split("known: ")[1]
    for path in SHIPPED:
        assert path.stem in known


def test_unknown_study_name_without_a_close_match_still_lists_the_known_ones():
    with pytest.raises(KdnasError, match=r"no study named 'zzzzqqq'; known: .*smoke"):
        load_study("zzzzqqq")


def test_missing_study_path_is_reported(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(KdnasError, match=re.escape(f"no study file at {missing}")):
        resolve_study_path(str(missing))


def test_study_name_resolves_to_the_studies_folder():
    assert resolve_study_path("smoke") == STUDIES_DIR / "smoke.toml"


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_malformed_toml_names_the_file(tmp_path):
    message = load_error(tmp_path, "seed = \n[data\n")
    assert "mine.toml is not valid TOML" in message


def test_file_that_is_not_utf8_is_reported(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"seed = 1\n\xff\xfe\x00")
    with pytest.raises(KdnasError, match="bin.toml"):
        load_study(str(path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("sed = 1\n", "unknown key 'sed' in the top level; did you mean 'seed'?", id="top-level"),
        pytest.param(
            "[trian]\nepochs = 1\n", "unknown key 'trian' in the top level; did you mean 'train'?", id="section-name"
        ),
        pytest.param("[train]\nepoch = 3\n", "unknown key 'epoch' in [train]; did you mean 'epochs'?", id="in-section"),
        pytest.param(
            "[teacher.train]\nbatchsize = 3\n",
            "unknown key 'batchsize' in [teacher.train]; did you mean 'batch_size'?",
            id="nested-section",
        ),
        pytest.param(
            "[kd]\nalpha = { low = 0.0, hihg = 1.0 }\n",
            "unknown key 'hihg' in range kd.alpha; did you mean 'high'?",
            id="range-table",
        ),
        pytest.param(
            "[data]\nzzzz = 1\n",
            "unknown key 'zzzz' in [data]; known keys: dataset, path, image_size,",
            id="no-close-match-lists-keys",
        ),
        pytest.param(
            "[kd]\nalpha = { low = 0.0, high = 1.0, qqqq = 2 }\n",
            "unknown key 'qqqq' in range kd.alpha; known: high, log, low, step",
            id="range-no-close-match",
        ),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path, text, expected):
    assert expected in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[teacher]\nbase_width = 0\n", "base_width must be at least 1, got 0", id="teacher-width-0"),
        pytest.param("[teacher]\nbase_width = -8\n", "base_width must be at least 1, got -8", id="teacher-width-neg"),
        pytest.param(
            "[student]\nbase_width = 0\n", "base_width: values must be in [1, inf], got 0", id="student-width-0"
        ),
        pytest.param(
            "[student]\nbase_width = { low = -4, high = 8 }\n",
            "base_width: values must be in [1, inf], got -4..8",
            id="student-width-range",
        ),
        pytest.param(
            "[teacher]\nblocks = [2, 0]\n", "every stage needs at least 1 block, got [2, 0]", id="teacher-blocks-0"
        ),
        pytest.param("[teacher]\nblocks = []\n", "blocks is empty", id="teacher-blocks-empty"),
        pytest.param("[student]\nblocks = 0\n", "blocks: values must be in [1, inf], got 0", id="student-blocks-0"),
        pytest.param("[student]\nstages = 0\n", "stages must be at least 1, got 0", id="stages-0"),
        pytest.param("[kd]\ntemperature = 0\n", "temperature: values must be in (0, inf], got 0.0", id="T-zero"),
        pytest.param(
            "[kd]\ntemperature = { low = -1.0, high = 4.0 }\n",
            "temperature: values must be in (0, inf], got -1.0..4.0",
            id="T-negative-range",
        ),
        pytest.param("[kd]\nalpha = 1.5\n", "alpha: values must be in [0, 1], got 1.5", id="alpha-above-1"),
        pytest.param("[kd]\nalpha = -0.1\n", "alpha: values must be in [0, 1], got -0.1", id="alpha-below-0"),
        pytest.param(
            "[kd]\nalpha = [0.0, 0.5, 2.0]\n",
            "alpha: values must be in [0, 1], got 0.0..2.0",
            id="alpha-choice-above-1",
        ),
        pytest.param("[kd]\ndecay_rate = 0\n", "decay_rate: values must be in (0, inf], got 0.0", id="rate-zero"),
        pytest.param(
            "[kd]\ndecay_rate = -2.0\n", "decay_rate: values must be in (0, inf], got -2.0", id="rate-negative"
        ),
        pytest.param("[kd]\nalpha = []\n", "kd.alpha: the list of choices is empty", id="empty-num-choices"),
        pytest.param(
            "[kd]\nalpha_decay = []\n", "kd.alpha_decay: the list of choices is empty", id="empty-name-choices"
        ),
        pytest.param(
            "[kd]\nalpha = { low = 0.8, high = 0.2 }\n", "min > max: low=0.8 is above high=0.2", id="min-above-max"
        ),
        pytest.param(
            "[student]\nblocks = { low = 3, high = 1 }\n", "min > max: low=3 is above high=1", id="int-min-above-max"
        ),
        pytest.param(
            "[kd]\ntemperature = { low = 0.0, high = 4.0, log = true }\n",
            "a log range needs low > 0",
            id="log-low-zero",
        ),
        pytest.param(
            "[kd]\ntemperature = { low = 1.0, high = 4.0, log = true, step = 0.5 }\n",
            "cannot also have a step",
            id="log-with-step",
        ),
        pytest.param("[kd]\nalpha = { low = 0.0, high = 1.0, step = 0 }\n", "step must be > 0", id="step-zero"),
        pytest.param("[kd]\nalpha = { low = 0.0 }\n", "range kd.alpha needs both low and high", id="range-no-high"),
        pytest.param("[data]\nval_fraction = 1.0\n", "val_fraction must be in (0, 1), got 1.0", id="val-fraction"),
        pytest.param("[data]\nlimit_train = 5\n", "limit_train must be at least 10, got 5", id="limit-train"),
        pytest.param("[data]\nlimit_val = 5\n", "limit_val must be at least 10, got 5", id="limit-val"),
        pytest.param('[data]\ndataset = "imagefolder"\n', 'dataset = "imagefolder" needs path', id="folder-no-path"),
        pytest.param(
            '[data]\npath = "pets"\n',
            "path is only for dataset = \"imagefolder\", not 'fashion_mnist'",
            id="path-builtin",
        ),
        pytest.param(
            "[data]\nimage_size = 64\n",
            "image_size is only for imagefolder and torchvision:<Class> datasets; 'fashion_mnist' has a fixed size",
            id="image-size-builtin",
        ),
        pytest.param(
            '[data]\ndataset = "imagefolder"\npath = "pets"\nimage_size = 4\n',
            "image_size must be at least 8, got 4",
            id="image-size-4",
        ),
        pytest.param(
            '[data]\ndataset = "torchvision:MNIST"\nskip_unreadable = true\n',
            "skip_unreadable is only for dataset = \"imagefolder\", not 'torchvision:MNIST'",
            id="skip-unreadable-torchvision",
        ),
        pytest.param(
            '[data]\ndataset = "torchvision:Cifar10"\n',
            "unknown torchvision dataset 'Cifar10' (did you mean 'CIFAR10'?)",
            id="torchvision-typo",
        ),
        pytest.param("[train]\nepochs = 0\n", "epochs must be at least 1, got 0", id="epochs-0"),
        pytest.param("[train]\nlr = 0\n", "lr must be a finite number > 0, got 0.0", id="lr-0"),
        pytest.param("[train]\nmomentum = 1.0\n", "momentum must be in [0, 1), got 1.0", id="momentum-1"),
        pytest.param("[budget]\ntrials = 0\n", "trials must be at least 1, got 0", id="trials-0"),
        pytest.param("[latency]\nthreads = 0\n", "threads must be at least 1, got 0", id="threads-0"),
        pytest.param("[constraints]\nmax_params = 0\n", "max_params must be at least 1, got 0", id="max-params-0"),
        pytest.param("[constraints]\nmax_macs = 0\n", "max_macs must be at least 1, got 0", id="max-macs-0"),
        pytest.param("[constraints]\nmax_size_kb = 0\n", "max_size_kb must be > 0, got 0.0", id="max-size-0"),
        pytest.param(
            '[latency]\nruntime = "command"\ncommand = "bench {onnx}"\ntimeout_s = 0\n',
            "timeout_s must be > 0, got 0.0",
            id="timeout-0",
        ),
        pytest.param('name = ""\n', "name must not be empty", id="empty-name"),
    ],
)
def test_out_of_range_values_are_rejected_with_rule_and_value(tmp_path, text, expected):
    assert expected in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('seed = "zero"\n', "seed must be of type int, got 'zero'", id="str-for-int"),
        pytest.param("seed = 1.5\n", "seed must be of type int, got 1.5", id="float-for-int"),
        pytest.param("seed = true\n", "seed must be of type int, got True", id="bool-for-int"),
        pytest.param('[train]\nlr = "fast"\n', "train.lr must be of type float, got 'fast'", id="str-for-float"),
        pytest.param("[data]\nflip = 1\n", "data.flip must be of type bool, got 1", id="int-for-bool"),
        pytest.param(
            "[data]\nlimit_train = 50.5\n",
            "data.limit_train must be of type int, got 50.5",
            id="float-for-optional-int",
        ),
        pytest.param("[teacher]\nblocks = 2\n", "teacher.blocks must be a list, got 2", id="scalar-for-list"),
        pytest.param(
            '[teacher]\nblocks = [1, "2"]\n', "teacher.blocks must be of type int, got '2'", id="str-in-int-list"
        ),
        pytest.param("train = 5\n", "[train] must be a table, got 5", id="scalar-for-section"),
        pytest.param(
            "[student]\nbase_width = 8.5\n",
            "student.base_width must hold integers, got 8.5",
            id="fraction-for-int-param",
        ),
        pytest.param(
            "[student]\nblocks = { low = 1, high = 3, step = 0.5 }\n",
            "student.blocks must hold integers, got 0.5",
            id="fraction-step-for-int-param",
        ),
        pytest.param('[kd]\nalpha = "half"\n', "kd.alpha must hold numbers, got 'half'", id="str-for-num-param"),
        pytest.param("[kd]\nalpha = [0.5, true]\n", "kd.alpha must hold numbers, got True", id="bool-in-choices"),
        pytest.param(
            '[kd]\nalpha_decay = ["none", 3]\n', "kd.alpha_decay must be a list of names", id="number-in-names"
        ),
    ],
)
def test_wrong_types_are_rejected(tmp_path, text, expected):
    assert expected in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("[kd]\ntemperature = inf\n", "temperature", id="T-inf"),
        pytest.param("[kd]\ntemperature = nan\n", "temperature", id="T-nan"),
        pytest.param("[kd]\ntemperature = { low = 1.0, high = inf, log = true }\n", "temperature", id="T-range-inf"),
        pytest.param("[kd]\nalpha = nan\n", "alpha", id="alpha-nan"),
        pytest.param("[kd]\ndecay_rate = inf\n", "decay_rate", id="rate-inf"),
        pytest.param("[train]\nlr = inf\n", "lr", id="lr-inf"),
        pytest.param("[train]\nlr = nan\n", "lr", id="lr-nan"),
        pytest.param("[train]\naverage_epochs = inf\n", "average_epochs", id="average-inf"),
    ],
)
def test_non_finite_numbers_are_rejected(tmp_path, text, key):
    # TOML allows inf and nan; T = inf makes the loss inf * 0 = nan, lr = inf diverges at once.
    assert key in load_error(tmp_path, text)


def test_log_flag_that_is_not_a_bool_is_rejected(tmp_path):
    # log = "false" must not silently become a log range (bool("false") is True).
    message = load_error(tmp_path, '[kd]\ntemperature = { low = 1.0, high = 4.0, log = "false" }\n')
    assert "kd.temperature" in message
    assert "log" in message.split("kd.temperature", 1)[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[early_stop]\nmargin = 1.5\n", "margin must be in [0, 1), got 1.5", id="early-stop-margin"),
        pytest.param("[early_stop]\nmin_epochs = 0\n", "min_epochs must be at least 1", id="early-stop-min-epochs"),
        pytest.param(
            "[train]\naverage_epochs = -0.5\n",
            "average_epochs must be a finite number >= 0 (0: no averaging), got -0.5",
            id="average-epochs",
        ),
        pytest.param("[early_stop]\nsigmas = -1\n", "sigmas must be >= 0, got -1", id="early-stop-sigmas"),
        pytest.param(
            '[sampler]\nstartup = "pair"\n',
            "startup must be one of 'pairs', 'usual', 'random', got 'pair'",
            id="sampler-startup",
        ),
        pytest.param(
            "[early_stop]\nreduction_factor = 1\n", "reduction_factor must be at least 2", id="early-stop-factor"
        ),
        pytest.param(
            '[objectives]\nmetrics = ["val_accuracy", "flops"]\n',
            "unknown metric 'flops'; known: latency_ms, macs, params, size_kb, val_accuracy",
            id="metric",
        ),
        pytest.param(
            '[objectives]\nmetrics = ["val_accuracy", "mac"]\n', "unknown metric 'mac' (did you mean 'macs'?)", id="mac"
        ),
        pytest.param(
            '[objectives]\nmetrics = ["params"]\n', "metrics must include 'val_accuracy'", id="metric-without-accuracy"
        ),
        pytest.param(
            '[objectives]\nmetrics = ["val_accuracy", "params", "params"]\n',
            "metrics has duplicates",
            id="metric-duplicate",
        ),
    ],
)
def test_bad_values_are_rejected_with_rule_and_value(tmp_path, text, expected):
    assert expected in load_error(tmp_path, text)


def test_errors_name_the_file(tmp_path):
    message = load_error(tmp_path, "[kd]\nalpha = 2.0\n")
    assert message.startswith(f"{tmp_path / 'mine.toml'}: [kd] alpha:")


# Every key that names a registered thing: its TOML with {} for the name, the registry, where the name arrives.
NAMED = {
    "dataset": ('[data]\ndataset = "{}"\n', DATASETS, lambda c: c.data.dataset),
    "student-family": ('[student]\nfamily = "{}"\n', FAMILIES, lambda c: c.student.family),
    "alpha-decay": ('[kd]\nalpha_decay = ["{}"]\n', ALPHA_SCHEDULES, lambda c: c.kd.alpha_decay.choices[0]),
    "precision": ('[train]\nprecision = "{}"\n', PRECISIONS, lambda c: c.train.precision),
    "teacher-precision": ('[teacher.train]\nprecision = "{}"\n', PRECISIONS, lambda c: c.teacher.train.precision),
    "sampler": ('[sampler]\nname = "{}"\n', SAMPLERS, lambda c: c.sampler.name),
    "early-stop": ('[early_stop]\npolicy = "{}"\n', EARLY_STOP_POLICIES, lambda c: c.early_stop.policy),
}


@pytest.mark.parametrize(
    ("key", "name"),
    [pytest.param(key, name, id=f"{key}-{name}") for key, (_, registry, _) in NAMED.items() for name in registry],
)
def test_every_registered_name_loads_where_it_is_named(tmp_path, key, name):
    text, _, arrived = NAMED[key]
    assert arrived(load_study(str(write_study(tmp_path, text.format(name))))) == name


@pytest.mark.parametrize(
    ("key", "typo", "where", "suggestion"),
    [
        pytest.param("alpha-decay", "cosin", "[kd] alpha_decay", "cosine", id="alpha-decay"),
        pytest.param("precision", "bf16", "[train] precision", "bfloat16", id="precision"),
        pytest.param("teacher-precision", "float23", "[teacher.train] precision", "float32", id="teacher-precision"),
        pytest.param("sampler", "tpee", "[sampler] name", "tpe", id="sampler"),
        pytest.param("early-stop", "forcast", "[early_stop] policy", "forecast", id="early-stop"),
    ],
)
def test_misspelled_names_fail_at_load_with_a_suggestion(tmp_path, key, typo, where, suggestion):
    text, registry, _ = NAMED[key]
    assert load_error(tmp_path, text.format(typo)) == (
        f"{tmp_path / 'mine.toml'}: {where}: unknown {registry.kind} {typo!r} (did you mean {suggestion!r}?); "
        f"known: {', '.join(sorted(registry.names()))}"
    )


FAMILY_CHOICES = 'known: mbconv, resnet, or "import:package.module:Class"'


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param('[student]\nfamily = "mbconf"\n', "[student] family", id="student"),
        pytest.param('[student]\narch = "mbconf"\n', "[student] family", id="student-old-name"),
        pytest.param('[teacher]\nfamily = "mbconf"\n', "[teacher] family", id="teacher"),
        pytest.param('[teacher]\narch = "mbconf"\n', "[teacher] family", id="teacher-old-name"),
    ],
)
def test_misspelled_family_fails_at_load_with_a_suggestion(tmp_path, text, where):
    assert load_error(tmp_path, text) == (
        f"{tmp_path / 'mine.toml'}: {where}: unknown student family 'mbconf' (did you mean 'mbconv'?); {FAMILY_CHOICES}"
    )


def test_arch_is_the_old_name_of_family(tmp_path):
    cfg = load_study(str(write_study(tmp_path, '[student]\narch = "mbconv"\n[teacher]\narch = "resnet"\n')))
    assert (cfg.student.family, cfg.teacher.family) == ("mbconv", "resnet")
    both = load_error(tmp_path, '[student]\narch = "resnet"\nfamily = "mbconv"\n')
    assert both.endswith("[student] gives both family and arch (its old name); keep family")


def test_unknown_knob_of_a_family_suggests_the_closest(tmp_path):
    assert load_error(tmp_path, '[student]\nfamily = "mbconv"\nkernels = 3\n').endswith(
        "[student] unknown knob 'kernels' in student; did you mean 'kernel'?"
    )
    assert load_error(tmp_path, "[student]\nexpand = 3\n").endswith(
        "[student] unknown knob 'expand' in student; known knobs: stages, base_width, blocks"
    )


def test_configs_saved_before_families_load_as_resnet():
    # config.json, the study's stored config and student files of older versions hold [student] this way.
    base_width = {"kind": "int", "low": 4, "high": 8, "step": 4, "log": False, "choices": None}
    blocks = {"kind": "int", "low": 1, "high": 2, "step": None, "log": False, "choices": None}
    old = {"arch": "resnet", "stages": 2, "base_width": base_width, "blocks": blocks}
    new = {"student": {"stages": 2, "base_width": {"low": 4, "high": 8, "step": 4}, "blocks": {"low": 1, "high": 2}}}
    assert study_from_dict({"name": "x", "student": old}) == study_from_dict({"name": "x", **new})


def test_resnet_studies_keep_their_space_hash():
    # Measured before student families existed: trials stored by that version stay comparable.
    from kdnas.study import search_space_hash

    assert search_space_hash(load_study("fashion")) == "28680633b24eec84"
    assert search_space_hash(load_study("smoke")) == "359a63544bea50b4"  # since it set [latency] min_time_s = 0
    cfg = study_from_dict({"name": "x", "student": {"family": "resnet", "stages": 3}, "teacher": {"family": "resnet"}})
    assert search_space_hash(cfg) == search_space_hash(StudyConfig(name="x"))
    assert search_space_hash(study_from_dict({"name": "x", "student": {"family": "mbconv"}})) != search_space_hash(cfg)


DATASET_CHOICES = "known: cifar10, cifar100, fashion_mnist, imagefolder, or torchvision:<Class>"


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        pytest.param("fashoin_mnist", " (did you mean 'fashion_mnist'?)", id="builtin"),
        pytest.param("imagefolders", " (did you mean 'imagefolder'?)", id="imagefolder"),
        pytest.param("imagenet", " (did you mean 'torchvision:ImageNet'?)", id="torchvision-class-alone"),
        pytest.param("qqqq", "", id="no-close-match"),
    ],
)
def test_misspelled_dataset_names_the_sources(tmp_path, typo, suggestion):
    message = load_error(tmp_path, f'[data]\ndataset = "{typo}"\n')
    assert message.endswith(f"[data] dataset: unknown dataset {typo!r}{suggestion}; {DATASET_CHOICES}")


def test_every_alpha_decay_choice_is_checked(tmp_path):
    message = load_error(tmp_path, '[kd]\nalpha_decay = ["none", "cosine", "lineaer"]\n')
    assert "[kd] alpha_decay: unknown alpha schedule 'lineaer' (did you mean 'linear'?)" in message


def test_default_alpha_decay_is_every_registered_schedule_in_order():
    assert StudyConfig("x").kd.alpha_decay == ChoiceParam(tuple(ALPHA_SCHEDULES.names()))
    assert ALPHA_SCHEDULES.names()[0] == "none"  # the no-decay baseline comes first, as in the shipped studies


@pytest.mark.parametrize("device", ["auto", "cpu", "cpu:0", "cuda", "cuda:1"])
def test_latency_devices_load_whether_or_not_they_are_here(tmp_path, device):
    # Presence is checked by the machine that measures, which may not be the one that reads the file.
    assert load_study(str(write_study(tmp_path, f'[latency]\ndevice = "{device}"\n'))).latency.device == device


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        pytest.param("cpuu", "unknown device 'cpuu' (did you mean 'cpu'?); use cpu, cuda, cuda:N or auto", id="typo"),
        pytest.param(
            "cuda:x", "unknown device 'cuda:x' (did you mean 'cuda'?); use cpu, cuda, cuda:N or auto", id="bad-index"
        ),
        pytest.param("", "unknown device ''; use cpu, cuda, cuda:N or auto", id="empty"),
        pytest.param("mps", "device 'mps' is not supported; use cpu, cuda, cuda:N or auto", id="unsupported"),
    ],
)
def test_bad_latency_device_fails_at_load(tmp_path, device, expected):
    message = load_error(tmp_path, f'[latency]\ndevice = "{device}"\n')
    assert message == f"{tmp_path / 'mine.toml'}: [latency] device: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[latency]\nruntime = "onnxruntim"\n',
            "runtime: unknown latency runtime 'onnxruntim' (did you mean 'onnxruntime'?); "
            "known: command, onnxruntime, torch",
            id="runtime-typo",
        ),
        pytest.param(
            '[latency]\ncommand = "bench {onnx}"\n',
            "command does not apply to runtime 'torch'; it is for runtime 'command'",
            id="command-for-torch",
        ),
        pytest.param(
            '[latency]\nruntime = "command"\ncommand = "bench {onnx}"\nrepeats = 5\n',
            "repeats does not apply to runtime 'command'; it is for runtime 'torch' or 'onnxruntime'",
            id="repeats-for-command",
        ),
        pytest.param(
            '[latency]\nruntime = "command"\n',
            'runtime "command" needs command, a command line with {onnx}',
            id="command-missing",
        ),
        pytest.param(
            '[latency]\nruntime = "command"\ncommand = "bench model.onnx"\n',
            "command 'bench model.onnx' lacks {onnx}, the ONNX file to time",
            id="command-without-onnx",
        ),
        pytest.param(
            '[latency]\nruntime = "command"\ncommand = "bench {onnx} --cores {cores}"\n',
            "command 'bench {onnx} --cores {cores}' has unknown placeholder(s) {cores}; known: {onnx}, {batch}, "
            "{threads} (write {{ and }} for literal braces)",
            id="command-placeholder",
        ),
        pytest.param(
            '[latency]\nruntime = "command"\ncommand = "bench \'{onnx}"\n',
            'command "bench \'{onnx}" cannot be read: No closing quotation',
            id="command-quote",
        ),
        pytest.param(
            '[latency]\nruntime = "onnxruntime"\ndevice = "cuda"\n',
            "runtime 'onnxruntime' times on ONNX Runtime's CPU execution provider; device must be 'cpu', got 'cuda'",
            id="onnxruntime-on-cuda",
        ),
    ],
)
def test_bad_latency_runtime_settings_fail_at_load(tmp_path, text, expected):
    assert load_error(tmp_path, text).startswith(f"{tmp_path / 'mine.toml'}: [latency] {expected}")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[latency]\nruntime = "onnxruntime"\nthreads = 2\nrepeats = 20\n', id="onnxruntime"),
        pytest.param(
            '[latency]\nruntime = "command"\ncommand = "adb-bench --model {onnx} -b {batch} -t {threads}"\n'
            "timeout_s = 30\nbatch_size = 4\n",
            id="command",
        ),
        pytest.param('[objectives]\nmetrics = ["val_accuracy", "macs", "size_kb"]\n', id="macs-and-size"),
        pytest.param("[constraints]\nmax_macs = 5_000_000\nmax_size_kb = 200\n", id="macs-and-size-limits"),
    ],
)
def test_runtimes_and_cost_measures_load_and_round_trip(tmp_path, text):
    cfg = load_study(str(write_study(tmp_path, text)))
    assert study_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("text", "mistake"),
    [
        pytest.param('[student]\nfamily = "resnte"\n', "[student] family: unknown student family", id="family"),
        pytest.param('[student]\nfamily = "mbconv"\nkernel = [3, 4]\n', "[student] kernel: a kernel size", id="kernel"),
        pytest.param(
            '[data]\ndataset = "fashoin_mnist"\n', "[data] dataset: unknown dataset 'fashoin_mnist'", id="dataset"
        ),
        pytest.param('[latency]\ndevice = "cpuu"\n', "[latency] device: unknown device 'cpuu'", id="device"),
    ],
)
def test_search_with_a_misspelled_name_creates_nothing(tmp_path, capsys, text, mistake):
    from kdnas.search import main

    out = tmp_path / "run"
    code = main(["--study", str(write_study(tmp_path, text)), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and mistake in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------
# Good input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in SHIPPED])
def test_shipped_studies_load(path):
    cfg = load_study(path.stem)
    assert isinstance(cfg, StudyConfig)
    assert cfg.name == path.stem


def test_smoke_study_is_shipped():
    assert [p.stem for p in SHIPPED].count("smoke") == 1


def test_empty_file_gives_the_defaults_named_after_the_file(tmp_path):
    cfg = load_study(str(write_study(tmp_path, "", name="empty")))
    assert cfg == StudyConfig(name="empty")


def test_name_in_file_wins_over_file_name(tmp_path):
    assert load_study(str(write_study(tmp_path, 'name = "other"\n'))).name == "other"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("base_width = 16", NumParam("int", 16, 16), id="scalar-is-fixed"),
        pytest.param("base_width = [8, 16, 24]", NumParam("int", choices=(8, 16, 24)), id="list-is-choices"),
        pytest.param("base_width = { low = 8, high = 32, step = 8 }", NumParam("int", 8, 32, step=8), id="range"),
        pytest.param(
            "base_width = { low = 4, high = 64, log = true }", NumParam("int", 4, 64, log=True), id="log-range"
        ),
        pytest.param("base_width = 16.0", NumParam("int", 16, 16), id="integral-float-is-int"),
    ],
)
def test_searchable_int_forms(tmp_path, text, expected):
    cfg = load_study(str(write_study(tmp_path, f"[student]\n{text}\n")))
    assert cfg.student.knobs["base_width"] == expected
    assert all(type(v) is int for v in (cfg.student.knobs["base_width"].low, cfg.student.knobs["base_width"].high))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("temperature = 4", NumParam("float", 4.0, 4.0), id="scalar-is-fixed"),
        pytest.param("temperature = [1, 2.5, 4]", NumParam("float", choices=(1.0, 2.5, 4.0)), id="list-is-choices"),
        pytest.param(
            "temperature = { low = 1, high = 8, log = true }", NumParam("float", 1.0, 8.0, log=True), id="log-range"
        ),
    ],
)
def test_searchable_float_forms(tmp_path, text, expected):
    cfg = load_study(str(write_study(tmp_path, f"[kd]\n{text}\n")))
    assert cfg.kd.temperature == expected


def test_single_alpha_decay_name_is_one_choice(tmp_path):
    cfg = load_study(str(write_study(tmp_path, '[kd]\nalpha_decay = "cosine"\n')))
    assert cfg.kd.alpha_decay == ChoiceParam(("cosine",))


def test_nested_recipe_keeps_unset_defaults(tmp_path):
    cfg = load_study(str(write_study(tmp_path, "[teacher]\ntrain = { epochs = 3, lr = 0.05 }\n")))
    assert (cfg.teacher.train.epochs, cfg.teacher.train.lr, cfg.teacher.train.batch_size) == (3, 0.05, 256)


def test_optional_value_accepts_none_from_dict():
    cfg = study_from_dict({"name": "x", "data": {"limit_train": None}})
    assert cfg.data.limit_train is None


FULL_STUDY = """\
seed = 3
[data]
dataset = "cifar10"
limit_train = 500
crop_padding = 2
flip = false
[teacher]
base_width = 16
blocks = [1, 2]
checkpoint = "weights.pt"
train = { epochs = 2, batch_size = 64, lr = 0.1 }
[student]
stages = 2
base_width = [4, 8]
blocks = { low = 1, high = 3 }
[kd]
temperature = { low = 1.0, high = 8.0, log = true }
alpha = { low = 0.0, high = 1.0, step = 0.1 }
alpha_decay = ["none", "cosine"]
decay_rate = 2.0
[train]
epochs = 2
label_smoothing = 0.1
[objectives]
metrics = ["val_accuracy", "latency_ms"]
[constraints]
max_params = 100000
max_latency_ms = 5.5
[latency]
threads = 2
[budget]
trials = 4
timeout_min = 10
[sampler]
name = "random"
startup_trials = 0
"""


@pytest.mark.parametrize(
    "source",
    [pytest.param("full", id="every-section"), pytest.param("defaults", id="defaults")]
    + [pytest.param(p, id=f"shipped-{p.stem}") for p in SHIPPED],
)
def test_to_dict_round_trips_to_an_equal_config(tmp_path, source):
    if source == "full":
        cfg = load_study(str(write_study(tmp_path, FULL_STUDY)))
    elif source == "defaults":
        cfg = StudyConfig(name="defaults")
    else:
        cfg = load_study(str(source))
    again = study_from_dict(cfg.to_dict())
    assert again == cfg
    assert dataclasses.asdict(again) == cfg.to_dict()


def test_full_study_values_arrive(tmp_path):
    cfg = load_study(str(write_study(tmp_path, FULL_STUDY)))
    assert cfg.teacher.blocks == (1, 2)
    assert cfg.data.flip is False
    assert cfg.objectives.directions == ["maximize", "minimize"]
    assert cfg.budget.timeout_min == 10.0
    assert cfg.kd.decay_rate == NumParam("float", 2.0, 2.0)


# ---------------------------------------------------------------------------------------------------
# What makes stored trials comparable
# ---------------------------------------------------------------------------------------------------


def test_a_key_set_to_its_default_hashes_as_the_key_left_out():
    from kdnas.config import DataConfig, TeacherConfig, TrainRecipe, section_hash

    assert section_hash(DataConfig(), TeacherConfig()) == section_hash(
        DataConfig(val_fraction=0.1, limit_val=None), TeacherConfig(blocks=(2, 2, 2))
    )
    assert section_hash(DataConfig()) != section_hash(DataConfig(limit_val=500))
    nested = TeacherConfig(train=TrainRecipe(epochs=11))
    assert section_hash(TeacherConfig()) != section_hash(nested)


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        pytest.param(None, "c080692883b88174", id="defaults"),
        pytest.param("smoke", "359a63544bea50b4", id="smoke"),  # since it set [latency] min_time_s = 0
        pytest.param("fashion", "28680633b24eec84", id="fashion"),
    ],
)
def test_stored_studies_keep_their_space_hash(study, expected):
    # Hashes of studies stored before latency runtimes, MACs and size objectives: the new keys' defaults
    # keep them, so those studies stay comparable with new runs.
    from kdnas.study import search_space_hash

    cfg = StudyConfig("x") if study is None else load_study(study)
    assert search_space_hash(cfg) == expected
    assert cfg.objectives.metrics == ("val_accuracy", "params", "latency_ms")


def test_a_key_added_later_with_a_default_keeps_stored_hashes():

    from kdnas.config import section_hash

    @dataclasses.dataclass(frozen=True)
    class Before:
        epochs: int = 5

    @dataclasses.dataclass(frozen=True)
    class After:
        epochs: int = 5
        limit_val: int | None = None  # new, and None keeps the old behaviour

    assert section_hash(Before(epochs=7)) == section_hash(After(epochs=7))
    assert section_hash(Before(epochs=7)) != section_hash(After(epochs=7, limit_val=100))
