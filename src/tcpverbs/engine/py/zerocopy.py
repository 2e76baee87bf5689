"""``MSG_ZEROCOPY`` in the Python engine: numbering the calls, and the kernel's
notifications (when to use it: :mod:`tcpverbs.engine.zerocopy`).

Each zerocopy ``sendmsg`` gets a number (0, 1, 2, ... per socket); the kernel reports
finished ranges of numbers on the socket's error queue (``EPOLLERR``).  A WR whose bytes
went out that way may complete only when every call that carried them is reported:
completing on the peer's ACK alone would let the application reuse a buffer the kernel
still reads.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import deque

from ..zerocopy import ZEROCOPY_MIN, zerocopy_threshold

__all__ = ["ZEROCOPY_MIN", "ZeroCopy", "zerocopy_threshold"]

SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
MSG_ZEROCOPY = int(getattr(socket, "MSG_ZEROCOPY", 0x4000000))
_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}  # IP(V6)_RECVERR cmsgs
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_ORIGIN_ZEROCOPY = 5  # SO_EE_ORIGIN_ZEROCOPY
_CODE_COPIED = 1  # SO_EE_CODE_ZEROCOPY_COPIED: the kernel fell back to copying


class ZeroCopy:
    """Zerocopy sends of one socket: numbering, and which numbers the kernel released."""

    def __init__(self, sock: socket.socket, threshold: int) -> None:
        self.sock = sock
        self.threshold = threshold
        self.issued = 0  # zerocopy sendmsg calls made: the next call's number
        self.done = 0  # every call numbered below this is released
        # the segments of calls not yet released: the kernel reads *every* iovec of a
        # zerocopy call later, the small header bytes objects too, so they must not be
        # freed (and their memory reused) before the notification
        self._pinned: deque[tuple[int, list[memoryview | bytes]]] = deque()
        self._early: set[int] = set()  # released out of order, above `done`
        self.copied = 0  # calls the kernel reported as copied after all

    @classmethod
    def enable(cls, sock: socket.socket, threshold: int) -> ZeroCopy | None:
        """Turn SO_ZEROCOPY on; None if the kernel or the socket does not support it."""
        if threshold <= 0:
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError:
            return None
        return cls(sock, threshold)

    def disable(self) -> None:
        """No more zerocopy calls (those made are still tracked)."""
        self.threshold = 1 << 62

    def wanted(self, batch: list[memoryview | bytes]) -> bool:
        """Whether this write carries a segment big enough to be worth pinning."""
        threshold = self.threshold
        return any(len(segment) >= threshold for segment in batch)

    def sent(self, batch: list[memoryview | bytes]) -> None:
        """A zerocopy call with *batch* as its iovecs went out: number it, pin it."""
        self._pinned.append((self.issued, batch))
        self.issued += 1

    @property
    def outstanding(self) -> bool:
        return self.done < self.issued

    def reap(self) -> int:
        """Read the notifications waiting on the error queue; return how many."""
        count = 0
        while True:
            try:
                _, ancdata, _, _ = self.sock.recvmsg(0, 256, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return count
                raise
            for level, kind, data in ancdata:
                if (level, kind) not in _RECVERR or len(data) < _EXTENDED_ERR.size:
                    continue
                _, origin, _, code, _, first, last = _EXTENDED_ERR.unpack_from(data)
                if origin != _ORIGIN_ZEROCOPY:
                    continue
                count += 1
                self._release(first, last, copied=bool(code & _CODE_COPIED))

    def _release(self, first: int, last: int, *, copied: bool) -> None:
        # numbers are 32-bit in the kernel; a range never spans more than what we issued
        span = (last - first) % (1 << 32) + 1
        base = self.done + (first - self.done) % (1 << 32)
        if base + span > self.issued:  # not a call of ours: never let it grow the set
            return
        if copied:
            self.copied += span
        self._early.update(range(base, base + span))
        while self.done in self._early:
            self._early.discard(self.done)
            self.done += 1
        pinned = self._pinned
        while pinned and pinned[0][0] < self.done:
            pinned.popleft()
