"""A shared receive queue in the Python engine.

Receive WRs wait here, checked as a QP's are (:class:`.resolve.MemoryUser`), until a
message comes for one of the SRQ's QPs: the QP then *takes* the oldest (:meth:`take`),
under its own lock, into its own receive queue, and from there on the WR is that QP's
like any other (placed, completed or flushed there).  Deregistering or re-registering
an MR reaches the WRs still here too: they keep the error for their turn.

Locking: ``lock`` guards the queue, the counts and the limit; a QP calls :meth:`take`
with its own lock held (never the other way round).
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from typing import TYPE_CHECKING

from ...enums import ibv_event_type, ibv_wc_status
from ...errors import TcpverbsError
from ...wr import RecvWR
from ..api import RECV_WR_FIELDS, PostFailure
from .resolve import BAD_INPUT, MemoryUser, bad_field

if TYPE_CHECKING:
    from . import PyEngine
    from .memory import Region
    from .work import RecvWork

__all__ = ["PySRQ"]

_LOC_PROT = ibv_wc_status.IBV_WC_LOC_PROT_ERR


class PySRQ(MemoryUser):
    def __init__(self, engine: PyEngine, handle: int, pd: int, max_wr: int, max_sge: int) -> None:
        self.engine = engine
        self.handle = handle
        self.pd = pd
        self.max_wr = max_wr
        self.max_sge = max_sge
        self.limit = 0
        self.lock = threading.Lock()
        self.queue: deque[RecvWork] = deque()
        self.taken = 0  # WRs its QPs took (statistics)

    @property
    def count(self) -> int:
        return len(self.queue)

    def post_recv(self, wr: RecvWR) -> PostFailure | None:
        with self.lock:
            index, one = 0, wr
            try:
                for index, one in enumerate(wr.chain()):
                    work = self._recv_work(one, index, self.max_sge, len(self.queue), self.max_wr)
                    if isinstance(work, PostFailure):
                        return work
                    self.queue.append(work)
                return None
            except BAD_INPUT as exc:
                return bad_field(one, index, RECV_WR_FIELDS, exc)

    def take(self) -> RecvWork | None:
        """The oldest WR, now the calling QP's; the limit event if it leaves too few."""
        with self.lock:
            if not self.queue:
                return None
            work = self.queue.popleft()
            self.taken += 1
            reached = len(self.queue) < self.limit
            if reached:
                self.limit = 0  # an armed limit fires once
        if reached:
            self.engine.event(
                ibv_event_type.IBV_EVENT_SRQ_LIMIT_REACHED,
                self.handle,
                f"{len(self.queue)} receive WRs left in the SRQ",
            )
        return work

    def modify(self, max_wr: int | None, max_sge: int | None, limit: int | None) -> None:
        with self.lock:
            if max_sge is not None and max_sge < self.max_sge:
                raise TcpverbsError(
                    errno.EINVAL, f"Failed to modify SRQ: max_sge {max_sge} below {self.max_sge}"
                )
            if max_wr is not None:
                if max_wr < len(self.queue):
                    raise TcpverbsError(
                        errno.EINVAL,
                        f"Failed to modify SRQ: max_wr {max_wr} is below the "
                        f"{len(self.queue)} WRs it holds",
                    )
                self.max_wr = max_wr
            if max_sge is not None:
                self.max_sge = max_sge
            if limit is not None:
                self.limit = limit

    def revoke(self, region: Region) -> None:
        """*region* was deregistered: WRs here that use it fail when they are taken."""
        with self.lock:
            for work in self.queue:
                if region in work.regions and work.error is None:
                    work.error = (
                        _LOC_PROT,
                        f"MR 0x{region.key:08x} was deregistered while the SRQ held "
                        f"work request {work.wr_id}",
                    )
                    work.segments, work.regions = [], ()

    def reregistered(self, old: Region) -> None:
        """*old* was re-registered: WRs here that use it are checked again."""
        with self.lock:
            for work in self.queue:
                if old in work.regions and work.error is None:
                    self._check_again(work, old)

    def destroy(self) -> None:
        with self.lock:
            self.queue.clear()
        self.engine.retire_srq(self)
