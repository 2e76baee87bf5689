"""Completion queues, work completions and completion channels.

Completions are stored as plain tuples and turned into :class:`WC` objects only when
polled.  A CQ holds at most ``cqe`` completions; one more is a CQ overrun, as on
hardware: the completion is counted, an ``IBV_EVENT_CQ_ERR`` async event is raised and
the next :meth:`CQ.poll` raises ``EOVERFLOW`` saying how many were lost — never silent.
Because a work request's queue slot is freed only when its completion is polled, a CQ
with at least as many entries as the queues that feed it cannot overrun.
"""

from __future__ import annotations

import errno
import math
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._base import VerbsObject
from .device import MAX_CQE
from .enums import ibv_event_type, ibv_wc_opcode, ibv_wc_status
from .errors import TcpverbsError

if TYPE_CHECKING:
    from .context import Context
    from .engine.transport import Transport
    from .qp import QP

__all__ = ["CQ", "WC", "CompChannel"]

MAX_SLEEPER_QPS = 8  # get_cq_event reads for at most this many QPs itself (see _sleep)
YIELD_EVERY = 32  # empty polls between two GIL hand-overs
DEFAULT_SPIN_US = 50  # CQ.wait polls this long before it sleeps (Context(spin_us=...))
MAX_SPIN_US = 10_000_000


def check_spin(spin_us: int) -> None:
    if not isinstance(spin_us, int) or not 0 <= spin_us <= MAX_SPIN_US:
        raise TcpverbsError(
            errno.EINVAL, f"spin_us must be an int in 0..{MAX_SPIN_US}, got {spin_us!r}"
        )


@dataclass(slots=True)
class WC:
    """``struct ibv_wc``."""

    wr_id: int = 0
    status: int = ibv_wc_status.IBV_WC_SUCCESS
    opcode: int = ibv_wc_opcode.IBV_WC_SEND
    vendor_err: int = 0
    byte_len: int = 0
    qp_num: int = 0
    src_qp: int = 0
    imm_data: int = 0
    wc_flags: int = 0
    pkey_index: int = 0
    slid: int = 0
    sl: int = 0
    dlid_path_bits: int = 0

    def __str__(self) -> str:
        status = ibv_wc_status(self.status).name
        try:
            opcode = ibv_wc_opcode(self.opcode).name
        except ValueError:
            opcode = str(self.opcode)
        return (
            f"WC(wr_id={self.wr_id}, {status}, {opcode}, byte_len={self.byte_len}, "
            f"qp_num={self.qp_num}, imm_data={self.imm_data}, wc_flags={self.wc_flags})"
        )


# What the engine queues: (qp, is_send, wr_id, status, opcode, vendor_err, byte_len,
# imm_data, wc_flags, generation).  The QP reference lets poll() free the WR's queue slot;
# the generation (bumped by RESET) keeps a late poll from freeing a slot twice.
Completion = tuple[Any, bool, int, int, int, int, int, int, int, int]


