"""A tiny name -> object registry: the one list of the names a study file may use for each kind of thing."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from kdnas.errors import KdnasError

__all__ = ["Registry", "unknown_name"]

T = TypeVar("T")


def unknown_name(kind: str, name: str, known: Iterable[str], fix: str | None = None) -> KdnasError:
    """The error for a name that is not one of ``known``: the kind, the name, a did-you-mean and the fix.

    ``fix`` replaces the default "known: a, b, c" where the valid names are a syntax ("cuda:N").
    """
    known = list(known)
    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return KdnasError(f"unknown {kind} {name!r}{did_you_mean}; {fix or 'known: ' + ', '.join(sorted(known))}")


class Registry(Generic[T]):
    """Maps names to objects; duplicates are a programming error, unknown names a user error.

    Args:
        kind: what the registry holds, used in messages ("dataset", "alpha schedule").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def check(self, name: str) -> None:
        """Raise a KdnasError with a did-you-mean and the known names unless ``name`` is registered."""
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items)

    def get(self, name: str) -> T:
        """The object registered as ``name``; the error of ``check`` otherwise."""
        self.check(name)
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names in the order they were registered, which a default list of choices keeps.

        Messages list them sorted.
        """
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
