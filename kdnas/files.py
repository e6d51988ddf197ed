"""Files that several processes share: an exclusive lock, and JSON written whole or not at all."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["exclusive", "write_json"]

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


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` completely or not at all (readers never see half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
