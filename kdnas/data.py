"""Datasets in their real on-disk formats, loaded once into uint8 tensors, and seeded augmentation.

Every dataset becomes three splits of (N, C, H, W) uint8 images and int64 labels: ``train`` and
``val`` (carved from the official training set with a seeded permutation) and ``test``. Augmentation
(random crop with zero padding, horizontal flip) runs on whole batches with tensor ops on the training
device, and the view of training image ``i`` in epoch ``e`` is a pure function of (seed, i, e): the
teacher's soft targets for a view can be computed once and reused by every trial.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdnas.config import DataConfig
from kdnas.errors import KdnasError
from kdnas.registry import Registry

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "Split",
    "ImageData",
    "AugmentedViews",
    "load_data",
    "read_idx",
    "normalize",
]

log = logging.getLogger(__name__)

# Debian's dataset-fashion-mnist package installs the idx files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

RawSplits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, train y, test x, test y


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of kdnas needs to know about a dataset, and how to read it from disk."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    crop_padding: int
    flip: bool  # whether a mirrored image is still the same class
    read: Callable[[Path, bool], RawSplits]  # (data_dir, download) -> arrays; raises KdnasError


DATASETS: Registry[DatasetInfo] = Registry("dataset")


# ---------------------------------------------------------------------------------------------------
# Readers for the real formats
# ---------------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (``.gz`` or plain), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # cut-off download, not gzip, unreadable
        raise KdnasError(f"{path} is unreadable ({err or type(err).__name__}); re-download it") from None
    if len(raw) < 4:
        raise KdnasError(f"{path} is too short to be an idx file; re-download it")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or len(raw) < 4 + 4 * ndim:
        raise KdnasError(f"{path} is not an idx file of unsigned bytes; re-download it")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()  # writable, for torch
    if data.size != int(np.prod(shape)):
        raise KdnasError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx_dir(candidates: Sequence[Path]) -> Path | None:
    for folder in candidates:
        if all(_idx_file(folder, stem) is not None for stem in _FASHION_FILES.values()):
            return folder
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_fashion_mnist(data_dir: Path, download: bool) -> RawSplits:
    candidates = [data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist", SYSTEM_FASHION_MNIST]
    folder, failed = _find_idx_dir(candidates), ""
    if folder is None and download:
        failed = _download("FashionMNIST", data_dir, "Fashion-MNIST")
        folder = _find_idx_dir(candidates)
    if folder is None:
        looked = ", ".join(str(c) for c in candidates)
        raise KdnasError(
            f"Fashion-MNIST not found (looked in {looked}{failed}); install it with "
            "'apt-get install dataset-fashion-mnist', or put the four idx .gz files in --data-dir"
        )
    arrays = [read_idx(_idx_file(folder, stem)) for stem in _FASHION_FILES.values()]  # type: ignore[arg-type]
    train_x, train_y, test_x, test_y = arrays
    return train_x[:, None], train_y, test_x[:, None], test_y


def _read_cifar(
    data_dir: Path,
    download: bool,
    *,
    folder: str,
    train: list[str],
    test: str,
    label_key: bytes,
    torchvision_name: str,
    title: str,
) -> RawSplits:
    root = data_dir / folder
    files = [root / name for name in (*train, test)]
    failed = ""
    if not all(f.is_file() for f in files) and download:
        failed = _download(torchvision_name, data_dir, title)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise KdnasError(
            f"{title} not found: {missing[0]} is missing{failed}; download it (kdnas does so when online) or "
            f"point --data-dir at the folder that holds {folder}/"
        )

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise KdnasError(f"{path} is not a readable {title} batch ({err}); re-download it") from None
        return images, labels

    parts = [read(f) for f in files[:-1]]
    test_x, test_y = read(files[-1])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y


def _torchvision():  # imported lazily: only a download needs it
    import torchvision

    return torchvision.datasets


def _download(torchvision_name: str, data_dir: Path, title: str) -> str:
    """Download with torchvision; why it failed, as a clause of the caller's one-line error ("" if it did not)."""
    log.info("downloading %s ...", title)
    created = not data_dir.exists()
    try:
        getattr(_torchvision(), torchvision_name)(str(data_dir), train=True, download=True)
    except Exception as err:  # any network or disk failure: the caller reports what is missing
        if created:  # what a failed download leaves (empty folders, a partial archive) is of no use
            shutil.rmtree(data_dir, ignore_errors=True)
        # torchvision's message ends with the cause ("<urlopen error [Errno -2] Name or service not known>")
        lines = str(err).strip().splitlines()
        return f", and downloading it failed: {lines[-1] if lines else type(err).__name__}"
    return ""


DATASETS.register("fashion_mnist")(
    DatasetInfo("fashion_mnist", 1, 10, 28, (0.2860,), (0.3530,), crop_padding=2, flip=True, read=_read_fashion_mnist)
)


