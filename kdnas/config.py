"""Study files: the TOML schema, its defaults and its validation.

A study file is data, never code. It is turned into frozen dataclasses here and nowhere else; every
later module sees only these objects. Unknown keys fail with a did-you-mean, out-of-range values with
the rule and the value, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdnas.errors import KdnasError
from kdnas.registry import unknown_name

__all__ = [
    "STUDIES_DIR",
    "METRICS",
    "DEFAULT_METRICS",
    "NumParam",
    "ChoiceParam",
    "Knob",
    "parse_knob",
    "DataConfig",
    "TrainRecipe",
    "TeacherConfig",
    "FinetuneRecipe",
    "StudentSpace",
    "KDSpace",
    "Objectives",
    "Constraints",
    "LatencyConfig",
    "Budget",
    "SamplerConfig",
    "EarlyStopConfig",
    "StudyConfig",
    "load_study",
    "resolve_study_path",
    "study_from_dict",
    "dataclass_from_dict",
    "section_hash",
]

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
# Objective name -> optimisation direction. Accuracy is the only objective that training moves; the costs
# are known before training: parameters, multiply-accumulates of one image, latency on the [latency]
# runtime, and the size of the exported ONNX file in KiB.
METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "val_accuracy": "maximize",
    "params": "minimize",
    "latency_ms": "minimize",
    "macs": "minimize",
    "size_kb": "minimize",
}
STARTUP_DESIGNS = ("pairs", "usual", "random")  # how a TPE study's start-up trials are drawn (SamplerConfig.startup)
# What a study optimises when its file does not say: the objectives of kdnas before MACs and size were.
DEFAULT_METRICS = ("val_accuracy", "params", "latency_ms")
# The names a study file gives (dataset, student family, alpha schedule, precision, device, sampler, early-stop
# policy) are checked against the registry that builds each, imported inside __post_init__: those modules
# import torch or optuna, and this one, so `import kdnas.config` (and every --help) stays light.


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise KdnasError(message)


def _at_least(name: str, value: float | None, lowest: int) -> None:
    """``value`` must be >= ``lowest``; None (an optional setting left out) passes."""
    if value is not None:
        _check(value >= lowest, f"{name} must be {f'at least {lowest}' if lowest else '>= 0'}, got {value}")


def _positive(name: str, value: float | None) -> None:
    """``value`` must be > 0; None (an optional setting left out) passes."""
    if value is not None:
        _check(value > 0, f"{name} must be > 0, got {value}")


# ---------------------------------------------------------------------------------------------------
# Searchable values: a scalar (fixed), a list (choices) or a table {low, high, step, log} (a range)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumParam:
    """A numeric search dimension: a range ``low..high`` or explicit ``choices``."""

    kind: Literal["int", "float"]
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False
    choices: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            _check(len(self.choices) > 0, "the list of choices is empty; give at least one value")
            _check(all(math.isfinite(c) for c in self.choices), f"choices must be finite numbers, got {self.choices}")
            return
        _check(
            math.isfinite(self.low) and math.isfinite(self.high),
            f"low and high must be finite, got {self.low}..{self.high}",
        )
        _check(self.low <= self.high, f"min > max: low={self.low} is above high={self.high}")
        if self.log:
            _check(self.low > 0, f"a log range needs low > 0, got low={self.low}")
            _check(self.step is None, "a log range cannot also have a step; drop one of them")
        if self.step is not None:
            _check(self.step > 0, f"step must be > 0, got step={self.step}")

    @property
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value this dimension can take."""
        if self.choices is not None:
            return min(self.choices), max(self.choices)
        return self.low, self.high

    def values(self) -> list[float]:
        """Every value an integer dimension (or a list of choices) can take, ascending, as Optuna samples them."""
        if self.choices is not None:
            return sorted(set(self.choices))
        _check(self.kind == "int", f"a float range {self.low}..{self.high} has no finite list of values")
        return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))

    def require(self, lowest: float, highest: float = math.inf, *, open_low: bool = False) -> None:
        """Raise unless every value lies in [lowest, highest] (or (lowest, highest] with open_low)."""
        lo, hi = self.bounds
        below = lo <= lowest if open_low else lo < lowest
        bracket = "(" if open_low else "["
        got = f"{lo}" if lo == hi else f"{lo}..{hi}"
        _check(not below and hi <= highest, f"values must be in {bracket}{lowest}, {highest}], got {got}")


