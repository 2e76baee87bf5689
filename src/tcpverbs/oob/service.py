"""Connecting QPs the classic way: by GID and QP number exchanged out of band.

Programs written for RDMA hardware swap (GID, QP number, PSN, rkey, address) over any
side channel and call ``to_rtr`` with ``AHAttr(is_global=1, gr=GlobalRoute(dgid=...))``
and ``dest_qp_num``.  tcpverbs turns that into a TCP connection by itself:

* QP numbers carry a TCP port of their context: ``qp_num = port << 8 | index``.  The
  port is *reserved* (a socket bound on all addresses, IPv4 and IPv6) when the context
  hands out its first QP number, and *listened on* only once one of its QPs is connected
  by GID + QP number.  Until then nothing is exposed: a context whose QPs are connected
  by socket handoff never accepts a connection, and this service starts no thread.
* Of the two QPs, the one with the larger ``(GID, qp_num)`` dials; the other waits.
  Both may move to RTR in any order, in one thread or two processes.  A dial that is
  refused (the peer's context does not listen yet) is tried again, backing off, until
  ``CONNECT_TIMEOUT``.
* The dialling side's hello names the QP it wants (``dest_qp_num``).  The service reads
  that hello and hands the socket to that QP's engine if the QP waits for exactly this
  peer (QP number *and* source address must match) and the peer *proves* it is that
  peer; a connection that arrives before its QP reached RTR is parked for a while
  (within the limits below).  Anything else is closed.
* The proof: QP numbers are predictable, PSNs are what the two programs exchanged out
  of band (random ones, as rdma-core's examples choose them).  The dialler's hello
  carries its ``rq_psn`` — the waiting QP's ``sq_psn`` — and, once in RTS, the dialler
  sends its ``sq_psn`` — the waiting QP's ``rq_psn`` — in an AUTH frame.  The waiting QP
  accepts the first that matches: the hello's as soon as it knows its own ``sq_psn``
  (RTS), the AUTH's at once (it knows its ``rq_psn`` from RTR).  So a QP that stays in
  RTR is reachable, and so is one whose peer does.  A connection whose proof is wrong
  is closed and the QP goes on waiting for the real peer.

Whatever arrives, memory, CPU and the legitimate peer's chances stay bounded (what
this protects against and what it does not: docs/semantics.md, "Connecting"):

* **The hello phase** — at most ``MAX_INCOMING`` connections may be reading their hello,
  at most ``MAX_INCOMING_PER_HOST`` from one address, each for ``HELLO_DEADLINE`` at
  most; when the table is full a newcomer takes the place of the oldest connection of
  the address that holds the most, so idle connections from one place cannot lock
  others out.  A connection that sends anything but a hello is dropped at once.
* **Accepting** — at most ``ACCEPT_RATE`` connections per second (a burst of
  ``ACCEPT_BURST``); beyond that the listening sockets are left alone until the budget
  refills, and the kernel's backlog takes the flood, not this thread.
* **Parking** — a QP not yet in RTR keeps at most ``MAX_PARKED`` connections, at most
  ``MAX_PARKED_PER_HOST`` per address (the first ones keep their place there), so
  hellos from elsewhere cannot take the expected peer's place.

Ownership and locks: the service owns its reactor thread, the bound sockets, the
connections reading their hello, the parked ones and the dials in progress; it hands a
connected socket (and the peer's hello) to a QP's engine with
:meth:`~tcpverbs.engine.api.QPEngine.attach` and reports failures with
:meth:`~tcpverbs.engine.api.QPEngine.fail`.  ``_lock`` guards the tables; no engine call
is made while it is held.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ..errors import ConnectionBrokenError, RemoteProtocolError, TcpverbsError
from ..reactor import Reactor, Timer
from ..wire.frames import BASE, Opcode
from ..wire.hello import HELLO_SIZE, Hello, HelloDecoder

if TYPE_CHECKING:
    from ..device import GID
    from ..engine.api import QPEngine

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_PARKED",
    "OobService",
    "connect_socket",
    "gid_address",
    "hello_matches",
]

CONNECT_TIMEOUT = 30.0  # seconds a QP waits for its peer (dialling or waiting), or a parked one
HELLO_DEADLINE = 2.0  # seconds an accepted connection has for its whole hello
MAX_INCOMING = 64  # connections reading their hello
MAX_INCOMING_PER_HOST = 16
ACCEPT_RATE = 500.0  # connections accepted per second, at most...
ACCEPT_BURST = 64  # ... after a burst of this many
MAX_PARKED = 8  # connections waiting for one QP to reach RTR
MAX_PARKED_PER_HOST = 2
ACCEPT_PAUSE = ACCEPT_BURST / 4 / ACCEPT_RATE  # seconds without accepting once over budget
REDIAL_FIRST = 0.02  # seconds before a refused dial is tried again (then doubling)
REDIAL_MAX = 1.0
_QPS_PER_PORT = 255
_AUTH = struct.Struct("!BBHII")  # an AUTH frame: the base header and the psn
AUTH_SIZE = _AUTH.size
assert BASE.size + 4 == AUTH_SIZE
_T = TypeVar("_T")
_ERR = select.EPOLLERR | select.EPOLLHUP


def gid_address(gid: GID) -> str:
    """The IP address a GID stands for (IPv4-mapped GIDs give the IPv4 address)."""
    return str(gid.ip)


def host_key(text: str) -> str:
    """An address in one spelling: ``::ffff:1.2.3.4`` and ``1.2.3.4`` are the same host."""
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def same_host(a: str, b: str) -> bool:
    """Addresses equal, treating ``::ffff:1.2.3.4`` and ``1.2.3.4`` alike."""
    return host_key(a) == host_key(b)


def peer_host(sock: socket.socket) -> str | None:
    try:
        return host_key(sock.getpeername()[0])
    except (OSError, ValueError):
        return None


def _crowded(entries: list[_T], host_of: Callable[[_T], str]) -> _T:
    """The oldest of *entries* (oldest first) from the address that has the most."""
    counts = Counter(host_of(e) for e in entries)
    top = max(counts.values())
    return next(e for e in entries if counts[host_of(e)] == top)


def hello_matches(hello: Hello, expect_qpn: int, expect_host: str, host: str | None) -> bool:
    """Is the connection from *host* (:func:`peer_host`; None: unknown) with *hello* the
    peer a waiting QP expects?"""
    return host is not None and hello.qp_num == expect_qpn and same_host(host, expect_host)


def connect_socket(gid: GID, qp_num: int, local: GID) -> socket.socket:
    """Start (non-blocking) a TCP connection from *local* to the context owning *qp_num*
    at *gid*; the caller watches its outcome.

    The socket is bound to our own GID's address: the peer accepts the connection only
    from the address it was told.  Errors that no retry can mend raise here.
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
    if err not in (0, errno.EINPROGRESS, errno.ECONNREFUSED):
        sock.close()
        raise TcpverbsError(err, f"cannot connect to QP {qp_num} at {host}")
    return sock


