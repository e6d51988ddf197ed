"""Where a teacher network comes from: kdnas's own family, torchvision, timm, or any importable factory.

A source checks its ``[teacher]`` keys when the study file is loaded, builds the bare network (with
pretrained weights when asked), says which normalisation and input size those weights expect, and finds
the classifier to replace when the teacher's classes are not the data's. ``kdnas.teacher`` does the rest
(checkpoint, fine-tuning, ``teacher.pt``); to add a source, register one more ``TeacherSource``.

A teacher from elsewhere sees the views made for the student through ``TeacherInput``: un-normalised,
grey repeated to RGB, resized and normalised its own way. The soft-target cache holds its logits, so
this costs once per study.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdnas.errors import KdnasError, import_object
from kdnas.registry import Registry, unknown_name

if TYPE_CHECKING:
    from kdnas.config import TeacherConfig
    from kdnas.data import DatasetInfo

__all__ = [
    "TEACHER_SOURCES",
    "Built",
    "TeacherSource",
    "TeacherInput",
    "load_checkpoint",
    "read_state_dict",
    "state_dict_mismatch",
    "replace_linear",
]


@dataclass(frozen=True)
class Built:
    """A bare teacher network and the input its weights expect (None: nothing known, the data's)."""

    module: nn.Module
    mean: tuple[float, ...] | None = None  # per channel, 0..1 scale
    std: tuple[float, ...] | None = None
    input_size: int | None = None


class TeacherSource:
    """How one ``source`` of ``[teacher]`` is checked at load, built, and given a new head."""

    def check(self, section: TeacherConfig) -> None:
        """Raise a one-line KdnasError for a name this source does not know; called when the study loads."""

    def build(self, section: TeacherConfig, *, download: bool) -> Built:
        """The network ``section`` names; ``download``: fetch pretrained weights (False when a state dict follows)."""
        raise NotImplementedError

    def replace_head(self, module: nn.Module, section: TeacherConfig, num_classes: int) -> None:
        """Give ``module`` a freshly initialised classifier of ``num_classes`` outputs (default: the last Linear)."""
        replace_linear(module, _last_linear_name(module, module, "the network"), num_classes)


TEACHER_SOURCES: Registry[TeacherSource] = Registry("teacher source")


def replace_linear(module: nn.Module, name: str, num_classes: int) -> None:
    """Replace the nn.Linear at ``name`` (a dotted path in ``module``) by a new one of ``num_classes`` outputs."""
    parent_name, _, leaf = name.rpartition(".")
    old = module.get_submodule(name)
    assert isinstance(old, nn.Linear)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(module.get_submodule(parent_name), leaf, new.to(old.weight.device))


def _last_linear_name(root: nn.Module, within: nn.Module, what: str, fix: str = "") -> str:
    """The dotted name (in ``root``) of the last nn.Linear inside ``within``."""
    prefix = {id(m): n for n, m in root.named_modules()}[id(within)]
    names = [n for n, m in within.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise KdnasError(f"{what} has no nn.Linear classifier to replace for the data's classes{fix}")
    return ".".join(p for p in (prefix, names[-1]) if p)


# ---------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------


class _Torchvision(TeacherSource):
    """``torchvision.models.get_model(name)``; ``weights`` named as torchvision names them."""

    def check(self, section: TeacherConfig) -> None:
        from torchvision import models

        if section.name is None:
            raise KdnasError('source \'torchvision\' needs name = "..." (e.g. "resnet18")')
        if section.name not in models.list_models():
            raise unknown_name("torchvision model", section.name, models.list_models(), "see torchvision.models")
        if section.weights is not None:
            self._weights(section)

    @staticmethod
    def _weights(section: TeacherConfig) -> Any:
        """The weights enum member ``section.weights`` names ("DEFAULT", "V1" or "Enum.V1")."""
        from torchvision import models

        enum = models.get_model_weights(section.name)  # type: ignore[arg-type]
        owner, _, member = str(section.weights).rpartition(".")
        if owner not in ("", enum.__name__) or member not in enum.__members__:
            names = [f"{enum.__name__}.{m}" if owner else m for m in enum.__members__]
            raise unknown_name(f"weights of {section.name}", str(section.weights), names)
        return enum[member]

    def build(self, section: TeacherConfig, *, download: bool) -> Built:
        from torchvision import models

        weights = None if section.weights is None else self._weights(section)
        fetch = weights if download and section.checkpoint is None else None
        try:
            module = models.get_model(section.name, weights=fetch)  # type: ignore[arg-type]
        except OSError as err:  # urllib's URLError: offline, or the server refused
            raise _offline(f"the {weights} weights of {section.name}", getattr(fetch, "url", "?"), err) from None
        if weights is None:
            return Built(module)
        transforms = weights.transforms()
        return Built(module, tuple(transforms.mean), tuple(transforms.std), transforms.crop_size[0])

    def replace_head(self, module: nn.Module, section: TeacherConfig, num_classes: int) -> None:
        for attr in ("fc", "classifier", "head", "heads"):
            within = getattr(module, attr, None)
            if isinstance(within, nn.Module):
                return replace_linear(module, _last_linear_name(module, within, section.name or ""), num_classes)
        super().replace_head(module, section, num_classes)


class _Timm(TeacherSource):
    """``timm.create_model(name, pretrained=...)``; an optional extra."""

    @staticmethod
    def _timm() -> Any:
        try:
            import timm
        except ImportError:
            raise KdnasError("source 'timm' needs the timm package; pip install kdnas[timm]") from None
        return timm

    def check(self, section: TeacherConfig) -> None:
        timm = self._timm()
        if section.name is None:
            raise KdnasError('source \'timm\' needs name = "..." (e.g. "resnet18.a1_in1k")')
        if not timm.is_model(section.name):
            raise unknown_name("timm model", section.name, timm.list_models(), "see timm.list_models()")

    def build(self, section: TeacherConfig, *, download: bool) -> Built:
        fetch = section.pretrained and download and section.checkpoint is None
        try:
            module = self._timm().create_model(section.name, pretrained=fetch)
        except OSError as err:  # huggingface_hub's and urllib's errors: offline, or the file is missing
            raise _offline(f"the pretrained weights of {section.name}", "the Hugging Face hub", err) from None
        if not section.pretrained:
            return Built(module)
        cfg = module.pretrained_cfg
        return Built(module, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["input_size"][-1])

    def replace_head(self, module: nn.Module, section: TeacherConfig, num_classes: int) -> None:
        module.reset_classifier(num_classes)  # type: ignore[operator]


class _Import(TeacherSource):
    """``factory = "package.module:function"`` called with ``kwargs``; it must return an nn.Module."""

    @staticmethod
    def _split(section: TeacherConfig) -> tuple[str, str]:
        module_name, _, function = (section.factory or "").partition(":")
        if not module_name or not function:
            raise KdnasError(f'factory must be "package.module:function", got {section.factory!r}')
        return module_name, function

    def check(self, section: TeacherConfig) -> None:
        module_name, _ = self._split(section)
        try:
            found = importlib.util.find_spec(module_name)
        except ImportError:  # a parent package that does not import
            found = None
        if found is None:
            raise KdnasError(
                f"factory {section.factory!r}: no module named {module_name!r} on the Python path; "
                "install it, or add its folder to PYTHONPATH"
            )

    def build(self, section: TeacherConfig, *, download: bool) -> Built:
        module_name, function = self._split(section)
        factory = import_object(f"factory {section.factory!r}", module_name, function)
        module = factory(**section.kwargs)
        if not isinstance(module, nn.Module):
            raise KdnasError(f"factory {section.factory!r} returned a {type(module).__name__}, not an nn.Module")
        return Built(module)

    def replace_head(self, module: nn.Module, section: TeacherConfig, num_classes: int) -> None:
        fix = '; set [teacher] head = "attribute" to the classifier'
        if section.head is None:
            return replace_linear(module, _last_linear_name(module, module, f"{section.factory!r}", fix), num_classes)
        try:
            within = module.get_submodule(section.head)
        except AttributeError:
            raise KdnasError(f"head {section.head!r} is not a submodule of {section.factory!r}'s network") from None
        replace_linear(module, _last_linear_name(module, within, f"head {section.head!r}", fix), num_classes)


# kdnas's own family is built from an ArchSpec for the data's classes by kdnas.teacher (models.build_model).
TEACHER_SOURCES.register("kdnas")(TeacherSource())
TEACHER_SOURCES.register("torchvision")(_Torchvision())
TEACHER_SOURCES.register("timm")(_Timm())
TEACHER_SOURCES.register("import")(_Import())


def _offline(what: str, where: str, err: OSError) -> KdnasError:
    return KdnasError(
        f"cannot download {what} from {where} ({err}); on a machine that is online, save them and set "
        '[teacher] checkpoint = "file" (keep weights/pretrained: they give the input size and normalisation)'
    )


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def load_checkpoint(module: nn.Module, path: Path, state_dict_key: str | None, what: str, fix: str) -> None:
    """Load the state dict in ``path`` into ``module`` (the network ``what``), or say why not (``fix``: the way out).

    Raises:
        KdnasError: see ``read_state_dict``; or its keys or shapes are not the network's.
    """
    state = read_state_dict(path, state_dict_key)
    problems = state_dict_mismatch(module, state)
    if problems:
        raise KdnasError(f"teacher checkpoint {path} does not match {what} ({problems}); {fix}")
    module.load_state_dict(state)


def read_state_dict(path: Path, state_dict_key: str | None) -> Mapping[str, torch.Tensor]:
    """The state dict in a checkpoint file: ``blob[state_dict_key]``, else the blob's ``"state_dict"`` (a
    ``teacher.pt``, most training scripts), else the blob itself.

    Raises:
        KdnasError: the file is unreadable, lacks the key, or holds no state dict there.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise KdnasError(f"teacher checkpoint {path} is unreadable ({type(err).__name__}); replace it") from None
    if state_dict_key is not None:
        if not isinstance(blob, Mapping) or state_dict_key not in blob:
            keys = ", ".join(map(str, blob)) if isinstance(blob, Mapping) else type(blob).__name__
            raise KdnasError(f"teacher checkpoint {path} has no {state_dict_key!r}; it holds {keys}")
        blob = blob[state_dict_key]
    elif isinstance(blob, Mapping) and isinstance(blob.get("state_dict"), Mapping):
        blob = blob["state_dict"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise KdnasError(f"teacher checkpoint {path} is not a state dict; set [teacher] state_dict_key")
    return blob


def state_dict_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """How ``state`` does not fit ``module`` (the first few keys missing, unexpected, of other shape), or ""."""
    own = module.state_dict()
    problems = [
        _few("missing", [k for k in own if k not in state]),
        _few("unexpected", [k for k in state if k not in own]),
        _few(
            "of other shape",
            [
                f"{k} {tuple(state[k].shape)} not {tuple(v.shape)}"
                for k, v in own.items()
                if k in state and state[k].shape != v.shape
            ],
        ),
    ]
    return "; ".join(p for p in problems if p)


def _few(label: str, keys: list[str], shown: int = 3) -> str:
    """ "3 keys missing: a, b, c, ..." (the first few of them), or "" for none."""
    if not keys:
        return ""
    more = ", ..." if len(keys) > shown else ""
    return f"{len(keys)} keys {label}: {', '.join(keys[:shown])}{more}"


# ---------------------------------------------------------------------------------------------------
# The teacher's own input
# ---------------------------------------------------------------------------------------------------


class TeacherInput(nn.Module):
    """A teacher behind the conversion of views normalised for the data into the input it expects.

    A view ``x`` is ``(p - m_data) / s_data`` for pixels ``p`` on the 0..1 scale; the teacher expects
    ``(p - m) / s``, i.e. ``x * s_data / s + (m_data - m) / s``. Grey views are repeated to the teacher's
    channels, then resized (bilinear, antialiased: both commute with the per-channel affine map).

    Args:
        net: the bare teacher network.
        scale, shift: (C,) the affine map above, for the teacher's C channels (buffers: they are part of
            the weights and their hash, so a new normalisation rebuilds the soft targets).
        input_size: the side the teacher runs at; None: the views' own.
    """

    def __init__(self, net: nn.Module, scale: torch.Tensor, shift: torch.Tensor, input_size: int | None) -> None:
        super().__init__()
        self.net, self.input_size = net, input_size
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).float())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).float())

    @classmethod
    def converting(
        cls,
        net: nn.Module,
        info: DatasetInfo,
        channels: int,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        input_size: int | None,
    ) -> TeacherInput:
        """``net`` fed views of a dataset ``info``, as a teacher of ``channels`` channels normalised with
        ``mean``/``std`` (None: the data's) at ``input_size`` (None: the data's)."""
        data_mean, data_std = (torch.tensor(v, dtype=torch.float64).expand(channels) for v in (info.mean, info.std))
        mean_t = data_mean if mean is None else torch.tensor(mean, dtype=torch.float64).expand(channels)
        std_t = data_std if std is None else torch.tensor(std, dtype=torch.float64).expand(channels)
        size = None if input_size in (None, info.image_size) else input_size
        return cls(net, data_std / std_t, (data_mean - mean_t) / std_t, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_data, H, W) normalised for the data -> the teacher's output."""
        x = x.expand(-1, self.scale.shape[1], -1, -1)  # grey to RGB; a no-op when the channels agree
        if self.input_size is not None:
            x = nn.functional.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return self.net(x * self.scale + self.shift)
