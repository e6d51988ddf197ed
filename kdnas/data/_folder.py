"""Image folders: one folder per class, optionally inside train/, val/ and test/; decoded once and kept."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kdnas.config import DataConfig
from kdnas.data._decode import GREY_MODES, in_threads, pixels, square_size
from kdnas.data._info import Splits
from kdnas.data._selection import SoftTargetBytes, choose_indices, ensure_memory
from kdnas.errors import KdnasError, first_line
from kdnas.files import atomic_write

log = logging.getLogger("kdnas.data")  # one logger name for the whole package

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


def _read_cache(path: Path, soft_targets: SoftTargetBytes | None) -> Splits | None:
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
    return Splits(*splits, classes=classes)


def load_folder(
    cfg: DataConfig,
    data_dir: Path,
    cache_dir: Path | None,
    soft_targets: SoftTargetBytes | None,
    on_step: Callable[[int, int], None] | None,
) -> Splits:
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
    train_idx, val_idx = choose_indices(cfg, len(train_files), len(sources["val"]) if "val" in sources else None)
    chosen = {
        "train": [train_files[i] for i in train_idx],
        "val": [sources.get("val", train_files)[i] for i in val_idx],
        "test": sources.get("test", []),
    }
    start, wanted = time.perf_counter(), sum(len(files) for files in chosen.values())
    headers = {s: in_threads(lambda i, s=s: _header(root / chosen[s][i].path), len(chosen[s])) for s in chosen}
    for split, files in chosen.items():
        kept = _kept(root, files, headers[split], cfg.skip_unreadable)
        chosen[split], headers[split] = [files[i] for i in kept], [headers[split][i] for i in kept]
    if not chosen["train"]:
        raise KdnasError(f"no readable training image in {layout['train']}")
    every = [f for split in FOLDER_SPLITS for f in chosen[split]]
    shapes = [h for split in FOLDER_SPLITS for h in headers[split]]
    size = square_size([h[0] for h in shapes], [str(root / f.path) for f in every], cfg.image_size)
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
    result = Splits(*splits, classes=tuple(classes))
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
            return image.size, image.mode in GREY_MODES
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
                out[i] = pixels(image, size, channels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return first_line(err)
        return None

    kept = _kept(root, files, in_threads(decode, len(files), done), skip)
    labels = np.array([files[i].label for i in kept], dtype=np.int64)
    return (out if len(kept) == len(files) else out[kept]), labels


def _write_cache(path: Path, splits: Splits) -> None:
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