@dataclass(eq=False)
class _Wait:
    """A QP in RTR waiting for its peer to dial."""

    qp: QPEngine
    dest: int
    host: str
    rq_psn: int  # what the peer's AUTH must carry
    sq_psn: int | None = None  # what the peer's hello must carry; known from RTS on
    timer: Timer | None = None
    candidates: list[_Candidate] = field(default_factory=list)  # proving who they are


@dataclass(eq=False)
class _Parked:
    sock: socket.socket
    hello: Hello
    host: str
    timer: Timer | None = field(default=None)


class OobService:
    """One context's out-of-band connection service."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._ports: list[_Port] = []
        self._reactor: Reactor | None = None
        self._listening = False
        self._waits: dict[int, _Wait] = {}
        self._parked: dict[int, list[_Parked]] = {}
        self._dials: dict[int, _Dial] = {}
        # reading their hello, oldest first (a dict as an ordered set; reactor thread)
        self._incoming: dict[_Incoming, None] = {}
        self._accept_tokens = float(ACCEPT_BURST)
        self._tokens_at = time.monotonic()
        self._closed = False

    # -- QP numbers ------------------------------------------------------------------
    def alloc_qpn(self) -> int:
        """A QP number that also says where to dial it; reserves a port, listens not."""
        with self._lock:
            for port in self._ports:
                qpn = port.alloc()
                if qpn is not None:
                    return qpn
            try:
                port = _Port()
            except OSError as exc:
                raise TcpverbsError(
                    exc.errno or errno.ENOMEM, f"cannot reserve a port for QP numbers: {exc}"
                ) from exc
            self._ports.append(port)
            if self._listening:
                port.listen(self, self._reactor_locked())
            qpn = port.alloc()
            assert qpn is not None
            return qpn

    def free_qpn(self, qpn: int) -> None:
        """QP *qpn* is gone: nothing waits, dials or is parked for its number any more
        (whoever frees it may have cancelled already; cancelling is idempotent)."""
        self.cancel(qpn)
        with self._lock:
            for port in self._ports:
                if port.release(qpn):
                    break

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def parked(self) -> dict[int, int]:
        """How many connections wait for each QP that is not in RTR yet."""
        with self._lock:
            return {qpn: len(waiting) for qpn, waiting in self._parked.items() if waiting}

    # -- connecting ------------------------------------------------------------------
    def dial(self, qp: QPEngine, sock: socket.socket, dest: int, host: str) -> None:
        """Watch the connection *sock* (from :func:`connect_socket`) to QP *dest* at
        *host* for *qp*: hand it over when it connects, dial again while refused."""
        try:
            with self._lock:
                reactor = self._start_listening()
                dial = _Dial(self, reactor, qp, sock, dest, host)
                self._dials[qp.qp_num] = dial
            dial.start()
        except BaseException:
            sock.close()
            raise

    def expect(self, qp: QPEngine, dest: int, host: str, rq_psn: int) -> None:
        """*qp* (in RTR) waits for QP *dest* at *host* to dial it; *rq_psn* is what the
        peer's AUTH must say."""
        qpn = qp.qp_num
        wait = _Wait(qp, dest, host, rq_psn)
        with self._lock:  # waiting from here on: an arrival from now is matched, not parked
            reactor = self._start_listening()
            parked = self._parked.pop(qpn, [])
            self._waits[qpn] = wait
        for entry in parked:
            if entry.timer is not None:
                entry.timer.cancel()
        for entry in parked:
            if hello_matches(entry.hello, dest, host, entry.host):
                self._consider(wait, entry.sock, entry.hello, entry.host)
            else:
                entry.sock.close()  # not the expected peer
        with self._lock:
            if self._waits.get(qpn) is not wait:
                return  # taken already
            # (an arrival that matched before this timer exists leaves it to find nothing)
            wait.timer = reactor.call_later(CONNECT_TIMEOUT, lambda: self._expired(wait), _Quiet())

    def rts(self, qpn: int, sq_psn: int) -> None:
        """QP *qpn* reached RTS: a waiting one can check the hellos' proof now (on the
        service's thread, which alone reads the candidates' sockets)."""
        with self._lock:
            wait = self._waits.get(qpn)
            if wait is None or self._reactor is None:
                return
            wait.sq_psn = sq_psn
            self._reactor.call_later(0, lambda: self._check_hellos(wait), _Quiet())

    def _check_hellos(self, wait: _Wait) -> None:
        with self._lock:
            candidates = list(wait.candidates)
        for candidate in candidates:
            if candidate.hello.psn != wait.sq_psn:
                candidate.drop()  # its hello does not prove it (its AUTH could not either)
            elif candidate.reading_auth:
                candidate.proven = True  # handed over once its AUTH is read through
            else:
                self._accept(wait, candidate)
                return

    def _consider(self, wait: _Wait, sock: socket.socket, hello: Hello, host: str) -> None:
        """*sock* came from the expected address (*host*) and QP number: take it once it
        proves it is the peer (see the module), close it if it cannot."""
        with self._lock:
            known = wait.sq_psn
            reactor = self._reactor
            crowded = sum(c.host == host for c in wait.candidates)
            if (
                self._waits.get(wait.qp.qp_num) is not wait
                or reactor is None
                or (known is not None and hello.psn != known)
                or len(wait.candidates) >= MAX_PARKED
                or crowded >= MAX_PARKED_PER_HOST
            ):
                sock.close()
                return
            candidate = _Candidate(self, reactor, wait, sock, hello, host)
            wait.candidates.append(candidate)
        if known is not None:  # its hello proves it already
            self._accept(wait, candidate)
        else:
            candidate.start()

    def _accept(self, wait: _Wait, winner: _Candidate) -> None:
        """*winner* proved it is the peer: hand it over; the other candidates go."""
        with self._lock:
            if self._waits.get(wait.qp.qp_num) is not wait or winner not in wait.candidates:
                return
            del self._waits[wait.qp.qp_num]
            others = [c for c in wait.candidates if c is not winner]
            wait.candidates.clear()
        if wait.timer is not None:
            wait.timer.cancel()
        for other in others:
            other.drop()
        sock = winner.detach()
        if sock is not None:
            self._hand_over(wait.qp, sock, winner.hello, None)

    def _unproven(self, wait: _Wait, candidate: _Candidate) -> None:
        with self._lock:
            if candidate in wait.candidates:
                wait.candidates.remove(candidate)

    def cancel(self, qpn: int) -> None:
        """QP *qpn* stops waiting or dialling (reset, destroyed, or failed)."""
        with self._lock:
            wait = self._waits.pop(qpn, None)
            dial = self._dials.pop(qpn, None)
            parked = self._parked.pop(qpn, [])
        if wait is not None:
            _end_wait(wait)
        if dial is not None:
            dial.stop()
        for entry in parked:
            if entry.timer is not None:
                entry.timer.cancel()
            entry.sock.close()

    def waiting(self, qpn: int) -> bool:
        """QP *qpn* waits for its peer to dial it."""
        with self._lock:
            return qpn in self._waits

    def _expired(self, wait: _Wait) -> None:
        with self._lock:
            if self._waits.get(wait.qp.qp_num) is not wait:
                return
            del self._waits[wait.qp.qp_num]
        _end_wait(wait)
        wait.qp.fail(
            TcpverbsError(
                errno.ETIMEDOUT,
                f"peer QP {wait.dest} at {wait.host} did not connect within {CONNECT_TIMEOUT:g} s",
            ),
            setup=True,
        )

    def _dial_done(self, dial: _Dial, error: TcpverbsError | None) -> None:
        with self._lock:
            if self._dials.get(dial.qp.qp_num) is not dial:
                dial.sock.close()
                return
            del self._dials[dial.qp.qp_num]
        if error is not None:
            dial.sock.close()
            dial.qp.fail(error, setup=True)
        else:
            self._hand_over(dial.qp, dial.sock, None, CONNECT_TIMEOUT)

    def _hand_over(
        self, qp: QPEngine, sock: socket.socket, hello: Hello | None, timeout: float | None
    ) -> bool:
        """Give *sock* to *qp*'s engine; a QP that cannot take it keeps no stale wait, and
        one whose engine fails to start the connection goes to ERR saying so."""
        try:
            taken = qp.attach(sock, hello, timeout)
        except Exception as exc:
            sock.close()
            qp.fail(TcpverbsError(errno.EIO, f"starting the connection: {exc!r}"), setup=True)
            return False
        if not taken:
            sock.close()  # the QP left RTR/RTS (or was destroyed) meanwhile
        return taken

    # -- arrivals (reactor thread) -----------------------------------------------------
    def _arrived(self, sock: socket.socket, hello: Hello) -> None:
        """A connection whose hello names QP ``hello.dest_qp_num``: hand over or park."""
        qpn = hello.dest_qp_num
        host = peer_host(sock)
        evicted: _Parked | None = None
        parked = False
        with self._lock:
            wait = self._waits.get(qpn)
            if wait is not None:
                if not hello_matches(hello, wait.dest, wait.host, host):
                    wait = None  # not the expected peer: refused below
            elif host is not None and self._allocated(qpn):
                waiting = self._parked.setdefault(qpn, [])
                # the first ones from an address keep their place; an address that holds
                # more than others gives one up, so the expected peer's place stays free
                if sum(e.host == host for e in waiting) < MAX_PARKED_PER_HOST:
                    if len(waiting) >= MAX_PARKED:
                        evicted = _crowded(waiting, lambda e: e.host)
                        waiting.remove(evicted)
                    entry = _Parked(sock, hello, host)
                    waiting.append(entry)
                    entry.timer = self._reactor_locked().call_later(
                        CONNECT_TIMEOUT, lambda: self._unpark(qpn, entry), _Quiet()
                    )
                    parked = True
        if evicted is not None:
            if evicted.timer is not None:
                evicted.timer.cancel()
            evicted.sock.close()
        if parked:
            return
        if wait is None or host is None:  # (a matching wait implies a known host)
            sock.close()
            return
        self._consider(wait, sock, hello, host)

    def _allocated(self, qpn: int) -> bool:
        return any(port.holds(qpn) for port in self._ports)

    def _unpark(self, qpn: int, entry: _Parked) -> None:
        with self._lock:
            waiting = self._parked.get(qpn, [])
            if entry not in waiting:  # taken (or cancelled) meanwhile: not ours to close
                return
            waiting.remove(entry)
        entry.sock.close()

    # -- admission (reactor thread) ----------------------------------------------------
    def _may_accept(self) -> bool:
        """Take one accept from the budget (``ACCEPT_RATE``, ``ACCEPT_BURST``)."""
        now = time.monotonic()
        self._accept_tokens = min(
            float(ACCEPT_BURST), self._accept_tokens + (now - self._tokens_at) * ACCEPT_RATE
        )
        self._tokens_at = now
        if self._accept_tokens < 1:
            return False
        self._accept_tokens -= 1
        return True

    def _admit(self, conn: socket.socket, reactor: Reactor) -> None:
        """A just-accepted connection gets a place to read its hello in, or is closed."""
        host = peer_host(conn)
        incoming = list(self._incoming)
        if host is None or sum(i.host == host for i in incoming) >= MAX_INCOMING_PER_HOST:
            conn.close()
            return
        if len(incoming) >= MAX_INCOMING:
            _crowded(incoming, lambda i: i.host).drop()
        _Incoming(self, reactor, conn, host).start()

    # -- the reactor and the listening sockets --------------------------------------------
    def _reactor_locked(self) -> Reactor:
        if self._reactor is None:
            self._reactor = Reactor(f"tcpverbs-oob-{self.device}")
        return self._reactor

    def _start_listening(self) -> Reactor:
        """Listen on every reserved port (once); called with the lock held."""
        if self._closed:
            raise TcpverbsError(errno.EBADF, "the context is closed")
        reactor = self._reactor_locked()
        if not self._listening:
            self._listening = True
            for port in self._ports:
                port.listen(self, reactor)
        return reactor

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waits, self._waits = list(self._waits.values()), {}
            dials, self._dials = list(self._dials.values()), {}
            parked, self._parked = list(self._parked.values()), {}
            ports, self._ports = self._ports, []
            reactor, self._reactor = self._reactor, None
        for wait in waits:
            _end_wait(wait)
        for dial in dials:
            dial.stop()
        for entries in parked:
            for entry in entries:
                entry.sock.close()
        for pending in list(self._incoming):
            pending.drop()
        for port in ports:
            port.close()
        if reactor is not None:
            reactor.close()


