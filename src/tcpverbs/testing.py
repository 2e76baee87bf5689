"""Helpers for tests and examples: connected QP pairs on loopback.

``qp_pair(ctx)`` builds two QPs (each with its own PD and CQs) connected over a real TCP
connection on 127.0.0.1 and returns them in RTS, ready for ``post_*``.  Both may live in
the same thread: the connection hello completes in the background.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from .context import Context
from .cq import CQ, WC
from .engine import EngineFactory
from .engine.api import (
    ChannelEngine,
    Completion,
    ContextEngine,
    CQEngine,
    EngineEvent,
    EngineOptions,
    Overrun,
    PostFailure,
    QPEngine,
    QPParams,
    QPSpec,
    SRQEngine,
)
from .enums import (
    ibv_access_flags,
    ibv_event_type,
    ibv_qp_state,
    ibv_send_flags,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from .errors import TcpverbsError
from .pd import PD
from .qp import QP
from .qp_attr import QPAttr, QPCap, QPInitAttr, WireName
from .wire.hello import Hello
from .wr import RecvWR, SendWR

__all__ = ["Endpoint", "chain", "connect", "poll_until", "qp_pair", "tcp_socket_pair"]

WRT = TypeVar("WRT", SendWR, RecvWR)

ALL_ACCESS = (
    ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_READ
    | ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC
)


@dataclass
class Endpoint:
    """One side of a pair: its PD, send CQ, receive CQ and QP."""

    pd: PD
    scq: CQ
    rcq: CQ
    qp: QP


def tcp_socket_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """Two ends of one TCP connection on loopback (made with the plain socket API)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


def make_endpoint(
    ctx: Context,
    wire: WireName = "rc",
    cap: QPCap | None = None,
    sq_sig_all: int = 1,
    cqe: int = 4096,
) -> Endpoint:
    pd = PD(ctx)
    scq = CQ(ctx, cqe)
    rcq = CQ(ctx, cqe)
    init = QPInitAttr(
        scq=scq, rcq=rcq, cap=cap or QPCap(64, 64, 4, 4, 64), sq_sig_all=sq_sig_all, wire=wire
    )
    qp = QP(pd, init, QPAttr(qp_access_flags=ALL_ACCESS))
    return Endpoint(pd, scq, rcq, qp)


def qp_pair(
    ctx: Context,
    wire: WireName = "rc",
    cap: QPCap | None = None,
    sq_sig_all: int = 1,
    ctx_b: Context | None = None,
    cqe: int = 4096,
    attr: QPAttr | None = None,
) -> tuple[Endpoint, Endpoint]:
    """Two QPs in RTS connected to each other over loopback TCP.

    *attr* (optional) supplies the RTR/RTS attributes of both: ``max_rd_atomic``,
    ``max_dest_rd_atomic``, ``min_rnr_timer``, ``rnr_retry``...
    """
    a = make_endpoint(ctx, wire, cap, sq_sig_all, cqe)
    b = make_endpoint(ctx_b or ctx, wire, cap, sq_sig_all, cqe)
    connect(a.qp, b.qp, attr)
    return a, b


def connect(qp_a: QP, qp_b: QP, attr: QPAttr | None = None) -> None:
    """Move two QPs in INIT to RTS over one new loopback TCP connection (*attr* as in
    :func:`qp_pair`)."""
    sa, sb = tcp_socket_pair()
    for qp, sock in ((qp_a, sa), (qp_b, sb)):
        qp.to_rtr(replace(attr or QPAttr(), sock=sock))
        qp.to_rts(replace(attr or QPAttr(), sock=None))


def poll_until(cq: CQ, count: int = 1, timeout: float = 10.0) -> list[WC]:
    """Poll *cq* until *count* completions arrived; ``ETIMEDOUT`` after *timeout* seconds."""

    deadline = time.monotonic() + timeout
    got: list[WC] = []
    while len(got) < count:
        _, wcs = cq.poll(count - len(got))
        got.extend(wcs)
        if len(got) < count and time.monotonic() > deadline:
            raise TcpverbsError(
                errno.ETIMEDOUT, f"only {len(got)} of {count} completions within {timeout} s: {got}"
            )
    return got


