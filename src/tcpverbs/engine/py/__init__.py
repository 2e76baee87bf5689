"""The pure-Python engine: the reference implementation of :mod:`tcpverbs.engine.api`.

One :class:`PyEngine` per opened context.  It runs one reactor thread (epoll and timers,
:mod:`tcpverbs.reactor`), started when the first connection is attached, plus one
*transport* per connected QP that speaks the QP's wire mode (:mod:`.rc`,
:mod:`.stream`).  Transports also run inside the application's own calls
(``post_send`` sends at once; an empty ``poll`` receives), so the thread is needed only
while the application is busy elsewhere.

Modules: :mod:`.memory` (the memory table), :mod:`.qp` (queues, post-time checks,
outcomes, error flush), :mod:`.cq` (completions, channels, the waiting policy),
:mod:`.transport` (the socket, transmit queue, read parking), :mod:`.rc` and
:mod:`.stream` (the wire modes), :mod:`.zerocopy` (``MSG_ZEROCOPY``).
"""

from __future__ import annotations

import errno
import queue
import threading
from collections import Counter

from ...enums import ibv_event_type
from ...errors import TcpverbsError
from ...reactor import Reactor
from ..api import ChannelEngine, EngineEvent, QPSpec
from ..stats import cumulative, total
from .cq import PyChannel, PyCQ
from .memory import MemoryTable
from .qp import PyQP

__all__ = ["PyEngine"]


class PyEngine:
    name = "python"

    def __init__(self, device: str, *, zerocopy_min: int | None = None) -> None:
        self.device = device
        # MSG_ZEROCOPY for segments this big: None = automatic (off to loopback peers,
        # 64 KiB otherwise), 0 = never (see .zerocopy)
        self.zerocopy_min = zerocopy_min
        self.memory = MemoryTable()
        self._lock = threading.Lock()
        self._reactor: Reactor | None = None
        self._events: queue.SimpleQueue[EngineEvent | None] = queue.SimpleQueue()
        self._qps: dict[int, PyQP] = {}
        self._cqs: dict[int, PyCQ] = {}
        self._retired: Counter[str] = Counter()  # counters of QPs and CQs destroyed
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
        if region is None:
            return
        with self._lock:
            qps = [qp for qp in self._qps.values() if qp.pd == region.pd]
        for qp in qps:  # the only QPs that can reach it, locally or from the peer
            qp.revoke(region)

    def create_channel(self) -> PyChannel:
        return PyChannel()

    def create_cq(self, handle: int, cqe: int, channel: ChannelEngine | None) -> PyCQ:
        assert channel is None or isinstance(channel, PyChannel)
        cq = PyCQ(self, handle, cqe, channel)
        with self._lock:
            self._cqs[handle] = cq
        return cq

    def create_qp(self, spec: QPSpec) -> PyQP:
        qp = PyQP(self, spec)
        with self._lock:
            self._qps[spec.qp_num] = qp
        return qp

    def retire_qp(self, qp: PyQP) -> None:
        """A QP is destroyed: its counters stay in the totals."""
        counters = qp.statistics()
        with self._lock:
            if self._qps.get(qp.qp_num) is qp:
                del self._qps[qp.qp_num]
            self._retired.update(cumulative(counters))

    def retire_cq(self, cq: PyCQ) -> None:
        counters = cq.statistics()
        with self._lock:
            if self._cqs.get(cq.handle) is cq:
                del self._cqs[cq.handle]
            self._retired.update(cumulative(counters))

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

    # -- statistics ---------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        with self._lock:
            retired = Counter(self._retired)
            qps, cqs = list(self._qps.values()), list(self._cqs.values())
        live = [qp.statistics() for qp in qps] + [cq.statistics() for cq in cqs]
        own = self._reactor.statistics() if self._reactor is not None else {}
        return total(retired, live, own)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reactor, self._reactor = self._reactor, None
        self._events.put(None)  # a thread in next_event() returns
        if reactor is not None:
            reactor.close()
