"""Decoding images with PIL, on every core."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kdnas.errors import KdnasError

# Modes PIL gives grey images (bi-level, 8-bit, 32-bit int, 16-bit, float, grey with alpha).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def pixels(image: Any, size: int, channels: int) -> np.ndarray:
    """A PIL image as (channels, size, size) uint8: grey or RGB, resized (antialiased) where its size differs."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def in_threads(work: Callable[[int], Any], count: int, done: Callable[[int], None] | None = None) -> list[Any]:
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


def square_size(sizes: Sequence[tuple[int, int]], names: Sequence[str], image_size: int | None) -> int:
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
