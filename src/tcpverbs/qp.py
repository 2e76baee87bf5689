"""Queue pairs: validation, the state machine, and posting.

Theory of operation
-------------------
A QP is the application's handle on an engine QP (:mod:`tcpverbs.engine.api`): this
module validates attributes, runs the state machine the application drives, connects the
QP (socket handoff, or GID + QP number through :mod:`tcpverbs.oob`) and words every
error; the engine owns the queues, the connection and the completions.  ``post_send`` /
``post_recv`` hand the WR chain to the engine, which checks each WR and names the one it
refused with a :class:`~tcpverbs.engine.api.PostFault`; :func:`_post_error` words it.

States follow ``ibv_modify_qp(3)``: RESET → INIT → RTR → RTS, any → ERR, any → RESET.
The engine moves a QP to ERR by itself (a broken connection, an error completion); the
current state is the engine's.  The connection is made at INIT → RTR by handing over a
connected socket (``QPAttr.sock``) or by address vector and ``dest_qp_num``.  An illegal
transition or attribute changes nothing and raises ``EINVAL``.
"""

from __future__ import annotations

import errno
import functools
import operator
import threading
from typing import TYPE_CHECKING, Literal

from ._base import VerbsObject
from .device import GID, MAX_INLINE_DATA, MAX_QP_RD_ATOM, MAX_QP_WR, MAX_SGE
from .engine.api import FAST_POST, PostFailure, QPCaps, QPEngine, QPParams, QPSpec
from .enums import (
    ibv_access_flags,
    ibv_qp_attr_mask,
    ibv_qp_create_send_ops_flags,
    ibv_qp_init_attr_mask,
    ibv_qp_state,
    ibv_qp_type,
)
from .errors import PostError, TcpverbsError, check_flags, check_int
from .oob import service as oob
from .oob.sockets import DatagramPort, take_socket
from .post_errors import post_error
from .qp_attr import QPAttr, QPCap, QPInitAttr, QPInitAttrEx
from .srq import SRQ
from .wr import RecvWR, SendWR

if TYPE_CHECKING:
    import socket

    from .context import Context
    from .cq import CQ
    from .pd import PD

__all__ = ["QP"]

S = ibv_qp_state
M = ibv_qp_attr_mask

