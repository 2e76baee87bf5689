"""Connection management: QPs in RTS without touching sockets (rdma_cm-like).

``Listener(pd, init_attr, host, port).accept()`` on one side and
``connect(host, port, pd, init_attr)`` on the other each return a QP in RTS.  Under the
hood both simply make a TCP connection with the socket API and hand it to the QP in the
INIT → RTR transition — exactly what an application may do itself (README, "Socket
handoff").

:mod:`tcpverbs.cm.rdmacm` is librdmacm's model (``CMID`` and its events), for programs
written for rdma_cm and for pyverbs' ``pyverbs.cmid``.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from ..errors import TcpverbsError, from_oserror
from ..qp import QP
from ..qp_attr import QPAttr, QPInitAttr

if TYPE_CHECKING:
    from ..pd import PD

__all__ = ["Listener", "connect", "handoff"]


def handoff(qp: QP, sock: socket.socket, attr: QPAttr | None = None) -> QP:
    """Move *qp* RESET/INIT → RTR → RTS over the connected *sock* (the library owns it after)."""
    attr = attr if attr is not None else QPAttr()
    if qp.qp_state == 0:  # RESET
        qp.to_init(attr)
    attr.sock = sock
    qp.to_rtr(attr)
    qp.to_rts(attr)
    return qp


def _make_qp(pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None) -> QP:
    return QP(pd, init_attr, qp_attr if qp_attr is not None else QPAttr())


class Listener:
    """A listening TCP socket whose accepted connections become QPs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backlog: int = 16) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(backlog)
        except OSError as exc:
            self._sock.close()
            raise from_oserror(exc, f"listening on {host}:{port}") from exc

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def accept(
        self,
        pd: PD,
        init_attr: QPInitAttr,
        qp_attr: QPAttr | None = None,
        timeout: float | None = None,
    ) -> QP:
        """Wait for one connection and return a new QP in RTS using it.

        Receives may be posted afterwards: in ``rc`` mode a SEND that arrives first waits
        (TCP back-pressure), in ``stream`` mode bytes wait in the kernel.
        """
        self._sock.settimeout(timeout)
        try:
            conn, _ = self._sock.accept()
        except TimeoutError as exc:
            raise TcpverbsError(errno.ETIMEDOUT, "no connection within the timeout") from exc
        except OSError as exc:
            raise from_oserror(exc, "accepting") from exc
        return _handoff_or_close(conn, pd, init_attr, qp_attr)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    host: str,
    port: int,
    pd: PD,
    init_attr: QPInitAttr,
    qp_attr: QPAttr | None = None,
    timeout: float | None = 10.0,
) -> QP:
    """Connect to a :class:`Listener` (or any TCP server, for ``stream``) and return a QP in RTS."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise from_oserror(exc, f"connecting to {host}:{port}") from exc
    return _handoff_or_close(sock, pd, init_attr, qp_attr)


def _handoff_or_close(
    sock: socket.socket, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None
) -> QP:
    """A new QP in RTS over *sock*; if that fails (the QP cannot even be made), *sock*
    is closed, not leaked."""
    qp: QP | None = None
    try:
        qp = _make_qp(pd, init_attr, qp_attr)
        return handoff(qp, sock, qp_attr)
    except BaseException:
        if qp is not None:
            qp.close()
        sock.close()
        raise
