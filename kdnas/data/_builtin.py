"""The built-in datasets in their real on-disk formats: Fashion-MNIST's idx files, CIFAR's pickled batches."""

from __future__ import annotations

import functools
import gzip
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdnas.config import DataConfig
from kdnas.data._download import try_download
from kdnas.data._info import DATASETS, DatasetInfo, RawSplits, Splits
from kdnas.data._selection import SoftTargetBytes, choose_indices, ensure_memory
from kdnas.errors import KdnasError

# Debian's dataset-fashion-mnist package installs the idx files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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
        failed = try_download("FashionMNIST", data_dir, "Fashion-MNIST", {"train": True})
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
        failed = try_download(torchvision_name, data_dir, title, {"train": True})
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


def load_builtin(cfg: DataConfig, data_dir: Path, download: bool, soft_targets: SoftTargetBytes | None) -> Splits:
    info = DATASETS.get(cfg.dataset)
    assert info.read is not None  # every registered dataset has a reader
    train_x, train_y, test_x, test_y = info.read(data_dir, download)
    train_idx, val_idx = choose_indices(cfg, len(train_y), None)
    images = len(train_idx) + len(val_idx) + len(test_y)
    ensure_memory(images, train_x.shape[1:], soft_targets(len(train_idx), info.num_classes) if soft_targets else 0)
    train_y, test_y = train_y.astype(np.int64), test_y.astype(np.int64)
    return Splits(
        (train_x[train_idx], train_y[train_idx]), (train_x[val_idx], train_y[val_idx]), (test_x, test_y), info.classes
    )
