"""The exception tree.

Every error tcpverbs raises is a :class:`TcpverbsError`, which is an :class:`OSError`
carrying ``errno`` and also pyverbs' ``PyverbsRDMAError`` (whose ``error_code`` is that
errno), so code may catch by errno, by cause, or as a pyverbs program does:

* :class:`PostError` — ``post_send`` / ``post_recv`` refused a work request; tells which
  one of a chained list (``bad_wr``, ``bad_wr_index``).  Nothing from that WR on was posted.
* :class:`ClosedResourceError` — the object (or an ancestor) was closed *by you*.
* :class:`RemoteProtocolError` — the peer broke the wire protocol (bad hello, malformed
  frame).  Raised by the sans-IO :mod:`tcpverbs.wire` layer; the engine turns it into
  QP ERR plus an async event.
* :class:`ConnectionBrokenError` — the TCP connection failed or was closed by the peer.

OS errors from socket calls are translated in one place, :func:`from_oserror`.
"""

from __future__ import annotations

import errno as _errno
import functools
import operator
import os
from enum import IntFlag
from typing import Any, TypeVar

__all__ = [
    "ClosedResourceError",
    "ConnectionBrokenError",
    "PostError",
    "PyverbsError",
    "PyverbsRDMAError",
    "PyverbsUserError",
    "RemoteProtocolError",
    "TcpverbsError",
    "from_oserror",
]


class PyverbsError(Exception):
    """pyverbs' root exception, here so that pyverbs programs catch what tcpverbs raises.

    ``PyverbsError(msg, error_code)`` reads ``"<msg>. Errno: <n>, <strerror>"`` when given
    an errno, as pyverbs words it (programs search that text); *msg* alone otherwise.
    """

    def __init__(self, msg: str, error_code: int = -1) -> None:
        if error_code != -1:
            msg = f"{msg}. Errno: {error_code}, {os.strerror(abs(error_code))}"
        super().__init__(msg)


class PyverbsRDMAError(PyverbsError):
    """pyverbs: a verbs call failed; ``error_code`` is its errno (-1: none given)."""

    def __init__(self, msg: str, error_code: int = -1) -> None:
        super().__init__(msg, error_code)
        self._error_code = error_code

    @property
    def error_code(self) -> int:
        return self._error_code


class PyverbsUserError(PyverbsError):
    """pyverbs: the program asked for something impossible (checked before any call)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)


class TcpverbsError(OSError, PyverbsRDMAError):
    """Base class: a verbs call failed.  ``errno`` says why, ``strerror`` says it in words.

    It is also pyverbs' ``PyverbsRDMAError`` (``error_code`` is ``errno``), so
    ``except PyverbsRDMAError`` in a pyverbs program catches it, and its ``args[0]`` is
    the text as pyverbs words it: ``"<message>. Errno: <n>, <strerror(n)>"``.
    """

    def __init__(self, err: int, message: str, *, error_code: int | None = None) -> None:
        OSError.__init__(self, err, message)  # errno, strerror (PyverbsRDMAError's: below)
        self.args = (f"{message}. Errno: {err}, {os.strerror(err)}",)
        # pyverbs passes on what the C call returned: errno, or a few calls' -errno
        self._error_code = err if error_code is None else error_code

    def __reduce__(self) -> tuple[Any, ...]:
        # args no longer rebuild it (OSError's pickling would call cls(*args))
        return _rebuild, (type(self), self.errno, self.strerror, self.args, self.__dict__)

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        return f"[{name}] {self.strerror}"


def _rebuild(
    cls: type[TcpverbsError], err: int, strerror: str, args: tuple[Any, ...], state: dict[str, Any]
) -> TcpverbsError:
    """Unpickle a :class:`TcpverbsError` of any subclass (their constructors differ)."""
    made = cls.__new__(cls, err, strerror)
    OSError.__init__(made, err, strerror)
    made.args = args
    made.__dict__.update(state)
    return made


class PostError(TcpverbsError):
    """A work request was refused by ``post_send`` / ``post_recv``.

    Like ``ibv_post_send``'s ``bad_wr`` out-parameter: WRs of the chain before
    ``bad_wr_index`` were posted, this one and the ones after it were not.
    """

    def __init__(self, err: int, message: str, bad_wr: Any, bad_wr_index: int) -> None:
        super().__init__(err, f"{message} (work request #{bad_wr_index} of the posted list)")
        self.bad_wr = bad_wr
        self.bad_wr_index = bad_wr_index


class ClosedResourceError(TcpverbsError):
    """The object was closed by this process (``close()`` or its parent's)."""

    def __init__(self, what: str) -> None:
        super().__init__(_errno.EBADF, f"{what} is closed")


class RemoteProtocolError(TcpverbsError):
    """The peer sent something the wire protocol does not allow."""

    def __init__(self, message: str, err: int = _errno.EPROTO) -> None:
        super().__init__(err, message)


class ConnectionBrokenError(TcpverbsError):
    """The TCP connection under a QP failed or was closed by the peer."""


def from_oserror(exc: OSError, doing: str) -> TcpverbsError:
    """Translate an OS-level socket error into our tree; use with ``raise ... from exc``."""
    err = exc.errno if exc.errno is not None else _errno.EIO
    reason = exc.strerror or os.strerror(err)
    if err in (
        _errno.ECONNRESET,
        _errno.EPIPE,
        _errno.ECONNABORTED,
        _errno.ETIMEDOUT,
        _errno.EHOSTUNREACH,
        _errno.ENETUNREACH,
        _errno.ENOTCONN,
    ):
        return ConnectionBrokenError(err, f"{doing}: {reason}")
    return TcpverbsError(err, f"{doing}: {reason}")


# -- argument checks at the API's edge (each names the argument it refuses) ---------------


def check_int(name: str, value: object, low: int, high: int) -> int:
    """*value* if it is an int in *low* .. *high*, else ``EINVAL`` naming *name*."""
    if not isinstance(value, int) or not low <= value <= high:
        raise TcpverbsError(_errno.EINVAL, f"{name} must be an int in {low}..{high}, got {value!r}")
    return value


_Flags = TypeVar("_Flags", bound=IntFlag)


def check_flags(
    value: object, kind: type[_Flags], offered: int, unknown: str, not_offered: str
) -> _Flags:
    """*value* as flags of *kind*, when tcpverbs offers every one: a bit *kind* does not
    name is ``EINVAL`` (*unknown*, formatted with ``value``), one it names and tcpverbs has
    not ``EOPNOTSUPP`` (*not_offered*, formatted with ``names``: those flags' names)."""
    known = functools.reduce(operator.or_, (int(flag) for flag in kind), 0)
    if not isinstance(value, int) or value < 0 or value & ~known:
        raise TcpverbsError(_errno.EINVAL, unknown.format(value=value))
    missing = value & ~int(offered)
    if missing:
        raise TcpverbsError(_errno.EOPNOTSUPP, not_offered.format(names=kind(missing).name))
    return kind(value)


def check_timeout(timeout: object) -> float | None:
    """A timeout in seconds: None (for ever) or a number >= 0, else ``EINVAL``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise TcpverbsError(_errno.EINVAL, f"timeout must be None or seconds >= 0, got {timeout!r}")
    return float(timeout)
