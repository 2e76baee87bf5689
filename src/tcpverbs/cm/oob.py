"""Connecting QPs the classic way: by GID and QP number exchanged out of band.

Programs written for RDMA hardware swap (GID, QP number, PSN, rkey, address) over any
side channel and call ``to_rtr`` with ``AHAttr(is_global=1, gr=GlobalRoute(dgid=...))``
and ``dest_qp_num``.  tcpverbs turns that into a TCP connection by itself:

* Every Context listens on one TCP port (all addresses, IPv4 and IPv6), and its QP
  numbers carry that port: ``qp_num = port << 8 | index``.  So a GID (an address) and a
  QP number are all a peer needs to find the QP.
* Of the two QPs, the one with the larger ``(GID, qp_num)`` connects; the other waits
  for the connection.  Both may move to RTR in any order, in one thread or two processes.
* The connecting side's hello names the QP it wants (``dest_qp_num``).  The listener
  reads that hello and hands the socket to that QP if it is waiting for exactly this peer
  (QP number *and* source address must match); a connection that arrives before its QP
  reached RTR is parked for a while (the first ``MAX_PARKED`` of them; the one from the
  expected peer is taken).  Anything else is closed.

Memory stays bounded whatever arrives: at most ``MAX_INCOMING`` connections may be
reading their hello, and at most one parked connection per QP.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
from typing import TYPE_CHECKING

from ..errors import RemoteProtocolError, TcpverbsError
from ..wire.hello import HELLO_SIZE, Hello, HelloDecoder

if TYPE_CHECKING:
    from ..context import Context
    from ..device import GID
    from ..engine.loop import Engine, Timer
    from ..qp import QP

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_PARKED",
    "OobListener",
    "PeerWait",
    "connect_socket",
    "gid_address",
    "hello_matches",
]

CONNECT_TIMEOUT = 30.0  # seconds a passive QP waits for its peer, or a parked connection
HELLO_READ_TIMEOUT = 10.0
MAX_INCOMING = 64
MAX_PARKED = 4  # connections waiting for one QP to reach RTR
_QPS_PER_PORT = 255
_ERR = select.EPOLLERR | select.EPOLLHUP


def gid_address(gid: GID) -> str:
    """The IP address a GID stands for (IPv4-mapped GIDs give the IPv4 address)."""
    return str(gid.ip)


def same_host(a: str, b: str) -> bool:
    """Addresses equal, treating ``::ffff:1.2.3.4`` and ``1.2.3.4`` alike."""

    def norm(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        return addr

    return norm(a) == norm(b)


def connect_socket(gid: GID, qp_num: int, local: GID) -> socket.socket:
    """Start (non-blocking) a TCP connection from *local* to the context owning *qp_num*
    at *gid*.

    The socket is bound to our own GID's address: the peer accepts the connection only
    from the address it was told.  Returns at once; the transport sees the outcome
    (connected, or refused) in epoll.
    """
    host, mine = gid_address(gid), gid_address(local)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if (":" in mine) != (family == socket.AF_INET6):
        raise TcpverbsError(
            errno.EINVAL, f"sgid {local} and dgid {gid} are not of the same address family"
        )
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((mine, 0))
    except OSError as exc:
        sock.close()
        raise TcpverbsError(exc.errno or errno.EINVAL, f"cannot bind to sgid {local}") from exc
    err = sock.connect_ex((host, qp_num >> 8))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise TcpverbsError(err, f"cannot connect to QP {qp_num} at {host}")
    return sock


class OobListener:
    """One context's listening socket (a progress-engine handler)."""

    def __init__(self, ctx: Context, engine: Engine) -> None:
        self.ctx = ctx
        self.engine = engine
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        except OSError:  # no IPv6 in this kernel or namespace
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._free = list(range(_QPS_PER_PORT, 0, -1))
        self.incoming: set[_Incoming] = set()
        engine.register(sock.fileno(), self, select.EPOLLIN | _ERR)

    def alloc(self) -> int | None:
        return (self.port << 8) | self._free.pop() if self._free else None

    def release(self, qp_num: int) -> bool:
        if qp_num >> 8 != self.port:
            return False
        self._free.append(qp_num & 0xFF)
        return True

    def on_events(self, events: int) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.incoming) >= MAX_INCOMING:
                conn.close()
                continue
            _Incoming(self, conn).start()

    def on_crash(self, exc: BaseException) -> None:
        self.close()

    def on_engine_close(self) -> None:
        self.close()

    def close(self) -> None:
        for pending in list(self.incoming):
            pending.drop()
        if self.sock.fileno() >= 0:
            self.engine.unregister(self.sock.fileno())
            self.sock.close()


class _Incoming:
    """A just-accepted connection whose hello says which QP it is for."""

    def __init__(self, listener: OobListener, sock: socket.socket) -> None:
        self.listener = listener
        self.sock = sock
        self.decoder = HelloDecoder()
        self.got = 0
        self.timer: Timer | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.listener.incoming.add(self)
        self.listener.engine.register(self.sock.fileno(), self, select.EPOLLIN | _ERR)
        self.timer = self.listener.engine.call_later(HELLO_READ_TIMEOUT, self.drop, self)

    def on_events(self, events: int) -> None:
        try:
            # exactly the hello: whatever follows belongs to the QP's transport
            data = self.sock.recv(HELLO_SIZE - self.got)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop()
            return
        if not data:
            self.drop()
            return
        self.got += len(data)
        try:
            hello, _ = self.decoder.receive(memoryview(data))
        except RemoteProtocolError:
            self.drop()
            return
        if hello is not None:
            self._detach()
            self.listener.ctx._oob_arrived(self.sock, hello)

    def _detach(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.listener.incoming.discard(self)
        self.listener.engine.unregister(self.sock.fileno())

    def drop(self) -> None:
        if self.sock.fileno() >= 0:
            self._detach()
            self.sock.close()

    def on_crash(self, exc: BaseException) -> None:
        self.drop()

    def on_engine_close(self) -> None:
        self.drop()


class PeerWait:
    """Owner of a passive QP's wait for its peer (a timer's handler)."""

    def __init__(self, qp: QP) -> None:
        self.qp = qp

    def expired(self) -> None:
        qp = self.qp
        with qp._lock:
            if qp._oob_expect is None or qp.closed:
                return
            dest, host = qp._oob_expect
            qp._enter_error(
                TcpverbsError(
                    errno.ETIMEDOUT,
                    f"peer QP {dest} at {host} did not connect within {CONNECT_TIMEOUT:g} s",
                ),
                setup=True,
            )

    def on_events(self, events: int) -> None:
        """Never registered for I/O."""

    def on_crash(self, exc: BaseException) -> None:
        self.qp._enter_error(TcpverbsError(errno.EIO, f"internal error: {exc!r}"), setup=True)

    def on_engine_close(self) -> None:
        """Nothing held."""


def hello_matches(hello: Hello, expect_qpn: int, expect_host: str, sock: socket.socket) -> bool:
    """Is *sock* (with its *hello*) the peer a waiting QP expects?"""
    try:
        peer_host = sock.getpeername()[0]
    except OSError:
        return False
    return hello.qp_num == expect_qpn and same_host(peer_host, expect_host)
