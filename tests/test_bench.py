"""bench/speed.py runs end to end on a tiny setting and prints every section's figures (never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_every_section_on_a_tiny_setting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--threads", "1"],
        cwd=tmp_path,  # nothing may be written beside the repository's files
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for header in ("== throughput", "== flops", "== memory", "== early stopping", "== gpu"):
        assert header in out, out
    assert "speed-up over the naive reference" in out and "cached-teacher trial / no-teacher trial" in out
    assert "% of peak" in out and "MiB" in out
    assert "compute to reach the no-early-stopping hypervolume" in out
    assert list(tmp_path.iterdir()) == []
