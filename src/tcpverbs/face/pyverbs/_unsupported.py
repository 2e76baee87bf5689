"""Names pyverbs has and a TCP device cannot offer, or tcpverbs does not offer yet.

Using one raises ``PyverbsRDMAError``: ``EOPNOTSUPP`` for what a TCP device has no use
or room for (pyverbs programs and rdma-core's tests take that as "skip"), ``ENOSYS`` for
what tcpverbs means to offer and does not yet (an honest failure, not a skip).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, NoReturn

from tcpverbs.errors import TcpverbsError

__all__ = ["Unsupported", "not_yet", "unsupported", "unsupported_module"]

_NOT_YET = "tcpverbs does not offer this yet (issue #11)"


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


def not_yet(name: str) -> type[Unsupported]:
    """A class called *name* that tcpverbs means to offer: making one fails with ENOSYS."""
    return unsupported(name, _NOT_YET, errno.ENOSYS)


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
    CONSTANT_NAMES are placeholder ints, other names classes or functions that refuse."""

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if name.isupper():
            return UnsupportedConstant(f"{module}.{name}")
        return unsupported(name, why)

    return __getattr__
