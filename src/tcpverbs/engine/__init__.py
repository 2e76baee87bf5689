"""Progress engines: own the sockets, move bytes, produce completions.

The in-process engine is one epoll loop per :class:`~tcpverbs.Context` running in a
daemon thread (:mod:`.loop`), plus one *transport* per connected QP that speaks the QP's
wire mode (:mod:`.rc`, :mod:`.stream`).  Transports also run inside the application's
own calls (``post_send`` sends at once; ``CQ.poll`` receives when the CQ is empty), so
the thread is needed only while the application is busy elsewhere.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .transport import Transport

if TYPE_CHECKING:
    from ..qp import QP
    from ..wire.hello import Hello

__all__ = ["Transport", "make_transport"]


def make_transport(
    qp: QP,
    sock: socket.socket,
    peer_hello: Hello | None = None,
    hello_timeout: float | None = None,
) -> Transport:
    """The transport for *qp*'s wire mode, owning *sock*.

    *peer_hello*: the peer's hello, already read by the connection listener.
    """
    if qp.wire == "stream":
        from .stream import StreamTransport

        return StreamTransport(qp, sock)
    from .rc import RcTransport

    return RcTransport(qp, sock, peer_hello, hello_timeout)
