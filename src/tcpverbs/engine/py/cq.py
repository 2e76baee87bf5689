"""Completion queues and channels of the Python engine, and its waiting policy.

Completions are queued as ``(record, qp, is_send, generation)``: the record is what
:meth:`PyCQ.poll` hands out (``WC``'s layout); the QP lets polling free the WR's queue
slot, and the generation (bumped by RESET) keeps a late poll from freeing one twice.  A
CQ holds at most ``cqe`` completions; one more is an overrun: counted, an
``IBV_EVENT_CQ_ERR`` queued, and the next poll raises :class:`~tcpverbs.engine.api.Overrun`.

Scheduling (why the waiting lives here): an empty ``poll`` first lets the CQ's QPs
receive in the caller's thread, so a spinning application drives its own traffic and the
progress thread parks its reads (:mod:`.transport`).  ``wait`` spins its budget, then
hands the reading back to the progress thread and sleeps on a condition.  A thread in
``get_cq_event`` receives for the QPs of its armed CQs itself (see :meth:`PyChannel._sleep`).

Locks: a CQ's ``lock`` guards its entries and arming; a channel's ``lock`` its event
queue.  A QP's lock may be held when a CQ's is taken (completions are pushed under it),
never the other way round.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ...enums import ibv_event_type
from ..api import Completion, Overrun

if TYPE_CHECKING:
    from . import PyEngine
    from .qp import PyQP
    from .transport import Transport

__all__ = ["PyCQ", "PyChannel"]

MAX_SLEEPER_QPS = 8  # get_cq_event reads for at most this many QPs itself (see _sleep)
YIELD_EVERY = 32  # empty polls between two GIL hand-overs

Entry = tuple[Completion, "PyQP", bool, int]


class PyChannel:
    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events: deque[PyCQ] = deque()
        self._lock = threading.Lock()
        self.cqs: dict[int, PyCQ] = {}  # the CQs that signal here
        self._closed = False

    def notify(self, cq: PyCQ) -> None:
        with self._lock:  # queue and counter change together: fd readable <=> events queued
            if self._closed:
                return
            self._events.append(cq)
            os.eventfd_write(self.fd, 1)
        cq.stats["event_writes"] += 1

    def get_cq_event(self, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            with self._lock:
                if self._events:
                    got = self._events.popleft()
                    if not self._events:
                        self._drain()
                    return got.handle
                self._drain()  # nothing queued: the fd must not stay readable
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return None
            self._sleep(remaining)
        return None

    def _sleep(self, timeout: float | None) -> None:
        """Wait for an event, receiving meanwhile what arrives for the QPs of this
        channel's armed CQs in this thread.

        Left to the progress thread, a message would wake two threads — the progress
        thread to receive it, then this one for the event it raises — and hand the GIL
        from one to the other; here it wakes one, as a blocking socket does.  The progress
        thread stops watching those sockets for reading while this thread does (it still
        writes, runs timers and takes over again when this thread returns).
        """
        qps = [qp for cq in list(self.cqs.values()) if cq.armed for qp in list(cq.qps.values())]
        if len(qps) > MAX_SLEEPER_QPS:  # each look costs per QP: leave many to the engine
            select.select([self.fd], [], [], timeout)
            return
        token = object()  # this sleep's mark on the transports it watches
        watched: dict[int, PyQP] = {}
        entered: list[Transport] = []
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            for qp in qps:
                transport = qp.sleeper_enter(token)
                if transport is not None:
                    entered.append(transport)
                    watched[transport.fd] = qp
                    poller.register(transport.fd, select.POLLIN)
            for qp in watched.values():  # what arrived before the progress thread let go
                qp.progress()
            if self._events:
                return
            wait_ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
            for fd, _ in poller.poll(wait_ms):
                if fd in watched:
                    watched[fd].progress()
        finally:
            # leave every transport this sleep may have entered — also the one an exception
            # struck between its enter and its entry in *entered*; leaving is idempotent,
            # and one that fails does not keep the others marked
            left = set(entered)
            left.update(qp.transport for qp in qps if qp.transport is not None)
            failed: BaseException | None = None
            for t in left:
                try:
                    t.qp.sleeper_exit(t, token)
                except BaseException as exc:  # a signal: the rest still leave
                    failed = failed or exc
            if failed is not None:
                raise failed

    def _drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def destroy(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.eventfd_write(self.fd, 1)  # a select() on the fd in _sleep returns now
        os.close(self.fd)


class PyCQ:
    def __init__(self, engine: PyEngine, handle: int, cqe: int, channel: PyChannel | None) -> None:
        self.engine = engine
        self.handle = handle
        self.cqe = cqe
        self.channel = channel
        self.entries: deque[Entry] = deque()
        self.lock = threading.Lock()
        self.armed = False
        self._solicited_only = False
        self._lost = 0
        self.qps: dict[int, PyQP] = {}
        self._empty_polls = 0
        self._wakeup = threading.Condition(self.lock)  # wait() sleeps here
        self._sleepers = 0
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys(
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
        if channel is not None:
            channel.cqs[handle] = self

    # -- application side --------------------------------------------------------
    def poll(self, num_entries: int) -> list[Completion]:
        stats = self.stats
        stats["polls"] += 1
        entries = self.entries
        if not entries:
            if self.engine.deferred_acks:  # waiting on any CQ is the application's next move
                self.engine.send_deferred_acks(self)
            for qp in list(self.qps.values()):
                qp.progress()
            if not entries:
                stats["polls_empty"] += 1
                self._empty_polls += 1
                if not self._empty_polls % YIELD_EVERY:
                    # now and then let other threads (another QP's progress) have the GIL;
                    # yielding every time costs ~100 us a call on a busy 2-core machine
                    stats["yields"] += 1
                    time.sleep(0)
        with self.lock:
            if self._lost:
                lost, self._lost = self._lost, 0
                raise Overrun(lost)
            n = min(num_entries, len(entries))
            taken = [entries.popleft() for _ in range(n)]
        records = []
        # slots are freed once per run of completions from one queue (one lock round)
        run_qp: PyQP | None = None
        run_send = False
        run_gen = run = 0
        for record, qp, is_send, gen in taken:
            if qp is not run_qp or is_send is not run_send or gen != run_gen:
                if run_qp is not None:
                    run_qp.slot_freed(run_send, run_gen, run)
                run_qp, run_send, run_gen, run = qp, is_send, gen, 0
            run += 1
            records.append(record)
        if run_qp is not None:
            run_qp.slot_freed(run_send, run_gen, run)
        return records

    def wait(self, num_entries: int, timeout: float | None, spin_us: int) -> list[Completion]:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        spin_end = now + spin_us / 1e6
        if deadline is not None and deadline < spin_end:
            spin_end = deadline  # a timeout shorter than the spin budget ends the spin
        while not self._closed:
            records = self.poll(num_entries)
            if records:
                return records
            if time.monotonic() < spin_end:
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._app_blocking()  # about to sleep: the progress thread reads
            with self.lock:
                if not self.entries and not self._lost and not self._closed:
                    self.stats["sleeps"] += 1
                    self._sleepers += 1
                    try:
                        self._wakeup.wait(remaining)
                    finally:
                        self._sleepers -= 1
        return []

    def req_notify(self, solicited_only: bool) -> None:
        with self.lock:
            self.armed = True
            self._solicited_only = solicited_only
        self._app_blocking()  # about to sleep: the progress thread takes over

    def _app_blocking(self) -> None:
        for qp in list(self.qps.values()):
            qp.app_blocking()

    @property
    def pending(self) -> int:
        return len(self.entries)

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "pending": len(self.entries)}

    # -- engine side -------------------------------------------------------------
    def push(self, entry: Entry, solicited: bool = False) -> None:
        notify = False
        with self.lock:
            if self._closed:
                return
            lost = len(self.entries) >= self.cqe
            if lost:
                self._lost += 1
                self.stats["overruns"] += 1
                overrun = self._lost == 1
            else:
                self.entries.append(entry)
                overrun = False
            self.stats["completions"] += 1
            if self._sleepers:
                self._wakeup.notify_all()
            if self.armed and (not self._solicited_only or solicited or entry[0][1] != 0):
                self.armed = False
                notify = True
        if lost:  # never to be polled: its slot is free now (QP lock, outside the CQ's)
            entry[1].slot_freed(entry[2], entry[3])
        if overrun:
            self.engine.event(ibv_event_type.IBV_EVENT_CQ_ERR, self.handle, "CQ overrun")
        if notify and self.channel is not None:
            self.channel.notify(self)

    def discard_qp(self, qp: PyQP) -> None:
        """Drop unpolled completions of *qp* (the QP moved to RESET)."""
        with self.lock:
            kept = [e for e in self.entries if e[1] is not qp]
            self.entries.clear()
            self.entries.extend(kept)

    def destroy(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self._wakeup.notify_all()  # a sleeper in wait() returns
        if self.channel is not None:
            self.channel.cqs.pop(self.handle, None)
        self.engine.retire(self)
