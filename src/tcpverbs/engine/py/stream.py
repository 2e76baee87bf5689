"""The ``stream`` transport: the TCP payload *is* the application's data (the paper's design).

SEND pushes the WR's bytes into the stream.  Posted receives are filled from the stream
in order with ``recvmsg_into`` straight into their SGEs; a receive completes as soon as
data has landed in it, with ``byte_len`` = the bytes that landed.  A signaled SEND
completes when TCP has acknowledged its last byte: the bytes we wrote minus what the
kernel still holds unacknowledged (``SIOCOUTQ``).  Acknowledgements raise no epoll
event, so while sends await them the transport checks on a short, backing-off timer
(and on every ``CQ.poll``).

The end of the stream is TCP's, not the QP's:

* **EOF** (the peer called ``shutdown(SHUT_WR)`` or ``close``) ends the receive side only:
  posted receives, and every receive posted later, complete with ``IBV_WC_WR_FLUSH_ERR``
  while the QP stays in RTS; SENDs go on and complete as TCP acknowledges them.  If the
  peer closed entirely, the next bytes we send draw a reset, and that fails the QP.
* **A reset** fails the QP — after the bytes the kernel already holds are delivered into
  posted receives.  With none posted and nothing outstanding in the send direction, the
  stream is *held*: it waits (in RTS, unwatched) for receives to take that data.
* **Before any flush**, the kernel is asked once more what it has acknowledged
  (``SIOCOUTQ`` is still right after a reset): a SEND the peer received completes SUCCESS,
  never flushed — an application that resends flushed work must not send twice.
"""

from __future__ import annotations

import errno
import socket
import termios
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ...enums import ibv_wc_status
from ...errors import TcpverbsError, from_oserror
from ...reactor import Timer
from .transport import Transport
from .work import SendWork

if TYPE_CHECKING:
    from .qp import PyQP

__all__ = ["StreamTransport"]

_OK = ibv_wc_status.IBV_WC_SUCCESS
_FLUSH = ibv_wc_status.IBV_WC_WR_FLUSH_ERR
ACK_POLL_FIRST = 0.0002  # seconds
ACK_POLL_MAX = 0.02


class StreamTransport(Transport):
    established = True

    def __init__(self, qp: PyQP, sock: socket.socket) -> None:
        super().__init__(qp, sock)
        self._unacked: deque[SendWork] = deque()
        self._queued = 0  # stream offset just past the last byte queued
        self._ack_timer: Timer | None = None
        self._ack_delay = ACK_POLL_FIRST
        self._checking = False
        self._want_read = bool(qp.rq)
        self._ended = False  # the peer's EOF: the receive side is over

    def start(self) -> None:
        super().start()
        self._pump()

    # -- QP interface ------------------------------------------------------------------
    def send_posted(self) -> None:
        self._pump()

    def recv_posted(self) -> None:
        self._receive()

    def progress(self) -> None:
        self._receive()
        if self._unacked and not self._closed:
            self._check_acked()

    def on_readable(self) -> None:
        self._receive()

    def close(self, reason: TcpverbsError | None) -> None:
        # no goodbye to say, and no draining: bytes the peer sends after the QP failed
        # must draw a reset (its SEND fails), not be acknowledged and dropped here
        super().close(None)

    def outstanding(self) -> Iterable[SendWork]:
        return self._unacked

    def take_unfinished(self) -> list[SendWork]:
        try:  # what TCP acknowledged is done, whatever happens next
            self._complete_acked(self._outq())
        except OSError:
            pass
        unfinished = list(self._unacked)
        self._unacked.clear()
        return unfinished

    def _cancel_timers(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()

    # -- send ------------------------------------------------------------------------------
    def _pump(self) -> None:
        qp = self.qp
        if self._closed or qp.state is not qp.state.IBV_QPS_RTS:
            return
        sq, unacked = qp.sq, self._unacked
        idle = not unacked
        while sq:
            work = sq[0]
            if work.error is not None:
                if unacked:  # earlier WRs complete first
                    break
                sq.popleft()
                status, why = work.error
                qp.complete_send(work, status)
                self._fail(TcpverbsError(errno.EFAULT, why))
                return
            sq.popleft()
            self._tx.extend(work.segments)
            self._queued += work.length
            work.seq = self._queued
            unacked.append(work)
            self.stats["wrs_sent"] += 1
        if idle and unacked:
            self._requester_busy()
        self._flush()  # then _tx_drained starts watching acknowledgements

    def _awaiting_peer(self) -> bool:
        return bool(self._unacked)

    def _tx_drained(self) -> None:
        # EPOLLOUT finished a partial write: acknowledgements must be watched from here on
        if self._unacked and not self._tx and not self._checking:
            self._check_acked()

    def _check_acked(self) -> None:
        self._checking = True
        try:
            self._check_acked_once()
        finally:
            self._checking = False

    def _complete_acked(self, outq: int) -> None:
        acked = self.stats["bytes_sent"] - outq
        unacked, qp = self._unacked, self.qp
        while unacked and unacked[0].seq <= acked:
            qp.complete_send(unacked.popleft(), _OK)
            self._ack_delay = ACK_POLL_FIRST

    def _check_acked_once(self) -> None:
        try:
            outq = self._outq()
        except OSError as exc:
            self._fail(from_oserror(exc, "reading the send queue"), notify_peer=False)
            return
        self._complete_acked(outq)
        unacked, qp = self._unacked, self.qp
        if qp.sq and not unacked:
            self._pump()
        if unacked and (self._ack_timer is None or self._ack_timer.cancelled):
            self._ack_timer = self.reactor.call_later(self._ack_delay, self._on_ack_timer, self)
            self._ack_delay = min(self._ack_delay * 2, ACK_POLL_MAX)

    def _on_ack_timer(self) -> None:
        with self.qp.lock:
            if self._ack_timer is not None:
                self._ack_timer.cancelled = True  # fired; a new one may be armed below
            if not self._closed and self._unacked:
                self._check_acked()

    # -- receive ----------------------------------------------------------------------------
    def _receive(self) -> None:
        qp = self.qp
        rq = qp.rq
        if self._ended:  # nothing more will come: receives end at once
            while rq:
                qp.complete_recv(rq.popleft(), _FLUSH)
            return
        while rq and not self._closed:
            work = rq[0]
            if work.error is not None:
                rq.popleft()
                status, why = work.error
                qp.complete_recv(work, status)
                self._fail(TcpverbsError(errno.EFAULT, why))
                return
            if not work.capacity:  # nothing can land in it: complete empty, in order
                rq.popleft()
                qp.complete_recv(work, _OK, 0)
                continue
            n = self._recv_into(work.segments)
            if not n:
                break  # would block, or the QP failed (then _closed is set)
            rq.popleft()
            self.stats["wrs_received"] += 1
            qp.complete_recv(work, _OK, n)
        if self._closed or self._ended:
            return
        if self._pending_error is not None and not self._readable_bytes():
            self._broken(self._pending_error, "connection failed")  # all of it landed
            return
        self._set_interest(read=bool(rq))

    def _peer_closed(self) -> None:
        """EOF: the peer will send nothing more; our direction goes on (see the module)."""
        self._ended = True
        self._set_interest(read=False)
        self._receive()

    def _hold_after_failure(self) -> bool:
        # data is waiting and nothing of ours is: receives posted later take it
        return not (self._unacked or self.qp.sq or self._tx) and self._readable_bytes() > 0

    def _readable_bytes(self) -> int:
        return self._ioctl_int(termios.FIONREAD, on_error=0)
