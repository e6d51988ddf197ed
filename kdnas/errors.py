"""The one exception type a user ever sees: it means "your input is wrong, here is how to fix it"."""

from __future__ import annotations

from typing import Any

__all__ = ["KdnasError", "TeacherChanged", "Terminated", "first_line", "import_object"]


class KdnasError(Exception):
    """A user-facing error; the CLIs print its message on one line and exit non-zero."""


class TeacherChanged(KdnasError):
    """A stored study's trials were distilled from other teacher weights than the teacher now at hand."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, the way Slurm and Kubernetes stop a job: handled like Ctrl-C, so every Ctrl-C path runs."""

    def __init__(self, message: str = "terminated by SIGTERM") -> None:  # the message is the trial's reason
        super().__init__(message)


def first_line(err: BaseException) -> str:
    """What a library exception says, on one line (its type when it says nothing)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def import_object(label: str, module_name: str, attribute: str) -> Any:
    """``module_name.attribute``, imported for a study key; one-line errors start with ``label``.

    Raises:
        KdnasError: the module does not import, or has no such attribute.
    """
    import importlib

    try:
        return getattr(importlib.import_module(module_name), attribute)
    except ImportError as err:
        raise KdnasError(f"{label}: module {module_name!r} does not import ({first_line(err)})") from None
    except AttributeError:
        raise KdnasError(f"{label}: module {module_name!r} has no {attribute!r}") from None
