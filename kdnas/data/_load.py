"""Splits held as tensors, and ``load_data``: the one entry point that reads any source."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdnas.config import DataConfig
from kdnas.data._builtin import load_builtin
from kdnas.data._folder import load_folder
from kdnas.data._info import DATASETS, DatasetInfo, Splits
from kdnas.data._selection import SoftTargetBytes
from kdnas.data._torchvision_sets import TORCHVISION_PREFIX, load_torchvision, torchvision_class, torchvision_names
from kdnas.errors import KdnasError
from kdnas.registry import unknown_name

IMAGEFOLDER = "imagefolder"


def check_dataset(name: str) -> None:
    """Raise a KdnasError with a did-you-mean unless ``name`` is a built-in, ``imagefolder`` or a torchvision class."""
    if name == IMAGEFOLDER or name in DATASETS:
        return
    if name.startswith(TORCHVISION_PREFIX):
        torchvision_class(name)
        return
    fix = f"known: {', '.join(sorted([*DATASETS.names(), IMAGEFOLDER]))}, or torchvision:<Class>"
    upper = {n.lower(): n for n in torchvision_names()}
    if name.lower() in upper:  # "mnist": a torchvision class named in the wrong form
        raise KdnasError(f"unknown dataset {name!r} (did you mean 'torchvision:{upper[name.lower()]}'?); {fix}")
    raise unknown_name("dataset", name, [*DATASETS.names(), IMAGEFOLDER], fix)


@dataclass(frozen=True)
class Split:
    """images: (N, C, H, W) uint8; labels: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class ImageData:
    """A dataset's three splits plus the settings that define its training views."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    crop_padding: int
    flip: bool
    seed: int  # of the validation split and of every augmented view
    fingerprint: str  # changes whenever the images, the split or the augmentation change

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(
            self.info,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.crop_padding,
            self.flip,
            self.seed,
            self.fingerprint,
        )


def load_data(
    cfg: DataConfig,
    data_dir: Path,
    *,
    download: bool = True,
    cache_dir: Path | None = None,
    soft_target_bytes: SoftTargetBytes | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> ImageData:
    """Read the dataset ``cfg`` names, carve the validation split and return it as CPU tensors.

    The validation images are chosen first (from the whole training set, or the ``val/`` folder of an
    image folder), then ``limit_train`` and ``limit_val`` shorten the two splits. An image folder without
    a ``test/`` folder, like a torchvision dataset without a test split, has an empty test split.

    Args:
        cfg: the study's ``[data]`` section.
        data_dir: where datasets are looked for (and downloaded to, when online); an image folder's
            relative ``path`` starts here.
        download: try to download a missing dataset first.
        cache_dir: where an image folder's decoded arrays are kept for the next start (the run directory);
            None: decode every time.
        soft_target_bytes: (training images, classes) -> bytes of the soft-target cache, counted with the
            images when checking that the data fits in memory.
        on_step: progress of decoding an image folder, ``on_step(images decoded, images)``.

    Raises:
        KdnasError: the dataset is unknown, missing, unreadable or too large for the memory available.
    """
    data_dir = Path(data_dir)
    if cfg.dataset == IMAGEFOLDER:
        splits = load_folder(cfg, data_dir, cache_dir, soft_target_bytes, on_step)
    elif cfg.dataset.startswith(TORCHVISION_PREFIX):
        splits = load_torchvision(cfg, data_dir, download, soft_target_bytes)
    else:
        splits = load_builtin(cfg, data_dir, download, soft_target_bytes)
    info = DATASETS.get(cfg.dataset) if cfg.dataset in DATASETS else _measured_info(cfg.dataset, splits)
    crop_padding = info.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    flip = info.flip if cfg.flip is None else cfg.flip
    train, val, test = (Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)) for x, y in splits[:3])
    digest = hashlib.sha256()
    for split in (train, val, test):  # shapes too: the same bytes may be 3x16x16 or 1x16x48 images
        digest.update(f"{tuple(split.images.shape)}|".encode())
        digest.update(split.images.numpy().tobytes())
        digest.update(split.labels.numpy().tobytes())
    digest.update(json.dumps([info.summary(), crop_padding, flip, cfg.seed], default=list).encode())
    return ImageData(
        info=info,
        train=train,
        val=val,
        test=test,
        crop_padding=crop_padding,
        flip=flip,
        seed=cfg.seed,
        fingerprint=digest.hexdigest()[:16],
    )


def _measured_info(name: str, splits: Splits) -> DatasetInfo:
    """The info of a dataset known only from its images: mean and std of its training split, default crop
    padding of an eighth of the image (4 pixels at 32x32, as CIFAR) and flips."""
    images = splits.train[0]
    _, channels, size, _ = images.shape
    labels = np.concatenate([y for _, y in splits[:3]])
    num_classes = len(splits.classes) or int(labels.max()) + 1
    mean, std = _channel_stats(images)
    return DatasetInfo(name, channels, num_classes, size, mean, std, size // 8, True, None, splits.classes)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), on the 0..1 scale, 4 decimals."""
    channels = images.shape[1]
    sums, squares = np.zeros(channels), np.zeros(channels)
    step = max(1, 2**22 // max(1, images[0].size))  # about 32 MiB of float64 at a time
    for start in range(0, len(images), step):
        chunk = images[start : start + step].astype(np.float64)
        sums += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = images.size / channels
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    # A channel that never varies would divide by zero: one grey level is the smallest spread there is.
    std = np.maximum(std, 1.0)
    return tuple(round(float(m) / 255, 4) for m in mean), tuple(round(float(s) / 255, 4) for s in std)