def chain(wrs: list[WRT]) -> WRT:
    """Link *wrs* through ``next_wr`` (a post list); return the first."""
    for first, second in itertools.pairwise(wrs):
        first.next_wr = second
    return wrs[0]


# -- an in-memory engine -------------------------------------------------------------------
#
# ``FakeEngine`` implements the protocols of :mod:`tcpverbs.engine.api` with no sockets and
# no threads, so the verbs layer's own logic (validation, the state machine, the wording of
# errors, the object tree, the mapping of events to objects) can be tested without I/O::
#
#     fake = FakeEngine()
#     ctx = Context(name="tcpv_lo", engine=fake.factory)
#     ...
#     assert ("dereg_mr", mr.lkey) in fake.calls
#
# Every call the verbs layer makes lands in ``fake.calls`` (``fake.called(name)`` filters
# them); ``fake.qps[qp.qp_num]`` and ``fake.cqs[cq.handle]`` are the engine objects behind a
# verbs QP and CQ, and a test programs them: ``refuse`` (the next post's PostFailure),
# ``lost`` (the next poll's Overrun), ``before_modify`` (what the engine does "meanwhile"),
# ``fail(...)`` (a QP going to ERR, with its event), ``push(...)`` (a completion).

FakeCall = tuple[object, ...]

_S = ibv_qp_state
_SUCCESS = int(ibv_wc_status.IBV_WC_SUCCESS)
_SIGNALED = int(ibv_send_flags.IBV_SEND_SIGNALED)
_SEND_WC_OPCODE: dict[int, int] = {
    ibv_wr_opcode.IBV_WR_SEND: ibv_wc_opcode.IBV_WC_SEND,
    ibv_wr_opcode.IBV_WR_SEND_WITH_IMM: ibv_wc_opcode.IBV_WC_SEND,
    ibv_wr_opcode.IBV_WR_RDMA_WRITE: ibv_wc_opcode.IBV_WC_RDMA_WRITE,
    ibv_wr_opcode.IBV_WR_RDMA_WRITE_WITH_IMM: ibv_wc_opcode.IBV_WC_RDMA_WRITE,
    ibv_wr_opcode.IBV_WR_RDMA_READ: ibv_wc_opcode.IBV_WC_RDMA_READ,
    ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP: ibv_wc_opcode.IBV_WC_COMP_SWAP,
    ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD: ibv_wc_opcode.IBV_WC_FETCH_ADD,
}


class FakeSRQ:
    """An SRQ that records what is posted to it; nothing takes from it."""

    def __init__(self, engine: FakeEngine, max_wr: int, max_sge: int) -> None:
        self.engine = engine
        self.max_wr, self.max_sge, self.limit = max_wr, max_sge, 0
        self.posted: list[RecvWR] = []
        self.destroyed = False

    @property
    def count(self) -> int:
        return len(self.posted)

    def post_recv(self, wr: RecvWR) -> PostFailure | None:
        self.engine.calls.append(("srq_post_recv", wr.wr_id))
        self.posted.extend(wr.chain())
        return None

    def modify(self, max_wr: int | None, max_sge: int | None, limit: int | None) -> None:
        self.engine.calls.append(("srq_modify", max_wr, max_sge, limit))
        self.max_wr = self.max_wr if max_wr is None else max_wr
        self.max_sge = self.max_sge if max_sge is None else max_sge
        self.limit = self.limit if limit is None else limit

    def destroy(self) -> None:
        self.engine.calls.append(("srq_destroy",))
        self.destroyed = True


class FakeChannel:
    """A completion channel of a :class:`FakeEngine`.

    ``fd`` is a real (semaphore, non-blocking) eventfd, readable while an event is
    pending; :meth:`signal` queues an event for a CQ handle, :meth:`get_cq_event` takes it
    (never blocking).
    """

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.fd: int = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.events: deque[int] = deque()
        self.destroyed = False

    def signal(self, handle: int) -> None:
        """Queue a completion event for the CQ *handle* (as an armed CQ's completion does)."""
        self.events.append(handle)
        os.eventfd_write(self.fd, 1)

    def get_cq_event(self, timeout: float | None) -> int | None:
        self.engine.calls.append(("get_cq_event", timeout))
        if self.destroyed or not self.events:
            return None
        os.eventfd_read(self.fd)
        return self.events.popleft()

    def destroy(self) -> None:
        self.engine.calls.append(("destroy_channel",))
        if self.destroyed:
            return
        self.destroyed = True
        self.events.clear()
        os.close(self.fd)
        self.fd = -1


