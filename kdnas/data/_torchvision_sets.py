"""Any torchvision dataset, by class name (``torchvision:<Class>``), read through PIL."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdnas.config import DataConfig
from kdnas.data._decode import GREY_MODES, in_threads, pixels, square_size
from kdnas.data._download import torchvision_datasets, try_download
from kdnas.data._info import Splits
from kdnas.data._selection import SoftTargetBytes, choose_indices, ensure_memory
from kdnas.errors import KdnasError, first_line
from kdnas.registry import unknown_name

log = logging.getLogger("kdnas.data")  # one logger name for the whole package

TORCHVISION_PREFIX = "torchvision:"
# torchvision datasets whose split argument does not take "train" and "test": (training split, test split)
_TORCHVISION_SPLITS = {
    "OxfordIIITPet": ("trainval", "test"),
    "ImageNet": ("train", "val"),
    "Places365": ("train-standard", "val"),
}


def torchvision_names() -> list[str]:
    """The dataset classes torchvision.datasets offers."""
    datasets = torchvision_datasets()
    base = datasets.VisionDataset
    return [
        n for n in datasets.__all__ if isinstance(getattr(datasets, n), type) and issubclass(getattr(datasets, n), base)
    ]


def torchvision_class(name: str) -> type:
    """The torchvision.datasets class ``torchvision:<Class>`` names; a did-you-mean when there is none."""
    class_name = name.removeprefix(TORCHVISION_PREFIX)
    known = torchvision_names()
    if class_name not in known:
        by_lower = {n.lower(): n for n in known}  # "Cifar10": difflib is case-sensitive, so it would miss it
        if class_name.lower() in by_lower:
            raise KdnasError(
                f"unknown torchvision dataset {class_name!r} (did you mean {by_lower[class_name.lower()]!r}?); "
                "class names are case-sensitive"
            )
        raise unknown_name("torchvision dataset", class_name, known, "known: the classes of torchvision.datasets")
    return getattr(torchvision_datasets(), class_name)


def _split_arguments(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments that select the training and the test split of a torchvision dataset class."""
    parameters = inspect.signature(cls).parameters
    if "train" in parameters:
        return {"train": True}, {"train": False}
    if "split" in parameters:
        train, test = _TORCHVISION_SPLITS.get(cls.__name__, ("train", "test"))
        return {"split": train}, {"split": test}
    raise KdnasError(
        f"torchvision:{cls.__name__} has no train/test split argument; save its images in class folders and use "
        'dataset = "imagefolder"'
    )


def _open_torchvision(cls: type, data_dir: Path, split: dict[str, Any], download: bool) -> Any:
    """The dataset's split from ``data_dir``; downloaded first when it is missing and ``download`` allows."""
    try:
        return cls(str(data_dir), **split)
    except Exception as err:  # torchvision raises RuntimeError, FileNotFoundError, ValueError...: all say "missing"
        missing = first_line(err)
    failed = ""
    if download and "download" in inspect.signature(cls).parameters:
        failed = try_download(cls.__name__, data_dir, f"torchvision:{cls.__name__}", split)
        if not failed:
            return cls(str(data_dir), **split)
    arguments = ", ".join(f"{k}={v!r}" for k, v in split.items())
    raise KdnasError(
        f"torchvision:{cls.__name__}({arguments}) cannot be read from {data_dir} ({missing}){failed}; put its files "
        "there (kdnas downloads them when online) or point --data-dir at them"
    )


def load_torchvision(cfg: DataConfig, data_dir: Path, download: bool, soft_targets: SoftTargetBytes | None) -> Splits:
    """Read the chosen items of a torchvision dataset's train and test splits through PIL, resized if asked."""
    cls = torchvision_class(cfg.dataset)
    train_args, test_args = _split_arguments(cls)
    train_set = _open_torchvision(cls, data_dir, train_args, download)
    test_set = _open_torchvision(cls, data_dir, test_args, download)
    train_idx, val_idx = choose_indices(cfg, len(train_set), None)
    first, _ = train_set[0]
    if not hasattr(first, "convert"):
        raise KdnasError(f"{cfg.dataset} gives {type(first).__name__} images, not PIL images; kdnas cannot read it")
    channels = 1 if first.mode in GREY_MODES else 3
    size = square_size([first.size], [f"{cfg.dataset} image 0"], cfg.image_size)
    classes = tuple(str(c) for c in getattr(train_set, "classes", ()) or ())
    count = len(train_idx) + len(val_idx) + len(test_set)
    targets = soft_targets(len(train_idx), len(classes) or 1) if soft_targets else 0
    ensure_memory(count, (channels, size, size), targets)
    start = time.perf_counter()
    log.info("data: reading %d images of %s at %dx%d", count, cfg.dataset, size, size)
    train = _read_items(cfg, train_set, train_idx, size, channels)
    val = _read_items(cfg, train_set, val_idx, size, channels)
    test = _read_items(cfg, test_set, np.arange(len(test_set)), size, channels)
    log.info("data: read %d images in %.1f s", count, time.perf_counter() - start)
    return Splits(train, val, test, classes)


def _read_items(
    cfg: DataConfig, dataset: Any, indices: np.ndarray, size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Items ``indices`` of a torchvision dataset as (N, channels, size, size) uint8 and (N,) int64 labels."""
    out = np.empty((len(indices), channels, size, size), dtype=np.uint8)
    labels = np.empty(len(indices), dtype=np.int64)

    def read(i: int) -> None:
        image, label = dataset[int(indices[i])]
        if cfg.image_size is None and image.size != (size, size):
            raise KdnasError(
                f"{cfg.dataset} images differ in size: the first is {size}x{size}, item {int(indices[i])} is "
                f"{image.size[0]}x{image.size[1]}; set [data] image_size to resize them all to one square size"
            )
        out[i], labels[i] = pixels(image, size, channels), int(label)

    in_threads(read, len(indices))
    return out, labels
