"""What kdnas knows of a dataset (its ``DatasetInfo``, registered for the built-ins) and its splits as arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kdnas.registry import Registry

RawSplits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, train y, test x, test y


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of kdnas needs to know about a dataset, and how to read it from disk.

    A built-in dataset's info is fixed and registered in ``DATASETS``; an image folder's or a torchvision
    dataset's is computed when it is loaded (its mean and std from its training images), so code that
    has no data at hand rebuilds it from the ``summary()`` a study stored (``from_summary``).
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    crop_padding: int
    flip: bool  # whether a mirrored image is still the same class
    read: Callable[[Path, bool], RawSplits] | None = None  # built-ins: (data_dir, download) -> arrays
    classes: tuple[str, ...] = ()  # class names in label order, where the source names them

    def summary(self) -> dict[str, Any]:
        """The plain fields (JSON-ready, no reader), from which ``from_summary`` rebuilds this info."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "read"}

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> DatasetInfo:
        """The info ``summary()`` described (lists read back from JSON become tuples); it cannot read data."""
        plain = {k: tuple(v) if isinstance(v, list) else v for k, v in summary.items() if k != "read"}
        return cls(**plain)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


class Splits(NamedTuple):
    """Each split's images (N, C, H, W) uint8 and labels (N,) int64, as a source produced them."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]  # in label order; () where the source does not name them
