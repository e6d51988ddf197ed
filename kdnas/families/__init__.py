"""Student families: a name in ``[student] family`` (or ``[teacher] family``) -> its knobs and networks.

``resnet`` (the default) and ``mbconv`` are registered here; ``"import:package.module:Class"`` names a
family of your own (kdnas.families._imported). To add a built-in family, subclass ``Family`` in a module
of its own and register an instance below.
"""

from __future__ import annotations

import functools

from kdnas.families._base import Family, grid, suggest_value
from kdnas.families._imported import PREFIX, ImportedFamily
from kdnas.families._mbconv import MBConvFamily
from kdnas.families._resnet import ResNetFamily
from kdnas.registry import Registry, unknown_name

__all__ = ["FAMILIES", "Family", "get_family", "grid", "suggest_value"]

FAMILIES: Registry[Family] = Registry("student family")
FAMILIES.register("resnet")(ResNetFamily())
FAMILIES.register("mbconv")(MBConvFamily())


def get_family(name: str) -> Family:
    """The family ``name`` names: a registered one, or a class imported from ``import:package.module:Class``.

    Raises:
        KdnasError: an unknown name (with a did-you-mean), or an imported class that does not import or
            breaks the protocol.
    """
    if name.startswith(PREFIX):
        return _imported(name)
    if name not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise unknown_name(
            FAMILIES.kind, name, FAMILIES.names(), fix=f'known: {known}, or "{PREFIX}package.module:Class"'
        )
    return FAMILIES.get(name)


@functools.cache
def _imported(name: str) -> Family:
    """Imported once per process: every trial and network of a study asks for its family."""
    return ImportedFamily(name)