def _cifar(name: str, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...], **files: Any) -> DatasetInfo:
    """A CIFAR dataset: 32x32 RGB, padded crops and flips, read by ``_read_cifar`` with ``files``."""
    return DatasetInfo(
        name, 3, num_classes, 32, mean, std, crop_padding=4, flip=True, read=functools.partial(_read_cifar, **files)
    )


DATASETS.register("cifar10")(
    _cifar(
        "cifar10",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test="test_batch",
        label_key=b"labels",
        torchvision_name="CIFAR10",
        title="CIFAR-10",
    )
)
DATASETS.register("cifar100")(
    _cifar(
        "cifar100",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        folder="cifar-100-python",
        train=["train"],
        test="test",
        label_key=b"fine_labels",
        torchvision_name="CIFAR100",
        title="CIFAR-100",
    )
)


# ---------------------------------------------------------------------------------------------------
# Splits held as tensors
# ---------------------------------------------------------------------------------------------------


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


def load_data(cfg: DataConfig, data_dir: Path, *, download: bool = True) -> ImageData:
    """Read the dataset ``cfg`` names, carve the validation split and return it as CPU tensors.

    Args:
        cfg: the study's ``[data]`` section.
        data_dir: where datasets are looked for (and downloaded to, when online).
        download: try to download a missing dataset first.

    Raises:
        KdnasError: the dataset is unknown, missing or unreadable.
    """
    info = DATASETS.get(cfg.dataset)
    seed = cfg.seed
    train_x, train_y, test_x, test_y = info.read(Path(data_dir), download)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_y), generator=generator)
    if cfg.limit_train is not None:
        order = order[: cfg.limit_train]
    n_val = max(1, round(len(order) * cfg.val_fraction))
    if n_val >= len(order):
        raise KdnasError(
            f"val_fraction={cfg.val_fraction} of {len(order)} images leaves no training image; "
            "lower val_fraction or raise limit_train"
        )
    images, labels = torch.from_numpy(np.ascontiguousarray(train_x)), torch.from_numpy(train_y.astype(np.int64))
    val_idx, train_idx = order[:n_val], order[n_val:]
    crop_padding = info.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    flip = info.flip if cfg.flip is None else cfg.flip
    digest = hashlib.sha256()
    for part in (train_x, train_y, test_x, test_y, order.numpy()):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(f"{info.name}|{n_val}|{crop_padding}|{flip}|{seed}".encode())
    return ImageData(
        info=info,
        train=Split(images[train_idx].contiguous(), labels[train_idx].contiguous()),
        val=Split(images[val_idx].contiguous(), labels[val_idx].contiguous()),
        test=Split(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y.astype(np.int64))),
        crop_padding=crop_padding,
        flip=flip,
        seed=seed,
        fingerprint=digest.hexdigest()[:16],
    )


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, channels_last (faster convolutions on CPU and GPU)."""
    mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1) * 255
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)


class AugmentedViews:
    """Seeded, batched random crop + flip of the training split, on the split's device.

    The crop offset and flip of image ``i`` in epoch ``e`` depend only on (seed, i, e), so a view can
    be recomputed anywhere (and the teacher's output for it cached).
    """

    def __init__(self, data: ImageData) -> None:
        self.data = data
        p = data.crop_padding
        self._padded = torch.nn.functional.pad(data.train.images, (p, p, p, p))  # zero padding, uint8
        h, w = data.train.images.shape[-2:]
        device = data.train.images.device
        self._rows = torch.arange(h, device=device)
        self._cols = torch.arange(w, device=device)
        self._channels = torch.arange(data.train.images.shape[1], device=device)

    def __len__(self) -> int:
        return len(self.data.train)

    def _generator(self, epoch: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.data.seed * 1_000_003 + epoch * 7 + stream)

    def order(self, epoch: int) -> torch.Tensor:
        """The batch order of ``epoch``: a seeded permutation of the training indices."""
        return torch.randperm(len(self), generator=self._generator(epoch, 0)).to(self._padded.device)

    def epoch_params(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row offset, column offset (N,) and flip flag (N,) of every training image in ``epoch``."""
        n, p = len(self), self.data.crop_padding
        gen = self._generator(epoch, 1)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5 if self.data.flip else torch.zeros(n, dtype=torch.bool)
        device = self._padded.device
        return dy.to(device), dx.to(device), flip.to(device)

    def batch(self, indices: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The augmented, normalised views (B, C, H, W) of training images ``indices``."""
        dy, dx, flip = (t[indices] for t in params)
        width = len(self._cols)
        rows = dy[:, None] + self._rows  # (B, H)
        cols = torch.where(flip[:, None], width - 1 - self._cols, self._cols) + dx[:, None]  # (B, W)
        crops = self._padded[
            indices[:, None, None, None],
            self._channels[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return normalize(crops, self.data.info)
