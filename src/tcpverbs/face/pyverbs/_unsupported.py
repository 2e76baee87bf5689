"""Names pyverbs has and a TCP device cannot offer.

Using one raises ``PyverbsRDMAError`` with ``EOPNOTSUPP``: a TCP device has no use or
room for it (pyverbs programs and rdma-core's tests take that as "skip").  Anything
tcpverbs means to offer is offered for real, never as a stand-in.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, NoReturn

from tcpverbs.errors import TcpverbsError

__all__ = [
    "Holder",
    "Unsupported",
    "holder",
    "is_holder_name",
    "unsupported",
    "unsupported_module",
]


def _refuse(name: str, why: str, err: int) -> NoReturn:
    raise TcpverbsError(err, f"{name}: {why}")


class Unsupported:
    """Base of the stand-ins: making one (or calling a class method of it) refuses."""

    _name = "?"
    _why = ""
    _errno = errno.EOPNOTSUPP

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _refuse(self._name, self._why, self._errno)


def unsupported(name: str, why: str, err: int = errno.EOPNOTSUPP) -> type[Unsupported]:
    """A class called *name* whose instances cannot be made: they raise *err*, saying *why*."""
    return type(name, (Unsupported,), {"_name": name, "_why": why, "_errno": err})


class Holder:
    """Base of the stand-ins for attribute holders of what is not offered: they are plain
    data (pyverbs programs fill them in before they ask for the object itself), so they
    are made and keep what they are given; the object made from them refuses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.__dict__.update(kwargs)


def holder(name: str) -> type[Holder]:
    """A class called *name* that holds attributes and does nothing else (:class:`Holder`)."""
    return type(name, (Holder,), {})


def is_holder_name(name: str) -> bool:
    """pyverbs' attribute holders are called ...Attr or ...AttrEx."""
    return name.endswith(("Attr", "AttrEx"))


class UnsupportedConstant(int):
    """A provider's constant, read at import time by programs that then find no provider."""

    def __new__(cls, name: str) -> UnsupportedConstant:
        made = super().__new__(cls, 0)
        made._name = name  # type: ignore[attr-defined]
        return made

    def __repr__(self) -> str:
        return f"<{self._name}: no such provider here>"  # type: ignore[attr-defined]


def unsupported_module(module: str, why: str) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) for a module none of whose names work here:
    CONSTANT_NAMES are placeholder ints, ...Attr names attribute holders, other names
    classes or functions that refuse."""

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if name.isupper() and "_" in name:  # MLX5DV_CONTEXT_FLAGS_DEVX; not WQ or DMMR
            return UnsupportedConstant(f"{module}.{name}")
        if is_holder_name(name):
            return holder(name)
        return unsupported(name, why)

    return __getattr__
