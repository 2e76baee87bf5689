"""``Context``: an opened device, root of the verbs object tree."""

from __future__ import annotations

import errno
import queue
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._base import VerbsObject
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

if TYPE_CHECKING:
    from .engine.loop import Engine
    from .mr import MR

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
    """``ibv_open_device``: ``Context(name="tcpv_lo")``; no name opens the first device."""

    def __init__(self, name: str | bytes | None = None) -> None:
        self.device = find_device(name)
        super().__init__()
        self.name: bytes = self.device.name
        self._keys: dict[int, MR] = {}
        self._qpns: set[int] = set()
        self._next_qpn = secrets.randbelow(1 << 23) + 1
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

    def _new_qpn(self) -> int:
        with self._lock:
            while True:
                qpn = self._next_qpn
                self._next_qpn = self._next_qpn % ((1 << 24) - 1) + 1
                if qpn not in self._qpns:
                    self._qpns.add(qpn)
                    return qpn

    def _free_qpn(self, qpn: int) -> None:
        with self._lock:
            self._qpns.discard(qpn)

    def _async_event(self, event_type: ibv_event_type, element: object, reason: str) -> None:
        self._async.put(AsyncEvent(event_type, element, reason))

    def _release(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __repr__(self) -> str:
        return f"<Context {self.name.decode()}{' closed' if self._closed else ''}>"