@dataclass(frozen=True)
class ChoiceParam:
    """A categorical search dimension: names, or true/false (a student family's switch)."""

    choices: tuple[str | bool, ...]

    def __post_init__(self) -> None:
        _check(len(self.choices) > 0, "the list of choices is empty; give at least one value")


# A knob of a student family: searched (a number or a choice), or a plain int fixed per study (stages).
Knob = NumParam | ChoiceParam | int


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how the validation split is carved, how training images are augmented.

    ``dataset`` is a built-in name, ``"imagefolder"`` (images in class folders at ``path``) or
    ``"torchvision:<Class>"`` (a torchvision dataset whose files are in ``--data-dir``).
    """

    dataset: str = "fashion_mnist"
    path: str | None = None  # imagefolder: the folder, absolute or relative to --data-dir
    image_size: int | None = None  # imagefolder/torchvision: resize to a square; None: the images' own size
    skip_unreadable: bool = False  # imagefolder: skip files that are not images (counted) instead of stopping
    seed: int = 0  # of the validation split and the augmented views (the teacher depends on it)
    val_fraction: float = 0.1  # carved from the training set when it has no validation folder
    limit_train: int | None = None  # train on only this many images (quick studies); validation stays whole
    limit_val: int | None = None  # validate on only this many images
    crop_padding: int | None = None  # random-crop padding in pixels; None: the dataset's default
    flip: bool | None = None  # random horizontal flip; None: the dataset's default

    def __post_init__(self) -> None:
        from kdnas.data import DATASETS, check_dataset

        _prefixed("dataset", check_dataset, self.dataset)
        folder = self.dataset == "imagefolder"
        _check(
            not folder or bool(self.path),
            'dataset = "imagefolder" needs path, the folder of class folders (or of train/, val/, test/ folders)',
        )
        _check(folder or self.path is None, f'path is only for dataset = "imagefolder", not {self.dataset!r}')
        _check(
            folder or not self.skip_unreadable,
            f'skip_unreadable is only for dataset = "imagefolder", not {self.dataset!r}',
        )
        _check(
            self.image_size is None or self.dataset not in DATASETS,
            f"image_size is only for imagefolder and torchvision:<Class> datasets; {self.dataset!r} has a fixed size",
        )
        _at_least("image_size", self.image_size, 8)
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _at_least("limit_train", self.limit_train, 10)
        _at_least("limit_val", self.limit_val, 10)
        _at_least("crop_padding", self.crop_padding, 0)


@dataclass(frozen=True)
class TrainRecipe:
    """SGD with Nesterov momentum, linear warm-up then linear decay to zero."""

    epochs: int = 5
    batch_size: int = 256
    lr: float = 0.2  # peak learning rate at this batch size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    eval_batch_size: int = 1024
    precision: str = "auto"
    average_epochs: float = 0.25  # validation sees the weights averaged over about this many epochs; 0: raw

    def __post_init__(self) -> None:
        from kdnas.trainer import PRECISIONS

        _prefixed("precision", PRECISIONS.check, self.precision)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("eval_batch_size", self.eval_batch_size, 1)
        _check(0 < self.lr < math.inf, f"lr must be a finite number > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _at_least("weight_decay", self.weight_decay, 0)
        _at_least("warmup_epochs", self.warmup_epochs, 0)
        _check(
            0 <= self.average_epochs < math.inf,
            f"average_epochs must be a finite number >= 0 (0: no averaging), got {self.average_epochs}",
        )
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class FinetuneRecipe(TrainRecipe):
    """How a teacher from elsewhere is fine-tuned on the train split: a TrainRecipe with gentler defaults
    (a trained network needs a small learning rate; one epoch fits a new head)."""

    epochs: int = 1
    lr: float = 0.01


# Keys of [teacher] for every source, for every source but kdnas, and for each source alone: a key given
# to a source it does not apply to is refused, never silently ignored.
_TEACHER_ANY_SOURCE = ("source", "checkpoint", "train")
_TEACHER_ELSEWHERE = ("state_dict_key", "input_size", "mean", "std", "finetune")
_TEACHER_SOURCE_KEYS = {
    "kdnas": ("family", "base_width", "blocks", "knobs"),
    "torchvision": ("name", "weights", *_TEACHER_ELSEWHERE),
    "timm": ("name", "pretrained", *_TEACHER_ELSEWHERE),
    "import": ("factory", "kwargs", "head", *_TEACHER_ELSEWHERE),
}


@dataclass(frozen=True)
class TeacherConfig:
    """The fixed teacher: where it comes from (``source``), a checkpoint to load, and how it is made to fit.

    ``kdnas`` trains a network of kdnas's own family with ``train`` (or loads ``checkpoint`` into it).
    ``torchvision``, ``timm`` and ``import`` build one elsewhere (kdnas.teacher_sources); it runs at its
    own ``input_size`` and normalisation, and is fine-tuned with ``finetune`` (default: FinetuneRecipe())
    when its classes differ from the data's, or whenever ``finetune`` is given.
    """

    source: str = "kdnas"
    family: str = "resnet"  # a student family (kdnas.families); files may still call it by its old name, arch
    base_width: int = 32  # resnet
    blocks: tuple[int, ...] = (2, 2, 2)  # resnet: residual blocks per stage; width doubles each stage
    knobs: dict = field(default_factory=dict)  # any other family: one value for each of its knobs
    name: str | None = None  # torchvision / timm model name
    weights: str | None = None  # torchvision weights: "DEFAULT", "IMAGENET1K_V1" or "ResNet18_Weights.IMAGENET1K_V1"
    pretrained: bool = False  # timm: the model's pretrained weights
    factory: str | None = None  # import: "package.module:function" returning an nn.Module
    kwargs: dict = field(default_factory=dict)  # import: keyword arguments of the factory
    head: str | None = None  # import: attribute holding the classifier; None: the last nn.Linear
    checkpoint: str | None = None  # a state dict to load: instead of training (kdnas), over the built network
    state_dict_key: str | None = None  # the state dict is the checkpoint's [state_dict_key]; None: guessed
    input_size: int | None = None  # the teacher's input side in pixels; None: its weights' or the data's
    mean: tuple[float, ...] | None = None  # the teacher's normalisation (0..1 scale); None: its weights' or the data's
    std: tuple[float, ...] | None = None
    finetune: FinetuneRecipe | None = None  # None: fine-tune with FinetuneRecipe() only if the classes differ
    train: TrainRecipe = field(default_factory=lambda: TrainRecipe(epochs=10))  # any source: eval batch, precision

    def __post_init__(self) -> None:
        from kdnas.families import get_family
        from kdnas.teacher_sources import TEACHER_SOURCES

        _prefixed("source", TEACHER_SOURCES.check, self.source)
        own = (*_TEACHER_ANY_SOURCE, *_TEACHER_SOURCE_KEYS[self.source])
        for f in dataclasses.fields(self):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            if f.name not in own and getattr(self, f.name) != default:
                takes = " or ".join(repr(s) for s, keys in _TEACHER_SOURCE_KEYS.items() if f.name in keys)
                raise KdnasError(f"{f.name} does not apply to source {self.source!r}; it is for source {takes}")
        _prefixed("family", get_family, self.family)
        _at_least("base_width", self.base_width, 1)
        _check(len(self.blocks) >= 1, "blocks is empty; give the number of blocks of each stage")
        _check(all(b >= 1 for b in self.blocks), f"every stage needs at least 1 block, got {list(self.blocks)}")
        if self.family == "resnet":
            _check(not self.knobs, "knobs is for families other than resnet; a resnet teacher takes base_width, blocks")
        else:
            _check(
                (self.base_width, self.blocks) == (32, (2, 2, 2)),
                f"base_width and blocks are for family 'resnet'; a {self.family!r} teacher takes knobs = {{ ... }}",
            )
            self.family_knobs()
        _at_least("input_size", self.input_size, 1)
        _check((self.mean is None) == (self.std is None), "give mean and std together, or neither")
        if self.mean is not None and self.std is not None:
            _check(len(self.mean) == len(self.std), f"mean and std need as many values, got {self.mean=}, {self.std=}")
            _check(min(self.std) > 0, f"std must be > 0 in every channel, got {self.std}")
        TEACHER_SOURCES.get(self.source).check(self)

    @property
    def checkpoint_as_is(self) -> bool:
        """Whether the teacher is a kdnas checkpoint used as it is (the only teacher not kept in teacher.pt)."""
        return self.source == "kdnas" and self.checkpoint is not None

    def family_knobs(self) -> dict[str, Knob]:
        """A teacher of a family other than resnet: its ``knobs``, each one value (left out: the family's
        default, which must be one value too).

        Raises:
            KdnasError: an unknown knob, a value the family cannot build, or a knob with several values.
        """
        from kdnas.families import get_family

        family = get_family(self.family)
        knobs = {**family.knobs, **_knob_table(family.knobs, self.knobs, "knobs")}
        _prefixed("knobs", family.check, knobs)
        several = [name for name, knob in knobs.items() if not _one_value(knob)]
        _check(
            not several,
            f"a teacher is one network: give knobs {', '.join(several)} of family {self.family!r} one value each",
        )
        return knobs

    def applied(self) -> dict[str, Any]:
        """The keys that apply to this source, with their values: what the teacher is made from.

        A ``kdnas`` section gives what it gave before teacher sources and families existed (a resnet
        under its old key ``arch``), so fingerprints (and the ``teacher.pt`` files they key) stay valid.
        """
        plain = dataclasses.asdict(self)
        keys = (*_TEACHER_ANY_SOURCE, *_TEACHER_SOURCE_KEYS[self.source])
        applied = {k: plain[k] for k in keys if not (k == "source" and self.source == "kdnas")}
        if self.source == "kdnas" and self.family == "resnet":
            applied["arch"] = applied.pop("family")
            del applied["knobs"]
        elif self.source == "kdnas":
            del applied["base_width"], applied["blocks"]
        return applied


@dataclass(frozen=True)
class StudentSpace:
    """The student family (kdnas.families) and the values each of its knobs is searched in.

    ``knobs`` holds every knob of the family: those the study file leaves out take the family's defaults.
    """

    family: str = "resnet"
    knobs: dict[str, Knob] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from kdnas.families import get_family

        family = _prefixed("family", get_family, self.family)
        object.__setattr__(self, "knobs", {**family.knobs, **self.knobs})
        family.check(self.knobs)

    def away_from_defaults(self) -> dict[str, Any]:
        """What ``section_hash`` counts: the family unless resnet, and the knobs away from the family's
        defaults (a resnet space hashes as it did when its knobs were this section's own keys)."""
        from kdnas.families import get_family

        defaults = get_family(self.family).knobs
        away: dict[str, Any] = {} if self.family == "resnet" else {"family": self.family}
        for name, knob in self.knobs.items():
            if knob != defaults.get(name):
                away[name] = dataclasses.asdict(knob) if dataclasses.is_dataclass(knob) else knob
        return away


def _one_value(knob: Knob) -> bool:
    if isinstance(knob, NumParam):
        return knob.bounds[0] == knob.bounds[1]
    return isinstance(knob, int) or len(set(knob.choices)) == 1


def _every_alpha_schedule() -> ChoiceParam:
    from kdnas.distill import ALPHA_SCHEDULES

    return ChoiceParam(tuple(ALPHA_SCHEDULES.names()))


@dataclass(frozen=True)
class KDSpace:
    """Distillation hyperparameters searched alongside the architecture."""

    temperature: NumParam = NumParam("float", 1.0, 8.0, log=True)
    alpha: NumParam = NumParam("float", 0.0, 1.0, step=0.1)  # 0 is the no-distillation baseline
    alpha_decay: ChoiceParam = field(default_factory=_every_alpha_schedule)
    decay_rate: NumParam = NumParam("float", 0.5, 3.0)  # only used when alpha_decay is not "none"

    @property
    def may_distill(self) -> bool:
        """Whether any candidate has alpha > 0 (and so needs the teacher's soft targets)."""
        return self.alpha.bounds[1] > 0

    def __post_init__(self) -> None:
        _prefixed("temperature", lambda: self.temperature.require(0, open_low=True))
        _prefixed("alpha", lambda: self.alpha.require(0, 1))
        from kdnas.distill import ALPHA_SCHEDULES

        for choice in self.alpha_decay.choices:
            _prefixed("alpha_decay", ALPHA_SCHEDULES.check, choice)
        _prefixed("decay_rate", lambda: self.decay_rate.require(0, open_low=True))


@dataclass(frozen=True)
class Objectives:
    """Which measurements the study optimises, in order; accuracy must be among them."""

    metrics: tuple[str, ...] = DEFAULT_METRICS

    def __post_init__(self) -> None:
        for name in self.metrics:
            if name not in METRICS:
                raise unknown_name("metric", name, METRICS)
        _check("val_accuracy" in self.metrics, "metrics must include 'val_accuracy'")
        _check(len(set(self.metrics)) == len(self.metrics), f"metrics has duplicates: {list(self.metrics)}")

    @property
    def directions(self) -> list[str]:
        return [METRICS[name] for name in self.metrics]


@dataclass(frozen=True)
class Constraints:
    """Hard limits: a candidate over them is rejected before any training."""

    max_params: int | None = None
    max_latency_ms: float | None = None
    max_macs: int | None = None  # multiply-accumulates of one image
    max_size_kb: float | None = None  # the exported ONNX file (float32 weights), in KiB

    def __post_init__(self) -> None:
        _at_least("max_params", self.max_params, 1)
        _positive("max_latency_ms", self.max_latency_ms)
        _at_least("max_macs", self.max_macs, 1)
        _positive("max_size_kb", self.max_size_kb)


# Timed runs per round of a latency measurement: enough for a median that ignores a stray slow run,
# few enough that a 50-run timing holds 5 rounds.
LATENCY_ROUND_RUNS = 10


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured: on which runtime and device, with what input, how many timed runs.

    ``runtime`` names a ``kdnas.runtimes.RUNTIMES`` entry, which also says which of the other keys
    apply to it (a key set for a runtime that ignores it is refused).
    """

    runtime: str = "torch"  # torch (eager), onnxruntime (CPU execution provider) or command
    device: str = "cpu"
    batch_size: int = 1
    threads: int = 1  # intra-op threads while timing on the CPU (torch or ONNX Runtime)
    warmup: int = 10
    repeats: int = 50  # timed runs, in rounds of LATENCY_ROUND_RUNS: the lowest round median is the latency
    # Rounds go on past `repeats` until they have lasted this long: a machine's speed changes over seconds,
    # so a timing of a few milliseconds sees one state of it (figures in docs/benchmarks.md).
    min_time_s: float = 0.5
    command: str | None = None  # runtime "command": the command line, with {onnx}, {batch}, {threads}
    timeout_s: float = 600.0  # runtime "command": the longest one network's command may run

    def __post_init__(self) -> None:
        from kdnas.measure import check_device_name
        from kdnas.runtimes import RUNTIMES

        _prefixed("runtime", RUNTIMES.check, self.runtime)
        _prefixed("device", check_device_name, self.device)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("threads", self.threads, 1)
        _at_least("warmup", self.warmup, 0)
        _at_least("repeats", self.repeats, 1)
        _at_least("min_time_s", self.min_time_s, 0)
        _positive("timeout_s", self.timeout_s)
        RUNTIMES.get(self.runtime).check(self)


@dataclass(frozen=True)
class Budget:
    """How much searching: trained trials the study should hold, and a wall-clock limit per run."""

    trials: int = 20
    timeout_min: float | None = None

    def __post_init__(self) -> None:
        _at_least("trials", self.trials, 1)
        _positive("timeout_min", self.timeout_min)


@dataclass(frozen=True)
class SamplerConfig:
    """The Optuna sampler that proposes candidates."""

    name: str = "tpe"
    startup_trials: int = 10  # random trials before the model-based sampler takes over
    # "pairs": each start-up architecture trained without distillation and with the usual recipe
    # (kdnas.study.KD_ANCHORS), so TPE starts from both ends of the KD space; "usual": each with the usual recipe
    # alone, twice the architectures; "random": KD drawn at random too.
    startup: str = "pairs"

    def __post_init__(self) -> None:
        from kdnas.samplers import SAMPLERS

        _prefixed("name", SAMPLERS.check, self.name)
        _at_least("startup_trials", self.startup_trials, 0)
        _check(
            self.startup in STARTUP_DESIGNS,
            f"startup must be one of {', '.join(map(repr, STARTUP_DESIGNS))}, got {self.startup!r}",
        )


@dataclass(frozen=True)
class EarlyStopConfig:
    """When a trial that is clearly beaten stops before its last epoch (it is recorded as pruned).

    ``pareto``: after an epoch, stop when a finished trial that is no larger and no slower was, at the
    same epoch, more accurate by more than ``margin`` and by more than ``sigmas`` standard errors of the
    gap: the two accuracies are counts on a finite validation set, so a gap within a few standard errors
    of it (about 1.5 points at 75% on 6,000 images) may be chance. ``forecast``: stop when a complete
    trial that is no larger and no slower ended more accurate than this trial's accuracy now plus the
    mean gain of the study's complete trials from this epoch to the end, by more than ``margin`` and by
    more than ``sigmas`` standard deviations of those gains. ``halving``: at rung epochs min_epochs * r**k
    (r the reduction factor), continue only the best 1/r of the trials that reached the rung, ranked by
    Pareto rank of (accuracy there, params, latency); trials on that rung's front always continue.
    """

    policy: str = "pareto"
    margin: float = 0.01  # accuracy, as a fraction (0.01 = one point)
    sigmas: float = 2.0  # pareto: standard errors of the lead; forecast: standard deviations of the gains
    min_epochs: int = 1  # no trial stops before it has trained this many epochs
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        from kdnas.pruning import EARLY_STOP_POLICIES

        _prefixed("policy", EARLY_STOP_POLICIES.check, self.policy)
        _check(0 <= self.margin < 1, f"margin must be in [0, 1), got {self.margin}")
        _at_least("sigmas", self.sigmas, 0)
        _at_least("min_epochs", self.min_epochs, 1)
        _at_least("reduction_factor", self.reduction_factor, 2)


@dataclass(frozen=True)
class StudyConfig:
    """A whole study file, validated."""

    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentSpace = field(default_factory=StudentSpace)
    kd: KDSpace = field(default_factory=KDSpace)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    objectives: Objectives = field(default_factory=Objectives)
    constraints: Constraints = field(default_factory=Constraints)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    budget: Budget = field(default_factory=Budget)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name), "name must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def section_hash(*sections: Any) -> str:
    """A stable short hash of config sections (dataclasses or plain JSON values).

    A dataclass counts by the fields set away from their defaults, so a key added to a section later
    (with a default that keeps today's behaviour) leaves the hashes of stored studies as they were. The
    other side of that bargain: changing a default's behaviour must come with a new key or value.
    """
    plain = [_away_from_defaults(s) if dataclasses.is_dataclass(s) else s for s in sections]
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _away_from_defaults(section: Any) -> dict[str, Any]:
    """The fields of dataclass ``section`` whose values differ from their defaults, as plain values."""
    if isinstance(section, StudentSpace):  # its knobs' defaults are its family's
        return section.away_from_defaults()
    away = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING  # a required field always counts
        if value != default:
            away[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return away


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def resolve_study_path(study: str) -> Path:
    """``study`` is a name in ``studies/`` or a path to a TOML file."""
    path = Path(study)
    if path.suffix == ".toml" or path.parent != Path("."):
        if not path.is_file():
            raise KdnasError(f"no study file at {path}; check the path")
        return path
    candidate = STUDIES_DIR / f"{study}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))
    hint = difflib.get_close_matches(study, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise KdnasError(
        f"no study named {study!r}{did_you_mean}; known: {', '.join(known)}, or pass a path to a .toml file"
    )


def load_study(study: str) -> StudyConfig:
    """Read and validate a study file given by name or path."""
    path = resolve_study_path(study)
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise KdnasError(f"{path} is not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise KdnasError(f"cannot read {path}: {err}") from None
    table.setdefault("name", path.stem)
    try:
        return study_from_dict(table)
    except KdnasError as err:
        raise KdnasError(f"{path}: {err}") from None


def study_from_dict(table: Mapping[str, Any]) -> StudyConfig:
    """Build a StudyConfig from plain data (a parsed TOML file or a saved ``to_dict()``)."""
    return _build(StudyConfig, table, "")


def _prefixed(where: str, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)`` (what it returns), its KdnasError prefixed by ``where`` (the key it is about)."""
    try:
        return check(*args)
    except KdnasError as err:
        raise KdnasError(f"{where}: {err}") from None


def dataclass_from_dict(cls: type, table: Any, where: str, *, exact: bool = False) -> Any:
    """An instance of the dataclass ``cls`` from plain data (TOML or JSON), each value checked against the
    field's type; ``where`` names the table in messages. With ``exact``, every field must be given (a
    file that records a whole object); otherwise a missing one takes its default.

    Raises:
        KdnasError: not a table, an unknown or missing key, a value of the wrong type or out of range.
    """
    return _build(cls, table, where, exact=exact)


def _build(cls: type, table: Any, where: str, *, exact: bool = False) -> Any:
    label = f"[{where}]" if where else "the top level"
    if not isinstance(table, Mapping):
        raise KdnasError(f"{label} must be a table, got {table!r}")
    if cls is TeacherConfig:
        table = _renamed(table, label)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(fields)}"
            raise KdnasError(f"unknown key {key!r} in {label}{did_you_mean}")
    required = [
        name
        for name, f in fields.items()
        if exact or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    ]
    missing = [name for name in required if name not in table]
    if missing:
        raise KdnasError(f"{label} lacks {', '.join(map(repr, missing))}; give every one of {', '.join(fields)}")
    kwargs = {}
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if hints[key] is NumParam:  # int or float follows the field's default
            kwargs[key] = _num_param(value, path, fields[key].default.kind)
        else:
            kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except KdnasError as err:
        raise KdnasError(f"{label} {err}") from None


def _renamed(table: Mapping[str, Any], label: str) -> Mapping[str, Any]:
    """``table`` with ``arch``, the old name of ``family`` (files of older kdnas versions), renamed."""
    if "arch" not in table:
        return table
    _check("family" not in table, f"{label} gives both family and arch (its old name); keep family")
    return {("family" if key == "arch" else key): value for key, value in table.items()}


def _student_space(table: Any, where: str) -> StudentSpace:
    """``[student]``: ``family`` and the family's knobs, as keys of the section (or, as ``to_dict`` saves
    it, a ``knobs`` table)."""
    from kdnas.families import get_family

    label = f"[{where}]"
    if not isinstance(table, Mapping):
        raise KdnasError(f"{label} must be a table, got {table!r}")
    table = _renamed(table, label)
    name = table.get("family", "resnet")
    if not isinstance(name, str):
        raise KdnasError(f"{where}.family must be of type str, got {name!r}")
    try:
        family = _prefixed("family", get_family, name)
        given = table["knobs"] if "knobs" in table else {k: v for k, v in table.items() if k != "family"}
        return StudentSpace(name, _knob_table(family.knobs, given, where))
    except KdnasError as err:
        raise KdnasError(f"{label} {err}") from None


def _knob_table(defaults: Mapping[str, Knob], table: Any, where: str) -> dict[str, Knob]:
    """The knobs ``table`` gives, each parsed like its default; an unknown one fails with a did-you-mean."""
    if not isinstance(table, Mapping):
        raise KdnasError(f"{where} must be a table, got {table!r}")
    for key in table:
        if key not in defaults:
            hint = difflib.get_close_matches(key, list(defaults), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; known knobs: {', '.join(defaults)}"
            raise KdnasError(f"unknown knob {key!r} in {where}{extra}")
    return {key: parse_knob(value, f"{where}.{key}", defaults[key]) for key, value in table.items()}


def parse_knob(value: Any, path: str, like: Knob | None = None) -> Knob:
    """A student family's knob from TOML: a fixed value, a list of choices or a range.

    It is parsed as the kind of ``like`` (the family's default); without one (a family declaring its own
    defaults), as the kind its values have: names or true/false are choices, numbers are integers when
    every one is, floats otherwise.
    """
    if like is None:
        like = _kind_of(value, path)
    if isinstance(like, NumParam):
        return _num_param(value, path, like.kind)
    if isinstance(like, ChoiceParam):
        return _choice_param(value, path, bool if isinstance(like.choices[0], bool) else str)
    return _convert(int, value, path)


def _kind_of(value: Any, path: str) -> Knob:
    """The kind of knob a family's own default is (an example of that kind, for ``parse_knob``)."""
    if isinstance(value, Mapping):
        values = [v for k, v in value.items() if k != "log"]
    else:
        values = value if isinstance(value, list) else [value]
    if values and all(isinstance(v, bool) for v in values):
        return ChoiceParam((False,))
    if values and all(isinstance(v, str) for v in values):
        return ChoiceParam(("",))
    if values and all(_is_number(v) for v in values):
        return NumParam("int" if all(isinstance(v, int) for v in values) else "float")
    raise KdnasError(f"{path} must hold numbers, names or true/false, got {value!r}")


def _convert(hint: Any, value: Any, path: str) -> Any:
    """Turn a TOML value into the type a dataclass field declares, or say what is wrong."""
    if hint is ChoiceParam:
        return _choice_param(value, path)
    if hint is StudentSpace:
        return _student_space(value, path)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, path)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise KdnasError(f"{path} must be a list, got {value!r}")
        return tuple(_convert(item, v, path) for v in value)
    if hint is float and _is_number(value):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise KdnasError(f"{path} must be of type {hint.__name__}, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num_param(value: Any, path: str, kind: Literal["int", "float"]) -> NumParam:
    """A scalar is a fixed value, a list the choices, a table {low, high, step, log} a range."""
    cast = int if kind == "int" else float

    def number(v: Any) -> float:
        if not _is_number(v) or (kind == "int" and v != int(v)):
            raise KdnasError(f"{path} must hold {'integers' if kind == 'int' else 'numbers'}, got {v!r}")
        return cast(v)

    if isinstance(value, Mapping) and "kind" in value:  # the saved to_dict() form
        value = {k: v for k, v in value.items() if k != "kind" and v is not None and v is not False}
        if "choices" in value:
            value = list(value["choices"])
    if isinstance(value, Mapping):
        known = ("high", "log", "low", "step")
        for key in value:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(known)}"
                raise KdnasError(f"unknown key {key!r} in range {path}{extra}")
        if "low" not in value or "high" not in value:
            raise KdnasError(f"range {path} needs both low and high, got {dict(value)}")
        step, log_flag = value.get("step"), value.get("log", False)
        if not isinstance(log_flag, bool):
            raise KdnasError(f"{path}.log must be true or false, got {log_flag!r}")
        args: dict[str, Any] = dict(
            low=number(value["low"]),
            high=number(value["high"]),
            step=None if step is None else number(step),
            log=log_flag,
        )
    elif isinstance(value, list):
        args = dict(choices=tuple(number(v) for v in value))
    else:
        fixed = number(value)
        args = dict(low=fixed, high=fixed)
    try:
        return NumParam(kind, **args)
    except KdnasError as err:
        raise KdnasError(f"{path}: {err}") from None


def _choice_param(value: Any, path: str, of: type = str) -> ChoiceParam:
    """Names (``of=str``) or switches (``of=bool``): one of them, or a list of them."""
    if isinstance(value, Mapping) and "choices" in value:  # the saved to_dict() form
        value = list(value["choices"])
    if isinstance(value, of):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, of) for v in value):
        what = "a list of names" if of is str else "true, false or [false, true]"
        raise KdnasError(f"{path} must be {what}, got {value!r}")
    try:
        return ChoiceParam(tuple(value))
    except KdnasError as err:
        raise KdnasError(f"{path}: {err}") from None
