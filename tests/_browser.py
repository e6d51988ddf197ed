"""Opening a page in a real browser (headless Chromium, no network) and reading what it drew."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from _needs import chromium


def open_in_chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium's run on ``page`` with ``args`` (``--dump-dom``, ``--screenshot=...``); its log on stderr."""
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    return subprocess.run([chromium(), *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=180)


def rendered_figures(dom: str) -> dict[str, bool]:
    """For each figure div (``id="fig-..."``) in the DOM: did plotly draw its SVG into it?"""
    starts = [(m.group(1), m.start()) for m in re.finditer(r'<div id="(fig-[a-z]+)"', dom)]
    ends = [start for _, start in starts[1:]] + [len(dom)]
    return {name: 'class="main-svg"' in dom[start:end] for (name, start), end in zip(starts, ends, strict=True)}


def console_messages(log: str) -> list[str]:
    """The page's console messages and uncaught errors in Chromium's log."""
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
