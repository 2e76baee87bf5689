"""The pure-Python engine: the reference implementation of :mod:`tcpverbs.engine.api`.

One :class:`PyEngine` per opened context.  It runs one reactor thread (epoll and timers,
:mod:`tcpverbs.reactor`), started when the first connection is attached, plus one
*transport* per connected QP that speaks the QP's wire mode (:mod:`.rc`,
:mod:`.stream`; a UD QP's datagrams: :mod:`.ud`).  Transports also run inside the
application's own calls (``post_send`` sends at once; an empty ``poll`` receives), so
the thread is needed only while the application is busy elsewhere.

Modules: :mod:`.memory` (the memory table), :mod:`.qp` (queues, post-time checks,
outcomes, error flush), :mod:`.cq` (completions, channels, the waiting policy),
:mod:`.transport` (the socket, transmit queue, read parking), :mod:`.rc`,
:mod:`.stream` (the wire modes) and :mod:`.ud` (UD QPs), :mod:`.zerocopy`
(``MSG_ZEROCOPY``).
"""

from __future__ import annotations

import errno
import queue
import threading

from ...enums import ibv_event_type
from ...errors import TcpverbsError
from ...reactor import Reactor
from ..api import ChannelEngine, EngineEvent, EngineOptions, QPSpec
from ..stats import Tally
from .cq import PyChannel, PyCQ
from .memory import MemoryTable
from .qp import PyQP
from .srq import PySRQ

__all__ = ["PyEngine"]


class PyEngine:
    name = "python"

    def __init__(self, device: str, options: EngineOptions = EngineOptions()) -> None:  # noqa: B008
        if options.sq_poll_us:
            raise TcpverbsError(
                errno.EOPNOTSUPP,
                "sq_poll_us: SQ polling needs the native engine (the Python engine's "
                "thread would spin holding the interpreter's lock)",
            )
        self.device = device
        # MSG_ZEROCOPY for segments this big: None = automatic (off to loopback peers,
        # 64 KiB otherwise), 0 = never (see .zerocopy)
        self.zerocopy_min = options.zerocopy_min
        self.memory = MemoryTable()
        self._lock = threading.Lock()
        self._reactor: Reactor | None = None
        self._events: queue.SimpleQueue[EngineEvent | None] = queue.SimpleQueue()
        self._objects: Tally[PyQP | PyCQ] = Tally()  # for dereg_mr and statistics()
        self._srqs: set[PySRQ] = set()
        # rc QPs holding an ACK for the application's next move (see rc.py, _process)
        self.deferred_acks: set[PyQP] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reactor(self) -> Reactor:
        """The progress thread, started on first use (never again once closed)."""
        with self._lock:
            if self._closed:
                raise TcpverbsError(errno.EBADF, "the context's engine is closed")
            if self._reactor is None:
                self._reactor = Reactor(f"tcpverbs-{self.device}")
            return self._reactor

    # -- control ------------------------------------------------------------------
    def reg_mr(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        self.memory.reg(key, pd, view, addr, access)

    def dereg_mr(self, key: int) -> None:
        region = self.memory.dereg(key)
        if region is not None:
            for user in self._users_of(region.pd):
                user.revoke(region)

    def rereg_mr(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        old = self.memory.dereg(key)
        self.memory.reg(key, pd, view, addr, access)
        if old is not None:
            for user in self._users_of(old.pd):
                user.reregistered(old)

    def _users_of(self, pd: int) -> list[PyQP | PySRQ]:
        """The QPs and SRQs of *pd*: the only ones that can reach its memory, locally or
        from the peer."""
        with self._lock:  # SRQs first: a WR is in its SRQ, or in the QP that took it since
            srqs: list[PyQP | PySRQ] = [srq for srq in self._srqs if srq.pd == pd]
        return srqs + [o for o in self._objects.live() if isinstance(o, PyQP) and o.pd == pd]

    def create_srq(self, handle: int, pd: int, max_wr: int, max_sge: int) -> PySRQ:
        srq = PySRQ(self, handle, pd, max_wr, max_sge)
        with self._lock:
            self._srqs.add(srq)
        return srq

    def retire_srq(self, srq: PySRQ) -> None:
        with self._lock:
            self._srqs.discard(srq)

    def create_channel(self) -> PyChannel:
        return PyChannel()

    def create_cq(self, handle: int, cqe: int, channel: ChannelEngine | None) -> PyCQ:
        assert channel is None or isinstance(channel, PyChannel)
        cq = PyCQ(self, handle, cqe, channel)
        self._objects.add(cq)
        return cq

    def create_qp(self, spec: QPSpec) -> PyQP:
        qp = PyQP(self, spec)
        self._objects.add(qp)
        return qp

    def retire(self, obj: PyQP | PyCQ) -> None:
        """A QP or CQ is destroyed: its counters stay in the totals."""
        self._objects.retire(obj)

    # -- events -------------------------------------------------------------------
    def event(self, event_type: ibv_event_type, handle: int, reason: str) -> None:
        self._events.put(EngineEvent(event_type, handle, reason))

    def next_event(self, timeout: float | None) -> EngineEvent | None:
        if self._closed:
            return None
        try:
            event = self._events.get(block=timeout != 0, timeout=timeout or None)
        except queue.Empty:
            return None
        if event is None:  # closed: pass the wake-up on to the next waiter
            self._events.put(None)
        return event

    # -- progress -----------------------------------------------------------------
    def send_deferred_acks(self, polled: PyCQ) -> None:
        """An application's empty poll of *polled*: the ACKs rc QPs of other CQs deferred
        for its next move go now (its own QPs send theirs as they read, see rc.py
        _process; a QP busy elsewhere keeps its own for the next poll)."""
        for qp in list(self.deferred_acks):  # sending one takes it out
            if qp.scq is not polled and qp.rcq is not polled:
                qp.send_deferred_ack()

    # -- statistics ---------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        reactor = self._reactor
        return self._objects.total(reactor.statistics() if reactor is not None else {})

    def fileno(self) -> int:
        return self.reactor.fileno()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reactor, self._reactor = self._reactor, None
        self._events.put(None)  # a thread in next_event() returns
        if reactor is not None:
            reactor.close()
