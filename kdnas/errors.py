"""The one exception type a user ever sees: it means "your input is wrong, here is how to fix it"."""

from __future__ import annotations

__all__ = ["KdnasError", "first_line"]


class KdnasError(Exception):
    """A user-facing error; the CLIs print its message on one line and exit non-zero."""


def first_line(err: BaseException) -> str:
    """What a library exception says, on one line (its type when it says nothing)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
