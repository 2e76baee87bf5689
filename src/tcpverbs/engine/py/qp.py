"""A QP in the Python engine: its queues, the checks at post time, and its outcomes.

Theory of operation
-------------------
A QP holds two queues of checked work (:mod:`.work`): ``sq`` (posted sends not yet taken
by the transport) and ``rq`` (posted receives).  The *transport* (:mod:`.rc`,
:mod:`.stream`) owns the TCP socket after the handoff, takes work from the queues, moves
bytes, and reports outcomes through :meth:`PyQP.complete_send`,
:meth:`PyQP.complete_recv` and :meth:`PyQP.enter_error`.  All of that happens under the
QP's ``lock``, from the application's thread (inside ``post_*`` and ``CQ.poll``) or from
the context's progress thread.

Queue slots (``max_send_wr`` / ``max_recv_wr``) are taken at post time and given back
when the WR's completion is *polled* (an unsignaled WR that succeeds gives its slot back
as soon as it is acknowledged).  So an application that stops polling gets ``ENOMEM``
from ``post_*`` instead of growing memory, as on hardware.

A WR whose memory does not check out (lkey, range, access) is still queued, carrying its
error, so that its error completion comes out in queue order, as on hardware.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections import deque
from operator import index as index_of
from typing import TYPE_CHECKING

from ...device import MAX_MSG_SZ
from ...enums import (
    ibv_access_flags,
    ibv_event_type,
    ibv_qp_state,
    ibv_send_flags,
    ibv_wc_flags,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from ...errors import TcpverbsError
from ...wire.hello import Hello
from ...wire.ud import ud_port
from ...wr import RecvWR, SendWR
from ..api import (
    RECV_WR_FIELDS,
    SEND_WR_FIELDS,
    PostFailure,
    PostFault,
    QPParams,
    QPSpec,
)
from .cq import PyCQ
from .memory import Region
from .rc import RcTransport
from .resolve import BAD_INPUT, MemoryUser, bad_field
from .srq import PySRQ
from .stream import StreamTransport
from .ud import UdTransport
from .work import RecvWork, Segment, SendWork

if TYPE_CHECKING:
    from . import PyEngine
    from .transport import Transport

__all__ = ["PyQP"]

S = ibv_qp_state
WR = ibv_wr_opcode
_OK = ibv_wc_status.IBV_WC_SUCCESS
_FLUSH = ibv_wc_status.IBV_WC_WR_FLUSH_ERR
_LOC_PROT = ibv_wc_status.IBV_WC_LOC_PROT_ERR
_LOCAL_WRITE = int(ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
_WITH_IMM = int(ibv_wc_flags.IBV_WC_WITH_IMM)
_WC_OPCODE = {
    WR.IBV_WR_SEND: ibv_wc_opcode.IBV_WC_SEND,
    WR.IBV_WR_SEND_WITH_IMM: ibv_wc_opcode.IBV_WC_SEND,
    WR.IBV_WR_RDMA_WRITE: ibv_wc_opcode.IBV_WC_RDMA_WRITE,
    WR.IBV_WR_RDMA_WRITE_WITH_IMM: ibv_wc_opcode.IBV_WC_RDMA_WRITE,
    WR.IBV_WR_RDMA_READ: ibv_wc_opcode.IBV_WC_RDMA_READ,
    WR.IBV_WR_ATOMIC_CMP_AND_SWP: ibv_wc_opcode.IBV_WC_COMP_SWAP,
    WR.IBV_WR_ATOMIC_FETCH_AND_ADD: ibv_wc_opcode.IBV_WC_FETCH_ADD,
}
_INLINE = int(ibv_send_flags.IBV_SEND_INLINE)
_SIGNALED = int(ibv_send_flags.IBV_SEND_SIGNALED)
_SOLICITED = int(ibv_send_flags.IBV_SEND_SOLICITED)
_FENCE = int(ibv_send_flags.IBV_SEND_FENCE)
_ATOMICS = frozenset({int(WR.IBV_WR_ATOMIC_CMP_AND_SWP), int(WR.IBV_WR_ATOMIC_FETCH_AND_ADD)})
_WRITES_LOCAL = _ATOMICS | {int(WR.IBV_WR_RDMA_READ)}  # their local SGEs receive data
_POSTABLE_SEND = (S.IBV_QPS_RTS, S.IBV_QPS_ERR)
_UD_OPCODES = frozenset({int(WR.IBV_WR_SEND), int(WR.IBV_WR_SEND_WITH_IMM)})
_LOC_LEN = ibv_wc_status.IBV_WC_LOC_LEN_ERR
_LOC_QP_OP = ibv_wc_status.IBV_WC_LOC_QP_OP_ERR


class PyQP(MemoryUser):
    def __init__(self, engine: PyEngine, spec: QPSpec) -> None:
        self.engine = engine
        self.handle = spec.handle
        self.qp_num = spec.qp_num
        self.pd = spec.pd
        self.caps = spec.caps
        self.sq_sig_all = spec.sq_sig_all
        self.wire = spec.wire
        self.mtu = spec.mtu
        if spec.wire == "ud":  # its own checks: one opcode, an address per WR
            self._post_one_send = self._post_one_ud_send  # type: ignore[method-assign]
        scq, rcq = spec.scq, spec.rcq
        assert isinstance(scq, PyCQ) and isinstance(rcq, PyCQ)  # CQs of this engine
        self.scq: PyCQ = scq
        self.rcq: PyCQ = rcq
        assert spec.srq is None or isinstance(spec.srq, PySRQ)
        self.srq: PySRQ | None = spec.srq
        self.params = QPParams()
        self.state = S.IBV_QPS_RESET
        self.lock = threading.RLock()
        self.sq: deque[SendWork] = deque()
        self.rq: deque[RecvWork] = deque()
        self.sq_used = 0
        self.rq_used = 0
        self.transport: Transport | None = None
        self.stats: dict[str, int] = {}
        self.generation = 0  # bumped by RESET: completions from before free no slots
        self.error: TcpverbsError | None = None
        self.setup_failed = False
        self._destroyed = False
        for cq in (scq, rcq):
            cq.qps[self.qp_num] = self

    # -- control --------------------------------------------------------------------
    @property
    def established(self) -> bool:
        transport = self.transport
        return transport is not None and transport.established

    def modify(self, expect: ibv_qp_state, new: ibv_qp_state, params: QPParams) -> bool:
        with self.lock:
            if self.state is not expect or self._destroyed:
                return False
            self.params = params
            self.state = new
            if new is S.IBV_QPS_RTS and self.transport is not None:
                self.transport.entered_rts()
                self.transport.send_posted()
            return True

    def attach(
        self, sock: socket.socket, peer_hello: Hello | None, hello_timeout: float | None
    ) -> bool:
        with self.lock:
            if (
                self.state not in (S.IBV_QPS_RTR, S.IBV_QPS_RTS)
                or self.transport is not None
                or self._destroyed
                or self.engine.closed
            ):
                return False
            transport: Transport
            if self.wire == "ud":  # its datagram socket
                transport = UdTransport(self, sock, self.mtu)
            elif self.wire == "stream":
                transport = StreamTransport(self, sock)
            else:  # the hello: *peer_hello* if the connection service read it already
                transport = RcTransport(self, sock, peer_hello, hello_timeout)
            try:
                transport.start()
            except BaseException:
                transport.close(None)
                raise
            self.transport = transport
            return True

    def fail(self, error: TcpverbsError, *, setup: bool = False) -> None:
        self.enter_error(error, setup=setup)

    def reset(self) -> None:
        with self.lock:
            self._close_transport()
            self.sq.clear()
            self.rq.clear()
            self.sq_used = self.rq_used = 0
            self.generation += 1
            for cq in (self.scq, self.rcq):
                cq.discard_qp(self)
            self.error = None
            self.setup_failed = False
            self.state = S.IBV_QPS_RESET
            self.params = QPParams()

    def destroy(self) -> None:
        with self.lock:
            if self._destroyed:
                return
            self._destroyed = True
            self._close_transport()
            self.sq.clear()
            self.rq.clear()
        for cq in (self.scq, self.rcq):
            cq.qps.pop(self.qp_num, None)
        self.engine.retire(self)

    def _close_transport(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close(None)

    def statistics(self) -> dict[str, int]:
        with self.lock:
            transport = self.transport
            return {
                "sq_outstanding": self.sq_used,
                "rq_outstanding": self.rq_used,
                # pieces (frame headers, payload segments) waiting to be written
                "tx_outstanding": transport.tx_queued if transport is not None else 0,
                **self.stats,
            }

    # -- posting ----------------------------------------------------------------------
    def post_send(self, wr: SendWR) -> PostFailure | None:
        with self.lock:
            index, one = 0, wr
            try:
                for index, one in enumerate(wr.chain()):
                    failure = self._post_one_send(one, index)
                    if failure is not None:
                        return failure
                return None
            except BAD_INPUT as exc:  # nothing of that WR was posted: name the culprit
                return bad_field(one, index, SEND_WR_FIELDS, exc)
            finally:  # WRs before a refused one were posted: they must go out
                if self.transport is not None and self.state is S.IBV_QPS_RTS and self.sq:
                    self.transport.send_posted()

    def post_recv(self, wr: RecvWR) -> PostFailure | None:
        with self.lock:
            index, one = 0, wr
            try:
                for index, one in enumerate(wr.chain()):
                    failure = self._post_one_recv(one, index)
                    if failure is not None:
                        return failure
                return None
            except BAD_INPUT as exc:
                return bad_field(one, index, RECV_WR_FIELDS, exc)
            finally:
                if self.transport is not None and self.rq:
                    self.transport.recv_posted()

    def _post_one_send(self, wr: SendWR, index: int) -> PostFailure | None:
        state = self.state
        if self.setup_failed:
            return PostFailure(index, PostFault.SETUP_FAILED)
        if state not in _POSTABLE_SEND:
            return PostFailure(index, PostFault.BAD_STATE, int(state))
        opcode = index_of(wr.opcode)  # plain ints: IntFlag's | and & cost microseconds
        flags = index_of(wr.send_flags)
        wr_id, imm, rkey = wr.wr_id, wr.imm_data, wr.rkey
        remote_addr, compare_add, swap = wr.remote_addr, wr.compare_add, wr.swap
        # one test per width: a negative value or one too wide leaves bits above it (and
        # a value that is not an int raises TypeError at the "|")
        if (wr_id | remote_addr | compare_add | swap) >> 64 or (opcode | flags | imm | rkey) >> 32:
            raise ValueError("a field is out of range")
        wc_opcode = _WC_OPCODE.get(opcode)  # type: ignore[call-overload]
        if wc_opcode is None or (self.wire == "stream" and opcode != WR.IBV_WR_SEND):
            return PostFailure(index, PostFault.BAD_OPCODE, opcode)
        caps = self.caps
        sges = wr.sg_list
        num_sge = wr.num_sge
        if num_sge > caps.max_send_sge:
            return PostFailure(index, PostFault.TOO_MANY_SGE, num_sge, caps.max_send_sge)
        if num_sge < 0 or num_sge > len(sges):
            return PostFailure(index, PostFault.SGE_COUNT, num_sge, len(sges))
        sges = sges[:num_sge]
        inline = flags & _INLINE
        length = sges[0].length if num_sge == 1 else sum(s.length for s in sges)
        if inline and length > caps.max_inline_data:
            return PostFailure(index, PostFault.INLINE_TOO_LONG, length, caps.max_inline_data)
        writes_local = opcode in _WRITES_LOCAL
        if inline and writes_local:
            return PostFailure(index, PostFault.NOT_INLINABLE, opcode)
        if opcode in _ATOMICS and (num_sge != 1 or length != 8):
            return PostFailure(index, PostFault.ATOMIC_SHAPE, num_sge, length)
        if self.sq_used >= caps.max_send_wr:
            return PostFailure(index, PostFault.QUEUE_FULL, limit=caps.max_send_wr)
        one = (
            self._resolve_one(sges[0], writable=writes_local)
            if num_sge == 1 and not inline
            else None
        )
        regions: tuple[Region, ...]
        if one is not None:  # the usual case, resolved in one step
            view, region = one
            segments: list[Segment] = [view] if length else []
            error = None
            regions = (region,)
        else:
            segments, error, regions = self._resolve(
                sges, writable=writes_local, inline=bool(inline)
            )
        if error is None and length > MAX_MSG_SZ:
            error = (
                ibv_wc_status.IBV_WC_LOC_LEN_ERR,
                f"message of {length} bytes exceeds max_msg_sz",
            )
        if inline and error is None:
            segments = [b"".join(segments)]  # the caller may reuse the buffer on return
            regions = ()  # copied: deregistration no longer matters
        # positional: keyword construction of this 17-field record costs more per WR
        work = SendWork(
            wr_id,
            opcode,
            wc_opcode,
            self.sq_sig_all or bool(flags & _SIGNALED),
            bool(flags & _SOLICITED),
            segments,
            length,
            imm,
            error,
            0,
            rkey,
            remote_addr,
            compare_add,
            swap,
            bool(flags & _FENCE),
            writes_local,
            0,
            regions,
        )
        self._queue_send(work, state)
        return None

    def _queue_send(self, work: SendWork, state: ibv_qp_state) -> None:
        """A checked send WR takes its slot: queued, or flushed at once in ERR."""
        self.sq_used += 1
        if state is S.IBV_QPS_ERR:
            self.complete_send(work, _FLUSH)
        else:
            self.sq.append(work)

    def _post_one_ud_send(self, wr: SendWR, index: int) -> PostFailure | None:
        """A UD send: SEND or SEND_WITH_IMM of at most the MTU, to ``wr.ah`` (an AH of
        this QP's PD) and ``wr.remote_qpn``, which must be a UD QP's number."""
        state = self.state
        if state not in _POSTABLE_SEND:
            return PostFailure(index, PostFault.BAD_STATE, int(state))
        opcode, flags = index_of(wr.opcode), index_of(wr.send_flags)
        rqpn, rqkey = wr.remote_qpn, wr.remote_qkey
        if wr.wr_id >> 64 or (opcode | flags | wr.imm_data | rqpn | rqkey) >> 32:
            raise ValueError("a field is out of range")
        if opcode not in _UD_OPCODES:
            return PostFailure(index, PostFault.BAD_OPCODE, opcode)
        if rqpn >> 24:
            return PostFailure(index, PostFault.BAD_FIELD, field="remote_qpn", limit=24)
        ah = wr.ah
        raw = getattr(getattr(ah, "dest", None), "raw", None)
        if getattr(getattr(ah, "pd", None), "handle", None) != self.pd or not (
            isinstance(raw, bytes) and len(raw) == 16
        ):
            return PostFailure(index, PostFault.BAD_FIELD, field="ah")  # not this PD's AH
        caps, sges, num_sge = self.caps, wr.sg_list, wr.num_sge
        if num_sge > caps.max_send_sge:
            return PostFailure(index, PostFault.TOO_MANY_SGE, num_sge, caps.max_send_sge)
        if num_sge < 0 or num_sge > len(sges):
            return PostFailure(index, PostFault.SGE_COUNT, num_sge, len(sges))
        inline = bool(flags & _INLINE)
        length = sum(sge.length for sge in sges[:num_sge])
        if inline and length > caps.max_inline_data:
            return PostFailure(index, PostFault.INLINE_TOO_LONG, length, caps.max_inline_data)
        if self.sq_used >= caps.max_send_wr:
            return PostFailure(index, PostFault.QUEUE_FULL, limit=caps.max_send_wr)
        segments, error, regions = self._resolve(sges[:num_sge], writable=False, inline=inline)
        if inline and error is None:
            segments, regions = [b"".join(segments)], ()  # the buffer may be reused at once
        port = ud_port(rqpn)
        if error is None and length > self.mtu:
            error = (_LOC_LEN, f"a UD message of {length} bytes exceeds the MTU ({self.mtu})")
        elif error is None and port is None:
            error = (_LOC_QP_OP, f"remote_qpn 0x{rqpn:x} is no UD QP's number")
        work = SendWork(
            wr.wr_id,
            opcode,
            ibv_wc_opcode.IBV_WC_SEND,
            self.sq_sig_all or bool(flags & _SIGNALED),
            bool(flags & _SOLICITED),
            segments,
            length,
            wr.imm_data,
            error,
            regions=regions,
            ud=(raw, rqpn, self.params.qkey if rqkey & 0x80000000 else rqkey),
        )
        self._queue_send(work, state)
        return None

    def _post_one_recv(self, wr: RecvWR, index: int) -> PostFailure | None:
        state = self.state
        if self.setup_failed:
            return PostFailure(index, PostFault.SETUP_FAILED)
        if state is S.IBV_QPS_RESET:
            return PostFailure(index, PostFault.BAD_STATE, int(state))
        caps = self.caps
        work = self._recv_work(wr, index, caps.max_recv_sge, self.rq_used, caps.max_recv_wr)
        if isinstance(work, PostFailure):
            return work
        self.rq_used += 1
        if state is S.IBV_QPS_ERR:
            self.complete_recv(work, _FLUSH)
        else:
            self.rq.append(work)
        return None

    def next_receive(self) -> RecvWork | None:
        """The receive WR the next message lands in (lock held): the oldest of the
        QP's own, else one taken from its SRQ, else None."""
        if self.rq:
            return self.rq[0]
        if self.srq is not None:
            work = self.srq.take()
            if work is not None:
                self.rq.append(work)
                return work
        return None

    # -- outcomes (called with the lock held, by the transport or the state machine) --
    def complete_send(self, work: SendWork, status: int, vendor_err: int = 0) -> None:
        if status == _OK and not work.signaled:
            self.sq_used -= 1
            return
        self.scq.push(
            (
                (
                    work.wr_id,
                    status,
                    work.wc_opcode,
                    vendor_err,
                    work.length if status == _OK else 0,
                    self.qp_num,
                    0,
                    0,
                    0,
                ),
                self,
                True,
                self.generation,
            )
        )

    def complete_recv(
        self,
        work: RecvWork,
        status: int,
        byte_len: int = 0,
        imm: int | None = None,
        solicited: bool = False,
        vendor_err: int = 0,
        opcode: int = ibv_wc_opcode.IBV_WC_RECV,
        src_qp: int = 0,
        wc_flags: int = 0,
    ) -> None:
        self.rcq.push(
            (
                (
                    work.wr_id,
                    status,
                    opcode,
                    vendor_err,
                    byte_len,
                    self.qp_num,
                    src_qp,
                    imm or 0,
                    wc_flags | (_WITH_IMM if imm is not None else 0),
                ),
                self,
                False,
                self.generation,
            ),
            solicited,
        )

    def slot_freed(self, is_send: bool, generation: int, count: int = 1) -> None:
        """*count* completions of this QP were polled (or lost): their WRs' slots are free."""
        with self.lock:
            if generation != self.generation:  # posted before a RESET that freed it
                return
            if is_send:
                self.sq_used = max(0, self.sq_used - count)
            else:
                self.rq_used = max(0, self.rq_used - count)

    def revoke(self, region: Region) -> None:
        """*region* was deregistered (it is invalid already).  Taking the lock waits out a
        placement into it that is under way; work that still uses it completes with
        ``IBV_WC_LOC_PROT_ERR`` and the QP goes to ERR, as on hardware."""
        with self.lock:
            if self.state is S.IBV_QPS_ERR or self._destroyed:
                return
            in_flight = self.transport.outstanding() if self.transport is not None else ()
            works: list[SendWork | RecvWork] = [*in_flight, *self.sq, *self.rq]
            for work in works:
                if region in work.regions:
                    self.enter_error(
                        TcpverbsError(
                            errno.EFAULT,
                            f"MR 0x{region.key:08x} was deregistered while work request "
                            f"{work.wr_id} used it",
                        ),
                        revoked=region,
                    )
                    return

    def reregistered(self, old: Region) -> None:
        """*old* was re-registered under its key (``ibv_rereg_mr``).  Receive WRs that
        use it and have not started are checked against the new registration when they
        are used, as hardware checks an lkey: here, now, once.  One that no longer may
        use its memory keeps the error for its turn (LOC_PROT_ERR; the peer's SEND gets
        REM_OP_ERR).  Work already moving data with the old memory, and send WRs, are
        revoked as by deregistration."""
        with self.lock:
            if self.state is S.IBV_QPS_ERR or self._destroyed:
                return
            transport = self.transport
            busy: list[SendWork | RecvWork] = [*self.sq]
            if transport is not None:
                busy.extend(transport.outstanding())
                placing = transport.placing()
                if placing is not None:
                    busy.append(placing)
            if any(old in work.regions for work in busy):
                self.revoke(old)
                return
            for work in self.rq:
                if old in work.regions and work.error is None:
                    self._check_again(work, old)

    def enter_error(
        self,
        exc: TcpverbsError,
        *,
        setup: bool = False,
        notify_peer: bool = True,
        event: ibv_event_type = ibv_event_type.IBV_EVENT_QP_FATAL,
        first_status: int = _FLUSH,
        revoked: Region | None = None,
    ) -> None:
        """Move to ERR: close the connection and flush every outstanding WR, in order.

        *first_status* goes to the oldest outstanding send WR instead of the flush (the
        one a timeout struck, ``IBV_WC_RETRY_EXC_ERR``); WRs that use the *revoked*
        region complete with ``IBV_WC_LOC_PROT_ERR``."""
        with self.lock:
            if self.state is S.IBV_QPS_ERR or self._destroyed:
                return
            self.state = S.IBV_QPS_ERR
            self.error = exc
            if setup:
                self.setup_failed = True
            transport, self.transport = self.transport, None
            unfinished = transport.take_unfinished() if transport is not None else []
            if transport is not None:
                transport.close(exc if notify_peer else None)
            status = first_status
            for work in [*unfinished, *self.sq]:
                hit = revoked is not None and revoked in work.regions
                self.complete_send(work, _LOC_PROT if hit else status)
                status = _FLUSH
            self.sq.clear()
            for rwork in self.rq:
                hit = revoked is not None and revoked in rwork.regions
                self.complete_recv(rwork, _LOC_PROT if hit else _FLUSH)
            self.rq.clear()
        self.engine.event(event, self.handle, exc.strerror or str(exc))
        if self.srq is not None:  # none of the SRQ's WRs will be taken by it any more
            self.engine.event(
                ibv_event_type.IBV_EVENT_QP_LAST_WQE_REACHED, self.handle, "the QP is in ERR"
            )

    # -- scheduling ---------------------------------------------------------------------
    def progress(self) -> None:
        """Non-blocking progress from an application thread (``CQ.poll`` on empty)."""
        if self.lock.acquire(blocking=False):
            try:
                if self.transport is not None:
                    self.transport.app_polling()
                    self.transport.progress()
            finally:
                self.lock.release()

    def send_deferred_ack(self) -> None:
        """The rc ACK this QP deferred goes now, unless another thread holds the QP."""
        if self.lock.acquire(blocking=False):
            try:
                if self.transport is not None:
                    self.transport.send_deferred_ack()
                self.engine.deferred_acks.discard(self)  # sent, or nothing left to send
            finally:
                self.lock.release()

    def sleeper_enter(self, token: object) -> Transport | None:
        """A thread sleeping on a completion channel reads this QP's socket now (see
        ``PyChannel._sleep``); returns the transport it watches, or None."""
        with self.lock:
            transport = self.transport
            if transport is None or not transport.reading:  # paused: the engine resumes it
                return None
            transport.sleeper_enter(token)
            return transport

    def sleeper_exit(self, transport: Transport, token: object) -> None:
        with self.lock:
            transport.sleeper_exit(token)

    def app_blocking(self) -> None:
        with self.lock:
            if self.transport is not None:
                self.transport.app_blocking()

    def __repr__(self) -> str:
        return f"<PyQP {self.qp_num} {self.wire} {self.state.name}>"
