"""Downloads through torchvision, for a machine that is online."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("kdnas.data")  # one logger name for the whole package


def torchvision_datasets():  # imported lazily: only downloads and torchvision:<Class> datasets need it
    import torchvision

    return torchvision.datasets


def try_download(torchvision_name: str, data_dir: Path, title: str, split: Mapping[str, Any]) -> str:
    """Download with torchvision (``split``: the class's split argument); why it failed, as a clause of the
    caller's one-line error ("" if it did not)."""
    log.info("downloading %s ...", title)
    created = not data_dir.exists()
    try:
        getattr(torchvision_datasets(), torchvision_name)(str(data_dir), download=True, **split)
    except Exception as err:  # any network or disk failure: the caller reports what is missing
        if created:  # what a failed download leaves (empty folders, a partial archive) is of no use
            shutil.rmtree(data_dir, ignore_errors=True)
        # torchvision's message ends with the cause ("<urlopen error [Errno -2] Name or service not known>")
        lines = str(err).strip().splitlines()
        return f", and downloading it failed: {lines[-1] if lines else type(err).__name__}"
    return ""
