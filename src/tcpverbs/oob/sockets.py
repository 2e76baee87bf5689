"""The sockets under QPs: the one an application hands to a QP (the paper's handoff),
and the datagram socket a UD QP owns."""

from __future__ import annotations

import errno
import socket

from ..errors import TcpverbsError
from ..wire.ud import ud_qp_num

__all__ = ["DatagramPort", "take_socket"]


class DatagramPort:
    """A UD QP's UDP socket, bound on every address (IPv4 and IPv6 where the kernel has
    it) to a port of its own, which its QP number carries (:func:`tcpverbs.wire.ud.ud_qp_num`).
    The QP keeps it for its life and hands the engine a duplicate (:meth:`handle`) at
    each RTR, so a RESET, which closes the engine's, keeps the port and the number."""

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", 0))
            except OSError:
                sock.close()
                raise
        except OSError:  # no IPv6 in this kernel or namespace
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", 0))
            except OSError as exc:
                raise TcpverbsError(
                    exc.errno or errno.ENOMEM, f"cannot bind a UDP port for a UD QP: {exc}"
                ) from exc
        self._sock = sock
        self.qp_num = ud_qp_num(sock.getsockname()[1])

    def handle(self) -> socket.socket:
        """A duplicate of the socket, for the engine to own."""
        return self._sock.dup()

    def close(self) -> None:
        self._sock.close()


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