class CompChannel(VerbsObject):
    """``ibv_create_comp_channel``: where armed CQs report new completions.

    ``fd`` is an eventfd that becomes readable when an event is pending, so it can sit in
    the application's own ``select``/``epoll`` loop.
    """

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events: deque[CQ] = deque()
        self._lock = threading.Lock()

    def _notify(self, cq: CQ) -> None:
        with self._lock:  # queue and counter change together: fd readable <=> events queued
            self._events.append(cq)
            os.eventfd_write(self.fd, 1)
        cq._stats["event_writes"] += 1

    def get_cq_event(self, cq: CQ | None = None, timeout: float | None = None) -> CQ:
        """Block until an armed CQ of this channel got a completion; return that CQ.

        Each event must be acknowledged with ``cq.ack_events(n)``.  With *cq*, an event
        for another CQ raises ``EINVAL`` (as pyverbs checks).  *timeout* seconds without an
        event raise ``ETIMEDOUT``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_open()
            with self._lock:
                if self._events:
                    got = self._events.popleft()
                    if not self._events:
                        self._drain()
                    break
                self._drain()  # nothing queued: the fd must not stay readable
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                raise TcpverbsError(errno.ETIMEDOUT, "no completion event within the timeout")
            self._sleep(remaining)
        got._events_unacked += 1
        if cq is not None and got is not cq:
            raise TcpverbsError(errno.EINVAL, "completion event belongs to another CQ")
        return got

    def _sleep(self, timeout: float | None) -> None:
        """Wait for an event, receiving meanwhile what arrives for the QPs of this
        channel's armed CQs in this thread.

        Left to the progress thread, a message would wake two threads — the progress
        thread to receive it, then this one for the event it raises — and hand the GIL
        from one to the other; here it wakes one, as a blocking socket does.  The progress
        thread stops watching those sockets for reading while this thread does (it still
        writes, runs timers and takes over again when this thread returns).
        """
        qps = [
            qp
            for cq in list(self._children.values())
            if isinstance(cq, CQ) and cq._armed
            for qp in list(cq._qps.values())
        ]
        if len(qps) > MAX_SLEEPER_QPS:  # each look costs per QP: leave many to the engine
            select.select([self.fd], [], [], timeout)
            return
        token = object()  # this sleep's mark on the transports it watches
        watched: dict[int, QP] = {}
        entered: list[tuple[QP, Transport]] = []
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            for qp in qps:
                transport = qp._sleeper_enter(token)
                if transport is not None:
                    entered.append((qp, transport))
                    watched[transport.fd] = qp
                    poller.register(transport.fd, select.POLLIN)
            for qp in watched.values():  # what arrived before the progress thread let go
                qp._progress()
            if self._events:
                return
            wait_ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
            for fd, _ in poller.poll(wait_ms):
                if fd in watched:
                    watched[fd]._progress()
        finally:
            # leave every transport this sleep may have entered — also the one an exception
            # struck between its enter and its entry in *entered*; leaving is idempotent,
            # and one that fails does not keep the others marked
            left = {t for _, t in entered}
            left.update(qp._transport for qp in qps if qp._transport is not None)
            failed: BaseException | None = None
            for t in left:
                try:
                    t.qp._sleeper_exit(t, token)
                except BaseException as exc:  # a signal: the rest still leave
                    failed = failed or exc
            if failed is not None:
                raise failed

    def _drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def _release(self) -> None:
        os.close(self.fd)


class CQ(VerbsObject):
    """``ibv_create_cq``: ``CQ(ctx, cqe, cq_context=None, channel=None, comp_vector=0)``.

    *spin_us* (a tcpverbs extension) is how long :meth:`wait` polls before it sleeps;
    None takes the context's ``spin_us``.
    """

    def __init__(
        self,
        ctx: Context,
        cqe: int,
        cq_context: object = None,
        channel: CompChannel | None = None,
        comp_vector: int = 0,
        *,
        spin_us: int | None = None,
    ) -> None:
        if not isinstance(cqe, int) or not 1 <= cqe <= MAX_CQE:
            raise TcpverbsError(errno.EINVAL, f"cqe must be in 1..{MAX_CQE}, got {cqe!r}")
        if spin_us is not None:
            check_spin(spin_us)
        if channel is not None and channel.ctx is not ctx:
            raise TcpverbsError(errno.EINVAL, "completion channel belongs to another context")
        if comp_vector != 0:
            raise TcpverbsError(errno.EINVAL, "tcpverbs contexts have one completion vector (0)")
        parents: tuple[VerbsObject, ...] = (ctx,) if channel is None else (ctx, channel)
        super().__init__(*parents)
        self.ctx = ctx
        self.cqe = cqe
        self.cq_context = cq_context
        self.channel = channel
        self._entries: deque[Completion] = deque()
        self._lock = threading.Lock()
        self._armed = False
        self._solicited_only = False
        self._lost = 0
        self._events_unacked = 0
        self._qps: dict[int, QP] = {}
        self._empty_polls = 0
        self.spin_us = spin_us
        self._wakeup = threading.Condition(self._lock)  # wait() sleeps here
        self._sleepers = 0
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "polls",  # poll() calls
                "polls_empty",  # ... that found nothing: the spinning
                "yields",  # GIL hand-overs (sleep(0)) while spinning
                "completions",  # completions queued
                "overruns",  # completions lost to a full CQ (each also raised EOVERFLOW)
                "sleeps",  # times wait() went to sleep after its spin budget
                "event_writes",  # completion-channel events signalled
            ),
            0,
        )

    # -- application side --------------------------------------------------------
    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        """``ibv_poll_cq``: up to *num_entries* completions, oldest first.

        An empty CQ first lets its QPs make progress (a non-blocking receive), so a
        thread that spins on ``poll`` drives its own traffic.
        """
        self._check_open()
        if num_entries < 1:
            raise TcpverbsError(errno.EINVAL, f"num_entries must be >= 1, got {num_entries}")
        stats = self._stats
        stats["polls"] += 1
        if not self._entries:
            for qp in list(self._qps.values()):
                qp._progress()
            if not self._entries:
                stats["polls_empty"] += 1
                self._empty_polls += 1
                if not self._empty_polls % YIELD_EVERY:
                    # now and then let other threads (another QP's progress) have the GIL;
                    # yielding every time costs ~100 us a call on a busy 2-core machine
                    stats["yields"] += 1
                    time.sleep(0)
        with self._lock:
            if self._lost:
                lost, self._lost = self._lost, 0
                raise TcpverbsError(
                    errno.EOVERFLOW, f"CQ overrun: {lost} completions did not fit in {self.cqe}"
                )
            n = min(num_entries, len(self._entries))
            taken = [self._entries.popleft() for _ in range(n)]
        wcs = []
        # slots are freed once per run of completions from one queue (one lock round)
        run_key: tuple[Any, bool, int] | None = None
        run = 0
        for qp, is_send, wr_id, status, opcode, vendor_err, byte_len, imm, flags, gen in taken:
            key = (qp, is_send, gen)
            if key != run_key:
                if run_key is not None:
                    run_key[0]._slot_freed(run_key[1], run_key[2], run)
                run_key, run = key, 0
            run += 1
            wcs.append(WC(wr_id, status, opcode, vendor_err, byte_len, qp.qp_num, 0, imm, flags))
        if run_key is not None:
            run_key[0]._slot_freed(run_key[1], run_key[2], run)
        return n, wcs

    def wait(
        self, num_entries: int = 1, timeout: float | None = None, spin_us: int | None = None
    ) -> list[WC]:
        """Poll for up to *spin_us* microseconds, then sleep until a completion arrives;
        return 1 to *num_entries* completions (a tcpverbs extension, no verbs call).

        Spinning answers fastest but keeps a core busy; sleeping hands the work to the
        progress thread and costs a thread wake-up (tens of microseconds) per completion.
        *spin_us* defaults to the CQ's ``spin_us``, else the context's.  *timeout*
        seconds without a completion raise ``ETIMEDOUT``.  The CQ needs no completion
        channel; an armed one still gets its event.
        """
        self._check_open()
        spin = self._spin_budget(spin_us)
        deadline = None if timeout is None else time.monotonic() + timeout
        spin_end = time.perf_counter() + spin / 1e6
        while True:
            n, wcs = self.poll(num_entries)
            if n:
                return wcs
            if time.perf_counter() < spin_end:
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TcpverbsError(errno.ETIMEDOUT, f"no completion within {timeout} s")
            for qp in list(self._qps.values()):  # about to sleep: the progress thread reads
                qp._app_blocking()
            with self._lock:
                if not self._entries and not self._lost and not self._closed:
                    self._stats["sleeps"] += 1
                    self._sleepers += 1
                    try:
                        self._wakeup.wait(remaining)
                    finally:
                        self._sleepers -= 1
            self._check_open()

    def _spin_budget(self, spin_us: int | None) -> int:
        if spin_us is not None:
            check_spin(spin_us)
            return spin_us
        return self.ctx.spin_us if self.spin_us is None else self.spin_us

    def statistics(self) -> dict[str, int]:
        """Counters of this CQ: polls (and how many found nothing), GIL yields,
        completions queued, overruns, sleeps in :meth:`wait`, channel events; and
        ``pending``, the completions waiting to be polled now."""
        return {**self._stats, "pending": len(self._entries)}

    def req_notify(self, solicited_only: bool = False) -> None:
        """``ibv_req_notify_cq``: one event on the channel for the next completion."""
        self._check_open()
        if self.channel is None:
            raise TcpverbsError(errno.EINVAL, "CQ was created without a completion channel")
        with self._lock:
            self._armed = True
            self._solicited_only = bool(solicited_only)
        for qp in list(self._qps.values()):  # about to sleep: the progress thread takes over
            qp._app_blocking()

    def ack_events(self, num_events: int) -> None:
        """``ibv_ack_cq_events``."""
        if num_events < 0 or num_events > self._events_unacked:
            raise TcpverbsError(
                errno.EINVAL,
                f"acknowledging {num_events} events, {self._events_unacked} were received",
            )
        self._events_unacked -= num_events

    # -- engine side -------------------------------------------------------------
    def _push(self, completion: Completion, solicited: bool = False) -> None:
        notify = False
        with self._lock:
            if self._closed:
                return
            if len(self._entries) >= self.cqe:
                self._lost += 1
                self._stats["overruns"] += 1
                overrun = self._lost == 1
                completion[0]._slot_freed(completion[1], completion[9])  # never to be polled
            else:
                self._entries.append(completion)
                overrun = False
            self._stats["completions"] += 1
            if self._sleepers:
                self._wakeup.notify_all()
            if self._armed and (not self._solicited_only or solicited or completion[3] != 0):
                self._armed = False
                notify = True
        if overrun:
            self.ctx._async_event(ibv_event_type.IBV_EVENT_CQ_ERR, self, "CQ overrun")
        if notify and self.channel is not None:
            self.channel._notify(self)

    def _discard_qp(self, qp: QP) -> None:
        """Drop unpolled completions of *qp* (the QP moved to RESET)."""
        with self._lock:
            kept = [c for c in self._entries if c[0] is not qp]
            self._entries.clear()
            self._entries.extend(kept)

    def _release(self) -> None:
        with self._lock:
            self._wakeup.notify_all()  # a sleeper in wait() finds the CQ closed
        self.ctx._retire(self._stats)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<CQ cqe={self.cqe} pending={len(self._entries)}>"