class FakeCQ:
    """A CQ of a :class:`FakeEngine`: a queue of :data:`~tcpverbs.engine.api.Completion`
    records.  Set ``lost = k`` and the next ``poll`` / ``wait`` raises ``Overrun(k)``."""

    def __init__(
        self, engine: FakeEngine, handle: int, cqe: int, channel: FakeChannel | None
    ) -> None:
        self.engine = engine
        self.handle = handle
        self.cqe = cqe
        self.channel = channel
        self.records: deque[Completion] = deque()
        self.lost = 0
        self.armed = False
        self.solicited_only = False
        self.destroyed = False
        self.stats: dict[str, int] = {"polls": 0, "waits": 0, "completions": 0, "overruns": 0}

    def push(self, record: Completion, *, solicited: bool = False) -> None:
        """Queue a completion; an armed CQ signals its channel (once per arming)."""
        self.records.append(record)
        self.stats["completions"] += 1
        if self.armed and self.channel is not None and (solicited or not self.solicited_only):
            self.armed = False
            self.channel.signal(self.handle)

    def _take(self, num_entries: int) -> list[Completion]:
        if self.lost:
            lost, self.lost = self.lost, 0
            self.stats["overruns"] += lost
            raise Overrun(lost)
        count = min(num_entries, len(self.records))
        return [self.records.popleft() for _ in range(count)]

    def poll(self, num_entries: int) -> list[Completion]:
        self.engine.calls.append(("poll", self.handle, num_entries))
        self.stats["polls"] += 1
        return self._take(num_entries)

    def wait(self, num_entries: int, timeout: float | None, spin_us: int) -> list[Completion]:
        """What ``poll`` returns, at once: [] (a timeout, to the verbs layer) when empty."""
        self.engine.calls.append(("wait", self.handle, num_entries, timeout, spin_us))
        self.stats["waits"] += 1
        return self._take(num_entries)

    def req_notify(self, solicited_only: bool) -> None:
        self.engine.calls.append(("req_notify", self.handle, solicited_only))
        self.armed = True
        self.solicited_only = solicited_only

    @property
    def pending(self) -> int:
        return len(self.records)

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "pending": len(self.records)}

    def destroy(self) -> None:
        self.engine.calls.append(("destroy_cq", self.handle))
        self.destroyed = True
        self.records.clear()


