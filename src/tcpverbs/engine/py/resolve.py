"""Checking receive and send memory against the engine's memory table: what a QP and a
shared receive queue of the Python engine both do at post time (and again when an MR is
re-registered under posted receives).

Internal to the Python engine; :class:`MemoryUser` needs ``engine`` (for its memory
table) and ``pd`` (the handle of the PD whose memory it may use).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from ...enums import ibv_access_flags, ibv_wc_status
from ...wr import SGE, RecvWR
from ..api import PostFailure, PostFault, find_bad_field
from .memory import Region
from .work import RecvWork, Segment

if TYPE_CHECKING:
    from . import PyEngine

__all__ = ["BAD_INPUT", "MemoryUser", "bad_field", "check_sge"]

_LOC_PROT = ibv_wc_status.IBV_WC_LOC_PROT_ERR
_LOCAL_WRITE = int(ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)

# what reading a malformed WR raises (a str where an int belongs, a tuple for an SGE, a
# value out of range): the post is refused with the culprit named (find_bad_field)
BAD_INPUT = (TypeError, AttributeError, ValueError, OverflowError, IndexError)


def check_sge(sge: SGE) -> None:
    """Raise unless every field of *sge* is an int within its width (a negative or too
    wide one leaves bits above it; one that is not an int raises TypeError at "|")."""
    if (sge.addr >> 64) or (sge.length | sge.lkey) >> 32:
        raise ValueError("an SGE field is out of range")


def bad_field(wr: object, index: int, fields: dict[str, int], exc: Exception) -> PostFailure:
    found = find_bad_field(wr, fields)
    if found is None:  # the error was not about the WR: a bug, not bad input
        raise exc
    path, bits = found
    return PostFailure(index, PostFault.BAD_FIELD, limit=bits, field=path)


class MemoryUser:
    """A QP or an SRQ: it resolves SGEs to memory of its own PD."""

    engine: PyEngine
    pd: int

    def _recv_work(
        self, wr: RecvWR, index: int, max_sge: int, used: int, capacity: int
    ) -> RecvWork | PostFailure:
        """The checked receive WR *wr* (the *index*-th of its chain), or why it is
        refused: *max_sge* SGEs at most, *used* of *capacity* slots taken."""
        sges = wr.sg_list
        num_sge = wr.num_sge
        if num_sge > max_sge:
            return PostFailure(index, PostFault.TOO_MANY_SGE, num_sge, max_sge)
        if num_sge < 0 or num_sge > len(sges):
            return PostFailure(index, PostFault.SGE_COUNT, num_sge, len(sges))
        if used >= capacity:
            return PostFailure(index, PostFault.QUEUE_FULL, limit=capacity)
        wr_id = wr.wr_id
        if wr_id >> 64:  # negative or too wide (a non-int raises TypeError here)
            raise ValueError("wr_id is out of range")
        if num_sge == 1:  # the usual receive, one valid SGE, resolved in one step
            sge = sges[0]
            one = self._resolve_one(sge, writable=True)
            if one is not None:
                view, region = one
                return RecvWork(wr_id, [view] if sge.length else [], sge.length, None, (region,))
        # anything else: the general path finds the error, if any
        segments, error, regions = self._resolve(sges[:num_sge], writable=True, inline=False)
        views = [s for s in segments if isinstance(s, memoryview)]
        return RecvWork(wr_id, views, sum(len(v) for v in views), error, regions)

    def _resolve_one(self, sge: SGE, *, writable: bool) -> tuple[memoryview, Region] | None:
        """The memory of one SGE and its region when it may be used, else None
        (:meth:`_resolve` then says why).  The hot path of every post."""
        addr, length, lkey = sge.addr, sge.length, sge.lkey
        if (addr >> 64) or (length | lkey) >> 32:  # (as check_sge)
            raise ValueError("an SGE field is out of range")
        region = self.engine.memory.get(lkey)
        if (
            region is None
            or region.pd != self.pd
            or (writable and not region.access & _LOCAL_WRITE)
        ):
            return None
        start = addr - region.addr
        if start < 0 or start + length > region.length:
            return None
        return region.view[start : start + length], region

    def _resolve(
        self, sges: list[SGE], *, writable: bool, inline: bool
    ) -> tuple[list[Segment], tuple[int, str] | None, tuple[Region, ...]]:
        """Memory of *sges* as views, and the regions they lie in; an error becomes the
        WR's LOC_PROT_ERR completion."""
        views: list[Segment] = []
        used: list[Region] = []
        memory = self.engine.memory
        for i, sge in enumerate(sges):
            check_sge(sge)
            region = memory.get(sge.lkey)
            if region is not None and region.pd != self.pd:
                region = None
            if region is None and inline:  # ibv_post_send ignores lkey for inline data
                region = memory.find(self.pd, sge.addr, sge.length)
            why = None
            view = None
            if region is None:
                why = f"SGE {i}: lkey 0x{sge.lkey:x} is not an MR of this QP's PD"
            elif writable and not region.access & _LOCAL_WRITE:
                why = f"SGE {i}: MR 0x{sge.lkey:x} lacks IBV_ACCESS_LOCAL_WRITE"
            else:
                view = region.slice(sge.addr, sge.length)
                if view is None:
                    why = (
                        f"SGE {i}: [0x{sge.addr:x}, +{sge.length}) is outside MR "
                        f"[0x{region.addr:x}, +{region.length})"
                    )
            if why is not None or view is None or region is None:
                return views, (_LOC_PROT, why or "?"), ()
            if sge.length:
                views.append(view)
                used.append(region)
        return views, None, tuple(used)

    def _check_again(self, work: RecvWork, old: Region) -> None:
        new = self.engine.memory.get(old.key)
        if len(work.segments) != len(work.regions):  # one empty SGE: no memory used
            work.regions = tuple(new if r is old else r for r in work.regions if new)
            return
        segments: list[memoryview] = []
        regions: list[Region] = []
        for view, region in zip(work.segments, work.regions, strict=True):
            if region is not old:
                segments.append(view)
                regions.append(region)
                continue
            addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
            moved = None
            if new is not None and new.pd == self.pd and new.access & _LOCAL_WRITE:
                moved = new.slice(addr, len(view))
            if moved is None or new is None:
                work.error = (
                    _LOC_PROT,
                    f"MR 0x{old.key:x} was re-registered and no longer gives this "
                    f"QP [0x{addr:x}, +{len(view)})",
                )
                work.segments, work.regions = [], ()
                return
            segments.append(moved)
            regions.append(new)
        work.segments, work.regions = segments, tuple(regions)
