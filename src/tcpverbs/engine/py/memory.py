"""The engine's memory table: every registered region of a context, by key.

One table answers both questions: may a local SGE use this memory (lkey: same PD, range,
``LOCAL_WRITE`` where written) and may the peer reach it (rkey: the target QP's PD,
range, the ``REMOTE_*`` right).  A key is both lkey and rkey of its region.

``dereg`` marks the region invalid and drops it from the table under the table's lock, so
no lookup finds it after ``dereg`` returns; a payload already landing in it checks
:attr:`Region.valid` as it goes.  The engine then revokes it from every QP of its PD
(``PyEngine.dereg_mr``): each QP's lock is taken once, so no placement into the region is
under way when deregistration returns, and a QP with work that uses the region goes to
ERR.  Views already handed to queued work keep the memory itself alive (Python memory is
never freed under a view), so nothing is ever written to freed memory.
"""

from __future__ import annotations

import threading

__all__ = ["MemoryTable", "Region"]


class Region:
    __slots__ = ("access", "addr", "key", "length", "pd", "valid", "view")

    def __init__(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        self.key = key
        self.pd = pd
        self.view = view
        self.addr = addr
        self.length = len(view)
        self.access = access  # ibv_access_flags as a plain int
        self.valid = True

    def slice(self, addr: int, length: int) -> memoryview | None:
        """The view of ``[addr, addr + length)`` if it lies inside this region, else None."""
        start = addr - self.addr
        if start < 0 or length < 0 or start + length > self.length:
            return None
        return self.view[start : start + length]


class MemoryTable:
    def __init__(self) -> None:
        self._regions: dict[int, Region] = {}
        self._lock = threading.Lock()
        # lookups read the dict without the lock: a dict read is atomic under the GIL,
        # and a region found just before its dereg is caught by `valid` where it matters
        self.get = self._regions.get

    def reg(self, key: int, pd: int, view: memoryview, addr: int, access: int) -> None:
        with self._lock:
            self._regions[key] = Region(key, pd, view, addr, access)

    def dereg(self, key: int) -> Region | None:
        with self._lock:
            region = self._regions.pop(key, None)
            if region is not None:
                region.valid = False
            return region

    def find(self, pd: int, addr: int, length: int) -> Region | None:
        """A region of *pd* holding ``[addr, addr + length)`` whatever its key (inline
        data: ``ibv_post_send`` ignores the lkey)."""
        with self._lock:
            regions = list(self._regions.values())
        for region in regions:
            if region.pd == pd and region.slice(addr, length) is not None:
                return region
        return None
