"""How the face's enum modules spell their constants: every member of every enum class
of a tcpverbs module becomes a module constant too (``e.IBV_QPT_RC``), as in pyverbs."""

from __future__ import annotations

from enum import Enum
from types import ModuleType
from typing import Any

__all__ = ["export_members"]


def export_members(source: ModuleType, namespace: dict[str, Any]) -> None:
    """Put the members of *source*'s enum classes (its ``__all__``) into *namespace*."""
    for name in source.__all__:
        cls = getattr(source, name)
        if isinstance(cls, type) and issubclass(cls, Enum):
            for member in cls:
                namespace[member.name] = member
