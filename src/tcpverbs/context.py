"""``Context``: an opened device, root of the verbs object tree."""

from __future__ import annotations

import errno
import itertools
import secrets
import threading
import weakref
from dataclasses import dataclass

from . import device_ex
from ._base import VerbsObject
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
from .engine import EngineFactory, open_engine
from .engine.api import ContextEngine, EngineOptions
from .enums import ibv_event_type, ibv_gid_type_sysfs
from .errors import TcpverbsError, check_int, check_timeout
from .oob.service import OobService
from .qp import QP

__all__ = ["AsyncEvent", "Context"]


MAX_SQ_POLL_US = 1_000_000  # a spinning engine thread gives its core back within 1 s


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

    tcpverbs extensions: *spin_us*, how long ``CQ.wait`` polls before it sleeps;
    *zerocopy_min*, the smallest payload segment an rc QP sends with ``MSG_ZEROCOPY``
    (None: automatic — 64 KiB over a physical NIC, never to a loopback peer, where the
    kernel copies anyway; 0: never); *sq_poll_us*, SQ polling (native engine only): the
    engine thread sends what is posted, and spins this many microseconds after each send
    for more, so that ``post_send`` makes no system call (0, the default: the poster
    sends itself); *engine*, the engine that moves the data (``"native"`` or
    ``"python"``; default: ``$TCPVERBS_ENGINE``, else native where it is built — see
    :mod:`tcpverbs.engine`), or a factory that builds one.
    """

    def __init__(
        self,
        name: str | bytes | None = None,
        *,
        spin_us: int = DEFAULT_SPIN_US,
        zerocopy_min: int | None = None,
        sq_poll_us: int = 0,
        engine: str | EngineFactory | None = None,
        cmd_fd: int | None = None,
    ) -> None:
        if cmd_fd is not None:
            # ibv_import_device: a context shared with another process through its
            # kernel command fd.  A tcpverbs context lives in its process's engine.
            raise TcpverbsError(
                errno.EOPNOTSUPP,
                "Failed to import device: a tcpverbs context cannot be imported "
                "from a command fd (ibv_import_device)",
            )
        _check_spin(spin_us)
        if zerocopy_min is not None and (not isinstance(zerocopy_min, int) or zerocopy_min < 0):
            raise TcpverbsError(
                errno.EINVAL, f"zerocopy_min must be None or an int >= 0, got {zerocopy_min!r}"
            )
        check_int("sq_poll_us", sq_poll_us, 0, MAX_SQ_POLL_US)
        self.device = find_device(name)
        self.name: str = self.device.name.decode()  # as pyverbs: the name asked for
        self._engine: ContextEngine = open_engine(
            self.name, engine, EngineOptions(zerocopy_min, sq_poll_us)
        )
        super().__init__()
        # how long CQ.wait() polls before it sleeps (a CQ may override it)
        self.spin_us = spin_us
        self.zerocopy_min = zerocopy_min  # as given (the engine applies it)
        self.sq_poll_us = sq_poll_us
        self._oob = OobService(self.name)
        self._keys: set[int] = set()
        self._handles = itertools.count(1)  # what the engine knows PDs, CQs and QPs by
        # handle -> object, for the events the engine names by handle (weak: an event
        # read late finds its object while the application still holds it)
        self._objects: weakref.WeakValueDictionary[int, VerbsObject] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    @property
    def cmd_fd(self) -> int:
        """``ibv_context.cmd_fd``: the engine's own descriptor (its epoll instance).  It
        names the context; importing it elsewhere (``Context(cmd_fd=...)``) is not
        supported."""
        self._check_open()
        return self._engine.fileno()

    @property
    def engine(self) -> str:
        """The name of the engine that moves this context's data (``"native"``, ``"python"``)."""
        return self._engine.name

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

    def query_device_ex(self, ex_input: object = None) -> device_ex.DeviceAttrEx:
        """``ibv_query_device_ex`` (*ex_input*, for future extensions, is ignored)."""
        self._check_open()
        return device_ex.query_device_ex(self.device)

    def query_gid_type(self, port_num: int, index: int) -> ibv_gid_type_sysfs:
        self._check_open()
        return device_ex.query_gid_type(self.device, port_num, index)

    def query_gid_ex(self, port_num: int, gid_index: int, flags: int = 0) -> device_ex.GIDEntry:
        self._check_open()
        return device_ex.query_gid_ex(self.device, port_num, gid_index, flags)

    def query_gid_table(self, max_entries: int, flags: int = 0) -> list[device_ex.GIDEntry]:
        self._check_open()
        return device_ex.query_gid_table(self.device, max_entries, flags)

    def query_pkey(self, port_num: int, index: int) -> int:
        self._check_open()
        return device_ex.query_pkey(self.device, port_num, index)

    def get_pkey_index(self, port_num: int, pkey: int) -> int:
        self._check_open()
        return device_ex.get_pkey_index(self.device, port_num, pkey)

    def query_rt_values_ex(self, comp_mask: int = 0) -> tuple[int, int]:
        """``ibv_query_rt_values_ex``: a tcpverbs device has no clock of its own
        (``hca_core_clock`` is 0, completions carry no timestamps): ``EOPNOTSUPP``."""
        self._check_open()
        raise TcpverbsError(
            errno.EOPNOTSUPP, "Failed to query real time values: a tcpverbs device has no clock"
        )

    @property
    def num_comp_vectors(self) -> int:
        """Completion vectors a CQ may name: one (the engine thread serves them all)."""
        return 1

    def get_async_event(self, timeout: float | None = None) -> AsyncEvent:
        """``ibv_get_async_event``: wait for the next asynchronous event.

        *timeout* seconds without one raise ``ETIMEDOUT``; closing the context meanwhile
        raises ``EBADF``.
        """
        self._check_open()
        record = self._engine.next_event(check_timeout(timeout))
        self._check_open()
        if record is None:
            raise TcpverbsError(errno.ETIMEDOUT, "no async event within the timeout")
        return AsyncEvent(record.event_type, self._objects.get(record.handle), record.reason)

    # -- internals for children ---------------------------------------------------
    def _new_handle(self, obj: VerbsObject) -> int:
        """A handle for *obj* that no other object of this context ever gets."""
        with self._lock:
            handle = next(self._handles)
            self._objects[handle] = obj
            return handle

    def _new_key(self) -> int:
        """A fresh, unpredictable 32-bit memory key (never 0, never reused while live)."""
        with self._lock:
            while True:
                key = secrets.randbits(32)
                if key and key not in self._keys:
                    self._keys.add(key)
                    return key

    def _drop_key(self, key: int) -> None:
        with self._lock:
            self._keys.discard(key)

    def statistics(self) -> dict[str, int | str]:
        """Counters of everything this context did: the sum over its QPs and CQs (closed
        ones included), the engine's, and the counted system calls; ``engine`` names the
        engine.

        ``syscalls`` adds up the calls tcpverbs makes on the data path — sendmsg, reads
        (successful and EAGAIN), epoll_wait returns, epoll_ctl, eventfd writes and
        yields — so ``syscalls / wrs_sent`` is the cost per message.
        """
        self._check_open()
        with self._lock:
            live = [obj for obj in list(self._objects.values()) if not obj.closed]
        qps = sum(isinstance(obj, QP) for obj in live)
        cqs = sum(isinstance(obj, CQ) for obj in live)
        return {**self._engine.statistics(), "qps": qps, "cqs": cqs, "engine": self.engine}

    def _release(self) -> None:
        self._oob.close()
        self._engine.close()

    def __repr__(self) -> str:
        return f"<Context {self.name}{' closed' if self._closed else ''}>"
