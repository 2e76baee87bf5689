"""The native engine: the data path in C (``tcpverbs._native``), behind the same contract.

The C side (``src/tcpverbs/_native/engine.h`` tells how it is put together) owns the
queues as rings, the memory table, the sockets after the handoff and one engine thread
per context that runs without the GIL (epoll and timers).  ``post_send`` /
``post_recv`` read the WR chain once and post it in C; ``poll`` drains the completion
ring and makes progress in the caller's thread (GIL released around the system calls);
``CQ.wait``, ``get_cq_event`` and ``get_async_event`` wait in C with the GIL released.

This module is the thin Python skin the contract needs: enum conversions, the error
objects, and the bookkeeping of ``statistics()``.  Nothing here is on the data path.

Both wire modes are in C: ``stream`` (``stream.c``) and ``rc`` (``rcconn.c``, the
protocol's decisions in ``frames.c``, ``rcproto.c`` and ``requester.c``, each held to its
Python reference).  ``MSG_ZEROCOPY`` is not used yet.
"""

from __future__ import annotations

import errno
import socket

from .. import _native
from ..enums import ibv_event_type, ibv_qp_state
from ..errors import ConnectionBrokenError, RemoteProtocolError, TcpverbsError
from ..wire.hello import Hello
from .api import LIMITS, ChannelEngine, EngineEvent, EngineOptions, QPSpec
from .stats import Tally
from .zerocopy import zerocopy_threshold

__all__ = ["NativeEngine"]

_WIRES = {"stream": 1, "rc": 2, "ud": 3}  # enum tv_wire
_PLAIN, _BROKEN, _PROTOCOL = 0, 1, 2  # enum tv_error_kind


class NativeChannel(_native.Channel):
    pass


class NativeCQ(_native.CQ):
    def __init__(
        self, engine: NativeEngine, handle: int, cqe: int, channel: NativeChannel | None
    ) -> None:
        super().__init__(engine, handle, cqe, channel)
        self._owner = engine

    def destroy(self) -> None:
        super().destroy()
        self._owner.retire(self)


class NativeSRQ(_native.SRQ):
    pass


class NativeQP(_native.QP):
    def __init__(self, engine: NativeEngine, spec: QPSpec, scq: NativeCQ, rcq: NativeCQ) -> None:
        caps = spec.caps
        srq = spec.srq
        if srq is not None and not isinstance(srq, NativeSRQ):
            raise TcpverbsError(errno.EINVAL, "the QP's SRQ belongs to another engine")
        super().__init__(
            engine,
            spec.handle,
            spec.qp_num,
            spec.pd,
            caps.max_send_wr,
            caps.max_recv_wr,
            caps.max_send_sge,
            caps.max_recv_sge,
            caps.max_inline_data,
            spec.sq_sig_all,
            _WIRES[spec.wire],
            scq,
            rcq,
            srq,
            spec.mtu,
        )
        self._owner = engine
        self._rc = spec.wire == "rc"
        self.handle = spec.handle
        self._error: tuple[tuple[int, int, str], TcpverbsError] | None = None

    @property
    def state(self) -> ibv_qp_state:
        return ibv_qp_state(self.state_raw)

    @property
    def error(self) -> TcpverbsError | None:
        raw = self.error_raw()
        if raw is None:
            return None
        if self._error is None or self._error[0] != raw:  # one object per error
            kind, err, message = raw
            exc: TcpverbsError
            if kind == _BROKEN:
                exc = ConnectionBrokenError(err, message)
            elif kind == _PROTOCOL:
                exc = RemoteProtocolError(message, err)
            else:
                exc = TcpverbsError(err, message)
            self._error = (raw, exc)
        return self._error[1]

    def attach(
        self, sock: socket.socket, peer_hello: Hello | None, hello_timeout: float | None
    ) -> bool:
        hello = peer_hello.encode() if peer_hello is not None else None
        wait = LIMITS.hello_timeout if hello_timeout is None else hello_timeout
        # rc sends large payload segments with MSG_ZEROCOPY where it pays (stream: never)
        zc = zerocopy_threshold(self._owner.zerocopy_min, sock) if self._rc else 0
        taken = self.attach_fd(sock.fileno(), hello, wait, LIMITS.tx_backlog, zc)
        if taken:  # the engine owns the descriptor now (and closed it if it failed)
            sock.detach()
        return bool(taken)

    def fail(self, error: TcpverbsError, *, setup: bool = False) -> None:
        kind = (
            _BROKEN
            if isinstance(error, ConnectionBrokenError)
            else _PROTOCOL
            if isinstance(error, RemoteProtocolError)
            else _PLAIN
        )
        self.fail_raw(kind, error.errno or errno.EIO, error.strerror or str(error), setup)

    def destroy(self) -> None:
        self.destroy_raw()
        self._owner.retire(self)


class NativeEngine(_native.Engine):
    name = "native"
    fast_call = _native.FastCall  # the verbs layer's hot calls without a Python frame

    def __init__(self, device: str, options: EngineOptions = EngineOptions()) -> None:  # noqa: B008
        super().__init__(sq_poll_ns=options.sq_poll_us * 1000)
        self.device = device
        self.zerocopy_min = options.zerocopy_min  # None: automatic (.zerocopy)
        self._objects: Tally[NativeQP | NativeCQ] = Tally()

    def create_channel(self) -> NativeChannel:
        return NativeChannel()

    def create_cq(self, handle: int, cqe: int, channel: ChannelEngine | None) -> NativeCQ:
        assert channel is None or isinstance(channel, NativeChannel)
        cq = NativeCQ(self, handle, cqe, channel)
        self._objects.add(cq)
        return cq

    def create_qp(self, spec: QPSpec) -> NativeQP:
        scq, rcq = spec.scq, spec.rcq
        if not isinstance(scq, NativeCQ) or not isinstance(rcq, NativeCQ):
            raise TcpverbsError(errno.EINVAL, "the QP's CQs belong to another engine")
        qp = NativeQP(self, spec, scq, rcq)
        self._objects.add(qp)
        return qp

    def create_srq(self, handle: int, pd: int, max_wr: int, max_sge: int) -> NativeSRQ:
        return NativeSRQ(self, handle, pd, max_wr, max_sge)

    def retire(self, obj: NativeQP | NativeCQ) -> None:
        """A QP or CQ is destroyed: its counters stay in the totals."""
        self._objects.retire(obj)

    def next_event(self, timeout: float | None) -> EngineEvent | None:
        raw = self.next_event_raw(timeout)
        if raw is None:
            return None
        event_type, handle, reason = raw
        return EngineEvent(ibv_event_type(event_type), handle, reason)

    def statistics(self) -> dict[str, int]:
        return self._objects.total(self.engine_statistics())
