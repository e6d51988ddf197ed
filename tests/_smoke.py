"""The end-to-end tests' studies: ``studies/smoke.toml`` with what each test needs changed."""

from __future__ import annotations

from pathlib import Path

from kdnas.config import STUDIES_DIR

# A quarter of smoke's training images: the same plumbing, a trial in about 4 s instead of 11 s on a 2 GHz
# core. For tests that train but do not depend on what the students learn.
FEWER_IMAGES = {"limit_train = 4000": "limit_train = 1000"}


def edited_smoke(folder: Path, edits: dict[str, str] | None = None, *, name: str = "smoke", extra: str = "") -> Path:
    """``folder/<name>.toml`` (the study's name): smoke with each ``old: new`` of ``edits`` replaced (each
    must be there) and ``extra`` TOML appended (tables smoke lacks, or keys a table of it does not set)."""
    text = (STUDIES_DIR / "smoke.toml").read_text()
    for old, new in (edits or {}).items():
        assert old in text, f"studies/smoke.toml changed: update the test's edit {old!r}"
        text = text.replace(old, new)
    path = folder / f"{name}.toml"
    path.write_text(f"{text}\n{extra}" if extra else text)
    return path
