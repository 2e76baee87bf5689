"""``Context``: an opened device, root of the verbs object tree."""

from __future__ import annotations

import errno
import queue
import secrets
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._base import VerbsObject
from .cm.oob import CONNECT_TIMEOUT, MAX_PARKED, OobListener
from .cq import CQ, DEFAULT_SPIN_US
from .cq import check_spin as _check_spin
from .device import (
    GID,
    DeviceAttr,
    PortAttr,
    find_device,
    query_device_attr,
    query_gid,
    query_port_attr,
)
from .enums import ibv_event_type
from .errors import TcpverbsError
from .wire.hello import Hello

if TYPE_CHECKING:
    import socket

    from .engine.loop import Engine, Timer
    from .mr import MR
    from .qp import QP

__all__ = ["AsyncEvent", "Context"]


@dataclass(slots=True)
class AsyncEvent:
    """``struct ibv_async_event`` plus the reason in words.

    ``element`` is the QP or CQ the event is about; ``reason`` says what happened (for
    a QP that went to ERR: the peer's TERMINATE reason, the socket error, ...).
    """

    event_type: ibv_event_type
    element: object
    reason: str

    def ack(self) -> None:
        """``ibv_ack_async_event`` (nothing to release here; kept for pyverbs code)."""


class Context(VerbsObject):
    """``ibv_open_device``: ``Context(name="tcpv_lo")``; no name opens the first device.

    tcpverbs extensions: *spin_us*, how long ``CQ.wait`` polls before it sleeps, and
    *zerocopy_min*, the smallest payload segment sent with ``MSG_ZEROCOPY`` (None:
    automatic — never to a loopback peer, where the kernel copies anyway).
    """

    def __init__(
        self,
        name: str | bytes | None = None,
        *,
        spin_us: int = DEFAULT_SPIN_US,
        zerocopy_min: int | None = None,
    ) -> None:
        _check_spin(spin_us)
        if zerocopy_min is not None and (not isinstance(zerocopy_min, int) or zerocopy_min < 0):
            raise TcpverbsError(
                errno.EINVAL, f"zerocopy_min must be None or an int >= 0, got {zerocopy_min!r}"
            )
        self.device = find_device(name)
        super().__init__()
        self.name: bytes = self.device.name
        # how long CQ.wait() polls before it sleeps (a CQ may override it)
        self.spin_us = spin_us
        # MSG_ZEROCOPY for segments this big: None = automatic (off to loopback peers,
        # 64 KiB otherwise), 0 = never (see tcpverbs.engine.zerocopy)
        self.zerocopy_min = zerocopy_min
        self._retired: Counter[str] = Counter()  # counters of QPs and CQs already closed
        self._keys: dict[int, MR] = {}
        self._qps: dict[int, QP] = {}
        self._listeners: list[OobListener] = []
        self._parked: dict[int, list[tuple[socket.socket, Hello, Timer]]] = {}
        self._lock = threading.Lock()
        self._async: queue.SimpleQueue[AsyncEvent] = queue.SimpleQueue()
        self._engine: Engine | None = None

    # -- queries ------------------------------------------------------------------
    def query_device(self) -> DeviceAttr:
        self._check_open()
        return query_device_attr(self.device)

    def query_port(self, port_num: int = 1) -> PortAttr:
        self._check_open()
        return query_port_attr(self.device, port_num)

    def query_gid(self, port_num: int, index: int) -> GID:
        self._check_open()
        return query_gid(self.device, port_num, index)

    def get_async_event(self, timeout: float | None = None) -> AsyncEvent:
        """``ibv_get_async_event``: wait for the next asynchronous event.

        *timeout* seconds without one raise ``ETIMEDOUT``.
        """
        self._check_open()
        try:
            return self._async.get(timeout=timeout)
        except queue.Empty:
            raise TcpverbsError(errno.ETIMEDOUT, "no async event within the timeout") from None

    # -- internals for children ---------------------------------------------------
    @property
    def _progress_engine(self) -> Engine:
        """The context's progress engine, started on first use."""
        with self._lock:
            if self._engine is None:
                from .engine.loop import Engine

                self._engine = Engine(f"tcpverbs-{self.name.decode()}")
            return self._engine

    def _new_key(self, mr: MR) -> int:
        """A fresh, unpredictable 32-bit memory key (never 0, never reused while live)."""
        with self._lock:
            while True:
                key = secrets.randbits(32)
                if key and key not in self._keys:
                    self._keys[key] = mr
                    return key

    def _drop_key(self, key: int) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def _new_qpn(self, qp: QP) -> int:
        """A QP number that also says where to connect to it (see :mod:`tcpverbs.cm.oob`)."""
        engine = self._progress_engine
        with self._lock:
            for listener in self._listeners:
                qpn = listener.alloc()
                if qpn is not None:
                    break
            else:
                try:
                    listener = OobListener(self, engine)
                except OSError as exc:
                    raise TcpverbsError(
                        exc.errno or errno.ENOMEM, f"cannot listen for QP connections: {exc}"
                    ) from exc
                self._listeners.append(listener)
                qpn = listener.alloc()
                assert qpn is not None
            self._qps[qpn] = qp
            return qpn

    def _free_qpn(self, qpn: int) -> None:
        with self._lock:
            self._qps.pop(qpn, None)
            parked = self._parked.pop(qpn, [])
            for listener in self._listeners:
                if listener.release(qpn):
                    break
        for sock, _, timer in parked:
            timer.cancel()
            sock.close()

    # -- out-of-band connections (engine thread) -----------------------------------
    def _oob_arrived(self, sock: socket.socket, hello: Hello) -> None:
        """A connection whose hello names one of our QPs: hand it over or park it."""
        with self._lock:
            qp = self._qps.get(hello.dest_qp_num)
        if qp is None:
            sock.close()
            return
        engine = self._progress_engine  # (takes self._lock: not inside it below)
        with qp._lock:  # serialises with the QP's own to_rtr
            outcome = qp._oob_accept(sock, hello)
            if outcome != "not waiting":
                if outcome == "mismatch":
                    sock.close()
                return
            with self._lock:
                waiting = self._parked.setdefault(qp.qp_num, [])
                if qp.closed or len(waiting) >= MAX_PARKED:  # the first ones keep their place
                    sock.close()
                    return
                timer = engine.call_later(
                    CONNECT_TIMEOUT, lambda: self._unpark(qp.qp_num, sock), self._listeners[0]
                )
                waiting.append((sock, hello, timer))

    def _take_parked(self, qpn: int) -> list[tuple[socket.socket, Hello]]:
        """Connections that arrived for QP *qpn* before it reached RTR, oldest first."""
        with self._lock:
            parked = self._parked.pop(qpn, [])
        for _, _, timer in parked:
            timer.cancel()
        return [(sock, hello) for sock, hello, _ in parked]

    def _unpark(self, qpn: int, sock: socket.socket) -> None:
        with self._lock:
            waiting = self._parked.get(qpn, [])
            self._parked[qpn] = [p for p in waiting if p[0] is not sock]
        sock.close()

    def statistics(self) -> dict[str, int]:
        """Counters of everything this context did: the sum over its QPs and CQs (closed
        ones included), the progress thread's, and the counted system calls.

        ``syscalls`` adds up the calls tcpverbs makes on the data path — sendmsg, reads
        (successful and EAGAIN), epoll_wait returns, epoll_ctl, eventfd writes and
        yields — so ``syscalls / wrs_sent`` is the cost per message.
        """
        self._check_open()
        total: Counter[str] = Counter(self._retired)
        qps = list(self._qps.values())
        cqs = [c for c in list(self._children.values()) if isinstance(c, CQ)]
        for counters in [qp.statistics() for qp in qps] + [cq.statistics() for cq in cqs]:
            total.update(_cumulative(counters))
        if self._engine is not None:
            total.update(self._engine.statistics())
        total["qps"] = len(qps)
        total["cqs"] = len(cqs)
        total["syscalls"] = sum(
            total[key]
            for key in (
                "sendmsg_calls",
                "recv_calls",
                "recv_empty",
                "engine_wakeups",
                "epoll_ctl_calls",
                "engine_wake_writes",
                "event_writes",
                "yields",
            )
        )
        return dict(total)

    def _retire(self, counters: dict[str, int]) -> None:
        """A QP or CQ is closing: keep its counters in the context's totals."""
        with self._lock:
            self._retired.update(_cumulative(counters))

    def _async_event(self, event_type: ibv_event_type, element: object, reason: str) -> None:
        self._async.put(AsyncEvent(event_type, element, reason))

    def _release(self) -> None:
        with self._lock:
            parked, self._parked = list(self._parked.values()), {}
        for pending in parked:
            for sock, _, timer in pending:
                timer.cancel()
                sock.close()
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __repr__(self) -> str:
        return f"<Context {self.name.decode()}{' closed' if self._closed else ''}>"


def _cumulative(counters: dict[str, int]) -> dict[str, int]:
    """The counters that add up over time (not the gauges: queue fill levels)."""
    return {k: v for k, v in counters.items() if not k.endswith("_outstanding") and k != "pending"}
