"""The one exception type a user ever sees: it means "your input is wrong, here is how to fix it"."""

from __future__ import annotations

__all__ = ["KdnasError"]


class KdnasError(Exception):
    """A user-facing error; the CLIs print its message on one line and exit non-zero."""
