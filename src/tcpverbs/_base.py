"""The verbs object tree: parents, children, idempotent close, context managers.

Every verbs object (Context, PD, MR, CQ, CompChannel, QP) is a :class:`VerbsObject`.
An object registers with every object it depends on (a QP with its PD and its CQs, a CQ
with its Context and its CompChannel); closing an object closes its dependants first,
newest first, like pyverbs, so resources are never released under a live user.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

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

    def _shadow_with_fast_call(
        self,
        engine: object,
        original: Callable[..., Any],
        call: Callable[..., Any],
        fail: Callable[..., Any],
        kind: int,
    ) -> None:
        """Where *engine* offers ``fast_call`` (see ContextEngine in engine/api.py), store
        one in this object's ``__dict__`` under *original*'s name: it does the method's
        common path without a Python frame and hands the rest to *original*.  A subclass
        that overrides the method keeps its override."""
        fast_call = getattr(engine, "fast_call", None)
        name = original.__name__
        if fast_call is not None and getattr(type(self), name) is original:
            self.__dict__[name] = fast_call(self, call, original.__get__(self), fail, kind)

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
