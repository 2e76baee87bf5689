"""The ``rc`` transport: framed messages with acknowledgements (design.md §2).

Receive path: bytes are read in bulk into a staging buffer and parsed there; a frame's
payload is copied from staging into the receive WR's memory, or — when the staging buffer
is empty and much payload remains — received with ``recvmsg_into`` straight into the
destination views.  When a SEND arrives and no receive is posted, reading stops (TCP's
window then pushes back on the sender) until ``post_recv``; nothing is dropped.

Send path: a request's header and its payload views are queued together, so a burst of
posted WRs leaves in one ``sendmsg``.  A WR moves to ``_inflight`` when queued and
completes when the peer's cumulative ACK covers it.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from typing import TYPE_CHECKING

from .._work import RecvWork, SendWork
from ..device import MAX_MSG_SZ
from ..enums import ibv_wc_status, ibv_wr_opcode
from ..errors import ConnectionBrokenError, RemoteProtocolError, TcpverbsError
from ..wire.frames import FLAG_SOLICITED, NO_MSN, FrameDecoder, Header, Opcode, encode_header
from ..wire.hello import Hello, HelloDecoder
from ..wire.rc import RcProtocol
from .loop import Timer
from .transport import Transport

if TYPE_CHECKING:
    from ..qp import QP

__all__ = ["HELLO_TIMEOUT", "RcTransport"]

HELLO_TIMEOUT = 10.0  # seconds to wait for the peer's hello
STAGING_SIZE = 256 * 1024
DIRECT_MIN = 16 * 1024  # payload left at least this big goes straight into the MR

W = ibv_wc_status
_OK = W.IBV_WC_SUCCESS
_LOCAL_ERRNO = {W.IBV_WC_LOC_PROT_ERR: errno.EFAULT, W.IBV_WC_LOC_LEN_ERR: errno.EMSGSIZE}


class RcTransport(Transport):
    def __init__(self, qp: QP, sock: socket.socket) -> None:
        super().__init__(qp, sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # we batch ourselves
        self.proto = RcProtocol()
        self.decoder = FrameDecoder(max_payload=MAX_MSG_SZ)
        self._hello = HelloDecoder()
        self.peer: Hello | None = None
        self._hello_timer: Timer | None = None
        self._inflight: deque[SendWork] = deque()
        self._staging = bytearray(STAGING_SIZE)
        self._sv = memoryview(self._staging)
        self._rx_start = self._rx_end = 0
        self._pending: Header | None = None  # a SEND waiting for a posted receive
        self._target: deque[memoryview] = deque()  # where the current payload lands
        self._target_work: RecvWork | None = None
        self._target_header: Header | None = None

    # -- set-up ---------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        qp = self.qp
        hello = Hello(
            qp.qp_num,
            qp.cap.max_send_wr,
            qp.cap.max_recv_wr,
            MAX_MSG_SZ,
            qp._attr.max_rd_atomic,
            qp._attr.max_dest_rd_atomic,
        )
        self._tx.append(hello.encode())
        self._hello_timer = self.engine.call_later(HELLO_TIMEOUT, self._hello_timeout)
        self._flush()

    def _hello_timeout(self) -> None:
        with self.qp._lock:
            if not self.established and not self._closed:
                self._fail(
                    TcpverbsError(
                        errno.ETIMEDOUT,
                        f"no tcpverbs hello from the peer "
                        f"within {HELLO_TIMEOUT:g} s (is it a tcpverbs rc endpoint?)",
                    ),
                    setup=True,
                )

    def _on_hello(self, hello: Hello) -> None:
        local = Hello(self.qp.qp_num, 0, 0, 0)
        local.check_peer(hello)  # raises RemoteProtocolError
        self.peer = hello
        self.established = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self._pump()

    def _cancel_timers(self) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()

    # -- QP interface ------------------------------------------------------------------
    def send_posted(self) -> None:
        self._pump()

    def recv_posted(self) -> None:
        if self._pending is not None:
            self._process()

    def progress(self) -> None:
        self._process()

    def on_readable(self) -> None:
        self._process()

    def take_unfinished(self) -> list[SendWork]:
        unfinished = list(self._inflight)
        self._inflight.clear()
        return unfinished

    # -- send side ------------------------------------------------------------------------
    def _pump(self) -> None:
        """Queue posted WRs as frames (in order) and write them."""
        if not self.established or self._closed:
            return
        qp = self.qp
        if qp._state not in (qp._state.IBV_QPS_RTS,):
            self._flush()
            return
        sq, tx, inflight, proto = qp._sq, self._tx, self._inflight, self.proto
        while sq:
            work = sq[0]
            if work.error is not None:
                if inflight:  # earlier WRs complete first, as on hardware
                    break
                sq.popleft()
                status, why = work.error
                qp._complete_send(work, status)
                self._fail(TcpverbsError(_LOCAL_ERRNO.get(W(status), errno.EIO), why))
                return
            sq.popleft()
            work.seq = proto.next_request()
            imm = work.opcode == ibv_wr_opcode.IBV_WR_SEND_WITH_IMM
            header = Header(
                Opcode.SEND_IMM if imm else Opcode.SEND,
                FLAG_SOLICITED if work.solicited else 0,
                work.length,
                imm=work.imm,
            )
            tx.append(encode_header(header))
            tx.extend(work.segments)
            inflight.append(work)
            self.stats["wrs_sent"] += 1
        self._flush()

    # -- receive side -----------------------------------------------------------------
    def _process(self) -> None:
        """Read and handle everything available; then send the ACK owed (once)."""
        try:
            self._receive_loop()
        except RemoteProtocolError as exc:
            self._fail(exc, setup=not self.established)
            return
        if self._closed:
            return
        ack = self.proto.take_ack()
        if ack is not None:
            self._tx.append(ack)
            self._flush()

    def _receive_loop(self) -> None:
        if self._pending is not None:
            if not self.qp._rq:
                return
            self._start_receive(self._pending)  # a receive is there now: resume
        while not self._closed:
            if self._rx_start == self._rx_end:
                self._rx_start = self._rx_end = 0
                if self._pending is not None:
                    return
                if self._target_work is not None and self.decoder.payload_remaining >= DIRECT_MIN:
                    if not self._recv_direct():
                        return
                    continue
                if not self._recv_staging():
                    return
            used = self._consume(self._sv[self._rx_start : self._rx_end])
            self._rx_start += used
            if self._pending is not None or self._closed:
                return
            if self._rx_end == len(self._staging) and self._rx_start:  # keep a partial header
                rest = self._rx_end - self._rx_start
                self._sv[:rest] = self._sv[self._rx_start : self._rx_end]
                self._rx_start, self._rx_end = 0, rest

    def _recv_staging(self) -> bool:
        n = self._recv(lambda: self.sock.recv_into(self._sv[self._rx_end :]))
        self._rx_end += n
        return n > 0

    def _recv_direct(self) -> bool:
        """Receive payload straight into the destination views (no staging copy)."""
        need = self.decoder.payload_remaining
        views = []
        for view in self._target:
            if need <= 0:
                break
            part = view if len(view) <= need else view[:need]
            views.append(part)
            need -= len(part)
        n = self._recv_into(views)
        if n:
            self._advance_target(n)
        return n > 0

    def _peer_closed(self) -> None:
        if not self.established:
            exc = self._closed_by_peer("during the hello (is it a tcpverbs rc endpoint?)")
            self._fail(exc, setup=True, notify_peer=False)
        elif self.decoder.at_boundary:
            self._fail(self._closed_by_peer("(end of stream)"), notify_peer=False)
        else:
            self._fail(self._closed_by_peer("in the middle of a frame"), notify_peer=False)

    def _consume(self, data: memoryview) -> int:
        """Handle frames in *data*; return the bytes used (stops at a pending SEND)."""
        pos, end = 0, len(data)
        decoder = self.decoder
        while pos < end and not self._closed:
            if not self.established:
                hello, used = self._hello.receive(data[pos:])
                pos += used
                if hello is not None:
                    self._on_hello(hello)
                continue
            if self._pending is not None:  # a SEND waits for post_recv: stop here
                break
            remaining = decoder.payload_remaining
            if remaining:
                chunk = data[pos : pos + min(remaining, end - pos)]
                self._place(chunk)
                pos += len(chunk)
                continue
            header, used = decoder.receive(data[pos:])
            pos += used
            if header is not None:
                self._on_header(header)
        return pos

    def _on_header(self, h: Header) -> None:
        op = h.opcode
        if op is Opcode.SEND or op is Opcode.SEND_IMM:
            self._start_receive(h)
        elif op is Opcode.ACK:
            self._on_ack(h.msn)
        elif op is Opcode.TERMINATE:
            self._on_terminate(h)
        else:
            raise RemoteProtocolError(f"{op.name} frames are not supported by this tcpverbs")

    def _on_ack(self, msn: int) -> None:
        done = self.proto.on_ack(msn)
        inflight, qp = self._inflight, self.qp
        for _ in range(done):
            qp._complete_send(inflight.popleft(), _OK)
        if qp._sq:
            self._pump()

    def _on_terminate(self, h: Header) -> None:
        reason = h.reason.decode("utf-8", "replace")
        if h.msn != NO_MSN:
            for work in self._inflight:
                if work.seq == h.msn:
                    self._inflight.remove(work)
                    try:
                        status = W(h.status)
                    except ValueError:
                        status = W.IBV_WC_REM_OP_ERR
                    self.qp._complete_send(work, status)
                    break
        self._fail(
            ConnectionBrokenError(errno.ECONNABORTED, f"peer QP went to error: {reason}"),
            notify_peer=False,
        )

    def _start_receive(self, h: Header) -> None:
        qp = self.qp
        if not qp._rq:
            self._pending = h  # back-pressure until post_recv
            self._set_interest(read=False)
            return
        if self._pending is not None:
            self._pending = None
            self._set_interest(read=True)
        work = qp._rq.popleft()
        msn = (self.proto.received + 1) & 0xFFFFFFFF
        if work.error is not None:
            status, why = work.error
            qp._complete_recv(work, status)
            self._terminate(
                msn,
                W.IBV_WC_REM_OP_ERR,
                f"receive WR at the peer failed: {why}",
                TcpverbsError(errno.EFAULT, why),
            )
            return
        if h.payload_len > work.capacity:
            why = (
                f"message of {h.payload_len} bytes does not fit the posted receive "
                f"of {work.capacity} bytes"
            )
            qp._complete_recv(work, W.IBV_WC_LOC_LEN_ERR)
            self._terminate(msn, W.IBV_WC_REM_INV_REQ_ERR, why, TcpverbsError(errno.EMSGSIZE, why))
            return
        self._target.clear()
        self._target.extend(work.segments)
        self._target_work = work
        self._target_header = h
        if h.payload_len == 0:
            self._finish_receive()

    def _place(self, chunk: memoryview) -> None:
        """Copy payload bytes that arrived in the staging buffer to their destination."""
        target, off, n = self._target, 0, len(chunk)
        while off < n:
            view = target[0]
            k = min(len(view), n - off)
            view[:k] = chunk[off : off + k]
            off += k
            if k == len(view):
                target.popleft()
            else:
                target[0] = view[k:]
        self.decoder.payload_consumed(n)
        if not self.decoder.payload_remaining:
            self._finish_receive()

    def _advance_target(self, n: int) -> None:
        """*n* payload bytes were received in place; move past them."""
        target = self._target
        self.decoder.payload_consumed(n)
        while n:
            size = len(target[0])
            if n >= size:
                target.popleft()
                n -= size
            else:
                target[0] = target[0][n:]
                n = 0
        if not self.decoder.payload_remaining:
            self._finish_receive()

    def _finish_receive(self) -> None:
        work, h = self._target_work, self._target_header
        assert work is not None and h is not None
        self._target_work = self._target_header = None
        self._target.clear()
        self.proto.request_done()
        self.stats["wrs_received"] += 1
        self.qp._complete_recv(
            work,
            _OK,
            h.payload_len,
            h.imm if h.opcode is Opcode.SEND_IMM else None,
            bool(h.flags & FLAG_SOLICITED),
        )

    # -- errors -------------------------------------------------------------------------------
    def _terminate(self, msn: int, status: int, why: str, exc: TcpverbsError) -> None:
        """A request of the peer failed here: tell it which and why, then go to ERR."""
        self._goodbye = (msn, status, why)
        self._fail(exc)

    _goodbye: tuple[int, int, str] | None = None

    def _say_goodbye(self, reason: TcpverbsError) -> None:
        if not self.established:
            return
        msn, status, why = self._goodbye or (NO_MSN, W.IBV_WC_REM_ABORT_ERR, reason.strerror or "")
        ack = self.proto.take_ack()  # what we did carry out still counts
        if ack is not None:
            self._tx.append(ack)
        self._tx.append(
            encode_header(
                Header(Opcode.TERMINATE, msn=msn, status=status, reason=why.encode()[:1024])
            )
        )
        try:
            self.sock.sendmsg(list(self._tx)[:64], (), socket.MSG_NOSIGNAL)
        except OSError:
            pass
        self._tx.clear()
