"""The verbs object tree: parents, children, idempotent close, context managers.

Every verbs object (Context, PD, MR, CQ, CompChannel, QP) is a :class:`VerbsObject`.
An object registers with every object it depends on (a QP with its PD and its CQs, a CQ
with its Context and its CompChannel); closing an object closes its dependants first,
newest first, like pyverbs, so resources are never released under a live user.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from .errors import ClosedResourceError

__all__ = ["VerbsObject"]


class VerbsObject:
    """Base of every verbs object."""

    _closed: bool = True  # until __init__ joins the tree (a half-made object is not open)

    def __init__(self, *parents: VerbsObject) -> None:
        self._closed = False
        self._parents: tuple[VerbsObject, ...] = ()
        self._children: dict[int, VerbsObject] = {}
        for parent in parents:
            parent._check_open()
        self._parents = parents
        for parent in parents:
            parent._children[id(self)] = self

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(type(self).__name__)

    def close(self) -> None:
        """Release the object and, first, everything that depends on it.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for child in reversed(list(self._children.values())):
            child.close()
        self._children.clear()
        try:
            self._release()
        finally:
            for parent in self._parents:
                parent._children.pop(id(self), None)

    def _move_to(self, old: VerbsObject, new: VerbsObject) -> None:
        """Depend on *new* instead of *old* (an MR re-registered into another PD)."""
        old._children.pop(id(self), None)
        self._parents = tuple(new if p is old else p for p in self._parents)
        new._children[id(self)] = self

    def _release(self) -> None:
        """Free this object's own resources (children are already closed)."""

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
