"""rdma_cm's events: ``CMEventChannel`` (rdma_create_event_channel) and ``CMEvent``
(rdma_get_cm_event).

A channel queues the events of its CMIDs and watches their sockets (listening and
control connections).  Whoever waits for an event does the connection manager's work:
it polls those sockets and hands what is ready to the CMID that owns it
(``_on_ready``), and lets each look at its deadlines (``_check_deadline``).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import TcpverbsError
from ..qp_attr import AHAttr
from .enums import rdma_cm_event_type

if TYPE_CHECKING:
    from .rdmacm import CMID

__all__ = ["CMEvent", "CMEventChannel", "UDInfo", "UDParam", "rdma_event_str"]

EV = rdma_cm_event_type
_SLICE = 0.05  # seconds one waiter polls before it looks at deadlines again


class CMEvent:
    """``rdma_get_cm_event``: the next event of *channel*, waiting for it (*timeout*
    seconds at most, a tcpverbs extension: ``ETIMEDOUT``)."""

    event_type: rdma_cm_event_type
    id: CMID
    listen_id: CMID | None
    status: int  # 0, or a negative errno (librdmacm's)
    private_data: bytes
    acked: bool
    ud: UDInfo | None  # RDMA_PS_UDP: how to reach the peer's UD QP (``param.ud``)

    def __init__(self, channel: CMEventChannel, timeout: float | None = None) -> None:
        event = channel._next(lambda e: True, timeout)
        for name in ("event_type", "id", "listen_id", "status", "private_data", "acked", "ud"):
            setattr(self, name, getattr(event, name))

    @classmethod
    def _make(
        cls,
        event_type: rdma_cm_event_type,
        cmid: CMID,
        listen_id: CMID | None = None,
        private_data: bytes = b"",
        status: int = 0,
        ud: UDInfo | None = None,
    ) -> CMEvent:
        event = cls.__new__(cls)
        event.event_type = event_type
        event.id, event.listen_id = cmid, listen_id
        event.private_data, event.status = private_data, status
        event.acked = False
        event.ud = ud
        return event

    def ack_cm_event(self) -> None:
        """``rdma_ack_cm_event`` (nothing is held for an event here)."""
        self.acked = True

    def close(self) -> None:
        self.ack_cm_event()

    def event_str(self) -> str:
        return rdma_event_str(self.event_type)

    def __repr__(self) -> str:
        return f"<CMEvent {self.event_str()} status={self.status}>"


@dataclass(frozen=True)
class UDInfo:
    """``struct rdma_ud_param`` without the private data (the event has it): the address
    vector and QP number of the peer's UD QP and the Q_Key its datagrams need."""

    ah_attr: AHAttr
    qp_num: int
    qkey: int


class UDParam:
    """pyverbs' ``UDParam(event)``: the UD parameters of an ``RDMA_PS_UDP`` event
    (``RDMA_CM_EVENT_ESTABLISHED``: the peer's QP; ``..._CONNECT_REQUEST``: the
    requester's)."""

    def __init__(self, event: CMEvent) -> None:
        info = getattr(event, "ud", None)
        if info is None:
            raise TcpverbsError(errno.EINVAL, "the event carries no UD parameters")
        self.ah_attr: AHAttr = info.ah_attr
        self.qp_num: int = info.qp_num
        self.qkey: int = info.qkey
        self.private_data: bytes = event.private_data


def rdma_event_str(event_type: int) -> str:
    """librdmacm's ``rdma_event_str``."""
    try:
        return EV(event_type).name
    except ValueError:
        return "UNKNOWN EVENT"


class CMEventChannel:
    """``rdma_create_event_channel``: where a CMID's events queue.  ``fd`` is readable
    while an event waits (an eventfd); ``CMEvent(channel)`` takes the next one, and
    while it waits it does the connection manager's work for every CMID of the channel."""

    def __init__(self) -> None:
        self._events: deque[CMEvent] = deque()
        # fd of a listening or control socket -> its CMID; weak: a CMID the program drops
        # closes (its sockets with it), as pyverbs' ids do
        self._ids: weakref.WeakValueDictionary[int, CMID] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False

    @property
    def fd(self) -> int:
        return self._fd

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for cmid in list(self._ids.values()):
                cmid.close()
            os.close(self._fd)

    def __del__(self) -> None:  # as pyverbs' objects: closed when dropped
        if not getattr(self, "closed", True):
            self.close()

    def __enter__(self) -> CMEventChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internal ------------------------------------------------------------------------
    def _push(self, event: CMEvent) -> None:
        with self._lock:
            self._events.append(event)
            if not self.closed:
                os.eventfd_write(self._fd, 1)

    def _watch(self, sock: socket.socket, cmid: CMID) -> None:
        with self._lock:
            self._ids[sock.fileno()] = cmid

    def _unwatch(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._ids.pop(sock.fileno(), None)

    def _next(self, wanted: Callable[[CMEvent], bool], timeout: float | None) -> CMEvent:
        """The oldest queued event *wanted* takes, doing the work that makes events
        until one comes (``ETIMEDOUT`` after *timeout* seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self.closed:
                    raise TcpverbsError(errno.EBADF, "the CM event channel is closed")
                for event in self._events:
                    if wanted(event):
                        self._events.remove(event)
                        if not self._events:
                            try:
                                os.eventfd_read(self._fd)
                            except BlockingIOError:
                                pass
                        return event
                self._progress(
                    _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TcpverbsError(errno.ETIMEDOUT, "no CM event within the timeout")

    def _progress(self, timeout: float) -> None:
        """Read what the channel's sockets have (up to *timeout* seconds of waiting), and
        look at deadlines.  Called with the lock held."""
        poller = select.poll()
        watched = list(self._ids.items())
        for fd, cmid in watched:
            poller.register(fd, cmid._poll_events(fd))
        ready = poller.poll(max(0.0, timeout) * 1000) if watched else []
        if not watched and timeout > 0:
            time.sleep(min(timeout, _SLICE))
        for fd, events in ready:
            owner = self._ids.get(fd)
            if owner is not None:
                owner._on_ready(fd, events)  # (never raises: its failures are its events)
        now = time.monotonic()
        for cmid in list(self._ids.values()):
            cmid._check_deadline(now)
