"""Datasets in their real on-disk formats, loaded once into uint8 tensors, and seeded augmentation.

Every dataset becomes three splits of (N, C, H, W) uint8 images and int64 labels: ``train`` and
``val`` (carved from the official training set with a seeded permutation) and ``test``. Augmentation
(random crop with zero padding, horizontal flip) runs on whole batches with tensor ops on the training
device, and the view of training image ``i`` in epoch ``e`` is a pure function of (seed, i, e): the
teacher's soft targets for a view can be computed once and reused by every trial.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import inspect
import json
import logging
import os
import pickle
import shutil
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from kdnas.config import DataConfig
from kdnas.errors import KdnasError, first_line
from kdnas.files import atomic_write
from kdnas.registry import Registry, unknown_name

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
        failed = _download("FashionMNIST", data_dir, "Fashion-MNIST", {"train": True})
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
        failed = _download(torchvision_name, data_dir, title, {"train": True})
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


def _download(torchvision_name: str, data_dir: Path, title: str, split: Mapping[str, Any]) -> str:
    """Download with torchvision (``split``: the class's split argument); why it failed, as a clause of the
    caller's one-line error ("" if it did not)."""
    log.info("downloading %s ...", title)
    created = not data_dir.exists()
    try:
        getattr(_torchvision(), torchvision_name)(str(data_dir), download=True, **split)
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
# Which source a [data] dataset name means
# ---------------------------------------------------------------------------------------------------

IMAGEFOLDER = "imagefolder"
TORCHVISION_PREFIX = "torchvision:"
# torchvision datasets whose split argument does not take "train" and "test": (training split, test split)
_TORCHVISION_SPLITS = {
    "OxfordIIITPet": ("trainval", "test"),
    "ImageNet": ("train", "val"),
    "Places365": ("train-standard", "val"),
}


def check_dataset(name: str) -> None:
    """Raise a KdnasError with a did-you-mean unless ``name`` is a built-in, ``imagefolder`` or a torchvision class."""
    if name == IMAGEFOLDER or name in DATASETS:
        return
    if name.startswith(TORCHVISION_PREFIX):
        torchvision_class(name)
        return
    fix = f"known: {', '.join(sorted([*DATASETS.names(), IMAGEFOLDER]))}, or torchvision:<Class>"
    upper = {n.lower(): n for n in _torchvision_names()}
    if name.lower() in upper:  # "mnist": a torchvision class named in the wrong form
        raise KdnasError(f"unknown dataset {name!r} (did you mean 'torchvision:{upper[name.lower()]}'?); {fix}")
    raise unknown_name("dataset", name, [*DATASETS.names(), IMAGEFOLDER], fix)


def _torchvision_names() -> list[str]:
    """The dataset classes torchvision.datasets offers."""
    datasets = _torchvision()
    base = datasets.VisionDataset
    return [
        n for n in datasets.__all__ if isinstance(getattr(datasets, n), type) and issubclass(getattr(datasets, n), base)
    ]


def torchvision_class(name: str) -> type:
    """The torchvision.datasets class ``torchvision:<Class>`` names; a did-you-mean when there is none."""
    class_name = name.removeprefix(TORCHVISION_PREFIX)
    known = _torchvision_names()
    if class_name not in known:
        by_lower = {n.lower(): n for n in known}  # "Cifar10": difflib is case-sensitive, so it would miss it
        if class_name.lower() in by_lower:
            raise KdnasError(
                f"unknown torchvision dataset {class_name!r} (did you mean {by_lower[class_name.lower()]!r}?); "
                "class names are case-sensitive"
            )
        raise unknown_name("torchvision dataset", class_name, known, "known: the classes of torchvision.datasets")
    return getattr(_torchvision(), class_name)


# ---------------------------------------------------------------------------------------------------
# Memory, and the choice of images for each split
# ---------------------------------------------------------------------------------------------------

SoftTargetBytes = Callable[[int, int], int]  # (training images, classes) -> bytes of the soft-target cache


def memory_available() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None where it does not say."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def ensure_memory(images: int, shape: tuple[int, int, int], soft_target_bytes: int = 0) -> None:
    """Raise a KdnasError unless ``images`` uint8 arrays of ``shape`` (C, H, W) and the soft-target cache fit
    in the memory available now: failing here beats being killed by the kernel half-way through decoding."""
    c, h, w = shape
    needed = images * c * h * w + soft_target_bytes
    available = memory_available()
    if available is not None and needed > available:
        targets = f" plus {soft_target_bytes / 2**30:.2f} GiB of soft targets" if soft_target_bytes else ""
        raise KdnasError(
            f"the data needs {needed / 2**30:.2f} GiB of memory ({images:,} images x {c} x {h} x {w} bytes{targets}) "
            f"but {available / 2**30:.2f} GiB is available; set a smaller [data] image_size or limit_train"
        )


def _choose(cfg: DataConfig, n_train: int, n_val: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training images and of the validation images, seeded by ``cfg.seed``.

    Without a validation source (``n_val`` None) the validation images are carved from the whole training
    source first, so ``limit_train`` never changes them; otherwise they index the validation source.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n_train, generator=generator).numpy()
    if n_val is None:
        carved = max(1, round(n_train * cfg.val_fraction))
        if carved >= n_train:
            raise KdnasError(
                f"val_fraction={cfg.val_fraction} of {n_train} images leaves no training image; lower val_fraction"
            )
        val, train = order[:carved], order[carved:]
    else:
        val, train = torch.randperm(n_val, generator=generator).numpy(), order
    return train[: cfg.limit_train], val[: cfg.limit_val]


class _Splits(NamedTuple):
    """Each split's images (N, C, H, W) uint8 and labels (N,) int64, as a source produced them."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]  # in label order; () where the source does not name them


def _load_builtin(cfg: DataConfig, data_dir: Path, download: bool, soft_targets: SoftTargetBytes | None) -> _Splits:
    info = DATASETS.get(cfg.dataset)
    assert info.read is not None  # every registered dataset has a reader
    train_x, train_y, test_x, test_y = info.read(data_dir, download)
    train_idx, val_idx = _choose(cfg, len(train_y), None)
    images = len(train_idx) + len(val_idx) + len(test_y)
    ensure_memory(images, train_x.shape[1:], soft_targets(len(train_idx), info.num_classes) if soft_targets else 0)
    train_y, test_y = train_y.astype(np.int64), test_y.astype(np.int64)
    return _Splits(
        (train_x[train_idx], train_y[train_idx]), (train_x[val_idx], train_y[val_idx]), (test_x, test_y), info.classes
    )


# ---------------------------------------------------------------------------------------------------
# Decoding images with PIL, on every core
# ---------------------------------------------------------------------------------------------------

# Modes PIL gives grey images (bi-level, 8-bit, 32-bit int, 16-bit, float, grey with alpha).
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _pixels(image: Any, size: int, channels: int) -> np.ndarray:
    """A PIL image as (channels, size, size) uint8: grey or RGB, resized (antialiased) where its size differs."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _in_threads(work: Callable[[int], Any], count: int, done: Callable[[int], None] | None = None) -> list[Any]:
    """``[work(i) for i in range(count)]`` on one thread per core: PIL decodes and resizes without the GIL.

    ``done(n)`` is called in this thread after every chunk of ``n`` items (progress).
    """
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def chunk(start: int) -> list[Any]:
        return [work(i) for i in range(start, min(start + _CHUNK, count))]

    starts = range(0, count, _CHUNK)
    results: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for part in pool.map(chunk, starts) if workers > 1 and count >= 64 else map(chunk, starts):
            results.extend(part)
            if done is not None:
                done(len(part))
    return results


_CHUNK = 256  # images a thread decodes at a time


def _square_size(sizes: Sequence[tuple[int, int]], names: Sequence[str], image_size: int | None) -> int:
    """``image_size``, or the size every image shares (which must be square); otherwise the fix."""
    if image_size is not None:
        return image_size
    first = sizes[0]
    for name, size in zip(names, sizes, strict=True):
        if size != first:
            raise KdnasError(
                f"images differ in size: {names[0]} is {first[0]}x{first[1]}, {name} is {size[0]}x{size[1]}; "
                "set [data] image_size to resize them all to one square size"
            )
    if first[0] != first[1]:
        raise KdnasError(
            f"{names[0]} is {first[0]}x{first[1]}, not square; set [data] image_size to resize to a square"
        )
    return first[0]


# ---------------------------------------------------------------------------------------------------
# Image folders: one folder per class, optionally inside train/, val/ and test/
# ---------------------------------------------------------------------------------------------------

FOLDER_SPLITS = ("train", "val", "test")


class _File(NamedTuple):
    path: str  # relative to the image folder's root
    size: int
    mtime_ns: int
    label: int


def _folder_layout(root: Path) -> dict[str, Path]:
    """The folder of each split present: ``train/`` (``val/``, ``test/``) under ``root``, or ``root`` itself."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise KdnasError(
            f"[data] path {root} {what}; point it at a folder of class folders (or of train/, val/ and test/ "
            "such folders), absolute or relative to --data-dir"
        )
    if (root / "train").is_dir():
        return {split: root / split for split in FOLDER_SPLITS if (root / split).is_dir()}
    return {"train": root}


def _visible(names: Sequence[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))  # .DS_Store, editors' files, our own temporaries


def _folder_files(root: Path, split_dir: Path, classes: Sequence[str] | None) -> tuple[list[str], list[_File]]:
    """The class names (sorted folder names, as torchvision's ImageFolder) and every file below them, in order.

    ``classes`` (those of train/) must include every class folder of a val/ or test/ folder.
    """
    found = _visible(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not found:
        raise KdnasError(f"no class folders in {split_dir}; an image folder holds one folder of images per class")
    names = list(found) if classes is None else list(classes)
    files: list[_File] = []
    for name in found:
        if name not in names:
            raise KdnasError(
                f"{split_dir / name} is not a class of {root / 'train'} ({', '.join(names)}); rename or remove it"
            )
        before = len(files)
        _walk(str(split_dir / name), str((split_dir / name).relative_to(root)), names.index(name), files)
        if len(files) == before:
            raise KdnasError(f"class folder {split_dir / name} is empty; add its images or remove it")
    return names, files


def _walk(folder: str, relative: str, label: int, files: list[_File]) -> None:
    """Append every visible file below ``folder`` (sorted, following links) to ``files``; plain strings and
    ``os.scandir``'s cached stat, since a folder may hold a million files."""
    with os.scandir(folder) as scan:
        entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            _walk(entry.path, f"{relative}/{entry.name}", label, files)
        elif entry.is_file():
            stat = entry.stat()
            files.append(_File(f"{relative}/{entry.name}", stat.st_size, stat.st_mtime_ns, label))


def _decoded_cache_key(cfg: DataConfig, sources: Mapping[str, Sequence[_File]], classes: Sequence[str]) -> str:
    """A hash of everything the decoded arrays depend on: the files (names, sizes, mtimes), the classes, the
    size, and the settings that choose the images of each split."""
    digest = hashlib.sha256(b"kdnas-decoded-1\n")
    settings = [cfg.image_size, cfg.skip_unreadable, cfg.seed, cfg.val_fraction, cfg.limit_train, cfg.limit_val]
    digest.update(json.dumps([settings, list(classes)]).encode())
    for split, files in sources.items():
        for f in files:
            digest.update(f"{split}|{f.path}|{f.size}|{f.mtime_ns}|{f.label}\n".encode())
    return digest.hexdigest()[:16]


def _read_cache(path: Path, soft_targets: SoftTargetBytes | None) -> _Splits | None:
    """The splits a previous start decoded into ``path``, or None when it is missing or unreadable."""
    try:
        with np.load(path) as arrays:
            images, channels, size, train = (int(v) for v in arrays["layout"])  # a few bytes: no image read yet
            classes = tuple(str(c) for c in arrays["classes"])
            ensure_memory(images, (channels, size, size), soft_targets(train, len(classes)) if soft_targets else 0)
            splits = [(arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in FOLDER_SPLITS]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        log.warning("data: cannot read %s (%s); decoding again", path, first_line(err))
        return None
    return _Splits(*splits, classes=classes)


def _load_folder(
    cfg: DataConfig,
    data_dir: Path,
    cache_dir: Path | None,
    soft_targets: SoftTargetBytes | None,
    on_step: Callable[[int, int], None] | None,
) -> _Splits:
    """Choose the images of each split, then decode them (or read the arrays a previous start decoded)."""
    root = Path(data_dir) / Path(cfg.path or "").expanduser()
    layout = _folder_layout(root)
    classes, train_files = _folder_files(root, layout["train"], None)
    sources = {"train": train_files}
    for split in ("val", "test"):
        if split in layout:
            sources[split] = _folder_files(root, layout[split], classes)[1]
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"decoded-{_decoded_cache_key(cfg, sources, classes)}.npz"
        if cache.is_file():
            cached = _read_cache(cache, soft_targets)
            if cached is not None:
                log.info("data: %s, decoded images read from %s", root, cache)
                return cached
    train_idx, val_idx = _choose(cfg, len(train_files), len(sources["val"]) if "val" in sources else None)
    chosen = {
        "train": [train_files[i] for i in train_idx],
        "val": [sources.get("val", train_files)[i] for i in val_idx],
        "test": sources.get("test", []),
    }
    start, wanted = time.perf_counter(), sum(len(files) for files in chosen.values())
    headers = {s: _in_threads(lambda i, s=s: _header(root / chosen[s][i].path), len(chosen[s])) for s in chosen}
    for split, files in chosen.items():
        kept = _kept(root, files, headers[split], cfg.skip_unreadable)
        chosen[split], headers[split] = [files[i] for i in kept], [headers[split][i] for i in kept]
    if not chosen["train"]:
        raise KdnasError(f"no readable training image in {layout['train']}")
    every = [f for split in FOLDER_SPLITS for f in chosen[split]]
    shapes = [h for split in FOLDER_SPLITS for h in headers[split]]
    size = _square_size([h[0] for h in shapes], [str(root / f.path) for f in every], cfg.image_size)
    channels = 1 if all(grey for _, grey in shapes) else 3
    targets = soft_targets(len(chosen["train"]), len(classes)) if soft_targets else 0
    ensure_memory(len(every), (channels, size, size), targets)
    kept_in = f" (once: kept in {cache})" if cache else ""
    log.info("data: decoding %d images of %s at %dx%d%s", len(every), root, size, size, kept_in)
    decoded_so_far = 0

    def done(n: int) -> None:
        nonlocal decoded_so_far
        decoded_so_far += n
        if on_step is not None:
            on_step(decoded_so_far, len(every))

    splits = [_decode_split(root, chosen[split], size, channels, cfg.skip_unreadable, done) for split in FOLDER_SPLITS]
    result = _Splits(*splits, classes=tuple(classes))
    decoded = sum(len(labels) for _, labels in splits)
    log.info("data: decoded %d images in %.1f s", decoded, time.perf_counter() - start)
    if decoded < wanted:
        log.warning("data: skipped %d unreadable file(s) (skip_unreadable = true)", wanted - decoded)
    if cache is not None:
        _write_cache(cache, result)
    return result


def _header(path: Path) -> tuple[tuple[int, int], bool] | str:
    """(width, height) and whether the image is grey, read from the file's header; or why it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, image.mode in _GREY_MODES
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # not an image, cut off
        return first_line(err)


def _kept(root: Path, files: Sequence[_File], results: Sequence[Any], skip: bool) -> list[int]:
    """Indices of the files whose result is not an error message; the first error stops unless ``skip``."""
    bad = [i for i, r in enumerate(results) if isinstance(r, str)]
    if bad and not skip:
        raise KdnasError(
            f"{root / files[bad[0]].path} is not an image kdnas can read ({results[bad[0]]}); remove it, or set "
            "[data] skip_unreadable = true to skip such files"
        )
    return [i for i, r in enumerate(results) if not isinstance(r, str)]


def _decode_split(
    root: Path, files: Sequence[_File], size: int, channels: int, skip: bool, done: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray]:
    """The files decoded into (N, channels, size, size) uint8, and their labels; unreadable ones dropped if ``skip``."""
    from PIL import Image

    out = np.empty((len(files), channels, size, size), dtype=np.uint8)

    def decode(i: int) -> str | None:  # threads write their own rows of ``out``
        try:
            with Image.open(root / files[i].path) as image:
                out[i] = _pixels(image, size, channels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return first_line(err)
        return None

    kept = _kept(root, files, _in_threads(decode, len(files), done), skip)
    labels = np.array([files[i].label for i in kept], dtype=np.int64)
    return (out if len(kept) == len(files) else out[kept]), labels


def _write_cache(path: Path, splits: _Splits) -> None:
    """Keep the decoded arrays for the next start (a failure only costs that start the decoding)."""
    _, channels, size, _ = splits.train[0].shape
    images = sum(len(labels) for _, labels in splits[:3])
    arrays = {"layout": np.array([images, channels, size, len(splits.train[1])]), "classes": np.array(splits.classes)}
    for split, (x, y) in zip(FOLDER_SPLITS, splits[:3], strict=True):
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    except OSError as err:
        log.warning("data: cannot keep the decoded images in %s (%s); the next start decodes again", path, err)
        return
    for stale in path.parent.glob("decoded-*.npz"):  # other settings or files: never read again
        if stale != path:
            stale.unlink(missing_ok=True)
            log.info("data: removed %s, decoded for other files or settings", stale)


# ---------------------------------------------------------------------------------------------------
# torchvision datasets, by class name
# ---------------------------------------------------------------------------------------------------


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
        failed = _download(cls.__name__, data_dir, f"torchvision:{cls.__name__}", split)
        if not failed:
            return cls(str(data_dir), **split)
    arguments = ", ".join(f"{k}={v!r}" for k, v in split.items())
    raise KdnasError(
        f"torchvision:{cls.__name__}({arguments}) cannot be read from {data_dir} ({missing}){failed}; put its files "
        "there (kdnas downloads them when online) or point --data-dir at them"
    )


def _load_torchvision(cfg: DataConfig, data_dir: Path, download: bool, soft_targets: SoftTargetBytes | None) -> _Splits:
    """Read the chosen items of a torchvision dataset's train and test splits through PIL, resized if asked."""
    cls = torchvision_class(cfg.dataset)
    train_args, test_args = _split_arguments(cls)
    train_set = _open_torchvision(cls, data_dir, train_args, download)
    test_set = _open_torchvision(cls, data_dir, test_args, download)
    train_idx, val_idx = _choose(cfg, len(train_set), None)
    first, _ = train_set[0]
    if not hasattr(first, "convert"):
        raise KdnasError(f"{cfg.dataset} gives {type(first).__name__} images, not PIL images; kdnas cannot read it")
    channels = 1 if first.mode in _GREY_MODES else 3
    size = _square_size([first.size], [f"{cfg.dataset} image 0"], cfg.image_size)
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
    return _Splits(train, val, test, classes)


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
        out[i], labels[i] = _pixels(image, size, channels), int(label)

    _in_threads(read, len(indices))
    return out, labels


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
        splits = _load_folder(cfg, data_dir, cache_dir, soft_target_bytes, on_step)
    elif cfg.dataset.startswith(TORCHVISION_PREFIX):
        splits = _load_torchvision(cfg, data_dir, download, soft_target_bytes)
    else:
        splits = _load_builtin(cfg, data_dir, download, soft_target_bytes)
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


def _measured_info(name: str, splits: _Splits) -> DatasetInfo:
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
