"""The one exception type a user ever sees: it means "your input is wrong, here is how to fix it"."""

from __future__ import annotations

__all__ = ["KdnasError", "Terminated", "first_line"]


class KdnasError(Exception):
    """A user-facing error; the CLIs print its message on one line and exit non-zero."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, the way Slurm and Kubernetes stop a job: handled like Ctrl-C, so every Ctrl-C path runs."""

    def __init__(self, message: str = "terminated by SIGTERM") -> None:  # the message is the trial's reason
        super().__init__(message)


def first_line(err: BaseException) -> str:
    """What a library exception says, on one line (its type when it says nothing)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
