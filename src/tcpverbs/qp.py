"""Queue pairs: validation, the state machine, and posting.

Theory of operation
-------------------
A QP holds two queues of validated work (:mod:`tcpverbs._work`): ``_sq`` (posted sends
not yet taken by the transport) and ``_rq`` (posted receives).  The *transport* — an
engine object that owns the TCP socket after the handoff — takes work from them, moves
bytes, and reports outcomes back through :meth:`QP._complete_send`,
:meth:`QP._complete_recv` and :meth:`QP._enter_error`.  All of that happens under the
QP's lock, from the application's thread (inside ``post_*`` and ``CQ.poll``) or from the
context's progress thread.

Queue slots (``max_send_wr`` / ``max_recv_wr``) are taken at post time and given back
when the WR's completion is *polled* (an unsignaled WR that succeeds gives its slot back
as soon as it is acknowledged).  So an application that stops polling gets ``ENOMEM``
from ``post_*`` instead of growing memory, as on hardware.

States follow ``ibv_modify_qp(3)``: RESET → INIT → RTR → RTS, any → ERR, any → RESET.
The connection is made at INIT → RTR by handing over a connected socket
(``QPAttr.sock``).  An illegal transition or attribute changes nothing and raises
``EINVAL``.
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from typing import TYPE_CHECKING

from ._base import VerbsObject
from ._work import RecvWork, Segment, SendWork
from .device import MAX_INLINE_DATA, MAX_MSG_SZ, MAX_QP_RD_ATOM, MAX_QP_WR, MAX_SGE
from .enums import (
    ibv_access_flags,
    ibv_event_type,
    ibv_qp_attr_mask,
    ibv_qp_state,
    ibv_qp_type,
    ibv_send_flags,
    ibv_wc_flags,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from .errors import PostError, TcpverbsError
from .qp_attr import QPAttr, QPCap, QPInitAttr
from .wr import SGE, RecvWR, SendWR

if TYPE_CHECKING:
    import socket

    from .cq import CQ
    from .engine.loop import Timer
    from .engine.transport import Transport
    from .pd import PD
    from .wire.hello import Hello

__all__ = ["QP"]

S = ibv_qp_state
M = ibv_qp_attr_mask
_OK = ibv_wc_status.IBV_WC_SUCCESS
_FLUSH = ibv_wc_status.IBV_WC_WR_FLUSH_ERR
_LOCAL_WRITE = int(ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)

# ibv_modify_qp(3) for RC: allowed transitions -> attribute bits they require.
_REQUIRED: dict[tuple[S, S], M] = {
    (S.IBV_QPS_RESET, S.IBV_QPS_INIT): M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
    (S.IBV_QPS_INIT, S.IBV_QPS_INIT): M(0),
    (S.IBV_QPS_INIT, S.IBV_QPS_RTR): M(0),  # a socket, or (issue 3) an address vector
    (S.IBV_QPS_RTR, S.IBV_QPS_RTS): M(0),
    (S.IBV_QPS_RTS, S.IBV_QPS_RTS): M(0),
}
_SETTABLE = (
    M.IBV_QP_STATE
    | M.IBV_QP_CUR_STATE
    | M.IBV_QP_ACCESS_FLAGS
    | M.IBV_QP_PKEY_INDEX
    | M.IBV_QP_PORT
    | M.IBV_QP_AV
    | M.IBV_QP_PATH_MTU
    | M.IBV_QP_TIMEOUT
    | M.IBV_QP_RETRY_CNT
    | M.IBV_QP_RNR_RETRY
    | M.IBV_QP_RQ_PSN
    | M.IBV_QP_MAX_QP_RD_ATOMIC
    | M.IBV_QP_MIN_RNR_TIMER
    | M.IBV_QP_SQ_PSN
    | M.IBV_QP_MAX_DEST_RD_ATOMIC
    | M.IBV_QP_DEST_QPN
)
# mask bit -> QPAttr fields it carries
_FIELDS: dict[M, tuple[str, ...]] = {
    M.IBV_QP_ACCESS_FLAGS: ("qp_access_flags",),
    M.IBV_QP_PKEY_INDEX: ("pkey_index",),
    M.IBV_QP_PORT: ("port_num",),
    M.IBV_QP_AV: ("ah_attr",),
    M.IBV_QP_PATH_MTU: ("path_mtu",),
    M.IBV_QP_TIMEOUT: ("timeout",),
    M.IBV_QP_RETRY_CNT: ("retry_cnt",),
    M.IBV_QP_RNR_RETRY: ("rnr_retry",),
    M.IBV_QP_RQ_PSN: ("rq_psn",),
    M.IBV_QP_MAX_QP_RD_ATOMIC: ("max_rd_atomic",),
    M.IBV_QP_MIN_RNR_TIMER: ("min_rnr_timer",),
    M.IBV_QP_SQ_PSN: ("sq_psn",),
    M.IBV_QP_MAX_DEST_RD_ATOMIC: ("max_dest_rd_atomic",),
    M.IBV_QP_DEST_QPN: ("dest_qp_num",),
}
_INIT_MASK = M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS
_RTR_MASK = (
    M.IBV_QP_STATE
    | M.IBV_QP_PATH_MTU
    | M.IBV_QP_RQ_PSN
    | M.IBV_QP_MAX_DEST_RD_ATOMIC
    | M.IBV_QP_MIN_RNR_TIMER
)
_RTR_AV_MASK = M.IBV_QP_AV | M.IBV_QP_DEST_QPN
_RTS_MASK = (
    M.IBV_QP_STATE
    | M.IBV_QP_SQ_PSN
    | M.IBV_QP_TIMEOUT
    | M.IBV_QP_RETRY_CNT
    | M.IBV_QP_RNR_RETRY
    | M.IBV_QP_MAX_QP_RD_ATOMIC
)

WR = ibv_wr_opcode
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


class QP(VerbsObject):
    """``ibv_create_qp``: ``QP(pd, QPInitAttr(...), qp_attr=None)``.

    With *qp_attr* the new QP is moved to INIT right away (as pyverbs does).
    """

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        scq, rcq = _check_init_attr(pd, init_attr)
        parents: list[VerbsObject] = [pd, scq]
        if rcq is not scq:
            parents.append(rcq)
        super().__init__(*parents)
        self.pd = pd
        self.ctx = pd.ctx
        self.init_attr = init_attr
        self.cap = QPCap(**{f: getattr(init_attr.cap, f) for f in QPCap.__slots__})
        self.wire = init_attr.wire
        self.scq: CQ = scq
        self.rcq: CQ = rcq
        self.sq_sig_all = bool(init_attr.sq_sig_all)
        self.qp_num = self.ctx._new_qpn(self)
        self._attr = QPAttr(qp_state=S.IBV_QPS_RESET, cap=self.cap)
        self._state = S.IBV_QPS_RESET
        self._lock = threading.RLock()
        self._sq: deque[SendWork] = deque()
        self._rq: deque[RecvWork] = deque()
        self._sq_used = 0
        self._rq_used = 0
        self._transport: Transport | None = None
        self._stats: dict[str, int] = {}
        self._generation = 0  # bumped by RESET: completions from before free no slots
        self._oob_expect: tuple[int, str] | None = None  # waiting for (peer qp_num, address)
        self._oob_timer: Timer | None = None
        self.error: TcpverbsError | None = None
        self._setup_error: TcpverbsError | None = None
        for cq in (scq, rcq):
            cq._qps[self.qp_num] = self
        if qp_attr is not None:
            self.to_init(qp_attr)

    # -- state ------------------------------------------------------------------
    @property
    def qp_state(self) -> ibv_qp_state:
        return self._state

    @property
    def qp_type(self) -> ibv_qp_type:
        return ibv_qp_type.IBV_QPT_RC

    def to_init(self, attr: QPAttr) -> None:
        """RESET → INIT with the attributes pyverbs' ``to_init`` sets for RC."""
        attr.qp_state = S.IBV_QPS_INIT
        self.modify(attr, _INIT_MASK)

    def to_rtr(self, attr: QPAttr) -> None:
        """INIT → RTR.  ``attr.sock`` hands over the connected TCP socket."""
        attr.qp_state = S.IBV_QPS_RTR
        mask = _RTR_MASK | (_RTR_AV_MASK if attr.ah_attr.is_global else M(0))
        self.modify(attr, mask)

    def to_rts(self, attr: QPAttr) -> None:
        """RTR → RTS: the send queue starts working."""
        attr.qp_state = S.IBV_QPS_RTS
        self.modify(attr, _RTS_MASK)

    def modify(self, attr: QPAttr, attr_mask: int) -> None:
        """``ibv_modify_qp``.  Invalid transitions or attributes raise EINVAL, change nothing."""
        self._check_open()
        unknown = int(attr_mask) & ~int(_SETTABLE)  # ints: IntFlag's ~ drops unknown bits
        if unknown:
            raise TcpverbsError(errno.EINVAL, f"unsupported attribute mask bits 0x{unknown:x}")
        mask = M(attr_mask)
        with self._lock:
            cur = self._state
            if mask & M.IBV_QP_CUR_STATE and attr.cur_qp_state != cur:
                raise TcpverbsError(
                    errno.EINVAL,
                    f"cur_qp_state {S(attr.cur_qp_state).name} but the QP is in {cur.name}",
                )
            new = S(attr.qp_state) if mask & M.IBV_QP_STATE else cur
            if new is S.IBV_QPS_RESET:
                self._reset()
                return
            if new is S.IBV_QPS_ERR:
                self._enter_error(TcpverbsError(errno.ECANCELED, "moved to ERR by the application"))
                return
            required = _REQUIRED.get((cur, new))
            if required is None:
                raise TcpverbsError(
                    errno.EINVAL, f"invalid QP state transition {cur.name} -> {new.name}"
                )
            if required & ~mask:
                raise TcpverbsError(
                    errno.EINVAL,
                    f"{cur.name} -> {new.name} requires attribute mask {required & ~mask!r}",
                )
            self._check_attrs(attr, mask)
            if (cur, new) == (S.IBV_QPS_INIT, S.IBV_QPS_RTR):
                from .cm import oob

                plan = self._plan_connection(attr, mask)  # validated before anything changes
            for bit, names in _FIELDS.items():
                if mask & bit:
                    for name in names:
                        setattr(self._attr, name, getattr(attr, name))
            self._state = new
            self._attr.qp_state = new
            if (cur, new) == (S.IBV_QPS_INIT, S.IBV_QPS_RTR):
                if isinstance(plan, tuple):
                    self._wait_for_peer(*plan)
                else:
                    dialled = attr.sock is None  # we connected to the peer's context
                    attr.sock = None  # the library owns it now
                    self._attach(plan, hello_timeout=oob.CONNECT_TIMEOUT if dialled else None)
            elif new is S.IBV_QPS_RTS and self._transport is not None:
                self._transport.send_posted()

    def _check_attrs(self, attr: QPAttr, mask: M) -> None:
        if mask & M.IBV_QP_PORT and attr.port_num != 1:
            raise TcpverbsError(errno.EINVAL, f"port_num {attr.port_num}: the device has port 1")
        if mask & M.IBV_QP_PKEY_INDEX and attr.pkey_index != 0:
            raise TcpverbsError(
                errno.EINVAL, f"pkey_index {attr.pkey_index}: the table has one entry"
            )
        if mask & M.IBV_QP_ACCESS_FLAGS:
            allowed = (
                ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
                | ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
                | ibv_access_flags.IBV_ACCESS_REMOTE_READ
                | ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC
            )
            if attr.qp_access_flags & ~allowed:
                raise TcpverbsError(
                    errno.EINVAL, f"unsupported qp_access_flags 0x{attr.qp_access_flags:x}"
                )
        if mask & M.IBV_QP_PATH_MTU and not 1 <= attr.path_mtu <= 5:
            raise TcpverbsError(errno.EINVAL, f"path_mtu {attr.path_mtu} is not an ibv_mtu")
        if mask & M.IBV_QP_RNR_RETRY and not 0 <= attr.rnr_retry <= 7:
            raise TcpverbsError(errno.EINVAL, f"rnr_retry {attr.rnr_retry} is outside 0..7")
        if mask & M.IBV_QP_RETRY_CNT and not 0 <= attr.retry_cnt <= 7:
            raise TcpverbsError(errno.EINVAL, f"retry_cnt {attr.retry_cnt} is outside 0..7")
        if mask & M.IBV_QP_MIN_RNR_TIMER and not 0 <= attr.min_rnr_timer <= 31:
            raise TcpverbsError(
                errno.EINVAL, f"min_rnr_timer {attr.min_rnr_timer} is outside 0..31"
            )
        for bit, name in (
            (M.IBV_QP_MAX_QP_RD_ATOMIC, "max_rd_atomic"),
            (M.IBV_QP_MAX_DEST_RD_ATOMIC, "max_dest_rd_atomic"),
        ):
            value = getattr(attr, name)
            if mask & bit and not (isinstance(value, int) and 0 <= value <= MAX_QP_RD_ATOM):
                raise TcpverbsError(
                    errno.EINVAL, f"{name} {value!r} is outside 0..{MAX_QP_RD_ATOM}"
                )

    # -- connection -------------------------------------------------------------------
    def _plan_connection(self, attr: QPAttr, mask: M) -> socket.socket | tuple[int, str]:
        """How INIT -> RTR connects: a socket (handed over, or dialled to the peer's
        context), or ``(peer qp_num, peer address)`` to wait for."""
        from .cm import oob
        from .cm.sockets import take_socket
        from .device import GID

        if attr.sock is not None:
            return take_socket(attr.sock)
        route = attr.ah_attr.gr
        if not (mask & M.IBV_QP_AV and attr.ah_attr.is_global and route is not None):
            raise TcpverbsError(
                errno.EINVAL,
                "INIT -> RTR needs a connection: set QPAttr.sock to a connected TCP socket, "
                "or ah_attr (is_global=1, gr.dgid) and dest_qp_num of the peer QP",
            )
        if self.wire != "rc":
            raise TcpverbsError(
                errno.EINVAL, "stream QPs connect by socket handoff only (QPAttr.sock)"
            )
        if route.dgid is None:
            raise TcpverbsError(errno.EINVAL, "ah_attr.gr.dgid is not set")
        dgid = route.dgid if isinstance(route.dgid, GID) else GID(route.dgid)
        local = self.ctx.query_gid(attr.ah_attr.port_num, route.sgid_index)
        dest = attr.dest_qp_num
        if not 0 < dest < 1 << 24:
            raise TcpverbsError(errno.EINVAL, f"dest_qp_num {dest} is not a QP number")
        if (local.raw, self.qp_num) == (dgid.raw, dest):
            raise TcpverbsError(errno.EINVAL, "a QP cannot be connected to itself")
        if (local.raw, self.qp_num) > (dgid.raw, dest):  # the larger side dials
            return oob.connect_socket(dgid, dest, local)
        return dest, oob.gid_address(dgid)

    def _wait_for_peer(self, dest: int, host: str) -> None:
        from .cm import oob

        self._oob_expect = (dest, host)
        for sock, hello in self.ctx._take_parked(self.qp_num):
            if self._oob_expect is None or self._oob_accept(sock, hello) != "accepted":
                sock.close()  # not the expected peer, or one arrived already
        if self._oob_expect is not None:
            wait = oob.PeerWait(self)
            self._oob_timer = self.ctx._progress_engine.call_later(
                oob.CONNECT_TIMEOUT, wait.expired, wait
            )

    def _oob_accept(self, sock: socket.socket, hello: Hello) -> str:
        """A connection for this QP arrived (engine thread, lock held)."""
        from .cm import oob

        expect = self._oob_expect
        if expect is None or self._transport is not None:
            return "not waiting"
        if not oob.hello_matches(hello, expect[0], expect[1], sock):
            return "mismatch"
        self._oob_expect = None
        if self._oob_timer is not None:
            self._oob_timer.cancel()
        self._attach(sock, hello)
        return "accepted"

    def query(self, attr_mask: int = 0) -> tuple[QPAttr, QPInitAttr]:
        """``ibv_query_qp``: current attributes (all of them, whatever the mask)."""
        self._check_open()
        with self._lock:
            attr = QPAttr(**{f: getattr(self._attr, f) for f in QPAttr.__slots__ if f != "sock"})
            attr.qp_state = attr.cur_qp_state = self._state
            attr.cap = QPCap(**{f: getattr(self.cap, f) for f in QPCap.__slots__})
        return attr, self.init_attr

    # -- posting -------------------------------------------------------------------
    def post_send(self, wr: SendWR) -> None:
        """``ibv_post_send``: queue *wr* and the WRs chained to it by ``next_wr``."""
        self._check_open()
        with self._lock:
            try:
                for index, one in enumerate(wr.chain()):
                    self._post_one_send(one, index)
            finally:  # WRs before a refused one were posted: they must go out
                if self._transport is not None and self._state is S.IBV_QPS_RTS and self._sq:
                    self._transport.send_posted()

    def post_recv(self, wr: RecvWR) -> None:
        """``ibv_post_recv``: give the QP buffers for incoming messages."""
        self._check_open()
        with self._lock:
            try:
                for index, one in enumerate(wr.chain()):
                    self._post_one_recv(one, index)
            finally:
                if self._transport is not None and self._rq:
                    self._transport.recv_posted()

    def _post_one_send(self, wr: SendWR, index: int) -> None:
        state = self._state
        if self._setup_error is not None:
            err = self._setup_error
            raise PostError(err.error_code, f"connection set-up failed: {err.strerror}", wr, index)
        if state not in (S.IBV_QPS_RTS, S.IBV_QPS_ERR):
            raise PostError(errno.EINVAL, f"post_send on a QP in {state.name}", wr, index)
        wc_opcode = _WC_OPCODE.get(wr.opcode)  # type: ignore[call-overload]
        if wc_opcode is None or (self.wire == "stream" and wr.opcode != WR.IBV_WR_SEND):
            raise PostError(
                errno.EINVAL if self.wire == "stream" else errno.EOPNOTSUPP,
                f"opcode {_opname(wr.opcode)} is not supported on a {self.wire} QP",
                wr,
                index,
            )
        sges = _sge_list(wr.sg_list, wr.num_sge, self.cap.max_send_sge, wr, index)
        flags = int(wr.send_flags)  # plain int: IntFlag's & costs microseconds per WR
        inline = flags & _INLINE
        length = sges[0].length if len(sges) == 1 else sum(s.length for s in sges)
        if inline and length > self.cap.max_inline_data:
            raise PostError(
                errno.EINVAL,
                f"inline send of {length} bytes exceeds max_inline_data {self.cap.max_inline_data}",
                wr,
                index,
            )
        opcode = int(wr.opcode)
        writes_local = opcode in _WRITES_LOCAL
        if inline and writes_local:
            raise PostError(errno.EINVAL, f"{_opname(opcode)} cannot be inline", wr, index)
        if opcode in _ATOMICS and (len(sges) != 1 or length != 8):
            raise PostError(
                errno.EINVAL,
                f"atomics take one 8-byte local SGE, got {len(sges)} SGEs of {length} bytes",
                wr,
                index,
            )
        _check_room(self._sq_used, self.cap.max_send_wr, "send", wr, index)
        view = (
            self._valid_view(sges[0], writable=writes_local)
            if len(sges) == 1 and not inline
            else None
        )
        if view is not None:  # the usual case, resolved in one step
            segments: list[Segment] = [view] if length else []
            error = None
        else:
            segments, error = self._resolve(sges, writable=writes_local, inline=bool(inline))
        if error is None and length > MAX_MSG_SZ:
            error = (
                ibv_wc_status.IBV_WC_LOC_LEN_ERR,
                f"message of {length} bytes exceeds max_msg_sz",
            )
        if inline and error is None:
            segments = [b"".join(segments)]  # the caller may reuse the buffer on return
        # positional: keyword construction of this 17-field record costs more per WR
        work = SendWork(
            wr.wr_id,
            opcode,
            wc_opcode,
            self.sq_sig_all or bool(flags & _SIGNALED),
            bool(flags & _SOLICITED),
            segments,
            length,
            wr.imm_data & 0xFFFFFFFF,
            error,
            0,
            wr.rkey & 0xFFFFFFFF,
            wr.remote_addr & 0xFFFFFFFFFFFFFFFF,
            wr.compare_add & 0xFFFFFFFFFFFFFFFF,
            wr.swap & 0xFFFFFFFFFFFFFFFF,
            bool(flags & _FENCE),
            writes_local,
        )
        self._sq_used += 1
        if state is S.IBV_QPS_ERR:
            self._complete_send(work, _FLUSH)
        else:
            self._sq.append(work)

    def _post_one_recv(self, wr: RecvWR, index: int) -> None:
        state = self._state
        if self._setup_error is not None:
            err = self._setup_error
            raise PostError(err.error_code, f"connection set-up failed: {err.strerror}", wr, index)
        if state is S.IBV_QPS_RESET:
            raise PostError(errno.EINVAL, "post_recv on a QP in IBV_QPS_RESET", wr, index)
        sges = _sge_list(wr.sg_list, wr.num_sge, self.cap.max_recv_sge, wr, index)
        _check_room(self._rq_used, self.cap.max_recv_wr, "receive", wr, index)
        work = self._one_buffer(wr, sges) if len(sges) == 1 else None
        if work is None:
            segments, error = self._resolve(sges, writable=True, inline=False)
            views = [s for s in segments if isinstance(s, memoryview)]
            work = RecvWork(wr.wr_id, views, sum(len(v) for v in views), error)
        self._rq_used += 1
        if state is S.IBV_QPS_ERR:
            self._complete_recv(work, _FLUSH)
        else:
            self._rq.append(work)

    def _one_buffer(self, wr: RecvWR, sges: list[SGE]) -> RecvWork | None:
        """The usual receive, one valid SGE, resolved in one step; None for anything
        else (the general path then finds the error, if any)."""
        sge = sges[0]
        view = self._valid_view(sge, writable=True)
        if view is None:
            return None
        return RecvWork(wr.wr_id, [view] if sge.length else [], sge.length)

    def _valid_view(self, sge: SGE, *, writable: bool) -> memoryview | None:
        """The memory of one SGE when it is valid, else None (:meth:`_resolve` says why)."""
        mr = self.pd._mrs_by_lkey.get(sge.lkey)
        if mr is None or (writable and not mr._access_bits & _LOCAL_WRITE):
            return None
        return mr._slice(sge.addr, sge.length)

    def _resolve(
        self, sges: list[SGE], *, writable: bool, inline: bool
    ) -> tuple[list[Segment], tuple[int, str] | None]:
        """Memory of *sges* as views; an error becomes the WR's LOC_PROT_ERR completion."""
        views: list[Segment] = []
        for i, sge in enumerate(sges):
            mr = self.pd._mr_for_lkey(sge.lkey)
            if mr is None and inline:  # ibv_post_send ignores lkey for inline data
                mr = next(
                    (
                        m
                        for m in self.pd._mrs_by_lkey.values()
                        if m._slice(sge.addr, sge.length) is not None
                    ),
                    None,
                )
            if mr is None:
                return views, (
                    ibv_wc_status.IBV_WC_LOC_PROT_ERR,
                    f"SGE {i}: lkey 0x{sge.lkey:x} is not an MR of this QP's PD",
                )
            if writable and not mr._access_bits & _LOCAL_WRITE:
                return views, (
                    ibv_wc_status.IBV_WC_LOC_PROT_ERR,
                    f"SGE {i}: MR 0x{sge.lkey:x} lacks IBV_ACCESS_LOCAL_WRITE",
                )
            view = mr._slice(sge.addr, sge.length)
            if view is None:
                return views, (
                    ibv_wc_status.IBV_WC_LOC_PROT_ERR,
                    f"SGE {i}: [0x{sge.addr:x}, +{sge.length}) is outside MR "
                    f"[0x{mr.buf:x}, +{mr.length})",
                )
            if sge.length:
                views.append(view)
        return views, None

    # -- outcomes (called with the lock held, by the transport or the state machine) --
    def _complete_send(self, work: SendWork, status: int, vendor_err: int = 0) -> None:
        if status == _OK and not work.signaled:
            self._sq_used -= 1
            return
        self.scq._push(
            (
                self,
                True,
                work.wr_id,
                status,
                work.wc_opcode,
                vendor_err,
                work.length if status == _OK else 0,
                0,
                0,
                self._generation,
            )
        )

    def _complete_recv(
        self,
        work: RecvWork,
        status: int,
        byte_len: int = 0,
        imm: int | None = None,
        solicited: bool = False,
        vendor_err: int = 0,
        opcode: int = ibv_wc_opcode.IBV_WC_RECV,
    ) -> None:
        flags = ibv_wc_flags.IBV_WC_WITH_IMM if imm is not None else 0
        self.rcq._push(
            (
                self,
                False,
                work.wr_id,
                status,
                opcode,
                vendor_err,
                byte_len,
                imm or 0,
                flags,
                self._generation,
            ),
            solicited,
        )

    def _slot_freed(self, is_send: bool, generation: int, count: int = 1) -> None:
        """*count* completions of this QP were polled (or lost): their WRs' slots are free."""
        with self._lock:
            if generation != self._generation:  # posted before a RESET that freed it
                return
            if is_send:
                self._sq_used = max(0, self._sq_used - count)
            else:
                self._rq_used = max(0, self._rq_used - count)

    def _enter_error(
        self,
        exc: TcpverbsError,
        *,
        setup: bool = False,
        notify_peer: bool = True,
        event: ibv_event_type = ibv_event_type.IBV_EVENT_QP_FATAL,
    ) -> None:
        """Move to ERR: close the connection and flush every outstanding WR, in order."""
        with self._lock:
            if self._state is S.IBV_QPS_ERR:
                return
            self._state = self._attr.qp_state = S.IBV_QPS_ERR
            self._stop_waiting()
            self.error = exc
            if setup:
                self._setup_error = exc
            transport, self._transport = self._transport, None
            unfinished = transport.take_unfinished() if transport is not None else []
            if transport is not None:
                transport.close(exc if notify_peer else None)
            for work in [*unfinished, *self._sq]:
                self._complete_send(work, _FLUSH)
            self._sq.clear()
            for rwork in self._rq:
                self._complete_recv(rwork, _FLUSH)
            self._rq.clear()
        self.ctx._async_event(event, self, exc.strerror or str(exc))

    def _reset(self) -> None:
        self._stop_waiting()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close(None)
        self._sq.clear()
        self._rq.clear()
        self._sq_used = self._rq_used = 0
        self._generation += 1
        for cq in (self.scq, self.rcq):
            cq._discard_qp(self)
        self.error = self._setup_error = None
        self._state = S.IBV_QPS_RESET
        self._attr = QPAttr(qp_state=S.IBV_QPS_RESET, cap=self.cap)

    def _attach(
        self,
        sock: socket.socket,
        peer_hello: Hello | None = None,
        hello_timeout: float | None = None,
    ) -> None:
        from .engine import make_transport

        self._transport = make_transport(self, sock, peer_hello, hello_timeout)
        self._transport.start()

    def _stop_waiting(self) -> None:
        self._oob_expect = None
        if self._oob_timer is not None:
            self._oob_timer.cancel()
            self._oob_timer = None

    def _progress(self) -> None:
        """Non-blocking progress from an application thread (``CQ.poll`` on empty)."""
        if self._lock.acquire(blocking=False):
            try:
                if self._transport is not None:
                    self._transport.app_polling()
                    self._transport.progress()
            finally:
                self._lock.release()

    def _sleeper_enter(self, token: object) -> Transport | None:
        """A thread sleeping on a completion channel reads this QP's socket now (see
        ``CompChannel._sleep``); returns the transport it watches, or None."""
        with self._lock:
            transport = self._transport
            if transport is None or not transport.reading:  # paused: the engine resumes it
                return None
            transport.sleeper_enter(token)
            return transport

    def _sleeper_exit(self, transport: Transport, token: object) -> None:
        with self._lock:
            transport.sleeper_exit(token)

    def _app_blocking(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.app_blocking()

    def _release(self) -> None:
        with self._lock:
            self._stop_waiting()
            transport, self._transport = self._transport, None
            if transport is not None:
                transport.close(None)
            self._sq.clear()
            self._rq.clear()
        for cq in (self.scq, self.rcq):
            cq._qps.pop(self.qp_num, None)
        self.ctx._free_qpn(self.qp_num)
        self.ctx._retire(self._stats)

    def statistics(self) -> dict[str, int]:
        """Counters of this QP's traffic (see the transport for their meaning)."""
        with self._lock:
            return {
                "sq_outstanding": self._sq_used,
                "rq_outstanding": self._rq_used,
                **self._stats,
            }

    def __repr__(self) -> str:
        return f"<QP {self.qp_num} {self.wire} {self._state.name}>"


def _opname(opcode: int) -> str:
    try:
        return ibv_wr_opcode(opcode).name
    except ValueError:
        return str(opcode)


def _check_room(used: int, limit: int, queue: str, wr: object, index: int) -> None:
    if used >= limit:
        raise PostError(
            errno.ENOMEM, f"{queue} queue full ({limit} WRs outstanding; poll the CQ)", wr, index
        )


def _sge_list(sg: list[SGE], num_sge: int, limit: int, wr: object, index: int) -> list[SGE]:
    if num_sge > limit:
        raise PostError(
            errno.EINVAL, f"num_sge {num_sge} exceeds the QP's max SGE {limit}", wr, index
        )
    if num_sge < 0 or num_sge > len(sg):
        raise PostError(errno.EINVAL, f"num_sge {num_sge} but {len(sg)} SGEs given", wr, index)
    return sg[:num_sge]


def _check_init_attr(pd: PD, attr: QPInitAttr) -> tuple[CQ, CQ]:
    if attr.qp_type != ibv_qp_type.IBV_QPT_RC:
        raise TcpverbsError(
            errno.EOPNOTSUPP, f"qp_type {attr.qp_type}: only IBV_QPT_RC is supported"
        )
    if attr.wire not in ("rc", "stream"):
        raise TcpverbsError(errno.EINVAL, f"wire must be 'rc' or 'stream', not {attr.wire!r}")
    if attr.srq is not None:
        raise TcpverbsError(errno.EOPNOTSUPP, "shared receive queues are not supported")
    scq, rcq = attr.scq, attr.rcq
    if scq is None or rcq is None:
        raise TcpverbsError(errno.EINVAL, "QPInitAttr needs scq and rcq")
    for cq in (scq, rcq):
        cq._check_open()
        if cq.ctx is not pd.ctx:
            raise TcpverbsError(errno.EINVAL, "CQ belongs to another context than the PD")
    cap = attr.cap
    limits = {
        "max_send_wr": (1, MAX_QP_WR),
        "max_recv_wr": (1, MAX_QP_WR),
        "max_send_sge": (0, MAX_SGE),
        "max_recv_sge": (0, MAX_SGE),
        "max_inline_data": (0, MAX_INLINE_DATA),
    }
    for name, (low, high) in limits.items():
        value = getattr(cap, name)
        if not isinstance(value, int) or not low <= value <= high:
            raise TcpverbsError(errno.EINVAL, f"cap.{name}={value!r} is outside {low}..{high}")
    return scq, rcq
