"""Files that several processes share: an exclusive lock, and files written whole or not at all."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["exclusive", "atomic_write", "file_sha256", "write_json", "write_text"]

log = logging.getLogger("kdnas.files")


@contextmanager
def exclusive(path: Path, waiting_message: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), across processes and hosts sharing it.

    flock locks are released by the kernel when their holder dies, so a killed holder never leaves
    the others waiting forever.
    """
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s", waiting_message)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` completely or not at all: ``write(tmp)`` fills a temporary file beside it, which
    then replaces ``path`` in one step (readers and a crash see the old file or the new, never half).

    The temporary name carries the process id, so workers writing the same file do not collide, and ends
    in ``path``'s suffix, which some writers check (``torch.export.save`` warns unless it is ``.pt2``).
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` completely or not at all (a crash leaves the old file or none)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_torch_dict(path: Path, expected_format: str, then: str = "it will be rebuilt") -> dict[str, Any] | None:
    """The dict ``torch.save``d in ``path``, or None, with a warning ending in ``then``, if the file is unreadable
    or not of ``expected_format`` (its "format" key)."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupted, not a torch file: report, never use
        log.warning("%s is unreadable (%s); %s", path, type(err).__name__, then)
        return None
    if not isinstance(blob, dict) or blob.get("format") != expected_format:
        log.warning("%s is not a %s file; %s", path, expected_format, then)
        return None
    return blob


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (a checkpoint may not fit in memory twice): tells a
    replaced or retrained teacher file from the one a search used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` completely or not at all."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` completely or not at all.

    A nan (the accuracy of an empty split) is written as null: JSON has no nan, and other tools reject it.
    """
    write_text(path, json.dumps(_nan_as_none(payload), indent=2, default=str, allow_nan=False) + "\n")


def _nan_as_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_as_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_as_none(v) for v in value]
    return value
