"""The ``rc`` transport: Reliable Connection semantics between two tcpverbs QPs.

Requester: posted WRs become frames (header + payload views) queued together, so a burst
leaves in one ``sendmsg``.  A WR enters the in-flight window (``wire.rc.Requester``)
when queued.  SEND and WRITE
complete when the peer's cumulative ACK covers them; READ and atomics complete when
their response has been placed (a response also acknowledges every earlier request).
At most ``min(max_rd_atomic, peer's max_dest_rd_atomic)`` READs/atomics are in flight;
``IBV_SEND_FENCE`` waits for earlier ones.

Responder: frames are read in bulk into a staging buffer and parsed there.  Payload is
copied from staging into its destination (a receive WR's buffers or, for a WRITE, the
target MR), or — when staging is empty and much payload remains — received with
``recvmsg_into`` straight into the destination.  One-sided requests are carried out here,
in the engine, without the target application.  A SEND or WRITE_IMM that finds no
receive posted gets an RNR NAK (see :mod:`tcpverbs.wire.rc`); reading never stops.

Errors at the responder travel back in a TERMINATE frame naming the failed request and
the status its requester reports; both QPs go to ERR.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ...device import MAX_MSG_SZ
from ...enums import ibv_access_flags, ibv_wc_opcode, ibv_wc_status, ibv_wr_opcode
from ...errors import ConnectionBrokenError, RemoteProtocolError, TcpverbsError
from ...reactor import Timer
from ...wire.frames import (
    BASE,
    FLAG_SOLICITED,
    MAX_REASON,
    NO_MSN,
    REQUESTS,
    FrameDecoder,
    Header,
    Opcode,
    encode_header,
    whole_send,
)
from ...wire.hello import Hello, HelloDecoder
from ...wire.rc import (
    RESPONDER_FAULTS,
    RcProtocol,
    Requester,
    ResponderFault,
    RnrRetry,
    terminate_status,
)
from ..api import LIMITS
from .transport import Transport
from .work import RecvWork, SendWork
from .zerocopy import ZeroCopy, zerocopy_threshold

if TYPE_CHECKING:
    from .memory import Region
    from .qp import PyQP

__all__ = ["RcTransport"]

STAGING_SIZE = 256 * 1024
DIRECT_MIN = 16 * 1024  # payload left at least this big goes straight to its destination
# Work one call may do on one connection — a CQ.poll, or a turn of the progress thread —
# before it moves on: frames handled, with each read counting READ_COST.  So no peer,
# however fast it sends, holds the application or the other connections (about 10 ms of
# tiny frames; up to 16 reads of payload straight into memory).
WORK_PER_CALL = 512
READ_COST = 32

W = ibv_wc_status
WR = ibv_wr_opcode
A = ibv_access_flags
_OK = W.IBV_WC_SUCCESS
_LOCAL_ERRNO = {W.IBV_WC_LOC_PROT_ERR: errno.EFAULT, W.IBV_WC_LOC_LEN_ERR: errno.EMSGSIZE}
_SEND_HEADER = BASE  # a SEND's header is the bare base header
_REQUEST_OPCODE: dict[int, Opcode] = {
    WR.IBV_WR_SEND: Opcode.SEND,
    WR.IBV_WR_SEND_WITH_IMM: Opcode.SEND_IMM,
    WR.IBV_WR_RDMA_WRITE: Opcode.WRITE,
    WR.IBV_WR_RDMA_WRITE_WITH_IMM: Opcode.WRITE_IMM,
    WR.IBV_WR_RDMA_READ: Opcode.READ_REQ,
    WR.IBV_WR_ATOMIC_CMP_AND_SWP: Opcode.ATOMIC_CMP_SWP,
    WR.IBV_WR_ATOMIC_FETCH_AND_ADD: Opcode.ATOMIC_FETCH_ADD,
}
_MASK64 = (1 << 64) - 1

# Atomics are atomic with respect to each other through every QP of the process, as an
# HCA's atomics are with respect to each other (not to the CPU's plain loads and stores).
_ATOMIC_LOCK = threading.Lock()


class _Refused(Exception):
    """A peer request the responder does not carry out (see ``wire.rc.RESPONDER_FAULTS``)."""

    def __init__(self, fault: ResponderFault, why: str) -> None:
        super().__init__(why)
        self.fault = fault
        self.why = why


class RcTransport(Transport):
    def __init__(
        self,
        qp: PyQP,
        sock: socket.socket,
        peer_hello: Hello | None = None,
        hello_timeout: float | None = None,
    ) -> None:
        super().__init__(qp, sock)
        self._early_hello = peer_hello
        # a dialled peer answers only once its QP reaches RTR: wait as long as it would
        self._hello_timeout = LIMITS.hello_timeout if hello_timeout is None else hello_timeout
        self._tx_backlog = LIMITS.tx_backlog  # unwritten answers before we stop reading
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # we batch ourselves
        self.proto = RcProtocol()
        self.decoder = FrameDecoder(max_payload=MAX_MSG_SZ)
        self._hello = HelloDecoder()
        self.peer: Hello | None = None
        self._hello_timer: Timer | None = None
        # requester
        self.window: Requester[SendWork] = Requester(self.proto)
        # completions waiting for zerocopy notifications: (work, status, calls to wait for)
        self._held: deque[tuple[SendWork, int, int]] = deque()
        self._rnr_timer: Timer | None = None
        # responder / receive side
        self._staging = bytearray(STAGING_SIZE)
        self._sv = memoryview(self._staging)
        self._rx_start = self._rx_end = 0
        self._target: deque[memoryview] = deque()  # where the current payload lands
        self._target_mr: Region | None = None  # a WRITE's target, re-checked while placing
        self._on_placed: tuple[Header, RecvWork | SendWork | None] | None = None
        self._discard = False  # current payload is thrown away
        self._read_paused = False  # stopped reading until our answers drain
        self._answer_ends: deque[int] = deque()  # stream positions just past queued answers
        self._goodbye: tuple[int, int, str] | None = None
        self._budget = 0  # work left in this call (see WORK_PER_CALL)
        self._resume_timer: Timer | None = None  # goes on where a call's budget ran out
        for key in ("rnr_naks_sent", "rnr_naks_received", "remote_ops"):
            self.stats.setdefault(key, 0)

    # -- set-up ---------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        qp = self.qp
        self._zerocopy = ZeroCopy.enable(
            self.sock, zerocopy_threshold(qp.engine.zerocopy_min, self.sock)
        )
        hello = Hello(
            qp.qp_num,
            qp.caps.max_send_wr,
            qp.caps.max_recv_wr,
            MAX_MSG_SZ,
            qp.params.max_rd_atomic,
            qp.params.max_dest_rd_atomic,
            dest_qp_num=qp.params.dest_qp_num,
            psn=qp.params.rq_psn,
        )
        self._tx.append(hello.encode())
        if qp.state is qp.state.IBV_QPS_RTS:
            self._tx.append(self._auth())
        self._hello_timer = self.reactor.call_later(self._hello_timeout, self._hello_expired, self)
        self._flush()
        if self._early_hello is not None:  # read by the connection listener already
            try:
                self._on_hello(self._early_hello)
            except RemoteProtocolError as exc:
                self._fail(exc, setup=True)

    def entered_rts(self) -> None:
        self._tx.append(self._auth())  # written with what send_posted writes next

    def _auth(self) -> bytes:
        """Our sq_psn: the second proof a listening peer may check (oob.service)."""
        self.stats["frames_sent"] += 1
        return encode_header(Header(Opcode.AUTH, psn=self.qp.params.sq_psn))

    def _hello_expired(self) -> None:
        with self.qp.lock:
            if not self.established and not self._closed:
                self._fail(
                    TcpverbsError(
                        errno.ETIMEDOUT,
                        f"no tcpverbs hello from the peer within {self._hello_timeout:g} s "
                        "(is it a tcpverbs rc endpoint?)",
                    ),
                    setup=True,
                )

    def _on_hello(self, hello: Hello) -> None:
        Hello(self.qp.qp_num, 0, 0, 0).check_peer(hello)  # raises RemoteProtocolError
        self.peer = hello
        self.established = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self._pump()

    def _cancel_timers(self) -> None:
        for timer in (self._hello_timer, self._rnr_timer, self._resume_timer):
            if timer is not None:
                timer.cancel()

    # -- QP interface ------------------------------------------------------------------
    def send_posted(self) -> None:
        self._pump()

    def recv_posted(self) -> None:
        """Nothing to resume: a refused SEND comes back after the RNR timer."""

    def send_deferred_ack(self) -> None:
        if self._closed:
            return
        self._queue_ack()
        if self._tx:
            self._flush()

    def progress(self) -> None:
        zc = self._zerocopy
        if zc is not None and zc.outstanding:  # reap here rather than wake the engine
            self._reap_zerocopy()
        self._process(app=True)

    def on_readable(self) -> None:
        self._process()

    def outstanding(self) -> Iterable[SendWork]:
        return self.window.inflight

    def placing(self) -> RecvWork | None:
        placed = self._on_placed
        return placed[1] if placed is not None and isinstance(placed[1], RecvWork) else None

    def take_unfinished(self) -> list[SendWork]:
        # completions held for zerocopy come out first: they are earlier, and successful
        # (the socket is going away, the kernel lets go of the pages with it)
        held, self._held = self._held, deque()
        for work, status, _ in held:
            self.qp.complete_send(work, status)
        unfinished = list(self.window.inflight)
        self.window.inflight.clear()
        return unfinished

    # -- completions and zerocopy -------------------------------------------------------
    def _complete(self, work: SendWork, status: int) -> None:
        """Complete a send WR, in order, once no zerocopy write may still read its buffer.

        Conservative: a completion waits for every zerocopy call made before it, not only
        the ones that carried its bytes (which the segment queue does not remember).
        """
        zc = self._zerocopy
        if self._held or (zc is not None and zc.outstanding):
            self._held.append((work, status, zc.issued if zc is not None else 0))
            return
        self.qp.complete_send(work, status)

    def _zerocopy_released(self) -> None:
        zc, held = self._zerocopy, self._held
        assert zc is not None
        while held and held[0][2] <= zc.done:
            work, status, _ = held.popleft()
            self.qp.complete_send(work, status)

    # -- requester ------------------------------------------------------------------------
    @property
    def _rd_limit(self) -> int:
        peer_limit = self.peer.max_dest_rd_atomic if self.peer is not None else 1
        return max(1, min(self.qp.params.max_rd_atomic, peer_limit or 1))

    def _pump(self) -> None:
        """Queue posted WRs as frames (in order) and write them."""
        if not self.established or self._closed or self._rnr_timer is not None:
            self._flush()
            return
        qp = self.qp
        if qp.state is not qp.state.IBV_QPS_RTS:
            self._flush()
            return
        sq, tx, window = qp.sq, self._tx, self.window
        rd_limit = self._rd_limit
        idle = not window.inflight
        if sq:
            self._queue_ack()  # a deferred ACK rides along (see _process)
        while sq:
            work = sq[0]
            if work.error is not None:
                if window.inflight:  # earlier WRs complete first, as on hardware
                    break
                sq.popleft()
                status, why = work.error
                self._complete(work, status)
                self._fail(TcpverbsError(_LOCAL_ERRNO.get(W(status), errno.EIO), why))
                return
            if not window.may_issue(work, rd_limit):
                break
            sq.popleft()
            window.issue(work)
            tx.append(self._request_header(work))
            if not work.needs_response:
                tx.extend(work.segments)  # READ and atomic segments receive the answer
            self.stats["wrs_sent"] += 1
            self.stats["frames_sent"] += 1
        if idle and window.inflight:
            self._requester_busy()
        self._flush()

    def _awaiting_peer(self) -> bool:
        return bool(self.window.inflight) and self._rnr_timer is None

    @staticmethod
    def _request_header(work: SendWork) -> bytes:
        op = _REQUEST_OPCODE[work.opcode]  # int keys: no enum construction per WR
        flags = FLAG_SOLICITED if work.solicited else 0
        if op is Opcode.SEND:  # the hot path: one precompiled pack, no Header object
            return _SEND_HEADER.pack(op, flags, 0, work.length)
        if op is Opcode.READ_REQ:
            header = Header(op, flags, rkey=work.rkey, addr=work.remote_addr, length=work.length)
        elif op is Opcode.ATOMIC_CMP_SWP or op is Opcode.ATOMIC_FETCH_ADD:
            header = Header(
                op,
                flags,
                rkey=work.rkey,
                addr=work.remote_addr,
                compare_add=work.compare_add,
                swap=work.swap,
            )
        else:
            header = Header(
                op, flags, work.length, imm=work.imm, rkey=work.rkey, addr=work.remote_addr
            )
        return encode_header(header)

    def _completed(self, done: list[SendWork]) -> None:
        for work in done:
            self._complete(work, _OK)

    def _on_response_done(self, work: SendWork) -> None:
        self.window.response_done(work)
        self._complete(work, _OK)
        self._pump()

    def _on_read_response(self, h: Header) -> None:
        done, work = self.window.on_read_response(h.msn, h.payload_len)
        self._completed(done)
        self._expect_payload(h, work, work.segments)  # type: ignore[arg-type]

    def _on_atomic_response(self, h: Header) -> None:
        done, work = self.window.on_atomic_response(h.msn)
        self._completed(done)
        (view,) = work.segments
        view[:8] = h.compare_add.to_bytes(8, sys.byteorder)  # type: ignore[index]
        self._on_response_done(work)

    def _on_rnr_nak(self, h: Header) -> None:
        done, outcome = self.window.on_rnr_nak(h.msn, h.timer, self.qp.params.rnr_retry)
        self._completed(done)
        self.stats["rnr_naks_received"] += 1
        if not isinstance(outcome, RnrRetry):  # the refused request used up its tries
            self._complete(outcome, W.IBV_WC_RNR_RETRY_EXC_ERR)
            self._fail(
                TcpverbsError(
                    errno.ETIMEDOUT,
                    f"peer had no receive posted for request {h.msn} after "
                    f"{self.qp.params.rnr_retry} retries (rnr_retry)",
                )
            )
            return
        # go back N: everything from the refused request on is sent again, in order
        self.qp.sq.extendleft(reversed(outcome.resend))
        resync = outcome.resync_msn
        self._rnr_timer = self.reactor.call_later(
            outcome.delay, lambda: self._rnr_resume(resync), self
        )

    def _rnr_resume(self, msn: int) -> None:
        with self.qp.lock:
            self._rnr_timer = None
            if self._closed:
                return
            self._tx.append(encode_header(Header(Opcode.RESYNC, msn=msn)))
            self.stats["frames_sent"] += 1
            self._pump()

    # -- receive side -------------------------------------------------------------------
    def _process(self, app: bool = False) -> None:
        """Read and handle everything available; then send the ACK owed (once).

        With *app* (a spinning application's ``CQ.poll``) an ACK for what was just read
        waits: the application often answers at once (a ping-pong reply), and the ACK
        then rides in the same ``sendmsg`` as that request (see :meth:`_pump`).  It waits
        one poll at most — the next poll sends it whatever it reads, so a one-way stream
        is acknowledged every other read, never starved — or until the next post, or, if
        the application stops polling, the parked-reads check (``Transport._park_reads``).
        The next empty poll of *any* CQ sends it too (:meth:`PyEngine.send_deferred_acks`):
        an application that waits on another QP next is not about to answer on this one.
        """
        owed_before = self.proto.ack_owed
        self._budget = WORK_PER_CALL
        try:
            got = self._receive_loop()
        except RemoteProtocolError as exc:
            self._goodbye = (NO_MSN, W.IBV_WC_REM_OP_ERR, f"protocol error: {exc.strerror}")
            self._fail(exc, setup=not self.established)
            return
        if self._closed:
            return
        if not (app and got and self._reads_parked and not owed_before):
            self._queue_ack()
        elif self.proto.ack_owed:  # until the application's next move
            self.qp.engine.deferred_acks.add(self.qp)
        if self._tx:
            self._flush()
        if self._budget <= 0 and not self._closed and self._resume_timer is None:
            # more may be waiting (in staging, where epoll cannot see it): the progress
            # thread goes on with it after a turn for everything else
            self._resume_timer = self.reactor.call_later(0, self._resume, self)

    def _resume(self) -> None:
        with self.qp.lock:
            self._resume_timer = None
            if not self._closed:
                self._process()

    def _queue_ack(self) -> None:
        self.qp.engine.deferred_acks.discard(self.qp)
        ack = self.proto.take_ack()
        if ack is not None:
            self._answer(ack)

    def _receive_loop(self) -> bool:
        """Read until the socket is drained; True if anything arrived."""
        got = False
        while not self._closed and self._budget > 0:
            if self._rx_start == self._rx_end:
                self._rx_start = self._rx_end = 0
                if self._answers_queued() > self._tx_backlog:  # a peer that does not read them
                    self._read_paused = True
                    self._set_interest(read=False)
                    return got
                if self._target and self.decoder.payload_remaining >= DIRECT_MIN:
                    drained = self._recv_direct()
                else:
                    drained = self._recv_staging()
                if drained is None:
                    return got
                got = True
                self._budget -= READ_COST
            else:
                drained = False
            used = self._consume(self._sv[self._rx_start : self._rx_end])
            self._rx_start += used
            if self._rx_end == len(self._staging) and self._rx_start:  # keep a partial header
                rest = self._rx_end - self._rx_start
                self._sv[:rest] = self._sv[self._rx_start : self._rx_end]
                self._rx_start, self._rx_end = 0, rest
            if drained and self._rx_start == self._rx_end:
                # a short read emptied the socket: asking again would only say EAGAIN (one
                # wasted system call per poll); epoll or the next poll sees what comes next
                return got
        return got

    def _answer(self, *segments: bytes | memoryview, frames: int = 1) -> None:
        """Queue frames we owe the peer for its requests (ACKs, responses, NAKs).

        Only these count towards the read pause: our own requests must never stop us
        reading, since reading is what lets them complete.
        """
        self._tx.extend(segments)
        self._answer_ends.append(self._tx_base + len(self._tx))
        self.stats["frames_sent"] += frames

    def _answers_queued(self) -> int:
        ends, base = self._answer_ends, self._tx_base
        while ends and ends[0] <= base:
            ends.popleft()
        return len(ends)

    def _tx_drained(self) -> None:
        if self._read_paused and self._answers_queued() < self._tx_backlog // 2:
            self._read_paused = False
            self._set_interest(read=True)

    def _recv_staging(self) -> bool | None:
        """One read into staging: None if nothing came, else whether it drained the
        socket (it returned less than there was room for)."""
        room = len(self._staging) - self._rx_end
        n = self._recv(lambda: self.sock.recv_into(self._sv[self._rx_end :]))
        if not n:
            return None
        self._rx_end += n
        return n < room

    def _recv_direct(self) -> bool | None:
        """Receive payload straight into the destination views (no staging copy); the
        result means what :meth:`_recv_staging`'s does."""
        need = want = self.decoder.payload_remaining
        views = []
        for view in self._target:
            if need <= 0:
                break
            part = view if len(view) <= need else view[:need]
            views.append(part)
            need -= len(part)
        if not self._target_still_valid():
            return False  # the target went away: go round again (payload is discarded)
        n = self._recv_into(views)
        if not n:
            return None
        self._advance(n)
        return n < want - need

    def _peer_closed(self) -> None:
        where = self._where() or "(end of stream)"
        self._fail(self._closed_by_peer(where), setup=not self.established, notify_peer=False)

    def _where(self) -> str:
        if self.established and not self.decoder.at_boundary:
            return "in the middle of a frame"
        return super()._where()

    def _consume(self, data: memoryview) -> int:
        """Handle the frames in *data*; return the bytes used."""
        pos, end = 0, len(data)
        decoder = self.decoder
        budget = self._budget  # (a local: this loop runs once per frame)
        while pos < end and budget > 0 and not self._closed:
            budget -= 1
            if not self.established:
                hello, used = self._hello.receive(data[pos:])
                pos += used
                if hello is not None:
                    self._on_hello(hello)
                continue
            remaining = decoder.payload_remaining
            if remaining:
                chunk = data[pos : pos + min(remaining, end - pos)]
                self._place(chunk)
                pos += len(chunk)
                continue
            if decoder.at_boundary:  # many small SENDs: each one, whole, in one step
                frame = whole_send(data, pos, decoder.max_payload)
                if frame is not None:
                    size, n, flags, imm = frame
                    start = pos + size
                    if self._receive_whole(data[start : start + n], flags, imm):
                        pos = start + n
                        continue
            header, used = decoder.receive(data[pos:])
            pos += used
            if header is not None:
                self._on_header(header)
        self._budget = budget
        return pos

    def _receive_whole(self, payload: memoryview, flags: int, imm: int | None) -> bool:
        """A whole SEND (*imm*: SEND_IMM's immediate) that is in staging and fits the
        first buffer of the next receive: placed and completed at once.  False (nothing
        done) for anything else — no receive, an error, a scattered or too small buffer,
        an RNR resync — which the frame-by-frame path then handles."""
        if self.proto.discarding:
            return False
        qp = self.qp
        work = qp.next_receive()
        if work is None:
            return False
        n = len(payload)
        if work.error is not None or not work.segments or len(work.segments[0]) < n:
            return False
        work.segments[0][:n] = payload
        self.proto.request_done()
        qp.rq.popleft()
        stats = self.stats
        stats["frames_received"] += 1
        stats["wrs_received"] += 1
        self.qp.complete_recv(work, _OK, n, imm, bool(flags & FLAG_SOLICITED))
        return True

    def _on_header(self, h: Header) -> None:
        op = h.opcode
        self.stats["frames_received"] += 1
        if op in REQUESTS:
            if self.proto.discarding:
                self._expect_payload(h, None, None)  # dropped until the RESYNC
                return
            try:
                self._execute(h)
            except _Refused as exc:
                self._terminate(h, exc.fault, exc.why)
        elif op is Opcode.ACK:
            self._completed(self.window.on_ack(h.msn))
            if self.qp.sq:
                self._pump()
        elif op is Opcode.READ_RESP:
            self._on_read_response(h)
        elif op is Opcode.ATOMIC_RESP:
            self._on_atomic_response(h)
        elif op is Opcode.RNR_NAK:
            self._on_rnr_nak(h)
        elif op is Opcode.RESYNC:
            self.proto.on_resync(h.msn)
        elif op is Opcode.AUTH:
            pass  # for the peer's connection service; checked there, if at all
        else:  # TERMINATE
            self._on_terminate(h)

    def _on_terminate(self, h: Header) -> None:
        reason = h.reason.decode("utf-8", "replace")
        if h.msn != NO_MSN:
            work = self.window.on_terminate(h.msn)
            if work is not None:
                self._complete(work, terminate_status(h.status))
        self._fail(
            ConnectionBrokenError(errno.ECONNABORTED, f"peer QP went to error: {reason}"),
            notify_peer=False,
        )

    # -- responder: carrying out the peer's requests --------------------------------------
    def _execute(self, h: Header) -> None:
        op = h.opcode
        if op is Opcode.SEND or op is Opcode.SEND_IMM:
            work = self._take_receive(h)
            if work is None:
                return
            if h.payload_len > work.capacity:
                why = (
                    f"message of {h.payload_len} bytes does not fit the posted receive "
                    f"of {work.capacity} bytes"
                )
                self.qp.rq.popleft()
                self.qp.complete_recv(work, W.IBV_WC_LOC_LEN_ERR)
                self._terminate(h, ResponderFault.RECV_TOO_SMALL, why)
                return
            self._expect_payload(h, work, work.segments)
        elif op is Opcode.WRITE or op is Opcode.WRITE_IMM:
            view, mr = self._remote(h.rkey, h.addr, h.payload_len, A.IBV_ACCESS_REMOTE_WRITE)
            work = self._take_receive(h) if op is Opcode.WRITE_IMM else None
            if op is Opcode.WRITE_IMM and work is None:
                return
            self._target_mr = mr
            self._expect_payload(h, work, [view] if h.payload_len else [])
        elif op is Opcode.READ_REQ:
            view, _ = self._remote(h.rkey, h.addr, h.length, A.IBV_ACCESS_REMOTE_READ)
            msn = self.proto.request_done()
            header = encode_header(Header(Opcode.READ_RESP, msn=msn, payload_len=h.length))
            # the kernel reads the target memory straight from the MR: no copy here
            if h.length:
                self._answer(header, view)
            else:
                self._answer(header)  # no empty segment: _flush could never pop it
            self.stats["remote_ops"] += 1
        else:
            old = self._atomic(h)
            msn = self.proto.request_done()
            self._answer(encode_header(Header(Opcode.ATOMIC_RESP, msn=msn, compare_add=old)))
            self.stats["remote_ops"] += 1

    def _remote(
        self, rkey: int, addr: int, length: int, need: ibv_access_flags
    ) -> tuple[memoryview, Region | None]:
        """The target memory of a one-sided request, or a REM_ACCESS_ERR."""
        if length == 0:
            return memoryview(b""), None  # zero-length transfers touch no memory
        qp = self.qp
        region = qp.engine.memory.get(rkey)
        if region is None or not region.valid or region.pd != qp.pd:
            raise _Refused(
                ResponderFault.BAD_RKEY, f"rkey 0x{rkey:08x} is not a valid MR of the target QP"
            )
        if not region.access & need:
            raise _Refused(
                ResponderFault.MR_ACCESS,
                f"target MR 0x{rkey:08x} was registered without {need.name}",
            )
        if not qp.params.access_flags & need:
            raise _Refused(
                ResponderFault.QP_ACCESS, f"target QP's qp_access_flags do not allow {need.name}"
            )
        view = region.slice(addr, length)
        if view is None:
            raise _Refused(
                ResponderFault.OUT_OF_RANGE,
                f"[0x{addr:x}, +{length}) is outside target MR "
                f"[0x{region.addr:x}, +{region.length})",
            )
        return view, region

    def _atomic(self, h: Header) -> int:
        if h.addr % 8:
            raise _Refused(
                ResponderFault.MISALIGNED, f"atomic target 0x{h.addr:x} is not 8-byte aligned"
            )
        view, _ = self._remote(h.rkey, h.addr, 8, A.IBV_ACCESS_REMOTE_ATOMIC)
        order = sys.byteorder
        with _ATOMIC_LOCK:
            old = int.from_bytes(view, order)
            if h.opcode is Opcode.ATOMIC_FETCH_ADD:
                view[:] = ((old + h.compare_add) & _MASK64).to_bytes(8, order)
            elif old == h.compare_add:
                view[:] = h.swap.to_bytes(8, order)
        return old

    def _take_receive(self, h: Header) -> RecvWork | None:
        """The receive WR a SEND / WRITE_IMM consumes; None after refusing (RNR or error)."""
        qp = self.qp
        if qp.next_receive() is None:
            ack = self.proto.refuse()
            nak = encode_header(
                Header(Opcode.RNR_NAK, msn=self.proto.next_msn, timer=qp.params.min_rnr_timer)
            )
            if ack:
                self._answer(ack, nak, frames=2)
            else:
                self._answer(nak)
            self.stats["rnr_naks_sent"] += 1
            self._expect_payload(h, None, None)  # drop it; the requester will send it again
            return None
        work = qp.rq[0]  # stays queued until placed: an error meanwhile flushes it
        if work.error is not None:
            qp.rq.popleft()
            status, why = work.error
            qp.complete_recv(work, status)
            self._terminate(h, ResponderFault.RECV_BROKEN, f"receive WR at the peer failed: {why}")
            return None
        return work

    # -- payload placement ---------------------------------------------------------------
    def _expect_payload(
        self, h: Header, owner: RecvWork | SendWork | None, views: list[memoryview] | None
    ) -> None:
        """The payload of *h* goes to *views* (None: discard it); then it is finished."""
        self._target.clear()
        self._discard = views is None
        if views:
            self._target.extend(views)
        self._on_placed = (h, owner)
        if not self.decoder.payload_remaining:
            self._finish_payload()

    def _target_still_valid(self) -> bool:
        mr = self._target_mr
        if mr is None or mr.valid:
            return True
        # deregistered while its WRITE was landing: remote access ends at once
        h, _ = self._on_placed or (Header(Opcode.WRITE), None)
        self._target.clear()
        self._discard = True
        self._target_mr = None
        self._terminate(h, ResponderFault.MR_GONE, "target MR was deregistered")
        return False

    def _place(self, chunk: memoryview) -> None:
        """Copy payload bytes that arrived in the staging buffer to their destination."""
        n = len(chunk)
        if self._discard or not self._target_still_valid():
            self.decoder.payload_consumed(n)
            if not self.decoder.payload_remaining and not self._closed:
                self._finish_payload()
            return
        off = 0
        for view in self._target:
            k = min(len(view), n - off)
            view[:k] = chunk[off : off + k]
            off += k
            if off == n:
                break
        self._advance(n)

    def _advance(self, n: int) -> None:
        """*n* payload bytes are in the destination views now; move past them."""
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
            self._finish_payload()

    def _finish_payload(self) -> None:
        placed, self._on_placed = self._on_placed, None
        self._target.clear()
        self._target_mr = None
        if placed is None or self._discard:
            self._discard = False
            return
        h, owner = placed
        op = h.opcode
        if op is Opcode.READ_RESP:
            assert isinstance(owner, SendWork)
            self._on_response_done(owner)
            return
        self.proto.request_done()
        if op is Opcode.WRITE:
            self.stats["remote_ops"] += 1
            return
        assert isinstance(owner, RecvWork)
        done = self.qp.rq.popleft()
        assert done is owner
        self.stats["wrs_received"] += 1
        self.qp.complete_recv(
            owner,
            _OK,
            h.payload_len,
            h.imm if op is not Opcode.SEND else None,
            bool(h.flags & FLAG_SOLICITED),
            opcode=ibv_wc_opcode.IBV_WC_RECV_RDMA_WITH_IMM
            if op is Opcode.WRITE_IMM
            else ibv_wc_opcode.IBV_WC_RECV,
        )

    # -- errors -------------------------------------------------------------------------------
    def _terminate(self, h: Header, fault: ResponderFault, why: str) -> None:
        """The peer's request *h* is refused for *fault*: tell it which and why (the status
        ``RESPONDER_FAULTS`` gives), then go to ERR."""
        outcome = RESPONDER_FAULTS[fault]
        self._goodbye = (self.proto.next_msn, outcome.peer_status, why)
        self._fail(
            TcpverbsError(outcome.errno, f"{h.opcode.name} from the peer failed: {why}"),
            event=outcome.event,
        )

    def _settle(self) -> None:
        if self.established:
            self._queue_ack()
            self._flush()

    def _say_goodbye(self, reason: TcpverbsError) -> None:
        if not self.established:
            return
        msn, status, why = self._goodbye or (
            NO_MSN,
            W.IBV_WC_REM_ABORT_ERR,
            reason.strerror or "",
        )
        ack = self.proto.take_ack()  # what we did carry out still counts
        if ack is not None:
            self._tx.append(ack)
        self._tx.append(
            encode_header(
                Header(Opcode.TERMINATE, msn=msn, status=status, reason=why.encode()[:MAX_REASON])
            )
        )
        self._flush()  # best effort: what does not fit now is lost with the connection
        self._tx.clear()
