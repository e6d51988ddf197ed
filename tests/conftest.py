"""Shared fixtures: a tiny synthetic ImageData, writers of small dataset files in the real formats, a
real PostgreSQL server (``_postgres``), and the ``needs`` marker for tests that need a system part (``_needs``).

Every writer puts files under a folder the test gives (always inside ``tmp_path``) and returns the arrays
it wrote, so a test can check that a loader reads back exactly what is on disk. Image ``i`` of a written
split carries ``i`` in its first pixel, which lets a test follow an image through a shuffled split.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _needs import in_ci, missing, require
from _postgres import postgres_server, postgres_url  # noqa: F401  (fixtures: a real PostgreSQL server)

from kdnas.data import DatasetInfo, ImageData, Split


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(package): needs the system part that Debian package provides; skips without it, fails in CI"
    )


def _needed(item: pytest.Item) -> list[str]:
    return [package for mark in item.iter_markers("needs") for package in mark.args]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Outside CI, a test whose part is missing skips, listed under its own name by ``pytest -ra``."""
    if not in_ci():
        for item in items:
            for reason in filter(None, map(missing, _needed(item))):
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """In CI, it fails, before the test's fixtures are set up (this conftest's hook runs before pytest's)."""
    for package in _needed(item):
        require(package)


# The commands the tests start (``python -m kdnas.search``, the benches) train on one thread too: the
# tests run one process per core (pytest-xdist), and a second thread per process would oversubscribe them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests' networks are tiny: with one intra-op thread a training step is ~20x faster than with two
    on a shared 2-core machine (no OpenMP hand-offs), and results do not depend on the core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# A tiny synthetic dataset: 1x8x8 images, 4 classes, the class is the bright quadrant
# ---------------------------------------------------------------------------------------------------


def _no_reader(data_dir: Path, download: bool):
    raise AssertionError("the tiny dataset is built in memory and never read from disk")


TINY_INFO = DatasetInfo(
    "tiny",
    in_channels=1,
    num_classes=4,
    image_size=8,
    mean=(0.3,),
    std=(0.3,),
    crop_padding=1,
    flip=False,
    read=_no_reader,
)


def quadrant_split(n: int, seed: int) -> Split:
    """``n`` dark noisy 8x8 images; class k has its k-th quadrant (row-major) bright."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=gen)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 180
    return Split(images, labels)


def make_image_data(
    n_train: int = 128, n_val: int = 64, *, crop_padding: int = 1, flip: bool = False, seed: int = 0
) -> ImageData:
    return ImageData(
        info=TINY_INFO,
        train=quadrant_split(n_train, seed=100 + seed),
        val=quadrant_split(n_val, seed=200 + seed),
        test=quadrant_split(n_val, seed=300 + seed),
        crop_padding=crop_padding,
        flip=flip,
        seed=seed,
        fingerprint=f"tiny-{n_train}-{n_val}-{crop_padding}-{flip}-{seed}",
    )


@pytest.fixture
def image_data_factory() -> Callable[..., ImageData]:
    """``make(n_train=128, n_val=64, *, crop_padding=1, flip=False, seed=0)`` -> a quadrant ImageData."""
    return make_image_data


@pytest.fixture
def tiny_data() -> ImageData:
    """128 training and 64 validation/test images of the quadrant task, no flip (it would change the class)."""
    return make_image_data()


# ---------------------------------------------------------------------------------------------------
# Real formats
# ---------------------------------------------------------------------------------------------------


def _tagged_images(n: int, shape: tuple[int, ...], rng: np.random.Generator, first_id: int = 0) -> np.ndarray:
    """Random uint8 images whose first value is the image's id (< 256)."""
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = np.arange(first_id, first_id + n, dtype=np.uint8)
    return images


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file's content: magic 0x0000 08 <ndim>, big-endian uint32 dims, then the uint8 values."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an idx file, gzipped when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


FASHION_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_fashion_mnist(folder: Path, n_train: int = 50, n_test: int = 12, *, gz: bool = True, seed: int = 0):
    """The four Fashion-MNIST idx files (28x28, labels 0..9); returns (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    arrays = (
        _tagged_images(n_train, (28, 28), rng),
        rng.integers(0, 10, size=n_train, dtype=np.uint8),
        _tagged_images(n_test, (28, 28), rng),
        rng.integers(0, 10, size=n_test, dtype=np.uint8),
    )
    for name, array in zip(FASHION_NAMES, arrays, strict=True):
        write_idx(folder / (f"{name}.gz" if gz else name), array)
    return arrays


def _write_pickle(path: Path, batch: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar10(data_dir: Path, n_per_batch: int = 8, n_test: int = 10, *, seed: int = 0):
    """``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``; returns (train_x, train_y, test_x, test_y).

    Images are returned as (N, 3, 32, 32); on disk each row is the 1024 red, then green, then blue values.
    """
    rng = np.random.default_rng(seed)
    root = data_dir / "cifar-10-batches-py"
    xs, ys = [], []
    for b in range(1, 6):
        x = _tagged_images(n_per_batch, (3, 32, 32), rng, first_id=(b - 1) * n_per_batch)
        y = rng.integers(0, 10, size=n_per_batch).tolist()
        _write_pickle(
            root / f"data_batch_{b}", {b"batch_label": b"training batch", b"data": x.reshape(-1, 3072), b"labels": y}
        )
        xs.append(x)
        ys.extend(y)
    test_x = _tagged_images(n_test, (3, 32, 32), rng)
    test_y = rng.integers(0, 10, size=n_test).tolist()
    _write_pickle(
        root / "test_batch", {b"batch_label": b"testing batch", b"data": test_x.reshape(-1, 3072), b"labels": test_y}
    )
    return np.concatenate(xs), np.array(ys), test_x, np.array(test_y)


def write_cifar100(data_dir: Path, n_train: int = 30, n_test: int = 10, *, seed: int = 0):
    """``cifar-100-python/train`` and ``test`` with fine (0..99) and coarse labels."""
    rng = np.random.default_rng(seed)
    root = data_dir / "cifar-100-python"
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        x = _tagged_images(n, (3, 32, 32), rng)
        fine = rng.integers(0, 100, size=n).tolist()
        _write_pickle(
            root / name, {b"data": x.reshape(-1, 3072), b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
        )
        out += [x, np.array(fine)]
    return tuple(out)


@pytest.fixture
def fashion_mnist_writer() -> Callable[..., tuple]:
    return write_fashion_mnist


@pytest.fixture
def cifar10_writer() -> Callable[..., tuple]:
    return write_cifar10


@pytest.fixture
def cifar100_writer() -> Callable[..., tuple]:
    return write_cifar100


@pytest.fixture
def idx_writer() -> Callable[[Path, np.ndarray], Path]:
    return write_idx