# ibv_modify_qp(3) for RC: allowed transitions -> attribute bits they require.
_REQUIRED: dict[tuple[S, S], M] = {
    (S.IBV_QPS_RESET, S.IBV_QPS_INIT): M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
    (S.IBV_QPS_INIT, S.IBV_QPS_INIT): M(0),
    (S.IBV_QPS_INIT, S.IBV_QPS_RTR): M(0),  # a socket, or (issue 3) an address vector
    (S.IBV_QPS_RTR, S.IBV_QPS_RTS): M(0),
    (S.IBV_QPS_RTS, S.IBV_QPS_RTS): M(0),
}
# ibv_modify_qp(3) for UD: no connection, a Q_Key instead of access flags
_REQUIRED_UD: dict[tuple[ibv_qp_state, ibv_qp_state], M] = {
    (S.IBV_QPS_RESET, S.IBV_QPS_INIT): M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY,
    (S.IBV_QPS_INIT, S.IBV_QPS_INIT): M(0),
    (S.IBV_QPS_INIT, S.IBV_QPS_RTR): M(0),
    (S.IBV_QPS_RTR, S.IBV_QPS_RTS): M.IBV_QP_SQ_PSN,
    (S.IBV_QPS_RTS, S.IBV_QPS_RTS): M(0),
}
# what a UD QP's modify may carry (the path and reliability attributes are RC's)
_UD_SETTABLE = (
    M.IBV_QP_STATE
    | M.IBV_QP_CUR_STATE
    | M.IBV_QP_PKEY_INDEX
    | M.IBV_QP_PORT
    | M.IBV_QP_QKEY
    | M.IBV_QP_SQ_PSN
)
_UD_INIT_MASK = M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY
_SETTABLE = (
    M.IBV_QP_STATE
    | M.IBV_QP_QKEY
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
    M.IBV_QP_QKEY: ("qkey",),
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

# the integer attributes ibv_modify_qp checks: (mask bit, name, lowest, highest)
_ATTR_RANGES = (
    (M.IBV_QP_PATH_MTU, "path_mtu", 1, 5),  # an ibv_mtu
    (M.IBV_QP_RQ_PSN, "rq_psn", 0, 0xFFFFFF),  # 24-bit fields
    (M.IBV_QP_SQ_PSN, "sq_psn", 0, 0xFFFFFF),
    (M.IBV_QP_DEST_QPN, "dest_qp_num", 0, 0xFFFFFF),
    (M.IBV_QP_TIMEOUT, "timeout", 0, 31),  # 5-bit
    (M.IBV_QP_MIN_RNR_TIMER, "min_rnr_timer", 0, 31),
    (M.IBV_QP_RETRY_CNT, "retry_cnt", 0, 7),  # 3-bit
    (M.IBV_QP_RNR_RETRY, "rnr_retry", 0, 7),
    (M.IBV_QP_MAX_QP_RD_ATOMIC, "max_rd_atomic", 0, MAX_QP_RD_ATOM),
    (M.IBV_QP_MAX_DEST_RD_ATOMIC, "max_dest_rd_atomic", 0, MAX_QP_RD_ATOM),
    (M.IBV_QP_QKEY, "qkey", 0, 0xFFFFFFFF),
)


class QP(VerbsObject):
    """``ibv_create_qp``: ``QP(pd, QPInitAttr(...), qp_attr=None)``; ``ibv_create_qp_ex``:
    ``QP(ctx, QPInitAttrEx(pd=..., comp_mask=IBV_QP_INIT_ATTR_PD, ...), qp_attr=None)``.

    With *qp_attr* the new QP is moved right away (as pyverbs does): an RC QP to INIT, a
    UD QP, which needs nothing from a peer, to RTS.
    """

    def __init__(
        self,
        pd: PD | Context,
        init_attr: QPInitAttr | QPInitAttrEx,
        qp_attr: QPAttr | None = None,
    ) -> None:
        pd, init_attr = _creator_and_attr(pd, init_attr)
        scq, rcq = _check_init_attr(pd, init_attr)
        parents: list[VerbsObject] = [pd, scq]
        if rcq is not scq:
            parents.append(rcq)
        srq = init_attr.srq
        if srq is not None:  # closing the SRQ closes its QPs first, as in pyverbs
            parents.append(srq)
        self.srq = srq
        self.pd = pd
        self.ctx = pd.ctx
        self.init_attr = init_attr
        self.cap = QPCap(**{f: getattr(init_attr.cap, f) for f in QPCap.__slots__})
        self.wire: Literal["rc", "stream", "ud"] = init_attr.wire
        self.scq: CQ = scq
        self.rcq: CQ = rcq
        self.sq_sig_all = bool(init_attr.sq_sig_all)
        self._qp_type = ibv_qp_type(init_attr.qp_type)
        self._datagrams: DatagramPort | None = None
        if self._qp_type is ibv_qp_type.IBV_QPT_UD:  # its number is its UDP port's
            self.wire = "ud"
            self._datagrams = DatagramPort()
            self.qp_num = self._datagrams.qp_num
        else:
            self.qp_num = self.ctx._oob.alloc_qpn()  # it also says where to dial the QP
        self.handle = self.ctx._new_handle(self)
        self._attr = QPAttr(qp_state=S.IBV_QPS_RESET, cap=self.cap)
        self._lock = threading.Lock()  # serialises the application's modify() calls
        cap = self.cap
        try:
            self._qp: QPEngine = self.ctx._engine.create_qp(
                QPSpec(
                    self.handle,
                    self.qp_num,
                    pd.handle,
                    QPCaps(
                        cap.max_send_wr,
                        cap.max_recv_wr,
                        cap.max_send_sge,
                        cap.max_recv_sge,
                        cap.max_inline_data,
                    ),
                    self.sq_sig_all,
                    self.wire,
                    scq._cq,
                    rcq._cq,
                    srq._srq if srq is not None else None,
                    128 << self.ctx.query_port(1).active_mtu,
                )
            )
        except BaseException:
            self._free_number()
            raise
        try:  # joins the tree only once the engine has it: a failure leaves nothing behind
            super().__init__(*parents)
        except BaseException:
            self._qp.destroy()
            self._free_number()
            raise
        # the data path calls the engine directly: one attribute lookup less per WR
        self._post_send = self._qp.post_send
        self._post_recv = self._qp.post_recv
        self._bind_fast_posts()
        if qp_attr is not None:  # as pyverbs: a UD QP is ready at once, an RC one in INIT
            if self._datagrams is not None:
                self.to_rts(qp_attr)
            else:
                self.to_init(qp_attr)

    # -- state ------------------------------------------------------------------
    @property
    def qp_state(self) -> ibv_qp_state:
        return self._qp.state

    @property
    def qp_type(self) -> ibv_qp_type:
        return self._qp_type

    def _free_number(self) -> None:
        if self._datagrams is not None:
            self._datagrams.close()
        else:
            self.ctx._oob.free_qpn(self.qp_num)

    @property
    def established(self) -> bool:
        """The connection is up (rc: both hellos exchanged; stream: from the handoff)."""
        return self._qp.established

    @property
    def error(self) -> TcpverbsError | None:
        """Why the QP is in ERR (a broken connection, the peer's TERMINATE reason, ...)."""
        return self._qp.error

    def to_init(self, attr: QPAttr) -> None:
        """RESET → INIT with the attributes pyverbs' ``to_init`` sets (RC: access
        flags; UD: the Q_Key)."""
        attr.qp_state = S.IBV_QPS_INIT
        self.modify(attr, _UD_INIT_MASK if self._datagrams is not None else _INIT_MASK)

    def to_rtr(self, attr: QPAttr) -> None:
        """INIT → RTR.  ``attr.sock`` hands over the connected TCP socket.  From RESET it
        goes through INIT first, with the same *attr* (as pyverbs' ``to_rtr``)."""
        if self.qp_state is S.IBV_QPS_RESET:
            self.to_init(attr)
        attr.qp_state = S.IBV_QPS_RTR
        if self._datagrams is not None:  # nothing to connect
            self.modify(attr, M.IBV_QP_STATE)
            return
        mask = _RTR_MASK | (_RTR_AV_MASK if attr.ah_attr.is_global else M(0))
        self.modify(attr, mask)

    def to_rts(self, attr: QPAttr) -> None:
        """RTR → RTS: the send queue starts working.  From RESET or INIT it goes through
        the states before, with the same *attr* (as pyverbs' ``to_rts``)."""
        if self.qp_state in (S.IBV_QPS_RESET, S.IBV_QPS_INIT):
            self.to_rtr(attr)
        attr.qp_state = S.IBV_QPS_RTS
        ud_mask = M.IBV_QP_STATE | M.IBV_QP_SQ_PSN
        self.modify(attr, ud_mask if self._datagrams is not None else _RTS_MASK)

    def modify(self, attr: QPAttr, attr_mask: int) -> None:
        """``ibv_modify_qp``.  Invalid transitions or attributes raise EINVAL, change nothing."""
        self._check_open()
        ud = self._datagrams is not None
        settable = _UD_SETTABLE if ud else _SETTABLE & ~M.IBV_QP_QKEY
        unknown = int(attr_mask) & ~int(settable)  # ints: IntFlag's ~ drops unknown bits
        if unknown:
            kind = "a UD" if ud else "an RC"
            raise TcpverbsError(
                errno.EINVAL, f"unsupported attribute mask bits 0x{unknown:x} for {kind} QP"
            )
        mask = M(attr_mask)
        with self._lock:
            cur = self._qp.state
            if mask & M.IBV_QP_CUR_STATE and attr.cur_qp_state != cur:
                raise TcpverbsError(
                    errno.EINVAL,
                    f"cur_qp_state {S(attr.cur_qp_state).name} but the QP is in {cur.name}",
                )
            new = S(attr.qp_state) if mask & M.IBV_QP_STATE else cur
            if new is S.IBV_QPS_RESET:
                if not ud:
                    self.ctx._oob.cancel(self.qp_num)
                self._qp.reset()
                self._attr = QPAttr(qp_state=S.IBV_QPS_RESET, cap=self.cap)
                return
            if new is S.IBV_QPS_ERR:
                if not ud:
                    self.ctx._oob.cancel(self.qp_num)
                self._qp.fail(TcpverbsError(errno.ECANCELED, "moved to ERR by the application"))
                return
            required = (_REQUIRED_UD if ud else _REQUIRED).get((cur, new))
            if required is None:
                raise TcpverbsError(errno.EINVAL, self._bad_transition(cur, new))
            if required & ~mask:
                raise TcpverbsError(
                    errno.EINVAL,
                    f"{cur.name} -> {new.name} requires attribute mask {(required & ~mask).name}",
                )
            self._check_attrs(attr, mask)
            plan: _Plan | None = None
            if (cur, new) == (S.IBV_QPS_INIT, S.IBV_QPS_RTR):
                # validated before anything changes; a UD QP's socket is its own
                plan = (
                    _Handoff(self._datagrams.handle())
                    if self._datagrams is not None
                    else self._plan_connection(attr, mask)
                )
            saved = QPAttr(**{f: getattr(self._attr, f) for f in QPAttr.__slots__})
            for bit, names in _FIELDS.items():
                if mask & bit:
                    for name in names:
                        setattr(self._attr, name, getattr(attr, name))
            self._attr.qp_state = new
            if not self._qp.modify(cur, new, self._params()):
                self._attr = saved  # the engine moved the QP meanwhile (to ERR)
                if plan is not None:
                    plan.abandon()  # a handed-over socket was ours already: closed
                    attr.sock = None
                raise TcpverbsError(errno.EINVAL, self._bad_transition(self._qp.state, new))
            if plan is not None:
                attr.sock = None  # the library owns it now
                plan.start(self)
            if (cur, new) == (S.IBV_QPS_RTR, S.IBV_QPS_RTS) and not ud:
                self.ctx._oob.rts(self.qp_num, self._attr.sq_psn)  # a waiting QP's proof

    def _bad_transition(self, cur: ibv_qp_state, new: ibv_qp_state) -> str:
        why = f"invalid QP state transition {cur.name} -> {new.name}"
        error = self._qp.error
        if cur is S.IBV_QPS_ERR and error is not None:
            why += f" (the QP is in ERR: {error.strerror})"
        return why

    def _params(self) -> QPParams:
        a = self._attr
        return QPParams(
            int(a.qp_access_flags),
            a.max_rd_atomic,
            a.max_dest_rd_atomic,
            a.rnr_retry,
            a.min_rnr_timer,
            a.timeout,
            a.retry_cnt,
            a.dest_qp_num,
            a.rq_psn,
            a.sq_psn,
            a.qkey,
        )

    def _check_attrs(self, attr: QPAttr, mask: M) -> None:
        if mask & M.IBV_QP_PORT and attr.port_num != 1:
            raise TcpverbsError(errno.EINVAL, f"port_num {attr.port_num!r}: the device has port 1")
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
            flags = attr.qp_access_flags
            if not isinstance(flags, int) or flags & ~allowed:
                shown = f"0x{flags:x}" if isinstance(flags, int) else repr(flags)
                raise TcpverbsError(errno.EINVAL, f"unsupported qp_access_flags {shown}")
        for bit, name, low, high in _ATTR_RANGES:
            if mask & bit:
                check_int(name, getattr(attr, name), low, high)

    # -- connection -------------------------------------------------------------------
    def _plan_connection(self, attr: QPAttr, mask: M) -> _Plan:
        """How INIT -> RTR connects: a socket handed over, a dial to the peer's context,
        or a wait for the peer to dial."""
        if attr.sock is not None:
            return _Handoff(take_socket(attr.sock))
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
        host = oob.gid_address(dgid)
        if (local.raw, self.qp_num) > (dgid.raw, dest):  # the larger side dials
            return _Dial(oob.connect_socket(dgid, dest, local), dest, host)
        return _Wait(dest, host)

    def query_data_in_order(self, op: int, flags: int = 0) -> int:
        """``ibv_query_qp_data_in_order``: 1 (``IBV_QUERY_QP_DATA_IN_ORDER_WHOLE_MSG``):
        a message's bytes land in order, an rc message from a TCP stream and a UD one
        copied whole, and the completion comes after all of them."""
        self._check_open()
        check_int("op", op, 0, 0xFFFFFFFF)
        check_int("flags", flags, 0, 0xFFFFFFFF)
        return 1

    def query_ece(self) -> object:
        """``ibv_query_ece``: a tcpverbs device has no enhanced connection establishment
        options to offer (``EOPNOTSUPP``, which rdma_cm programs take as "none")."""
        raise TcpverbsError(errno.EOPNOTSUPP, "Failed to query ECE: a tcpverbs device has no ECE")

    def set_ece(self, ece: object) -> None:
        """``ibv_set_ece``: ``EOPNOTSUPP``, as :meth:`query_ece`."""
        raise TcpverbsError(errno.EOPNOTSUPP, "Failed to set ECE: a tcpverbs device has no ECE")

    def query(self, attr_mask: int = 0) -> tuple[QPAttr, QPInitAttr]:
        """``ibv_query_qp``: current attributes (all of them, whatever the mask)."""
        self._check_open()
        with self._lock:
            attr = QPAttr(**{f: getattr(self._attr, f) for f in QPAttr.__slots__ if f != "sock"})
            attr.qp_state = attr.cur_qp_state = self._qp.state
            attr.cap = QPCap(**{f: getattr(self.cap, f) for f in QPCap.__slots__})
        return attr, self.init_attr

    # -- posting -------------------------------------------------------------------
    def post_send(self, wr: SendWR, bad_wr: SendWR | None = None) -> None:
        """``ibv_post_send``: queue *wr* and the WRs chained to it by ``next_wr``.

        When a WR is refused, the error names it (``PostError.bad_wr``) and, as in
        pyverbs, a *bad_wr* given here becomes a copy of it."""
        if self._closed:
            self._check_open()
        failure = self._post_send(wr)
        if failure is not None:
            raise self._post_error(failure, wr, "post_send", bad_wr)

    def post_recv(self, wr: RecvWR, bad_wr: RecvWR | None = None) -> None:
        """``ibv_post_recv``: give the QP buffers for incoming messages (*bad_wr*: as for
        :meth:`post_send`)."""
        if self._closed:
            self._check_open()
        if self.srq is not None:
            raise TcpverbsError(
                errno.EINVAL, "Failed to post receive: the QP takes its receives from an SRQ"
            )
        failure = self._post_recv(wr)
        if failure is not None:
            raise self._post_error(failure, wr, "post_recv", bad_wr)

    def _bind_fast_posts(self) -> None:
        """Where the engine can, post without a Python frame: these methods then run only
        for what is not the common path."""
        refused = self._refused
        engine = self.ctx._engine
        send_fail = functools.partial(refused, "post_send")
        self._shadow_with_fast_call(engine, _POST_SEND, self._post_send, send_fail, FAST_POST)
        if self.srq is None:  # (post_recv refuses: the SRQ takes the receives)
            recv_fail = functools.partial(refused, "post_recv")
            self._shadow_with_fast_call(engine, _POST_RECV, self._post_recv, recv_fail, FAST_POST)

    def _refused(
        self, verb: str, failure: PostFailure, wr: SendWR | RecvWR, bad_wr: SendWR | RecvWR | None
    ) -> None:
        raise self._post_error(failure, wr, verb, bad_wr)

    def _post_error(
        self,
        failure: PostFailure,
        first: SendWR | RecvWR,
        verb: str,
        bad_wr: SendWR | RecvWR | None = None,
    ) -> PostError:
        return post_error(failure, first, verb, bad_wr, wire=self.wire, setup_error=self._qp.error)

    def _release(self) -> None:
        with self._lock:  # no modify() half-way: a connection plan never outlives the QP
            if self._datagrams is None:
                self.ctx._oob.cancel(self.qp_num)
            self._qp.destroy()
        self._free_number()

    def statistics(self) -> dict[str, int]:
        """Counters of this QP's traffic (see the engine's transport for their meaning)."""
        return self._qp.statistics()

    def __repr__(self) -> str:
        return f"<QP {self.qp_num} {self.wire} {self.qp_state.name}>"


_POST_SEND, _POST_RECV = QP.post_send, QP.post_recv  # what FastCalls shadow, and fall back to


class _Handoff:
    """INIT -> RTR over a socket the application handed over."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def start(self, qp: QP) -> None:
        if not qp._qp.attach(self.sock, None, None):
            self.sock.close()

    def abandon(self) -> None:
        self.sock.close()


class _Dial:
    """INIT -> RTR by dialling the peer's context (we are the larger side)."""

    def __init__(self, sock: socket.socket, dest: int, host: str) -> None:
        self.sock, self.dest, self.host = sock, dest, host

    def start(self, qp: QP) -> None:
        qp.ctx._oob.dial(qp._qp, self.sock, self.dest, self.host)

    def abandon(self) -> None:
        self.sock.close()


class _Wait:
    """INIT -> RTR by waiting for the peer to dial us."""

    def __init__(self, dest: int, host: str) -> None:
        self.dest, self.host = dest, host

    def start(self, qp: QP) -> None:
        qp.ctx._oob.expect(qp._qp, self.dest, self.host, qp._attr.rq_psn)

    def abandon(self) -> None:
        """Nothing started."""


_Plan = _Handoff | _Dial | _Wait


_EX_MASK_KNOWN = functools.reduce(operator.or_, ibv_qp_init_attr_mask)
_F = ibv_qp_create_send_ops_flags
# the operations a QP made with send_ops_flags (QPEx) may build
SUPPORTED_SEND_OPS = (
    _F.IBV_QP_EX_WITH_RDMA_WRITE
    | _F.IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM
    | _F.IBV_QP_EX_WITH_SEND
    | _F.IBV_QP_EX_WITH_SEND_WITH_IMM
    | _F.IBV_QP_EX_WITH_RDMA_READ
    | _F.IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP
    | _F.IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD
)


def check_send_ops(ops: object) -> ibv_qp_create_send_ops_flags:
    """*ops* as flags, if a tcpverbs QP builds all of them: memory windows, invalidation,
    TSO, FLUSH and ATOMIC_WRITE are EOPNOTSUPP, unknown bits EINVAL."""
    return check_flags(
        ops,
        ibv_qp_create_send_ops_flags,
        SUPPORTED_SEND_OPS,
        "Failed to create QP: send_ops_flags {value!r}",
        "Failed to create QP: a tcpverbs QP does not offer {names}",
    )


def _creator_and_attr(
    creator: PD | Context, attr: QPInitAttr | QPInitAttrEx
) -> tuple[PD, QPInitAttr]:
    """The PD and plain init attributes of a QP made either way (``ibv_create_qp`` from a
    PD, ``ibv_create_qp_ex`` from a context)."""
    from .pd import PD

    if isinstance(creator, PD):
        if not isinstance(attr, QPInitAttr):
            raise TcpverbsError(
                errno.EINVAL, "QP(pd, ...) takes a QPInitAttr; QPInitAttrEx goes with QP(ctx, ...)"
            )
        return creator, attr
    if not isinstance(attr, QPInitAttrEx):
        raise TcpverbsError(errno.EINVAL, "QP(ctx, ...) takes a QPInitAttrEx (ibv_create_qp_ex)")
    mask = attr.comp_mask
    if not isinstance(mask, int) or mask & ~int(_EX_MASK_KNOWN):
        raise TcpverbsError(
            errno.EINVAL, f"Failed to create QP: unknown comp_mask bits in {mask!r}"
        )
    X = ibv_qp_init_attr_mask
    if mask & (X.IBV_QP_INIT_ATTR_XRCD | X.IBV_QP_INIT_ATTR_IND_TABLE | X.IBV_QP_INIT_ATTR_RX_HASH):
        raise TcpverbsError(
            errno.EOPNOTSUPP, "Failed to create QP: a tcpverbs device has no XRC or RSS QPs"
        )
    if mask & X.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS:
        check_send_ops(attr.send_ops_flags)

    if mask & X.IBV_QP_INIT_ATTR_CREATE_FLAGS and attr.create_flags:
        raise TcpverbsError(
            errno.EOPNOTSUPP,
            f"Failed to create QP: create_flags {attr.create_flags:#x} (a tcpverbs QP has none)",
        )
    if mask & X.IBV_QP_INIT_ATTR_MAX_TSO_HEADER and attr.max_tso_header:
        raise TcpverbsError(errno.EOPNOTSUPP, "Failed to create QP: TSO is for raw-packet QPs")
    if not mask & X.IBV_QP_INIT_ATTR_PD or attr.pd is None:
        raise TcpverbsError(
            errno.EINVAL, "Failed to create QP: QPInitAttrEx needs pd and IBV_QP_INIT_ATTR_PD"
        )
    if attr.pd.ctx is not creator:  # (a creator that is no context is none of the PD's)
        raise TcpverbsError(errno.EINVAL, "Failed to create QP: the PD belongs to another context")

    plain = QPInitAttr(
        qp_type=attr.qp_type,
        qp_context=attr.qp_context,
        scq=attr.scq,
        rcq=attr.rcq,
        srq=attr.srq,
        cap=attr.cap,
        sq_sig_all=attr.sq_sig_all,
        wire=attr.wire,
    )
    return attr.pd, plain


def _check_init_attr(pd: PD, attr: QPInitAttr) -> tuple[CQ, CQ]:
    if attr.qp_type not in (ibv_qp_type.IBV_QPT_RC, ibv_qp_type.IBV_QPT_UD):
        raise TcpverbsError(
            errno.EOPNOTSUPP,
            f"qp_type {attr.qp_type}: a tcpverbs device has RC and UD QPs (no UC, XRC or raw)",
        )
    if attr.wire not in ("rc", "stream"):
        raise TcpverbsError(errno.EINVAL, f"wire must be 'rc' or 'stream', not {attr.wire!r}")
    ud = attr.qp_type == ibv_qp_type.IBV_QPT_UD
    if ud and attr.wire != "rc":
        raise TcpverbsError(errno.EINVAL, "a UD QP sends datagrams: it has no wire mode")
    if ud and attr.srq is not None:
        raise TcpverbsError(errno.EOPNOTSUPP, "an SRQ serves rc QPs only, not UD ones")
    if attr.srq is not None:
        if not isinstance(attr.srq, SRQ) or attr.srq.pd is not pd:
            # (verbs lets an SRQ's PD differ from its QPs'; here the WRs a QP takes are
            # checked, and revoked, with the QP's own memory: one PD for both)
            raise TcpverbsError(errno.EINVAL, "QPInitAttr.srq must be an SRQ of the QP's PD")
        attr.srq._check_open()
        if attr.wire != "rc":
            raise TcpverbsError(
                errno.EOPNOTSUPP, "an SRQ serves rc QPs only (a stream QP's receives are its bytes)"
            )
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
        # with an SRQ the receive caps are not used (ibv_create_qp ignores them)
        "max_recv_wr": (0 if attr.srq is not None else 1, MAX_QP_WR),
        "max_send_sge": (0, MAX_SGE),
        "max_recv_sge": (0, MAX_SGE),
        "max_inline_data": (0, MAX_INLINE_DATA),
    }
    for name, (low, high) in limits.items():
        value = getattr(cap, name)
        if not isinstance(value, int) or not low <= value <= high:
            raise TcpverbsError(errno.EINVAL, f"cap.{name}={value!r} is outside {low}..{high}")
    return scq, rcq
