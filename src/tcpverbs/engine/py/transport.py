"""What every transport shares: the socket, the transmit queue, interest, teardown.

A transport is created when the QP gets its connection — at the INIT → RTR handoff, or
when the out-of-band service hands over a socket — and lives until the QP leaves the
connected states.  Every method is called with the QP's lock held (the engine's
callbacks take it themselves), so a transport needs no locking of its own.

Transmit: ``_tx`` is a queue of byte segments — frame headers the transport built and
memoryviews of registered memory — written with ``sendmsg`` (many segments per call, no
copies).  A partial write leaves the remainder queued and asks epoll for EPOLLOUT.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING

from ...enums import ibv_event_type, ibv_wc_status
from ...errors import ConnectionBrokenError, TcpverbsError, from_oserror
from ...reactor import Reactor, Timer
from ..api import requester_timeout
from .work import RecvWork, Segment, SendWork
from .zerocopy import MSG_ZEROCOPY, ZeroCopy

if TYPE_CHECKING:
    from .qp import PyQP

__all__ = ["Transport"]

IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
# Counters every QP reports (QP.statistics()); the wire modes add their own.
STAT_KEYS = (
    "wrs_sent",  # WRs handed to the wire (again after an RNR rewind)
    "wrs_received",  # receive WRs completed with data
    "bytes_sent",  # bytes written to the socket, headers included
    "bytes_received",
    "frames_sent",  # rc frames queued: requests, ACKs, answers, NAKs
    "frames_received",
    "sendmsg_calls",  # system calls that wrote (each a batch of frames)
    "recv_calls",  # system calls that read something (or the end of stream)
    "recv_empty",  # reads that found nothing (EAGAIN): the price of polling
    "zerocopy_sends",  # sendmsg calls with MSG_ZEROCOPY
    "zerocopy_released",  # ... the kernel reported done with (the buffers are free)
    "zerocopy_copied",  # ... of those, where the kernel copied after all (loopback)
    "zerocopy_disabled",  # times ENOBUFS turned zerocopy off for a connection
)
DRAIN_TIMEOUT = 5.0  # seconds a closed connection waits for the peer's FIN
APP_POLL_GRACE = 0.002  # seconds without CQ.poll before the progress thread reads again
PARK_CHECK_MAX = 0.032  # longest pause between two looks at a parked connection
WATCH_TICKS = 4  # looks per requester timeout at whether the peer still answers
WINDOW_PROBES_UNANSWERED = 3  # a closed window whose probes go unanswered: the peer is gone
_ERR = select.EPOLLERR | select.EPOLLHUP
# struct tcp_info (linux/tcp.h): tcpi_probes (byte 3), tcpi_unacked (byte 24),
# tcpi_last_data_recv and tcpi_last_ack_recv (bytes 52 and 56, milliseconds ago)
_TCP_INFO = struct.Struct("=3xB20xI24xII")
_INT = struct.Struct("i")
_RETRY_EXC = ibv_wc_status.IBV_WC_RETRY_EXC_ERR
_FLUSH_ERR = ibv_wc_status.IBV_WC_WR_FLUSH_ERR
_NOSIGNAL = int(socket.MSG_NOSIGNAL)  # a plain int: MsgFlag's | and & build enums per call


class Transport:
    """Base class; :mod:`.rc` and :mod:`.stream` implement the wire modes."""

    established = False

    def __init__(self, qp: PyQP, sock: socket.socket) -> None:
        self.qp = qp
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        self.reactor: Reactor = qp.engine.reactor
        self._tx: deque[Segment] = deque()
        self._tx_base = 0  # segments ever written out: position of _tx[0] in the stream
        self._closed = False
        self.app_polled = 0.0  # monotonic time of the application's last CQ.poll progress
        self._reads_parked = False
        # threads in CompChannel.get_cq_event that read this socket (a token each: entering
        # and leaving are idempotent, so an exception between them cannot leave one behind)
        self._sleepers: set[object] = set()
        self._park_timer: Timer | None = None
        self._want_read = True
        self._want_write = False
        self._registered_events = 0
        # the socket's error (SO_ERROR reads and clears it) while what the kernel still
        # holds is delivered: the end of that data is then this error, not an EOF
        self._pending_error: OSError | None = None
        self._watched = True  # registered with the reactor (a held stream is not)
        self._watchdog: Timer | None = None  # the requester timeout's next look
        self._busy_since = 0.0  # monotonic time requester work became outstanding
        self.stats = qp.stats  # counters live on the QP: they outlast a connection
        for key in STAT_KEYS:
            self.stats.setdefault(key, 0)
        self._zerocopy: ZeroCopy | None = None  # rc turns it on where it pays

    # -- interface used by the QP ---------------------------------------------------
    def start(self) -> None:
        self._registered_events = self._events()
        self.reactor.register(self.fd, self, self._registered_events)

    def send_posted(self) -> None:
        """New WRs are in ``qp.sq`` (and the QP is in RTS)."""
        raise NotImplementedError

    def entered_rts(self) -> None:
        """The QP just moved to RTS (its ``sq_psn`` is known now)."""

    def recv_posted(self) -> None:
        """New WRs are in ``qp.rq``."""
        raise NotImplementedError

    def progress(self) -> None:
        """Make whatever progress is possible without blocking."""
        raise NotImplementedError

    def send_deferred_ack(self) -> None:
        """An ACK deferred for the application's next move goes now (rc has them)."""

    def take_unfinished(self) -> list[SendWork]:
        """Send WRs handed to the wire whose outcome is not known yet (to be flushed)."""
        raise NotImplementedError

    def outstanding(self) -> Iterable[SendWork]:
        """Send WRs handed to the wire whose outcome is not known yet (a look only)."""
        raise NotImplementedError

    def placing(self) -> RecvWork | None:
        """The receive WR whose payload is landing now, part of it still to come."""
        return None

    def close(self, reason: TcpverbsError | None) -> None:
        """Tear the connection down.  With *reason*, tell the peer why first (best effort)
        and close gracefully; without, close at once."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        for timer in (self._park_timer, self._watchdog):
            if timer is not None:
                timer.cancel()
        self.reactor.unregister(self.fd)
        if reason is None:
            self._settle()
            self._close_socket()
            return
        self._say_goodbye(reason)
        _Drainer(self.reactor, self.sock).start()

    # -- engine callbacks -------------------------------------------------------------
    def on_events(self, events: int) -> None:
        with self.qp.lock:
            if self._closed:
                return
            if events & select.EPOLLERR and self._on_error_event():
                return
            if events & select.EPOLLOUT:
                self._writable()
            if events & (select.EPOLLIN | select.EPOLLHUP) and not self._closed:
                if self._app_spinning():
                    self._park_reads()  # the application is spinning on poll(): let it
                else:
                    self.on_readable()

    def _on_error_event(self) -> bool:
        """EPOLLERR: True when the connection failed (the event is handled then)."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:  # 0: stale, or zerocopy notifications; the reads after this tell
            self._socket_failed(OSError(err, os.strerror(err)))
            return True
        if self._zerocopy is not None:  # zerocopy notifications are queued
            self._reap_zerocopy()
        return False

    def _writable(self) -> None:
        """EPOLLOUT: the socket has room for what waits."""
        self._flush()

    # -- sharing the work with a polling application -------------------------------------
    def app_polling(self) -> None:
        """The application is about to make progress itself (``CQ.poll``)."""
        self.app_polled = time.monotonic()

    def app_blocking(self) -> None:
        """The application is about to sleep (``req_notify``): the engine takes over now."""
        self.app_polled = 0.0
        if self._reads_parked:
            self._unpark_reads()

    @property
    def tx_queued(self) -> int:
        """Segments waiting to be written (``QP.statistics()["tx_outstanding"]``)."""
        return len(self._tx)

    @property
    def reading(self) -> bool:
        """Open and not holding its reads back (rc pauses them while answers pile up)."""
        return self._want_read and not self._closed

    def sleeper_enter(self, token: object) -> None:
        """A thread asleep on a completion channel watches and reads this socket."""
        self._sleepers.add(token)
        self._set_interest()

    def sleeper_exit(self, token: object) -> None:
        self._sleepers.discard(token)
        self._set_interest()

    def _close_socket(self) -> None:
        if self._sleepers:
            # a thread blocked in poll() on this socket keeps it alive past close(): shut
            # it down, so the peer sees the end now and that poll() returns
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()

    def _app_spinning(self) -> bool:
        """Polled lately, and not about to sleep on a completion channel."""
        qp = self.qp
        return (
            time.monotonic() - self.app_polled < APP_POLL_GRACE
            and not qp.scq.armed
            and not qp.rcq.armed
        )

    def _park_reads(self) -> None:
        """Stop waking the progress thread for incoming data while the application polls.

        Each wake-up of the progress thread costs GIL hand-overs, which dwarf the work
        itself (tens of microseconds each on a busy 2-core VM, more when it must also wait
        for the QP lock the poller holds); a spinning application receives by itself
        (``CQ.poll`` reads the socket).  The thread looks again after ``APP_POLL_GRACE``,
        then at doubling intervals up to ``PARK_CHECK_MAX`` while polling goes on, and
        takes over as soon as a look finds polling stopped (or at once on ``req_notify``).
        """
        if not self._reads_parked:
            self._reads_parked = True
            self._set_interest()
            self._arm_park_check(APP_POLL_GRACE)

    def _arm_park_check(self, delay: float) -> None:
        self._park_timer = self.reactor.call_later(delay, lambda: self._check_parked(delay), self)

    def _check_parked(self, waited: float) -> None:
        # Reading a float and two bools needs no lock: taking the QP lock here would make
        # the poller (which holds it while in a system call) and this thread take turns.
        if not self._closed and self._reads_parked and self._app_spinning():
            self._arm_park_check(min(2 * waited, PARK_CHECK_MAX))
            return
        with self.qp.lock:
            self._park_timer = None
            if self._closed or not self._reads_parked:
                return
            if self._app_spinning():  # polled again meanwhile
                self._arm_park_check(APP_POLL_GRACE)
                return
            self._unpark_reads()

    def _unpark_reads(self) -> None:
        self._reads_parked = False
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None
        self._set_interest()
        if not self._closed:
            self.on_readable()  # whatever arrived meanwhile

    def on_crash(self, exc: BaseException) -> None:
        self.qp.enter_error(
            TcpverbsError(errno.EIO, f"internal error in the progress engine: {exc!r}")
        )

    def on_readable(self) -> None:
        raise NotImplementedError

    def on_reactor_close(self) -> None:
        """The context is closing; its QPs (and so this transport) are closed already."""
        if not self._closed:
            self._closed = True
            self._close_socket()

    # -- the requester timeout (QPAttr.timeout and retry_cnt) ----------------------------
    def _requester_busy(self) -> None:
        """Send work just became outstanding (none was): from now on the peer must answer
        within the requester timeout (:func:`..api.requester_timeout`).

        One look every quarter of the timeout (a timer, not a cost per WR) asks the
        kernel how long ago anything arrived from the peer's host (``TCP_INFO``): an
        acknowledgement of our bytes, a window probe's answer or data.  So a peer that
        is alive but slow to read (a closed window) never times out; a black hole does.
        """
        self._busy_since = time.monotonic()
        if self._watchdog is None:
            limit = requester_timeout(self.qp.params.timeout, self.qp.params.retry_cnt)
            if limit is not None:
                self._watchdog = self.reactor.call_later(
                    limit / WATCH_TICKS, self._on_watchdog, self
                )

    def _awaiting_peer(self) -> bool:
        """Whether send work waits for the peer now (an RNR wait, say, does not)."""
        raise NotImplementedError

    def _on_watchdog(self) -> None:
        with self.qp.lock:
            self._watchdog = None
            if self._closed or not self._awaiting_peer():
                return  # the next outstanding work arms it again
            params = self.qp.params
            limit = requester_timeout(params.timeout, params.retry_cnt)
            if limit is None:
                return
            silent = min(self._peer_silence(), time.monotonic() - self._busy_since)
            if silent < limit:
                delay = max(min(limit / WATCH_TICKS, limit - silent), 0.01)
                self._watchdog = self.reactor.call_later(delay, self._on_watchdog, self)
                return
            self._fail(
                ConnectionBrokenError(
                    errno.ETIMEDOUT,
                    f"nothing arrived from the peer for {silent:.2f} s while work was "
                    f"outstanding (timeout {params.timeout}, retry_cnt {params.retry_cnt}: "
                    f"{limit:.2f} s)",
                ),
                first_status=_RETRY_EXC,
            )

    def _peer_silence(self) -> float:
        """Seconds since the peer's host last sent us anything (0 if unknown, or if its
        window is closed and its probes are being answered)."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            probes, unacked, data_ms, ack_ms = _TCP_INFO.unpack_from(info)
        except (OSError, struct.error):
            return 0.0
        silent: float = min(data_ms, ack_ms) / 1000
        if silent and not unacked and probes < WINDOW_PROBES_UNANSWERED and self._unsent():
            # bytes wait, none in flight: the peer closed its window.  TCP probes it at
            # intervals that grow to minutes, and the peer's kernel rate-limits its
            # answers, so the time since the last answer says nothing; a run of
            # unanswered probes does
            return 0.0
        return silent

    def _outq(self) -> int:
        """Bytes written but not yet acknowledged by the peer's TCP (``SIOCOUTQ``)."""
        return self._ioctl_int(termios.TIOCOUTQ)

    def _unsent(self) -> int:
        return self._ioctl_int(termios.TIOCOUTQ, on_error=0)

    def _ioctl_int(self, request: int, *, on_error: int | None = None) -> int:
        """The int an ioctl returns; *on_error* (if given) when it fails."""
        try:
            return int(_INT.unpack(fcntl.ioctl(self.fd, request, b"\0" * 4))[0])
        except OSError:
            if on_error is None:
                raise
            return on_error

    # -- helpers for subclasses -------------------------------------------------------
    def _socket_failed(self, exc: OSError) -> None:
        """The connection failed (a reset, a timeout).  What the kernel received before
        is still readable — a plain socket reads it before the error — so it is taken
        (frames processed, ACKs honoured, data placed) before the QP goes to ERR."""
        self._pending_error = exc
        self.on_readable()
        if self._closed:
            return
        if self._hold_after_failure():
            self._unwatch()  # receives posted later take the data; their reads end in exc
            return
        self._broken(exc, "connection failed")

    def _hold_after_failure(self) -> bool:
        """Keep a failed connection (unwatched) because received data waits that only
        receives posted later can take (stream overrides it)."""
        return False

    def _fail(
        self,
        exc: TcpverbsError,
        *,
        setup: bool = False,
        notify_peer: bool = True,
        event: ibv_event_type = ibv_event_type.IBV_EVENT_QP_FATAL,
        first_status: int = ibv_wc_status.IBV_WC_WR_FLUSH_ERR,
    ) -> None:
        self.qp.enter_error(
            exc, setup=setup, notify_peer=notify_peer, event=event, first_status=first_status
        )

    def _say_goodbye(self, reason: TcpverbsError) -> None:
        """Last bytes before a graceful close (rc sends TERMINATE)."""

    def _settle(self) -> None:
        """Last bytes before an immediate close: what the peer is owed for work already
        done here (rc's deferred ACK), written if the socket takes it now."""

    def _cancel_timers(self) -> None:
        """Subclasses cancel their timers here."""

    def _events(self) -> int:
        reading_here = self._want_read and not self._reads_parked and not self._sleepers
        return (
            (select.EPOLLIN if reading_here else 0)
            | (select.EPOLLOUT if self._want_write else 0)
            | _ERR
        )

    def _set_interest(self, *, read: bool | None = None, write: bool | None = None) -> None:
        if read is not None:
            self._want_read = read
        if write is not None:
            self._want_write = write
        events = self._events()
        if events != self._registered_events and not self._closed and self._watched:
            self.reactor.modify(self.fd, events)
            self._registered_events = events  # only once epoll has it

    def _unwatch(self) -> None:
        """Stop the reactor watching the socket (its error would be reported for ever)."""
        self._watched = False
        self.reactor.unregister(self.fd)

    def _flush(self) -> bool:
        """Write queued segments; True when the queue is empty.  Errors fail the QP."""
        tx = self._tx
        stats = self.stats
        zc = self._zerocopy
        while tx:
            batch = list(tx) if len(tx) <= IOV_MAX else list(islice(tx, IOV_MAX))
            flags = _NOSIGNAL
            if zc is not None and zc.wanted(batch):
                flags |= MSG_ZEROCOPY
            try:
                sent = self.sock.sendmsg(batch, (), flags)
            except BlockingIOError:
                self._set_interest(write=True)
                self._tx_drained()
                return False
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS and zc is not None and flags & MSG_ZEROCOPY:
                    # out of pinned-page budget (optmem): copy from now on; the calls
                    # already made are still reaped
                    zc.disable()
                    stats["zerocopy_disabled"] += 1
                    continue
                self._broken(exc, "sending")
                return False
            if flags & MSG_ZEROCOPY:
                zc.sent(batch)  # type: ignore[union-attr]
                stats["zerocopy_sends"] += 1
            stats["sendmsg_calls"] += 1
            stats["bytes_sent"] += sent
            if len(batch) == len(tx) and sent == sum(map(len, batch)):
                tx.clear()  # the usual case: all of it went (no per-segment bookkeeping)
                self._tx_base += len(batch)
                break
            while sent:
                head = tx[0]
                size = len(head)
                if sent >= size:
                    tx.popleft()
                    self._tx_base += 1
                    sent -= size
                else:
                    tx[0] = memoryview(head)[sent:]
                    sent = 0
        if self._want_write:
            self._set_interest(write=False)
        self._tx_drained()
        return True

    def _reap_zerocopy(self) -> None:
        """Take the kernel's zerocopy notifications; rc then releases completions."""
        zc = self._zerocopy
        assert zc is not None
        before = zc.copied
        try:
            self.stats["zerocopy_released"] += zc.reap()
        except OSError as exc:
            self._broken(exc, "reading zerocopy notifications")
            return
        self.stats["zerocopy_copied"] += zc.copied - before
        self._zerocopy_released()

    def _zerocopy_released(self) -> None:
        """Hook: the kernel let go of more zerocopy buffers."""

    def _tx_drained(self) -> None:
        """Hook: the transmit queue shrank (rc resumes reading here)."""

    def _recv(self, receive: Callable[[], int]) -> int:
        """Run one receive call; 0 when nothing arrived (would block, error or EOF —
        the last two already handled)."""
        try:
            n = receive()
        except (BlockingIOError, InterruptedError):
            self.stats["recv_empty"] += 1
            return 0
        except OSError as exc:
            self._broken(exc, "receiving")
            return 0
        self.stats["recv_calls"] += 1
        if n == 0:
            if self._pending_error is not None:  # the data before a reset has all landed
                self._broken(self._pending_error, "connection failed")
            else:
                self._peer_closed()
            return 0
        self.stats["bytes_received"] += n
        return n

    def _recv_into(self, views: list[memoryview]) -> int:
        """Scatter straight into *views* (registered memory): no copy in Python."""
        return self._recv(lambda: self.sock.recvmsg_into(views)[0])

    def _peer_closed(self) -> None:
        """The peer ended the stream (EOF)."""
        self._fail(self._closed_by_peer("(end of stream)"), notify_peer=False)

    def _broken(self, exc: OSError, doing: str) -> None:
        """The socket failed: ERR without a goodbye (nobody would read it)."""
        if self._closed:  # last words on the way out (_settle) are best effort
            return
        self._fail(
            from_oserror(exc, f"{doing} {self._where()}".rstrip()),
            setup=not self.established,
            notify_peer=False,
            # TCP itself gave up retransmitting: the verbs name for that
            first_status=_RETRY_EXC if exc.errno == errno.ETIMEDOUT else _FLUSH_ERR,
        )

    def _where(self) -> str:
        """Where in the protocol we are, for error messages."""
        if not self.established:
            return "during the hello (is the peer a tcpverbs rc endpoint?)"
        return ""

    def _closed_by_peer(self, during: str) -> ConnectionBrokenError:
        return ConnectionBrokenError(errno.ECONNRESET, f"peer closed the connection {during}")


class _Drainer:
    """Reads and discards until the peer's FIN (or a timeout), then closes.

    Closing a socket with unread data makes the kernel send RST, which can destroy the
    TERMINATE we just wrote before the peer reads it; half-closing and draining avoids
    that.  Memory is bounded: one fixed buffer, whatever the peer sends.
    """

    _buf = bytearray(65536)

    def __init__(self, reactor: Reactor, sock: socket.socket) -> None:
        self.reactor = reactor
        self.sock = sock
        self.timer: Timer | None = None

    def start(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.sock.close()
            return
        self.reactor.register(self.sock.fileno(), self, select.EPOLLIN | _ERR)
        self.timer = self.reactor.call_later(DRAIN_TIMEOUT, self._done, self)

    def on_events(self, events: int) -> None:
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if n == 0:
                self._done()
                return

    def on_crash(self, exc: BaseException) -> None:
        self._done()

    def on_reactor_close(self) -> None:
        self._done()

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.sock.fileno() >= 0:
            self.reactor.unregister(self.sock.fileno())
            self.sock.close()
