"""The report opened in a real browser (headless Chromium, no network): every figure draws, nothing errs.

They need Debian's ``chromium``: without it they skip and say so, and fail in CI (``_needs``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _browser import console_messages, open_in_chromium, rendered_figures
from _study_fixture import finished_smoke_study, synthetic_study  # noqa: F401  (a fixture)

from kdnas import report

pytestmark = pytest.mark.needs("chromium")

FIGURES = ("fig-params", "fig-latency", "fig-kd", "fig-hypervolume", "fig-importance", "fig-parallel")


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory) -> Path:
    """A report with every kind of trial: rejected, diverged, duplicate, and trials with and without KD."""
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    synthetic_study(run_dir)
    assert report.main(["--study", "smoke", "--out", str(run_dir), "-q"]) == 0
    return run_dir / "report.html"


@pytest.mark.parametrize("which", ["smoke", "synthetic"])
def test_every_figure_renders_without_console_errors(which, request, tmp_path):
    page = (
        request.getfixturevalue("finished_smoke_study").report
        if which == "smoke"
        else request.getfixturevalue("synthetic_report")
    )
    done = open_in_chromium(page, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert rendered_figures(done.stdout) == dict.fromkeys(FIGURES, True)
    assert console_messages(done.stderr) == []


def test_screenshot_of_the_report(finished_smoke_study, tmp_path):  # noqa: F811
    shot = tmp_path / "report.png"
    done = open_in_chromium(
        finished_smoke_study.report,
        tmp_path / "profile",
        "--hide-scrollbars",
        "--window-size=1400,3000",
        f"--screenshot={shot}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000  # a blank page is a few kB