def _end_wait(wait: _Wait) -> None:
    """The wait is over (cancelled, expired, closed): its timer and candidates go."""
    if wait.timer is not None:
        wait.timer.cancel()
    candidates, wait.candidates = list(wait.candidates), []
    for candidate in candidates:
        candidate.drop()


class _Quiet:
    """The owner of a timer whose callback cannot fail in a way anyone must hear of."""

    def on_events(self, events: int) -> None:
        """Never registered for I/O."""

    def on_crash(self, exc: BaseException) -> None:
        """Nothing to tear down: the callback's own state is dropped with it."""

    def on_reactor_close(self) -> None:
        """Nothing held."""


class _Port:
    """A reserved TCP port: bound at once, listening only when the service says so."""

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        except OSError:  # no IPv6 in this kernel or namespace
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._free = list(range(_QPS_PER_PORT, 0, -1))
        self._service: OobService | None = None
        self._reactor: Reactor | None = None
        self._paused: Timer | None = None  # accepting again when it fires

    def alloc(self) -> int | None:
        return (self.port << 8) | self._free.pop() if self._free else None

    def holds(self, qpn: int) -> bool:
        return qpn >> 8 == self.port and (qpn & 0xFF) not in self._free and qpn & 0xFF != 0

    def release(self, qpn: int) -> bool:
        if qpn >> 8 != self.port:
            return False
        self._free.append(qpn & 0xFF)
        return True

    def listen(self, service: OobService, reactor: Reactor) -> None:
        self.sock.listen(128)
        self._service, self._reactor = service, reactor
        reactor.register(self.sock.fileno(), self, select.EPOLLIN | _ERR)

    def on_events(self, events: int) -> None:
        service, reactor = self._service, self._reactor
        assert service is not None and reactor is not None
        while True:
            if not service._may_accept():
                # out of budget: stop watching until it refills; meanwhile the kernel's
                # backlog holds (or refuses) what comes, at no cost to this thread
                reactor.unregister(self.sock.fileno())
                self._paused = reactor.call_later(ACCEPT_PAUSE, self._resume, self)
                return
            try:
                conn, _ = self.sock.accept()
            except OSError:  # EAGAIN, or closed under us
                return
            service._admit(conn, reactor)

    def _resume(self) -> None:
        self._paused = None
        if self.sock.fileno() >= 0 and self._reactor is not None:
            self._reactor.register(self.sock.fileno(), self, select.EPOLLIN | _ERR)

    def on_crash(self, exc: BaseException) -> None:
        self.close()

    def on_reactor_close(self) -> None:
        self.close()

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
        if self.sock.fileno() >= 0:
            if self._reactor is not None:
                self._reactor.unregister(self.sock.fileno())
            self.sock.close()


