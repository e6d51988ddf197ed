"""Progress without a terminal: log lines with the rate and an ETA, not silence."""

from __future__ import annotations

import logging

import pytest

from kdnas import progress


def test_without_a_bar_the_hook_logs_steps_rate_and_time_left(monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="kdnas.progress")
    with progress.step_bar("teacher", enabled=False) as hook:
        for step in range(1, 11):
            hook(step, 10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9  # every step but the last: the caller says when the work is done
    assert lines[4].startswith("teacher: step 5/10 (50%), ") and lines[4].endswith(" left")


def test_the_log_lines_are_spaced_out(caplog) -> None:
    caplog.set_level(logging.INFO, logger="kdnas.progress")
    with progress.step_bar("soft targets", enabled=False) as hook:
        for step in range(1, 1000):
            hook(step, 1000)
    assert not caplog.records  # all within LOG_EVERY_S of the start


@pytest.mark.parametrize(
    ("seconds", "shown"), [(45, "0 min 45 s"), (723, "12 min 03 s"), (3 * 3600 + 5 * 60 + 20, "3 h 05 min")]
)
def test_duration(seconds: float, shown: str) -> None:
    assert progress.duration(seconds) == shown
