"""rdma_cm over TCP: ``CMID``, ``AddrInfo``, ``CMEventChannel``, ``CMEvent``, ``ConnParam``
with librdmacm's semantics for RC (``RDMA_PS_TCP``) and UD (``RDMA_PS_UDP``), as
pyverbs spells them.

A connection is made the way InfiniBand's CM makes it, over a TCP *control connection*
instead of management datagrams (:mod:`.messages`): the active side's ``connect`` sends
a REQ to the passive side's listening address; the passive side sees
``RDMA_CM_EVENT_CONNECT_REQUEST`` with a new ``CMID`` and ``accept``\\ s (REP) or
``reject``\\ s (REJ, with private data); the active side, on the REP, moves its QP to RTS
and answers RTU.  Both see ``RDMA_CM_EVENT_ESTABLISHED``.  The QPs connect to each other
by GID and QP number (tcpverbs' out-of-band connection, :mod:`tcpverbs.oob`), each GID
being the address of its end of the control connection, and the PSNs the two sides
exchanged prove them to each other.  ``disconnect`` moves the QP to ERR and sends a DREQ;
the peer's QP goes to ERR too, and both sides see ``RDMA_CM_EVENT_DISCONNECTED``.  The
control connection stays up meanwhile, so a peer that goes away is seen as a
disconnection.

Progress is made by whoever waits for an event (``CMEvent(channel)``, ``get_request``,
a synchronous ``connect`` / ``accept``), as librdmacm delivers events only through
``rdma_get_cm_event``: no thread runs behind the program's back.  A ``CMID`` made from an
``AddrInfo`` is *synchronous* (``rdma_create_ep``): it has a private channel and its
calls wait for their outcome.

``RDMA_PS_UDP`` resolves a UD QP the way IB's SIDR does, over the same control
connection: ``connect`` sends a REQ naming the active side's UD QP, ``accept`` answers
with a REP naming the passive side's, and the control connection closes; the active
side sees ``RDMA_CM_EVENT_ESTABLISHED`` with the peer's address vector, QP number and
Q_Key (``UDParam(event)``), the passive side no event, as librdmacm has it.  A UD QP
made by ``create_qp`` is in RTS at once with ``RDMA_UDP_QKEY``.  What a TCP
device does not have -- IPoIB and multicast, ECE, IB path records -- says
``EOPNOTSUPP``.

Bounds: a listener holds at most ``backlog`` (at most ``MAX_BACKLOG``) connections that
have not sent their REQ, each for ``REQ_DEADLINE`` seconds at most; a control connection
buffers at most one message (:data:`.messages.MAX_BODY`); an active side waits
``RESPONSE_TIMEOUT`` seconds for its answer, then sees ``RDMA_CM_EVENT_UNREACHABLE``.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import socket
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from ..context import Context
from ..cq import CQ
from ..device import GID
from ..enums import (
    ibv_access_flags,
    ibv_qp_attr_mask,
    ibv_qp_state,
    ibv_qp_type,
    ibv_send_flags,
)
from ..enums import ibv_wr_opcode as _WR
from ..errors import PyverbsUserError, TcpverbsError, from_oserror
from ..mr import MR
from ..pd import PD
from ..qp import QP
from ..qp_attr import AHAttr, GlobalRoute, QPAttr, QPCap, QPInitAttr
from ..wr import SGE, RecvWR, SendWR
from .addresses import AddrInfo, ConnParam, context_for, pd_for, route_source
from .enums import (
    RDMA_OPTION_ID,
    RDMA_OPTION_ID_ACK_TIMEOUT,
    RDMA_OPTION_ID_REUSEADDR,
    RDMA_UDP_QKEY,
    rdma_cm_event_type,
    rdma_port_space,
)
from .events import CMEvent, CMEventChannel, UDInfo, UDParam
from .messages import PRIVATE_DATA_MAX, CMDecoder, CMMessage, MessageType, encode

if TYPE_CHECKING:
    from ..cq import WC

__all__ = [
    "CMID",
    "CONNECT_GRACE",
    "MAX_BACKLOG",
    "REQ_DEADLINE",
    "RESPONSE_TIMEOUT",
    "AddrInfo",
    "CMEvent",
    "CMEventChannel",
    "ConnParam",
    "UDParam",
]

EV = rdma_cm_event_type
S = ibv_qp_state
M = ibv_qp_attr_mask
A = ibv_access_flags

MAX_BACKLOG = 128
REQ_DEADLINE = 10.0  # seconds a new control connection has to send its REQ
RESPONSE_TIMEOUT = 20.0  # seconds an active side waits for REP / REJ
CONNECT_GRACE = 0.05  # seconds connect() waits for the TCP handshake before returning
# what rdma_cm gives a QP it makes or tells a program to set (librdmacm does the same)
_QP_ACCESS = A.IBV_ACCESS_LOCAL_WRITE | A.IBV_ACCESS_REMOTE_WRITE | A.IBV_ACCESS_REMOTE_READ
_DEFAULT_TIMEOUT = 14  # 4.096 us * 2^14: about 67 ms per try
_MIN_RNR_TIMER = 12
_PORT_SPACES = (rdma_port_space.RDMA_PS_TCP, rdma_port_space.RDMA_PS_UDP)


def _check_private_data(what: str, kind: MessageType, param: ConnParam) -> None:
    """EINVAL before anything changes when *param* carries more than *kind* may."""
    if len(param.private_data) > PRIVATE_DATA_MAX[kind]:
        raise TcpverbsError(
            errno.EINVAL,
            f"{what}: at most {PRIVATE_DATA_MAX[kind]} bytes of private data, "
            f"got {len(param.private_data)}",
        )


class _Peer:
    """What the other side said in its REQ or REP, and where it is."""

    def __init__(self, message: CMMessage, address: str) -> None:
        self.qp_num = message.qp_num
        self.psn = message.psn
        self.responder_resources = message.responder_resources
        self.initiator_depth = message.initiator_depth
        self.retry_count = message.retry_count
        self.rnr_retry_count = message.rnr_retry_count
        self.gid = GID.from_ip(address)


# -- the CM ID ---------------------------------------------------------------------------
class CMID:
    """``rdma_cm_id``.  ``CMID(creator=channel)`` (``rdma_create_id``: asynchronous,
    events on *channel*), ``CMID(creator=addr_info, qp_init_attr=...)``
    (``rdma_create_ep``: synchronous; an active one has its QP at once), or
    ``CMID(creator=event, listen_id=listener)``: the new CMID of a
    ``RDMA_CM_EVENT_CONNECT_REQUEST``."""

    def __new__(cls, creator: object = None, *args: object, **kwargs: object) -> CMID:
        if isinstance(creator, CMEvent) and isinstance(creator.id, cls):
            return creator.id  # the request's CMID, made when the REQ came
        return super().__new__(cls)

    def __init__(
        self,
        creator: object = None,
        qp_init_attr: QPInitAttr | None = None,
        pd: PD | None = None,
        port_space: int = rdma_port_space.RDMA_PS_TCP,
        listen_id: CMID | None = None,
    ) -> None:
        if isinstance(creator, CMEvent):
            if listen_id is None:
                raise PyverbsUserError("listen ID not provided")
            if creator.event_type != EV.RDMA_CM_EVENT_CONNECT_REQUEST or creator.id is not self:
                raise TcpverbsError(errno.EINVAL, "Failed to create CM ID: not a request event")
            if creator.listen_id is not listen_id:
                raise TcpverbsError(errno.EINVAL, "Failed to create CM ID: another listener's")
            return
        self._setup(port_space)
        if isinstance(creator, CMEventChannel):
            self.event_channel: CMEventChannel | None = creator
        elif isinstance(creator, AddrInfo):
            self._init_endpoint(creator, qp_init_attr, pd)
        else:
            raise TcpverbsError(errno.EINVAL, f"Cannot create CM ID from {type(creator).__name__}")

    def _setup(self, port_space: int) -> None:
        if port_space not in _PORT_SPACES:
            raise TcpverbsError(
                errno.EOPNOTSUPP,
                f"Failed to create CM ID: port space {port_space} -- a tcpverbs device "
                "has RDMA_PS_TCP and RDMA_PS_UDP, no IPoIB or multicast",
            )
        self.port_space = port_space
        self._ud = port_space == rdma_port_space.RDMA_PS_UDP
        self.event_channel = None
        self._channel: CMEventChannel | None = None  # a synchronous CMID's own channel
        self._owns_channel = False
        self.ctx: Context | None = None
        self.pd: PD | None = None
        self.qp: QP | None = None
        self._own_cqs: list[CQ] = []
        self._sync_init: QPInitAttr | None = None  # a synchronous listener's, for children
        self._sgid_index = 0
        self._bound: tuple[str, int] | None = None
        self._dst: tuple[str, int] | None = None
        self._listener: socket.socket | None = None
        self._pending: dict[int, tuple[socket.socket, CMDecoder, float]] = {}  # fd -> REQ due
        self._backlog = 0
        self._sock: socket.socket | None = None  # the control connection
        self._decoder = CMDecoder()
        self._connecting = False  # a non-blocking connect is under way
        self._deadline: float | None = None
        self._state = "idle"
        self._psn = secrets.randbits(24)
        self._peer: _Peer | None = None
        self._param = ConnParam()
        self._timeout = _DEFAULT_TIMEOUT
        self._reuseaddr = False
        self._listen_id: CMID | None = None
        self._request: CMMessage | None = None
        self._closed = False

    def _init_endpoint(self, ai: AddrInfo, init: QPInitAttr | None, pd: PD | None) -> None:
        """rdma_create_ep: bound (passive) or resolved (active), with a private channel."""
        if ai.port_space not in _PORT_SPACES:
            self._setup(ai.port_space)  # refuses
        self._channel = CMEventChannel()
        self._owns_channel = True
        if ai.passive:
            assert ai.src_addr is not None
            self._bind(ai.src_addr)
            self._sync_init = init
            return
        if ai.dst_addr is None:
            raise TcpverbsError(errno.EINVAL, "Failed to create CM ID: no destination")
        self.resolve_addr(ai)
        self._wait(EV.RDMA_CM_EVENT_ADDR_RESOLVED)
        self.resolve_route()
        self._wait(EV.RDMA_CM_EVENT_ROUTE_RESOLVED)
        if pd is not None:
            self.pd = pd
        if init is not None:
            self.create_qp(init)

    # -- properties ----------------------------------------------------------------------
    @property
    def context(self) -> Context | None:
        return self.ctx

    @property
    def qpn(self) -> int:
        if self.qp is None:
            raise TcpverbsError(errno.EINVAL, "the CM ID has no QP")
        return self.qp.qp_num

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def local_addr(self) -> tuple[str, int] | None:
        """(host, port) this CMID is bound or listening on (``rdma_get_local_addr``;
        the port a listener bound to port 0 got), or of its end of the connection."""
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
            return str(host), int(port)
        return self._bound

    @property
    def _any_channel(self) -> CMEventChannel | None:
        """Where its events go: its own channel (synchronous) or the program's."""
        return self._channel if self._channel is not None else self.event_channel

    def _guard(self) -> AbstractContextManager[object]:
        """The channel's lock: a public call that changes the state runs under it, so
        it never interleaves with the event processing another thread's wait does."""
        channel = self._any_channel
        return channel._lock if channel is not None else nullcontext()

    def _events(self) -> CMEventChannel:
        channel = self._any_channel
        if channel is None or channel.closed:
            raise TcpverbsError(errno.EBADF, "the CM ID's event channel is closed")
        return channel

    def _event(
        self,
        event_type: rdma_cm_event_type,
        data: bytes = b"",
        status: int = 0,
        ud: UDInfo | None = None,
    ) -> None:
        event = CMEvent._make(event_type, self, self._listen_id, data, status, ud)
        self._events()._push(event)

    def _ud_info(self) -> UDInfo:
        """The peer's UD QP, as an event's ``param.ud`` gives it."""
        assert self._peer is not None
        route = GlobalRoute(dgid=self._peer.gid, sgid_index=self._sgid_index, hop_limit=64)
        ah_attr = AHAttr(is_global=1, gr=route, port_num=1)
        return UDInfo(ah_attr, self._peer.qp_num, RDMA_UDP_QKEY)

    def _wait(self, *types: rdma_cm_event_type, timeout: float | None = None) -> CMEvent:
        """A synchronous call's outcome: this CMID's next event (one of *types*, else an
        error)."""
        event = self._events()._next(lambda e: e.id is self, timeout)
        if event.event_type not in types:
            raise TcpverbsError(
                errno.ECONNREFUSED if event.event_type == EV.RDMA_CM_EVENT_REJECTED else errno.EIO,
                f"expected {' or '.join(t.name for t in types)}, got {event.event_str()}"
                + (f" (status {event.status})" if event.status else ""),
            )
        return event

    # -- addresses -----------------------------------------------------------------------
    def _open_device(self, address: str) -> None:
        if self.ctx is None:
            self.ctx, _, self._sgid_index = context_for(address)
        if self.pd is None:
            self.pd = pd_for(self.ctx)

    def _bind(self, addr: tuple[str, int]) -> None:
        if self._state != "idle":
            raise TcpverbsError(errno.EINVAL, "Failed to Bind ID: it is bound already")
        if addr[0] not in ("0.0.0.0", "::"):
            self._open_device(addr[0])
        self._bound = addr
        self._state = "bound"

    def bind_addr(self, lai: AddrInfo) -> None:
        """``rdma_bind_addr``: the local address (and so the device) of this CMID."""
        addr = lai.src_addr
        if addr is None:
            raise TcpverbsError(errno.EINVAL, "Failed to Bind ID: the AddrInfo has no source")
        self._bind(addr)

    def resolve_addr(self, rai: AddrInfo, timeout_ms: int = 2000) -> None:
        """``rdma_resolve_addr``: the device that reaches *rai*'s destination; then
        ``RDMA_CM_EVENT_ADDR_RESOLVED`` (or ``..._ADDR_ERROR``)."""
        if rai.dst_addr is None:
            raise TcpverbsError(errno.EINVAL, "Failed to Resolve Address: no destination")
        if self._state not in ("idle", "bound"):
            raise TcpverbsError(errno.EINVAL, f"Failed to Resolve Address: the ID is {self._state}")
        self._dst = rai.dst_addr
        try:
            source = rai.src_addr[0] if rai.src_addr is not None else route_source(rai.dst_addr)
            self._open_device(source)
        except TcpverbsError as exc:
            self._event(EV.RDMA_CM_EVENT_ADDR_ERROR, status=-(exc.errno or errno.EIO))
            return
        self._state = "addr_resolved"
        self._event(EV.RDMA_CM_EVENT_ADDR_RESOLVED)

    def resolve_route(self, timeout_ms: int = 2000) -> None:
        """``rdma_resolve_route`` (the kernel routes TCP): ``RDMA_CM_EVENT_ROUTE_RESOLVED``."""
        if self._state != "addr_resolved":
            raise TcpverbsError(errno.EINVAL, "Failed to Resolve Route: resolve the address first")
        self._state = "route_resolved"
        self._event(EV.RDMA_CM_EVENT_ROUTE_RESOLVED)

    # -- the QP --------------------------------------------------------------------------
    def create_qp(self, qp_init: QPInitAttr) -> None:
        """``rdma_create_qp``: a QP on this CMID's PD -- RC (``RDMA_PS_TCP``), in INIT,
        or UD (``RDMA_PS_UDP``), in RTS with ``RDMA_UDP_QKEY``; CQs are made for it when
        *qp_init* has none."""
        if self.pd is None or self.ctx is None:
            raise TcpverbsError(errno.EINVAL, "Failed to Create QP: the CM ID has no device yet")
        if self.qp is not None:
            raise TcpverbsError(errno.EINVAL, "Failed to Create QP: the CM ID has one")
        wanted = ibv_qp_type.IBV_QPT_UD if self._ud else ibv_qp_type.IBV_QPT_RC
        if qp_init.qp_type != wanted:
            raise TcpverbsError(
                errno.EINVAL,
                f"Failed to Create QP: type {qp_init.qp_type} on a {self._space_name} "
                f"CM ID (it takes {wanted.name})",
            )
        cap = qp_init.cap if qp_init.cap is not None else QPCap()
        init = QPInitAttr(
            qp_type=qp_init.qp_type,
            scq=qp_init.scq,
            rcq=qp_init.rcq,
            cap=cap,
            sq_sig_all=qp_init.sq_sig_all,
        )
        if init.scq is None:
            init.scq = self._cq(cap.max_send_wr)
        if init.rcq is None:
            init.rcq = self._cq(cap.max_recv_wr)
        if self._ud:  # ready at once, as librdmacm's UD QPs are
            self.qp = QP(self.pd, init)
            self._connect_qp()
        else:
            self.qp = QP(self.pd, init, QPAttr(qp_access_flags=_QP_ACCESS))

    @property
    def _space_name(self) -> str:
        return rdma_port_space(self.port_space).name

    def _cq(self, depth: int) -> CQ:
        assert self.ctx is not None
        cq = CQ(self.ctx, max(depth, 1))
        self._own_cqs.append(cq)
        return cq

    def init_qp_attr(self, qp_state: int) -> tuple[QPAttr, int]:
        """``rdma_init_qp_attr``: what a QP the program made itself needs to reach
        *qp_state* on this connection, and the mask of what is set."""
        state = S(qp_state)
        if self._ud:
            return _ud_qp_attr(state)
        if state == S.IBV_QPS_INIT:
            attr = QPAttr(qp_state=state, pkey_index=0, port_num=1, qp_access_flags=_QP_ACCESS)
            return attr, int(
                M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS
            )
        peer = self._peer
        if peer is None or state not in (S.IBV_QPS_RTR, S.IBV_QPS_RTS):
            raise TcpverbsError(
                errno.EINVAL,
                f"Failed to get QP attributes for {state.name}"
                + ("" if peer else ": the peer is not known yet"),
            )
        if state == S.IBV_QPS_RTR:
            attr = QPAttr(
                qp_state=state,
                ah_attr=AHAttr(
                    is_global=1,
                    gr=GlobalRoute(dgid=peer.gid, sgid_index=self._sgid_index),
                    port_num=1,
                ),
                dest_qp_num=peer.qp_num,
                rq_psn=peer.psn,
                max_dest_rd_atomic=max(self._param.responder_resources, 1),
                min_rnr_timer=_MIN_RNR_TIMER,
            )
            mask = (
                M.IBV_QP_STATE
                | M.IBV_QP_AV
                | M.IBV_QP_PATH_MTU
                | M.IBV_QP_DEST_QPN
                | M.IBV_QP_RQ_PSN
                | M.IBV_QP_MAX_DEST_RD_ATOMIC
                | M.IBV_QP_MIN_RNR_TIMER
            )
            return attr, int(mask)
        attr = QPAttr(
            qp_state=state,
            sq_psn=self._psn,
            timeout=self._timeout,
            retry_cnt=min(peer.retry_count, 7),
            rnr_retry=min(peer.rnr_retry_count, 7),
            max_rd_atomic=max(self._param.initiator_depth, 1),
        )
        mask = (
            M.IBV_QP_STATE
            | M.IBV_QP_TIMEOUT
            | M.IBV_QP_RETRY_CNT
            | M.IBV_QP_RNR_RETRY
            | M.IBV_QP_SQ_PSN
            | M.IBV_QP_MAX_QP_RD_ATOMIC
        )
        return attr, int(mask)

    def _connect_qp(self) -> None:
        """This CMID's own QP to RTS towards the peer (the QPs connect by GID; a UD QP
        needs no peer)."""
        qp = self.qp
        assert qp is not None
        if self._ud and qp.qp_state == S.IBV_QPS_RTS:
            return
        if qp.qp_state == S.IBV_QPS_RESET:
            qp.modify(*self.init_qp_attr(S.IBV_QPS_INIT))
        qp.modify(*self.init_qp_attr(S.IBV_QPS_RTR))
        qp.modify(*self.init_qp_attr(S.IBV_QPS_RTS))

    def query_qp(self, attr_mask: int) -> tuple[QPAttr, QPInitAttr]:
        if self.qp is None:
            raise TcpverbsError(errno.EINVAL, "Failed to query QP: the CM ID has no QP")
        return self.qp.query(attr_mask)

    def set_option(self, level: int, optname: int, optval: int, optlen: int = 0) -> None:
        """``rdma_set_option``: ``RDMA_OPTION_ID_ACK_TIMEOUT`` (the QP's ``timeout``) and
        ``..._REUSEADDR``; the rest are not offered (``EOPNOTSUPP``)."""
        if level == RDMA_OPTION_ID and optname == RDMA_OPTION_ID_ACK_TIMEOUT:
            if not isinstance(optval, int) or not 0 <= optval <= 31:
                raise TcpverbsError(errno.EINVAL, f"Failed to Set Option: timeout {optval!r}")
            self._timeout = optval
            if self.qp is not None and self.qp.qp_state == S.IBV_QPS_RTS:
                self.qp.modify(QPAttr(timeout=optval), M.IBV_QP_TIMEOUT)
            return
        if level == RDMA_OPTION_ID and optname == RDMA_OPTION_ID_REUSEADDR:
            self._reuseaddr = bool(optval)
            return
        raise TcpverbsError(
            errno.EOPNOTSUPP, f"Failed to Set Option: level {level} option {optname}"
        )

    def get_remote_ece(self) -> object:
        raise TcpverbsError(
            errno.EOPNOTSUPP, "Failed to get remote ECE: a tcpverbs device has no ECE"
        )

    def set_local_ece(self, ece: object) -> None:
        raise TcpverbsError(
            errno.EOPNOTSUPP, "Failed to set local ECE: a tcpverbs device has no ECE"
        )

    # -- passive side --------------------------------------------------------------------
    def listen(self, backlog: int = 0) -> None:
        """``rdma_listen``: connection requests to the bound address become
        ``RDMA_CM_EVENT_CONNECT_REQUEST`` events (each with its new CMID)."""
        if self._state != "bound" or self._bound is None:
            raise TcpverbsError(errno.EINVAL, "Listen Failed: bind the CM ID first")
        if not isinstance(backlog, int) or backlog < 0:
            raise TcpverbsError(errno.EINVAL, f"Listen Failed: backlog {backlog!r}")
        host, port = self._bound
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            # *backlog* bounds the connections owing their REQ; the kernel's queue is
            # the largest, so that a newcomer reaches the table and pushes an idle one out
            self._backlog = min(backlog or MAX_BACKLOG, MAX_BACKLOG)
            sock.listen(MAX_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise from_oserror(exc, f"Listen Failed on {host}:{port}") from exc
        with self._guard():
            self._listener = sock
            self._bound = sock.getsockname()[:2]
            self._state = "listening"
            self._events()._watch(sock, self)

    def get_request(self, timeout: float | None = None) -> CMID:
        """``rdma_get_request`` (a synchronous listener): the next request's CMID, with
        its QP made from the listener's ``qp_init_attr``."""
        if self._channel is None or self._state != "listening":
            raise TcpverbsError(errno.EINVAL, "Failed to get request: not a synchronous listener")
        event = self._channel._next(
            lambda e: e.listen_id is self and e.event_type == EV.RDMA_CM_EVENT_CONNECT_REQUEST,
            timeout,
        )
        child = event.id
        assert isinstance(child, CMID)
        child._migrate(CMEventChannel())  # its own, as rdma_migrate_id: it outlives us
        if self._sync_init is not None:
            child.create_qp(self._sync_init)
        return child

    def _migrate(self, channel: CMEventChannel) -> None:
        """Move to *channel* (a synchronous request's CMID leaves its listener's)."""
        old = self._events()
        with old._lock:
            if self._sock is not None:
                old._unwatch(self._sock)
                channel._watch(self._sock, self)
            self._channel = channel
            self._owns_channel = True

    def _poll_events(self, fd: int) -> int:
        """What the channel waits for on *fd*, one of this CMID's sockets."""
        if self._sock is not None and fd == self._sock.fileno() and self._connecting:
            return select.POLLOUT
        return select.POLLIN

    def _on_ready(self, fd: int, events: int) -> None:
        """*fd* is ready; whatever goes wrong becomes this CMID's event, never an
        exception in the thread that waits on the channel (it may be another CMID's)."""
        try:
            if self._listener is not None and fd == self._listener.fileno():
                self._accept_pending()
            elif fd in self._pending:
                self._read_pending(fd)
            elif self._sock is not None and fd == self._sock.fileno():
                if self._connecting:
                    self._connected(events)
                else:
                    self._read()
        except OSError:  # the peer went away mid-step (ENOTCONN, EPIPE...)
            self._lost()

    def _accept_pending(self) -> None:
        """Take what the kernel queued, up to ``backlog`` at a time.  When the table of
        connections that owe their REQ is full, a newcomer takes the oldest one's place:
        a REQ comes at once from a real peer, so only idle connections are pushed out,
        and the listener is never left readable with nobody taking (a busy loop)."""
        assert self._listener is not None
        for _ in range(max(self._backlog, 1)):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # (ECONNABORTED and the like: that one is gone)
            if len(self._pending) >= self._backlog:
                oldest = min(self._pending, key=lambda fd: self._pending[fd][2])
                self._drop_pending(oldest)
            sock.setblocking(False)
            self._pending[sock.fileno()] = (sock, CMDecoder(), time.monotonic() + REQ_DEADLINE)
            self._events()._watch(sock, self)

    def _drop_pending(self, fd: int) -> None:
        sock, _, _ = self._pending.pop(fd)
        self._unwatch(sock)
        sock.close()

    def _unwatch(self, sock: socket.socket) -> None:
        channel = self._any_channel
        if channel is not None:
            channel._unwatch(sock)

    def _read_pending(self, fd: int) -> None:
        sock, decoder, _ = self._pending[fd]
        try:
            data = sock.recv(4096)
            messages = decoder.feed(data) if data else None
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # (a CMProtocolError too)
            messages = None
        if not messages:
            if messages is None:
                self._drop_pending(fd)
            return
        request = messages[0]
        if request.type != MessageType.REQ or len(messages) > 1 or decoder.broken:
            self._drop_pending(fd)  # anything else first is not a CM peer
            return
        del self._pending[fd]
        self._events()._unwatch(sock)
        try:
            child = self._child(sock, request)
        except OSError:  # no device for that address, or the peer left (ENOTCONN)
            sock.close()  # the peer, if any, sees its end
            return
        ud = child._ud_info() if child._ud else None  # the requester's UD QP
        child._event(EV.RDMA_CM_EVENT_CONNECT_REQUEST, request.private_data, ud=ud)

    def _child(self, sock: socket.socket, request: CMMessage) -> CMID:
        child = object.__new__(CMID)
        child._setup(self.port_space)
        child.event_channel = self.event_channel
        child._channel = self._channel
        child._listen_id = self
        local, remote = sock.getsockname()[0], sock.getpeername()[0]
        child._open_device(local)  # the listener's context and PD, if it is bound to one
        child._sock = sock
        child._peer = _Peer(request, remote)
        child._request = request
        child._state = "request"
        self._events()._watch(sock, child)
        return child

    def accept(self, param: ConnParam | None = None) -> None:
        """``rdma_accept``: answer the request (REP); its QP (or the one *param* names)
        goes to RTS.  ``RDMA_CM_EVENT_ESTABLISHED`` follows when the peer confirms; a
        synchronous CMID waits for it."""
        with self._guard():
            if self._state != "request" or self._peer is None:
                raise TcpverbsError(errno.EINVAL, "Failed to Accept Connection: no request pending")
            param = param or ConnParam()
            _check_private_data("Failed to Accept Connection", MessageType.REP, param)
            self._param = param
            qp_num = param.qp_num
            if self.qp is not None:
                self._connect_qp()
                qp_num = self.qp.qp_num
            self._send(MessageType.REP, param.private_data, qp_num, "Failed to Accept Connection")
            if self._ud:  # SIDR: the answer is all; no ESTABLISHED on this side
                self._close_control()
                self._state = "established"
                return
            self._state = "accepted"
            self._deadline = time.monotonic() + RESPONSE_TIMEOUT
        if self._channel is not None:  # synchronous
            self._wait(EV.RDMA_CM_EVENT_ESTABLISHED)

    def reject(self, private_data: bytes | None = None) -> None:
        """``rdma_reject``: refuse the request; the peer sees ``RDMA_CM_EVENT_REJECTED``
        with *private_data*."""
        with self._guard():
            if self._state != "request":
                raise TcpverbsError(errno.EINVAL, "Failed to Reject: no request pending")
            self._send(MessageType.REJ, bytes(private_data or b""), 0, "Failed to Reject")
            self._state = "rejected"
            self._close_control()

    # -- active side ---------------------------------------------------------------------
    def connect(self, param: ConnParam | None = None) -> None:
        """``rdma_connect``: send the request.  The answer is an event:
        ``RDMA_CM_EVENT_ESTABLISHED`` (this CMID's QP is in RTS), ``..._CONNECT_RESPONSE``
        (no QP here: move yours with :meth:`init_qp_attr`, then :meth:`establish`),
        ``..._REJECTED`` or ``..._UNREACHABLE``.  A synchronous CMID waits for it."""
        with self._guard():
            if self._state != "route_resolved" or self._dst is None:
                raise TcpverbsError(errno.EINVAL, "Failed to Connect: resolve the route first")
            param = param or ConnParam()
            _check_private_data("Failed to Connect", MessageType.REQ, param)
            self._param = param
            family = socket.AF_INET6 if ":" in self._dst[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(self._dst)
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                raise TcpverbsError(err, f"Failed to Connect: {os.strerror(err)}")
            self._sock = sock
            self._connecting = True
            self._state = "connecting"
            self._deadline = time.monotonic() + RESPONSE_TIMEOUT
            self._events()._watch(sock, self)
            # the REQ leaves now when the TCP handshake is quick (loopback, a LAN), as
            # rdma_connect's does, so a peer waiting for it needs nothing from this side;
            # a slower one goes out when this CMID's channel is next waited on
            if select.select([], [sock], [], CONNECT_GRACE)[1]:
                self._on_ready(sock.fileno(), select.POLLOUT)
        if self._channel is not None:  # synchronous
            self._wait(EV.RDMA_CM_EVENT_ESTABLISHED)

    def _connected(self, events: int) -> None:
        assert self._sock is not None
        self._connecting = False
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail_connect(
                EV.RDMA_CM_EVENT_REJECTED
                if err == errno.ECONNREFUSED
                else EV.RDMA_CM_EVENT_UNREACHABLE,
                err,
            )
            return
        qp_num = self.qp.qp_num if self.qp is not None else self._param.qp_num
        try:
            self._send(MessageType.REQ, self._param.private_data, qp_num, "Failed to Connect")
        except TcpverbsError as exc:
            self._fail_connect(EV.RDMA_CM_EVENT_UNREACHABLE, exc.errno or errno.EIO)

    def _fail_connect(self, event_type: rdma_cm_event_type, err: int, data: bytes = b"") -> None:
        if self.qp is not None and self.qp.qp_state in (S.IBV_QPS_RTR, S.IBV_QPS_RTS):
            self._qp_to_error()  # it was moved towards a peer that is not there
        self._close_control()
        self._state = "failed"
        self._event(event_type, data, -err)

    def establish(self) -> None:
        """``rdma_establish``: after ``RDMA_CM_EVENT_CONNECT_RESPONSE``, with the
        program's own QP in RTS, confirm the connection (the peer sees ESTABLISHED)."""
        with self._guard():
            if self._state != "responded":
                raise TcpverbsError(errno.EINVAL, "Failed to Complete an active connection request")
            self._send(MessageType.RTU, b"", 0, "Failed to Complete an active connection request")
            self._state = "established"

    def disconnect(self) -> None:
        """``rdma_disconnect``: the QP goes to ERR and the peer is told (DREQ); both
        sides see ``RDMA_CM_EVENT_DISCONNECTED``.  Idempotent once disconnected."""
        if self._ud:
            raise TcpverbsError(errno.EINVAL, "Failed to Disconnect: a UD CM ID has no connection")
        with self._guard():
            if self._state in ("disconnecting", "disconnected"):
                return
            if self._state not in ("established", "accepted", "responded"):
                raise TcpverbsError(
                    errno.EINVAL, f"Failed to Disconnect: the CM ID is {self._state}"
                )
            self._qp_to_error()
            try:
                self._send(MessageType.DREQ, b"", 0, "Failed to Disconnect")
                self._state = "disconnecting"
                self._deadline = time.monotonic() + RESPONSE_TIMEOUT
            except TcpverbsError:
                self._disconnected()  # the peer is gone already

    def _qp_to_error(self) -> None:
        if self.qp is not None and not self.qp.closed and self.qp.qp_state != S.IBV_QPS_ERR:
            self.qp.modify(QPAttr(qp_state=S.IBV_QPS_ERR), M.IBV_QP_STATE)

    def _disconnected(self) -> None:
        self._qp_to_error()
        self._close_control()
        self._state = "disconnected"
        self._event(EV.RDMA_CM_EVENT_DISCONNECTED)

    # -- the control connection ------------------------------------------------------------
    def _send(self, kind: MessageType, data: bytes, qp_num: int, what: str) -> None:
        param = self._param
        message = CMMessage(
            kind,
            data,
            qp_num,
            self._psn,
            param.responder_resources & 0xFF,
            param.initiator_depth & 0xFF,
            param.retry_count & 0xFF,
            param.rnr_retry_count & 0xFF,
        )
        payload = encode(message)
        sock = self._sock
        if sock is None:
            raise TcpverbsError(errno.ENOTCONN, f"{what}: no connection to the peer")
        try:
            sock.settimeout(RESPONSE_TIMEOUT)  # a few hundred bytes: they fit at once
            sock.sendall(payload)
        except OSError as exc:
            raise from_oserror(exc, what) from exc
        finally:
            sock.setblocking(False)

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(4096)
            messages = self._decoder.feed(data) if data else None
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the connection failed, or spoke nonsense (CMProtocolError)
            messages = None
        if messages is None:
            self._lost()
            return
        for message in messages:
            self._handle(message)
            if self._sock is None:
                return
        if self._decoder.broken:  # whole messages, then nonsense: heard, then ended
            self._lost()

    def _lost(self) -> None:
        """The control connection ended (or spoke nonsense)."""
        if self._state in ("established", "disconnecting", "responded"):
            self._disconnected()
        elif self._state in ("connecting", "accepted", "request"):
            self._fail_connect(EV.RDMA_CM_EVENT_CONNECT_ERROR, errno.ECONNRESET)
        else:
            self._close_control()

    def _handle(self, message: CMMessage) -> None:
        kind, state = message.type, self._state
        if kind == MessageType.REP and state == "connecting":
            assert self._sock is not None
            self._peer = _Peer(message, self._sock.getpeername()[0])
            self._deadline = None
            if self._ud:  # SIDR: the peer's UD QP is known; nothing more to say
                self._close_control()
                self._state = "established"
                self._event(EV.RDMA_CM_EVENT_ESTABLISHED, message.private_data, ud=self._ud_info())
                return
            if self.qp is None:
                self._state = "responded"
                self._event(EV.RDMA_CM_EVENT_CONNECT_RESPONSE, message.private_data)
                return
            try:
                self._connect_qp()
            except TcpverbsError as exc:
                self._fail_connect(EV.RDMA_CM_EVENT_CONNECT_ERROR, exc.errno or errno.EIO)
                return
            self._send(MessageType.RTU, b"", 0, "Failed to Connect")
            self._state = "established"
            self._event(EV.RDMA_CM_EVENT_ESTABLISHED, message.private_data)
        elif kind == MessageType.REJ and state == "connecting":
            self._fail_connect(EV.RDMA_CM_EVENT_REJECTED, errno.ECONNREFUSED, message.private_data)
        elif kind == MessageType.RTU and state == "accepted":
            self._deadline = None
            self._state = "established"
            self._event(EV.RDMA_CM_EVENT_ESTABLISHED, message.private_data)
        elif kind == MessageType.DREQ and state in (
            "established",
            "accepted",
            "responded",
            "disconnecting",
        ):
            try:
                self._send(MessageType.DREP, b"", 0, "Failed to Disconnect")
            except TcpverbsError:
                pass  # it asked and went: disconnected either way
            self._disconnected()
        elif kind == MessageType.DREP and state == "disconnecting":
            self._disconnected()
        else:
            self._lost()  # out of turn: not a peer to trust

    def _check_deadline(self, now: float) -> None:
        for fd, (_, _, due) in list(self._pending.items()):
            if now >= due:
                self._drop_pending(fd)
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            if self._state in ("connecting", "accepted"):
                self._fail_connect(EV.RDMA_CM_EVENT_UNREACHABLE, errno.ETIMEDOUT)
            elif self._state == "disconnecting":
                self._disconnected()

    def _close_control(self) -> None:
        sock, self._sock = self._sock, None
        self._connecting = False
        if sock is not None:
            self._unwatch(sock)
            sock.close()

    # -- the data path, rdma_verbs.h's helpers ---------------------------------------------
    def _mr(self, size: int, access: int) -> MR:
        if self.pd is None:
            raise TcpverbsError(errno.EINVAL, "the CM ID has no PD yet")
        return MR(self.pd, size, access)

    def reg_msgs(self, size: int) -> MR:
        """``rdma_reg_msgs``: memory to send from and receive into."""
        return self._mr(size, A.IBV_ACCESS_LOCAL_WRITE)

    def reg_read(self, size: int) -> MR:
        """``rdma_reg_read``: memory the peer may READ."""
        return self._mr(size, A.IBV_ACCESS_LOCAL_WRITE | A.IBV_ACCESS_REMOTE_READ)

    def reg_write(self, size: int) -> MR:
        """``rdma_reg_write``: memory the peer may WRITE."""
        return self._mr(size, A.IBV_ACCESS_LOCAL_WRITE | A.IBV_ACCESS_REMOTE_WRITE)

    def _the_qp(self, what: str) -> QP:
        if self.qp is None:
            raise TcpverbsError(errno.EINVAL, f"{what}: the CM ID has no QP")
        return self.qp

    def _cq_of(self, what: str, send: bool) -> CQ:
        init = self._the_qp(what).init_attr
        cq = init.scq if send else init.rcq
        assert cq is not None  # a QP has both
        return cq

    def post_recv(self, mr: MR, length: int | None = None) -> None:
        """``rdma_post_recv``: receive into *mr* (its first *length* bytes)."""
        qp = self._the_qp("Failed to Post Receive")
        n = mr.length if length is None else length
        qp.post_recv(RecvWR(0, 1, [SGE(mr.buf, n, mr.lkey)]))

    def post_send(
        self, mr: MR, flags: int = ibv_send_flags.IBV_SEND_SIGNALED, length: int | None = None
    ) -> None:
        """``rdma_post_send``: SEND *mr* (its first *length* bytes)."""
        qp = self._the_qp("Failed to Post Send")
        n = mr.length if length is None else length
        wr = SendWR(
            opcode=_WR.IBV_WR_SEND, num_sge=1, sg=[SGE(mr.buf, n, mr.lkey)], send_flags=flags
        )
        qp.post_send(wr)

    def post_ud_send(
        self,
        mr: MR,
        ah: object,
        rqpn: int = 0,
        flags: int = ibv_send_flags.IBV_SEND_SIGNALED,
        length: int | None = None,
    ) -> None:
        """``rdma_post_ud_send``: SEND *mr* (its first *length* bytes) to UD QP *rqpn*
        by address handle *ah*, with ``RDMA_UDP_QKEY``."""
        qp = self._the_qp("Failed to Post UD Send")
        n = mr.length if length is None else length
        wr = SendWR(
            opcode=_WR.IBV_WR_SEND, num_sge=1, sg=[SGE(mr.buf, n, mr.lkey)], send_flags=flags
        )
        wr.set_wr_ud(ah, rqpn, RDMA_UDP_QKEY)
        qp.post_send(wr)

    def _post_rdma(
        self, opcode: int, mr: MR, size: int, remote_addr: int, rkey: int, flags: int
    ) -> None:
        wr = SendWR(opcode=opcode, num_sge=1, sg=[SGE(mr.buf, size, mr.lkey)], send_flags=flags)
        wr.set_wr_rdma(rkey, remote_addr)
        self._the_qp("Failed to Post RDMA").post_send(wr)

    def post_write(self, mr: MR, size: int, remote_addr: int, rkey: int, flags: int = 0) -> None:
        """``rdma_post_write``: WRITE *size* bytes of *mr* to the peer's *remote_addr*."""
        self._post_rdma(_WR.IBV_WR_RDMA_WRITE, mr, size, remote_addr, rkey, flags)

    def post_read(self, mr: MR, size: int, remote_addr: int, rkey: int, flags: int = 0) -> None:
        """``rdma_post_read``: READ *size* bytes of the peer's *remote_addr* into *mr*."""
        self._post_rdma(_WR.IBV_WR_RDMA_READ, mr, size, remote_addr, rkey, flags)

    def get_send_comp(self) -> WC:
        """``rdma_get_send_comp``: wait for the next send completion."""
        return self._cq_of("Failed to retrieve send completion", send=True).wait(1)[0]

    def get_recv_comp(self) -> WC:
        """``rdma_get_recv_comp``: wait for the next receive completion."""
        return self._cq_of("Failed to retrieve receive completion", send=False).wait(1)[0]

    # -- the end -------------------------------------------------------------------------
    def close(self) -> None:
        """``rdma_destroy_id`` (with its QP, the CQs made for it and, for a synchronous
        CMID, its channel)."""
        if self._closed:
            return
        with self._guard():
            self._closed = True
            self._close_control()
            for fd in list(self._pending):
                self._drop_pending(fd)
            if self._listener is not None:
                self._unwatch(self._listener)
                self._listener.close()
                self._listener = None
        if self.qp is not None:
            self.qp.close()
        for cq in self._own_cqs:
            cq.close()
        if self._channel is not None and self._owns_channel:
            self._channel.close()

    def __del__(self) -> None:  # sockets go with the CMID, as pyverbs' ids do
        if hasattr(self, "_closed") and not self._closed:
            self.close()

    def __enter__(self) -> CMID:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ud_qp_attr(state: ibv_qp_state) -> tuple[QPAttr, int]:
    """``rdma_init_qp_attr`` for a UD QP: the Q_Key at INIT, the SQ PSN at RTS."""
    if state == S.IBV_QPS_INIT:
        attr = QPAttr(qp_state=state, pkey_index=0, port_num=1, qkey=RDMA_UDP_QKEY)
        return attr, int(M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY)
    if state == S.IBV_QPS_RTR:
        return QPAttr(qp_state=state), int(M.IBV_QP_STATE)
    if state == S.IBV_QPS_RTS:
        return QPAttr(qp_state=state, sq_psn=0), int(M.IBV_QP_STATE | M.IBV_QP_SQ_PSN)
    raise TcpverbsError(errno.EINVAL, f"Failed to get QP attributes for {state.name}")
