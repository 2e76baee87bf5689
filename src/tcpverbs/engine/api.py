"""The contract between the verbs objects and an engine.

Theory of operation
-------------------
The verbs objects (:mod:`tcpverbs.context`, ``pd``, ``mr``, ``cq``, ``qp``) are the
application's face: they own the object tree, validate attributes, run the QP state
machine the application drives, number QPs, word every error and keep the async-event
queue.  An *engine* does everything that moves data: it owns each QP's socket after the
handoff, the send and receive queues, the in-flight window, the wire state, every timer,
the memory table it checks work against, and the atomics.  The two meet here and nowhere
else; this module is the whole of what crosses:

Control calls (any thread, GIL held)
    :meth:`ContextEngine.reg_mr` / :meth:`~ContextEngine.dereg_mr` /
    :meth:`~ContextEngine.rereg_mr` (synchronous: no new
    access to the memory once ``dereg_mr`` returns; work already holding it keeps it
    alive), :meth:`~ContextEngine.create_cq` (with the :class:`ChannelEngine` it
    signals), :meth:`~ContextEngine.create_qp` (a :class:`QPSpec`, which may name the
    :class:`SRQEngine` of :meth:`~ContextEngine.create_srq` it takes receives from),
    :meth:`QPEngine.modify` (a state and the :class:`QPParams` an engine uses),
    :meth:`QPEngine.attach` (a connected socket, and the peer's hello when the
    connection manager read it already), :meth:`QPEngine.fail`, :meth:`QPEngine.reset`,
    ``destroy()`` of each, and ``statistics()``.

Data-path calls
    :meth:`QPEngine.post_send` / :meth:`QPEngine.post_recv` take a WR chain and check
    each WR (state, opcode, SGE count, inline size, atomic shape, queue room; memory keys,
    ranges and access turn into error *completions*, as on hardware).  A refused WR comes
    back as a :class:`PostFailure` — its index in the chain and a :class:`PostFault`
    code — and the verbs layer words the error.  :meth:`CQEngine.poll` returns
    :data:`Completion` records laid out as :class:`tcpverbs.WC`'s first nine fields, so
    ``WC(*record)`` builds one.  :meth:`CQEngine.req_notify`, :meth:`CQEngine.wait` and
    :meth:`ChannelEngine.get_cq_event` wait inside the engine.

Events (engine -> verbs)
    Queued :class:`EngineEvent` records, never calls into verbs objects: a QP went to
    ERR (its ``ibv_event_type`` and reason; the full error, with the peer's reason where
    there is one, is :attr:`QPEngine.error`), a CQ overran.  Each names its object by
    the handle the verbs layer gave it at creation (never reused, unlike QP numbers), so
    an event read late still finds its object; ``get_async_event`` takes them from
    :meth:`ContextEngine.next_event`.  That a QP's connection is established is
    state (:attr:`QPEngine.established`), not an event: ``IBV_EVENT_COMM_EST`` is
    hardware's for a QP in RTR and would arrive before the errors programs wait for.

The hello, RNR handling, TERMINATE, the flush of outstanding work on error and the drain
of a closing connection are all the engine's.

Locks
-----
Lock order, outermost first: a verbs QP's ``_lock`` (serialises the application's
``modify``), then the engine's per-QP lock, then an engine CQ's lock, then its channel's.
An engine never calls back into the verbs layer, so no engine lock is ever held while a
verbs lock is taken.  Because an engine may move a QP to ERR at any moment,
:meth:`QPEngine.modify` names the state it expects to leave and changes nothing when the
QP is elsewhere.

Choosing an engine
------------------
:func:`tcpverbs.engine.open_engine` picks one: ``Context(engine=...)``, else the
``TCPVERBS_ENGINE`` environment variable, else the default, and opens it with the
device's name and the context's :class:`EngineOptions`.  ``python`` (package
:mod:`tcpverbs.engine.py`) is the reference implementation; ``native`` (the extension
``tcpverbs._native``, skin :mod:`tcpverbs.engine.native`) the default.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import Protocol

from ..enums import ibv_event_type, ibv_qp_state
from ..errors import TcpverbsError
from ..wire.hello import Hello
from ..wr import RecvWR, SendWR

__all__ = [
    "ENGINE_ENV",
    "LIMITS",
    "CQEngine",
    "ChannelEngine",
    "Completion",
    "ContextEngine",
    "EngineEvent",
    "EngineLimits",
    "EngineOptions",
    "Overrun",
    "PostFailure",
    "PostFault",
    "QPCaps",
    "QPEngine",
    "QPParams",
    "QPSpec",
    "SRQEngine",
]

ENGINE_ENV = "TCPVERBS_ENGINE"

# (wr_id, status, opcode, vendor_err, byte_len, qp_num, src_qp, imm_data, wc_flags):
# the first nine fields of tcpverbs.WC, in order.
Completion = tuple[int, int, int, int, int, int, int, int, int]


class PostFault(enum.IntEnum):
    """Why ``post_send`` / ``post_recv`` refused a WR (nothing from it on was posted).

    ``value`` and ``limit`` of the :class:`PostFailure` carry the numbers the message
    needs: the offending count or size and the bound it broke.
    """

    SETUP_FAILED = 1  # the connection never came up: QPEngine.error says why
    BAD_STATE = 2  # value: the QP's state
    BAD_OPCODE = 3  # value: the opcode (not supported by this wire mode)
    TOO_MANY_SGE = 4  # value: num_sge, limit: the QP's max SGE
    SGE_COUNT = 5  # value: num_sge, limit: len(sg_list)
    INLINE_TOO_LONG = 6  # value: the length, limit: max_inline_data
    NOT_INLINABLE = 7  # value: the opcode
    ATOMIC_SHAPE = 8  # value: the number of SGEs, limit: their total length
    QUEUE_FULL = 9  # limit: max_send_wr / max_recv_wr
    BAD_FIELD = 10  # field: the path of the field (``"sg_list[1].length"``), limit: its bits


@dataclass(frozen=True, slots=True)
class PostFailure:
    """The WR at ``index`` of the posted chain was refused for ``fault``."""

    index: int
    fault: PostFault
    value: int = 0
    limit: int = 0
    field: str = ""


# The integer fields of a WR and an SGE and their widths in bits (struct ibv_send_wr,
# ibv_recv_wr, ibv_sge).  A value outside 0 .. 2^bits - 1, or not an int, is refused with
# PostFault.BAD_FIELD — never truncated, never stored as it is.
SEND_WR_FIELDS = {
    "wr_id": 64,
    "opcode": 32,
    "send_flags": 32,
    "imm_data": 32,
    "rkey": 32,
    "remote_addr": 64,
    "compare_add": 64,
    "swap": 64,
    "remote_qpn": 32,
    "remote_qkey": 32,
}
RECV_WR_FIELDS = {"wr_id": 64}
SGE_FIELDS = {"addr": 64, "length": 32, "lkey": 32}


def find_bad_field(wr: object, fields: dict[str, int]) -> tuple[str, int] | None:
    """The first field of *wr* (a SendWR or RecvWR) that is not what it must be, as
    ``(path, bits)`` (bits 0: not the right kind of object); None if all are right.

    The slow path of a post: an engine checks cheaply (a type error or a range test on
    the whole WR) and calls this only to name the culprit.
    """
    for name, bits in fields.items():
        if not _fits(getattr(wr, name, None), bits):
            return name, bits
    num_sge = getattr(wr, "num_sge", None)
    if not _fits(num_sge, 31):
        return "num_sge", 31
    sg = getattr(wr, "sg", None)
    if sg is None:
        return None
    if not isinstance(sg, list | tuple):
        return "sg_list", 0
    for i, sge in enumerate(sg[:num_sge]):
        for name, bits in SGE_FIELDS.items():
            if not hasattr(sge, name):
                return f"sg_list[{i}]", 0
            if not _fits(getattr(sge, name), bits):
                return f"sg_list[{i}].{name}", bits
    return None


def _fits(value: object, bits: int) -> bool:
    return isinstance(value, int) and 0 <= value < 1 << bits


class Overrun(Exception):
    """Raised by :meth:`CQEngine.poll`: ``lost`` completions did not fit the CQ."""

    def __init__(self, lost: int) -> None:
        super().__init__(lost)
        self.lost = lost


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """An asynchronous event about the QP or CQ the verbs layer created with ``handle``
    (handles are never reused, unlike QP numbers)."""

    event_type: ibv_event_type
    handle: int
    reason: str


@dataclass(frozen=True, slots=True)
class QPCaps:
    max_send_wr: int
    max_recv_wr: int
    max_send_sge: int
    max_recv_sge: int
    max_inline_data: int


@dataclass(slots=True)
class QPParams:
    """The attributes of ``ibv_modify_qp`` an engine uses (the rest are the verbs layer's)."""

    access_flags: int = 0
    max_rd_atomic: int = 1
    max_dest_rd_atomic: int = 1
    rnr_retry: int = 7
    min_rnr_timer: int = 12
    timeout: int = 14
    retry_cnt: int = 7
    dest_qp_num: int = 0
    rq_psn: int = 0  # rc: sent in the hello, the peer's proof of who it is
    sq_psn: int = 0  # rc: sent in an AUTH frame once in RTS (tcpverbs.oob.service)
    qkey: int = 0  # ud: datagrams must carry it; a send's remote_qkey with bit 31 uses it


@dataclass(slots=True)
class EngineLimits:
    """Bounds every engine applies to a connection, read when the connection starts
    (tests make them small; :data:`LIMITS` is the one instance engines read)."""

    hello_timeout: float = 10.0  # seconds an rc QP waits for the peer's hello
    tx_backlog: int = 1024  # unwritten answers to the peer's requests before reading stops


LIMITS = EngineLimits()


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What a context asks of its engine: ``Context``'s engine options, checked there."""

    # MSG_ZEROCOPY for payload segments this big: None = automatic (never to a loopback
    # peer, where the kernel copies anyway), 0 = never
    zerocopy_min: int | None = None
    # SQ polling: the engine thread sends what is posted and spins this long after each
    # send for more; 0 = the poster sends itself (an engine may not offer it: EOPNOTSUPP)
    sq_poll_us: int = 0


MIN_REQUESTER_TIMEOUT = 1.0  # seconds: TCP's own retransmission makes shorter spurious


def requester_timeout(timeout: int, retry_cnt: int) -> float | None:
    """Seconds the requester waits for a sign of life from the peer while work is
    outstanding, from ``QPAttr.timeout`` and ``retry_cnt``: the verbs formula
    ``4.096 µs * 2^timeout * (retry_cnt + 1)``, at least :data:`MIN_REQUESTER_TIMEOUT`;
    None (for ever) for ``timeout`` 0, as in verbs.

    Every engine applies it the same way: once nothing has arrived from the peer's host
    (no data, no TCP acknowledgement) for that long while a send WR is outstanding, the
    oldest outstanding WR completes with ``IBV_WC_RETRY_EXC_ERR``, the rest flush, and
    the QP goes to ERR with ``IBV_EVENT_QP_FATAL``.
    """
    if timeout == 0:
        return None
    return max(4.096e-6 * (1 << timeout) * (retry_cnt + 1), MIN_REQUESTER_TIMEOUT)


class ChannelEngine(Protocol):
    """A completion channel: ``fd`` is readable while an event is pending."""

    fd: int

    def get_cq_event(self, timeout: float | None) -> int | None:
        """Block (GIL released) until an armed CQ of this channel completed; its handle,
        or None after *timeout* seconds or once the channel is destroyed."""
        ...

    def destroy(self) -> None: ...


FAST_POLL, FAST_POST = 0, 1  # kinds of ContextEngine.fast_call


class CQEngine(Protocol):
    handle: int

    def poll(self, num_entries: int) -> list[Completion]:
        """Up to *num_entries* completions, oldest first; may first make progress on the
        CQ's QPs.  Polling frees the WRs' queue slots.  Raises :class:`Overrun`.

        An engine may also offer ``poll_wc(num_entries)``, the same returning
        :class:`tcpverbs.WC` objects it built itself (the native engine does, in C); the
        verbs layer then calls that instead."""
        ...

    def wait(self, num_entries: int, timeout: float | None, spin_us: int) -> list[Completion]:
        """Poll for *spin_us*, then sleep until a completion; [] after *timeout* seconds
        or once the CQ is destroyed.  Raises :class:`Overrun`.

        An engine may also offer ``wait_wc(num_entries, timeout, spin_us)``, the same
        returning :class:`tcpverbs.WC` objects, as ``poll_wc`` does for ``poll``."""
        ...

    def req_notify(self, solicited_only: bool) -> None: ...

    @property
    def pending(self) -> int: ...

    def statistics(self) -> dict[str, int]: ...

    def destroy(self) -> None: ...


class SRQEngine(Protocol):
    """A shared receive queue (``ibv_create_srq``): receive WRs that any of its QPs takes
    when a message comes for it (the WR then belongs to that QP: its completion, or its
    flush, is that QP's).  When fewer than ``limit`` WRs are left (``limit`` > 0), an
    ``IBV_EVENT_SRQ_LIMIT_REACHED`` event names the SRQ and ``limit`` goes back to 0."""

    max_wr: int
    max_sge: int
    limit: int

    @property
    def count(self) -> int:
        """Receive WRs in the queue now."""
        ...

    def post_recv(self, wr: RecvWR) -> PostFailure | None: ...

    def modify(self, max_wr: int | None, max_sge: int | None, limit: int | None) -> None:
        """A new capacity (not below ``count``: ``EINVAL``), more SGEs per WR (never
        fewer), and / or an armed limit."""
        ...

    def destroy(self) -> None:
        """Drop the queued WRs (as ``ibv_destroy_srq`` does: no completions)."""
        ...


class QPEngine(Protocol):
    qp_num: int

    @property
    def state(self) -> ibv_qp_state:
        """The current state: the verbs layer's last transition, or ERR set by the engine."""
        ...

    @property
    def error(self) -> TcpverbsError | None:
        """Why the QP is in ERR (None otherwise)."""
        ...

    @property
    def established(self) -> bool:
        """The connection is up (rc: both hellos exchanged)."""
        ...

    def modify(self, expect: ibv_qp_state, new: ibv_qp_state, params: QPParams) -> bool:
        """Move from *expect* to *new* (RESET -> INIT -> RTR -> RTS) with *params*;
        False, changing nothing, when the QP is no longer in *expect*."""
        ...

    def attach(
        self, sock: socket.socket, peer_hello: Hello | None, hello_timeout: float | None
    ) -> bool:
        """Take *sock* (connected, or connecting; a UD QP's: its bound datagram socket, a
        duplicate of the verbs layer's, given at each INIT -> RTR) as the QP's connection;
        False, leaving *sock* to the caller, when the QP is not in RTR or RTS or already
        has one."""
        ...

    def fail(self, error: TcpverbsError, *, setup: bool = False) -> None:
        """Move to ERR for *error* (outstanding work is flushed, an event queued)."""
        ...

    def reset(self) -> None:
        """Move to RESET: connection closed, queues and unpolled completions dropped."""
        ...

    def destroy(self) -> None: ...

    def post_send(self, wr: SendWR) -> PostFailure | None: ...

    def post_recv(self, wr: RecvWR) -> PostFailure | None: ...

    def statistics(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class QPSpec:
    handle: int  # what the QP's events name
    qp_num: int
    pd: int  # the PD's handle: a QP reaches the memory of its own PD only
    caps: QPCaps
    sq_sig_all: bool
    wire: str  # "rc" | "stream" | "ud" (a UD QP: attach() gives it its UDP socket)
    scq: CQEngine
    rcq: CQEngine
    srq: SRQEngine | None = None  # where its receives come from (rc only)
    mtu: int = 4096  # ud: the largest message, the port's active MTU in bytes


class ContextEngine(Protocol):
    """One opened device's engine."""

    name: str  # "python", "native"

    def reg_mr(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        """Register *view* (at address *addr*) under *key*, as both lkey and rkey."""
        ...

    def dereg_mr(self, key: int) -> None: ...

    def rereg_mr(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        """Register *view* under *key* in place of what was there (``ibv_rereg_mr``).
        Receive WRs posted before, not started, that used the old registration are
        checked against the new one instead (an lkey is checked when it is used); work
        moving data with the old memory, and send WRs that use it, are revoked as by
        ``dereg_mr``.  If the new registration fails the key is deregistered."""
        ...

    def create_channel(self) -> ChannelEngine: ...

    def create_cq(self, handle: int, cqe: int, channel: ChannelEngine | None) -> CQEngine: ...

    def create_qp(self, spec: QPSpec) -> QPEngine: ...

    def create_srq(self, handle: int, pd: int, max_wr: int, max_sge: int) -> SRQEngine: ...

    def next_event(self, timeout: float | None) -> EngineEvent | None:
        """The oldest queued event; waits up to *timeout* (None: for ever, 0: not at all)."""
        ...

    def statistics(self) -> dict[str, int]:
        """Counters summed over every QP and CQ (destroyed ones too) and the engine's own."""
        ...

    # An engine may also offer ``fast_call(owner, call, slow, fail, kind)``: a callable
    # that does a verbs method's common path without a Python frame and hands the rest
    # to the method (``slow``).  The verbs layer then shadows ``CQ.poll`` (kind
    # FAST_POLL; ``call`` is ``poll_wc``, ``fail`` turns an Overrun into the error to
    # raise) and ``QP.post_send`` / ``post_recv`` (kind FAST_POST; ``call`` is the
    # engine QP's post, ``fail(failure, wr, bad_wr)`` raises) with it.  The native
    # engine does (tcpverbs/_native/py_fast.c).

    def fileno(self) -> int:
        """The engine's own file descriptor (its epoll instance), valid until ``close``:
        what a verbs program sees as the context's ``cmd_fd``.  For identity only;
        nothing is read from or written to it by anyone but the engine."""
        ...

    def close(self) -> None: ...