class _Incoming:
    """A just-accepted connection whose hello says which QP it is for."""

    def __init__(
        self, service: OobService, reactor: Reactor, sock: socket.socket, host: str
    ) -> None:
        self.service = service
        self.reactor = reactor
        self.sock = sock
        self.host = host
        self.decoder = HelloDecoder()
        self.got = 0
        self.timer: Timer | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.service._incoming[self] = None
        self.reactor.register(self.sock.fileno(), self, select.EPOLLIN | _ERR)
        self.timer = self.reactor.call_later(HELLO_DEADLINE, self.drop, self)

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
            self.service._arrived(self.sock, hello)

    def _detach(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.service._incoming.pop(self, None)
        self.reactor.unregister(self.sock.fileno())

    def drop(self) -> None:
        if self.sock.fileno() >= 0:
            self._detach()
            self.sock.close()

    def on_crash(self, exc: BaseException) -> None:
        self.drop()

    def on_reactor_close(self) -> None:
        self.drop()


class _Candidate:
    """A connection from the expected address and QP number whose proof is pending: it
    waits for the dialler's AUTH frame (or for its QP's RTS, see ``OobService.rts``)."""

    def __init__(
        self,
        service: OobService,
        reactor: Reactor,
        wait: _Wait,
        sock: socket.socket,
        hello: Hello,
        host: str,
    ) -> None:
        self.service = service
        self.reactor = reactor
        self.wait = wait
        self.sock = sock
        self.hello = hello
        self.host = host
        self._buf = b""
        self._registered = False
        self.proven = False  # by its hello; its AUTH, begun already, is read through first

    @property
    def reading_auth(self) -> bool:
        """Part of its AUTH frame is read: handing the socket over now would cut it."""
        return bool(self._buf)

    def start(self) -> None:
        self.sock.setblocking(False)
        self.reactor.register(self.sock.fileno(), self, select.EPOLLIN | _ERR)
        self._registered = True

    def on_events(self, events: int) -> None:
        if not self._registered:  # an event from before it was handed over: not ours
            return
        try:  # exactly the AUTH frame: what follows is the QP's
            data = self.sock.recv(AUTH_SIZE - len(self._buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop()
            return
        self._buf += data
        if len(self._buf) < AUTH_SIZE:
            return
        opcode, flags, _, length, psn = _AUTH.unpack(self._buf)
        if self.proven or (opcode, flags, length, psn) == (Opcode.AUTH, 0, 4, self.wait.rq_psn):
            self.service._accept(self.wait, self)
        else:
            self.drop()

    def detach(self) -> socket.socket | None:
        """Stop watching; the socket, if still open, is the caller's."""
        if self._registered and self.sock.fileno() >= 0:
            self.reactor.unregister(self.sock.fileno())
        self._registered = False
        return self.sock if self.sock.fileno() >= 0 else None

    def drop(self) -> None:
        self.service._unproven(self.wait, self)
        sock = self.detach()
        if sock is not None:
            sock.close()

    def on_crash(self, exc: BaseException) -> None:
        self.drop()

    def on_reactor_close(self) -> None:
        self.drop()


class _Dial:
    """A connection being dialled for a QP; refused dials are tried again."""

    def __init__(
        self,
        service: OobService,
        reactor: Reactor,
        qp: QPEngine,
        sock: socket.socket,
        dest: int,
        host: str,
    ) -> None:
        self.service = service
        self.reactor = reactor
        self.qp = qp
        self.sock = sock
        self.dest = dest
        self.host = host
        self.deadline = time.monotonic() + CONNECT_TIMEOUT
        self.delay = REDIAL_FIRST
        self.timer: Timer | None = None
        self._stopped = False
        self._lock = threading.Lock()  # stop() (any thread) against a redial (reactor)

    def start(self) -> None:
        self.reactor.register(self.sock.fileno(), self, select.EPOLLOUT | _ERR)

    def on_events(self, events: int) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            try:
                self.sock.getpeername()
            except OSError:  # refused before we watched (connect_ex said so already)
                err = errno.ECONNREFUSED
        if not err:
            self.reactor.unregister(self.sock.fileno())
            self.service._dial_done(self, None)
        elif err == errno.ECONNREFUSED and time.monotonic() + self.delay < self.deadline:
            self.reactor.unregister(self.sock.fileno())
            self.timer = self.reactor.call_later(self.delay, self._again, self)
            self.delay = min(2 * self.delay, REDIAL_MAX)
        elif err:
            self.reactor.unregister(self.sock.fileno())
            self.service._dial_done(
                self,
                ConnectionBrokenError(
                    err, f"connecting to QP {self.dest} at {self.host}: {_strerror(err)}"
                ),
            )

    def _again(self) -> None:
        with self._lock:
            if self._stopped:
                return
            family, local = self.sock.family, self.sock.getsockname()[0]
            self.sock.close()
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setblocking(False)
            try:
                self.sock.bind((local, 0))
                err = self.sock.connect_ex((self.host, self.dest >> 8))
            except OSError as exc:
                err = exc.errno or errno.EIO
            if err in (0, errno.EINPROGRESS, errno.ECONNREFUSED):
                self.start()  # a refusal shows up in epoll like any other outcome
                return
        self.service._dial_done(  # an error no redial mends
            self,
            ConnectionBrokenError(
                err, f"connecting to QP {self.dest} at {self.host}: {_strerror(err)}"
            ),
        )

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.timer is not None:
                self.timer.cancel()
            if self.sock.fileno() >= 0:
                self.reactor.unregister(self.sock.fileno())
                self.sock.close()

    def on_crash(self, exc: BaseException) -> None:
        self.service._dial_done(
            self, TcpverbsError(errno.EIO, f"internal error while dialling: {exc!r}")
        )

    def on_reactor_close(self) -> None:
        self.stop()


def _strerror(err: int) -> str:
    return os.strerror(err)
