"""pyverbs.base: the objects' root and two helpers."""

from __future__ import annotations

from tcpverbs._base import VerbsObject
from tcpverbs.errors import PyverbsError, PyverbsRDMAError, PyverbsUserError

__all__ = [
    "PyverbsError",
    "PyverbsObject",
    "PyverbsRDMAErrno",
    "PyverbsRDMAError",
    "PyverbsUserError",
    "inc_rkey",
]

PyverbsObject = VerbsObject  # what every verbs object derives from, Context to QP


def PyverbsRDMAErrno(msg: str) -> PyverbsRDMAError:
    """pyverbs builds this from C's errno after a failed call; Python code that calls it
    (to report its own finding) has no such errno, so none is given."""
    return PyverbsRDMAError(msg)


def inc_rkey(rkey: int) -> int:
    """``ibv_inc_rkey``: the same key with its low 8 bits (the variant) stepped on by one."""
    return (rkey & 0xFFFFFF00) | ((rkey + 1) & 0xFF)