class FakeQP:
    """A QP of a :class:`FakeEngine`.

    ``state``, ``error``, ``setup_failed`` and ``established`` are plain attributes a test
    may set.  ``modify`` honours *expect*; ``attach`` keeps the socket in ``sock`` (closed
    by ``reset`` and ``destroy``).  Posts accept every WR and complete it at once (one
    success record per signaled send WR, per receive WR) unless ``refuse`` holds a
    :class:`~tcpverbs.engine.api.PostFailure`: the next post accepts the WRs before its
    index and returns it.  ``before_modify`` runs inside the next ``modify``, before the
    state check: the engine acting between the verbs layer's look at the state and its call.
    """

    def __init__(self, engine: FakeEngine, spec: QPSpec) -> None:
        scq, rcq = spec.scq, spec.rcq
        assert isinstance(scq, FakeCQ) and isinstance(rcq, FakeCQ)  # CQs of this engine
        self.engine = engine
        self.spec = spec
        self.qp_num = spec.qp_num
        self.scq: FakeCQ = scq
        self.rcq: FakeCQ = rcq
        self.state: ibv_qp_state = _S.IBV_QPS_RESET
        self.error: TcpverbsError | None = None
        self.setup_failed = False
        self.established = False
        self.params: QPParams | None = None  # of the last successful modify
        self.sock: socket.socket | None = None
        self.peer_hello: Hello | None = None
        self.hello_timeout: float | None = None
        self.refuse: PostFailure | None = None
        self.before_modify: Callable[[FakeQP], None] | None = None
        self.send_wrs: list[SendWR] = []  # every send WR accepted, in order
        self.recv_wrs: list[RecvWR] = []
        self.destroyed = False

    def modify(self, expect: ibv_qp_state, new: ibv_qp_state, params: QPParams) -> bool:
        self.engine.calls.append(("modify", self.qp_num, expect, new))
        hook, self.before_modify = self.before_modify, None
        if hook is not None:
            hook(self)
        if self.state != expect or self.destroyed:
            return False
        self.state = new
        self.params = params
        return True

    def attach(
        self, sock: socket.socket, peer_hello: Hello | None, hello_timeout: float | None
    ) -> bool:
        self.engine.calls.append(("attach", self.qp_num))
        if self.state not in (_S.IBV_QPS_RTR, _S.IBV_QPS_RTS) or self.sock is not None:
            return False
        self.sock, self.peer_hello, self.hello_timeout = sock, peer_hello, hello_timeout
        return True

    def fail(self, error: TcpverbsError, *, setup: bool = False) -> None:
        """To ERR with *error*, queueing ``IBV_EVENT_QP_FATAL`` (once: ERR stays ERR)."""
        self.engine.calls.append(("fail", self.qp_num, error.errno))
        if self.state is _S.IBV_QPS_ERR or self.destroyed:
            return
        self.state = _S.IBV_QPS_ERR
        self.error = error
        self.setup_failed = self.setup_failed or setup
        self.engine.queue_event(
            ibv_event_type.IBV_EVENT_QP_FATAL, self.spec.handle, error.strerror or str(error)
        )

    def reset(self) -> None:
        """To RESET: the socket closed, this QP's unpolled completions dropped."""
        self.engine.calls.append(("reset", self.qp_num))
        self._close_sock()
        for cq in (self.scq, self.rcq):
            cq.records = deque(r for r in cq.records if r[5] != self.qp_num)
        self.state = _S.IBV_QPS_RESET
        self.error = None
        self.setup_failed = False
        self.established = False
        self.params = None

    def destroy(self) -> None:
        self.engine.calls.append(("destroy_qp", self.qp_num))
        self.destroyed = True
        self._close_sock()

    def _close_sock(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def post_send(self, wr: SendWR) -> PostFailure | None:
        wrs = list(wr.chain())
        self.engine.calls.append(("post_send", self.qp_num, len(wrs)))
        refuse, self.refuse = self.refuse, None
        for index, one in enumerate(wrs):
            if refuse is not None and index == refuse.index:
                return refuse
            self.send_wrs.append(one)
            if self.spec.sq_sig_all or one.send_flags & _SIGNALED:
                opcode = _SEND_WC_OPCODE.get(one.opcode, ibv_wc_opcode.IBV_WC_SEND)
                length = sum(sge.length for sge in one.sg_list[: one.num_sge])
                self.scq.push((one.wr_id, _SUCCESS, opcode, 0, length, self.qp_num, 0, 0, 0))
        return refuse  # None, or an index past the chain (all of it was accepted)

    def post_recv(self, wr: RecvWR) -> PostFailure | None:
        wrs = list(wr.chain())
        self.engine.calls.append(("post_recv", self.qp_num, len(wrs)))
        refuse, self.refuse = self.refuse, None
        for index, one in enumerate(wrs):
            if refuse is not None and index == refuse.index:
                return refuse
            self.recv_wrs.append(one)
            opcode = ibv_wc_opcode.IBV_WC_RECV
            self.rcq.push((one.wr_id, _SUCCESS, opcode, 0, 0, self.qp_num, 0, 0, 0))
        return refuse

    def statistics(self) -> dict[str, int]:
        return {"send_wrs": len(self.send_wrs), "recv_wrs": len(self.recv_wrs)}


class FakeEngine:
    """An engine that keeps everything in memory and records every call it receives.

    Use the class itself as the factory (``Context(engine=FakeEngine)``), or an instance's
    :meth:`factory` to keep hold of it (``Context(engine=fake.factory)``).
    """

    name = "fake"

    def __init__(self, device: str = "tcpv_lo", options: EngineOptions | None = None) -> None:
        self.device = device
        self.options = options or EngineOptions()
        self.calls: list[FakeCall] = []
        self.mrs: dict[int, tuple[int, memoryview, int, int]] = {}  # key: pd, view, addr, access
        self.qps: dict[int, FakeQP] = {}
        self.cqs: dict[int, FakeCQ] = {}
        self.channels: list[FakeChannel] = []
        self.events: deque[EngineEvent] = deque()
        self.closed = False
        self._fd: int | None = None

    def factory(self, device: str, options: EngineOptions) -> FakeEngine:
        """An :data:`~tcpverbs.engine.EngineFactory` that hands out this engine."""
        self.calls.append(("open", device, options))
        self.device, self.options = device, options
        return self

    def called(self, name: str) -> list[FakeCall]:
        """The recorded calls named *name*, in order."""
        return [call for call in self.calls if call[0] == name]

    def queue_event(self, event_type: ibv_event_type, handle: int, reason: str) -> None:
        """Queue an async event, as the engine does (not a call: nothing recorded)."""
        self.events.append(EngineEvent(event_type, handle, reason))

    # -- ContextEngine ------------------------------------------------------------------
    def reg_mr(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        self.calls.append(("reg_mr", key, pd, access))
        self.mrs[key] = (pd, view, addr, access)

    def dereg_mr(self, key: int) -> None:
        self.calls.append(("dereg_mr", key))
        self.mrs.pop(key, None)

    def rereg_mr(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        self.calls.append(("rereg_mr", key, pd, access))
        self.mrs[key] = (pd, view, addr, access)

    def create_channel(self) -> FakeChannel:
        self.calls.append(("create_channel",))
        channel = FakeChannel(self)
        self.channels.append(channel)
        return channel

    def create_cq(self, handle: int, cqe: int, channel: ChannelEngine | None) -> FakeCQ:
        assert channel is None or isinstance(channel, FakeChannel)  # a channel of this engine
        self.calls.append(("create_cq", handle, cqe))
        cq = FakeCQ(self, handle, cqe, channel)
        self.cqs[handle] = cq
        return cq

    def create_qp(self, spec: QPSpec) -> FakeQP:
        self.calls.append(("create_qp", spec.qp_num))
        qp = FakeQP(self, spec)
        self.qps[spec.qp_num] = qp
        return qp

    def create_srq(self, handle: int, pd: int, max_wr: int, max_sge: int) -> FakeSRQ:
        self.calls.append(("create_srq", handle, pd, max_wr, max_sge))
        return FakeSRQ(self, max_wr, max_sge)

    def next_event(self, timeout: float | None) -> EngineEvent | None:
        """The oldest queued event, or None at once (whatever *timeout*)."""
        self.calls.append(("next_event", timeout))
        if self.closed or not self.events:
            return None
        return self.events.popleft()

    def statistics(self) -> dict[str, int]:
        self.calls.append(("statistics",))
        return {
            "syscalls": 0,
            "calls": len(self.calls),
            "mrs": len(self.mrs),
            "events_queued": len(self.events),
        }

    def fileno(self) -> int:
        """An eventfd made on first use (a real descriptor, as the contract asks)."""
        self.calls.append(("fileno",))
        if self._fd is None:
            self._fd = os.eventfd(0, os.EFD_CLOEXEC)
        return self._fd

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fakes_conform(
    engine: FakeEngine, qp: FakeQP, cq: FakeCQ, channel: FakeChannel, srq: FakeSRQ
) -> tuple[ContextEngine, QPEngine, CQEngine, ChannelEngine, SRQEngine, EngineFactory]:
    """Never called: mypy checks here that the fakes match the protocols of the api."""
    return engine, qp, cq, channel, srq, FakeEngine


__all__ += ["FakeCQ", "FakeChannel", "FakeEngine", "FakeQP", "FakeSRQ"]
