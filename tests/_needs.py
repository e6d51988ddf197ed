"""System parts some tests need, each named by the Debian package that provides it.

One rule: on a user's machine a test whose part is missing skips and names the package (``pytest -ra``
lists the skips); in CI (``KDNAS_CI=1``, set by ``.ci/run``) it fails, so nothing that must run is
skipped. A test declares the need with ``@pytest.mark.needs("chromium")`` (or ``pytestmark``); a
fixture that needs a part calls ``require("postgresql")``.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kdnas.errors import KdnasError


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or None."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


def chromium() -> str | None:
    """The headless browser's executable, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _fashion_mnist() -> bool:
    """Whether the real Fashion-MNIST is where ``--data-dir data`` (the tests' default) finds it."""
    from kdnas.data import DATASETS

    try:
        DATASETS.get("fashion_mnist").read(Path("data"), False)
    except KdnasError:
        return False
    return True


# package -> (what it provides, is it here?)
PARTS: dict[str, tuple[str, Callable[[], object]]] = {
    "chromium": ("the headless browser the report tests open", chromium),
    "postgresql": ("a PostgreSQL server", lambda: os.environ.get("KDNAS_TEST_POSTGRES") or postgres_bin_dir()),
    "dataset-fashion-mnist": ("the Fashion-MNIST files", _fashion_mnist),
}


@functools.cache
def _present(package: str) -> bool:
    return bool(PARTS[package][1]())


def in_ci() -> bool:
    return os.environ.get("KDNAS_CI", "") not in ("", "0")


def missing(package: str) -> str | None:
    """Why a test that needs ``package`` cannot run here ("needs ...: apt-get install ..."); None if it can."""
    if package not in PARTS:
        raise ValueError(f"unknown system part {package!r}; known: {', '.join(sorted(PARTS))}")
    return None if _present(package) else f"needs {PARTS[package][0]}: apt-get install {package}"


def require(package: str) -> None:
    """For a fixture: skip the running test when ``package`` is missing, or fail it in CI."""
    if (reason := missing(package)) is None:
        return
    if in_ci():
        pytest.fail(f"{reason} (KDNAS_CI is set: a missing part fails here instead of skipping)")
    pytest.skip(reason)
