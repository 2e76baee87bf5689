"""Taking ownership of the socket an application hands to a QP (the paper's handoff)."""

from __future__ import annotations

import errno
import socket

from ..errors import TcpverbsError

__all__ = ["take_socket"]


def take_socket(sock: socket.socket | int | None) -> socket.socket:
    """Validate the handed-over connection and take ownership of it."""
    if sock is None:  # _check_attrs already refused this; keeps mypy honest
        raise TcpverbsError(errno.EINVAL, "no socket to hand over")
    if isinstance(sock, int):
        try:
            probe = socket.socket(fileno=sock)
        except OSError as exc:
            raise TcpverbsError(errno.EINVAL, f"fd {sock} is not a socket: {exc.strerror}") from exc
        owned = probe
    elif isinstance(sock, socket.socket):
        owned = sock
    else:
        raise TcpverbsError(
            errno.EINVAL, f"QPAttr.sock must be a socket or fd, not {type(sock).__name__}"
        )
    if owned.type != socket.SOCK_STREAM or owned.family not in (socket.AF_INET, socket.AF_INET6):
        if isinstance(sock, int):
            owned.detach()
        raise TcpverbsError(
            errno.EINVAL, "QPAttr.sock must be a TCP (SOCK_STREAM, AF_INET/6) socket"
        )
    try:
        owned.getpeername()
    except OSError as exc:
        if isinstance(sock, int):
            owned.detach()
        raise TcpverbsError(errno.EINVAL, "QPAttr.sock is not connected") from exc
    # From here on the library owns the descriptor; the caller's object lets go of it.
    fd = owned.detach()
    return socket.socket(owned.family, socket.SOCK_STREAM, 0, fileno=fd)
