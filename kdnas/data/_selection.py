"""Which images go into each split (seeded), and whether they fit in memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdnas.config import DataConfig
from kdnas.errors import KdnasError

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


def choose_indices(cfg: DataConfig, n_train: int, n_val: int | None) -> tuple[np.ndarray, np.ndarray]:
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
