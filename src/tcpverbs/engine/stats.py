"""What every engine's ``statistics()`` shares: the counted system calls and the sums."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["SYSCALL_KEYS", "Tally", "cumulative", "total"]

# Context.statistics()["syscalls"]: the calls tcpverbs makes on the data path
SYSCALL_KEYS = (
    "sendmsg_calls",
    "recv_calls",
    "recv_empty",
    "engine_wakeups",
    "epoll_ctl_calls",
    "engine_wake_writes",
    "event_writes",
    "yields",
    "ack_checks",
)


def cumulative(counters: dict[str, int]) -> dict[str, int]:
    """The counters that add up over time (not the gauges: queue fill levels)."""
    return {k: v for k, v in counters.items() if not k.endswith("_outstanding") and k != "pending"}


def total(
    retired: Counter[str], live: Iterable[dict[str, int]], own: dict[str, int]
) -> dict[str, int]:
    """An engine's counters: those of destroyed objects, of live ones, its own, and
    ``syscalls``, the sum of the :data:`SYSCALL_KEYS`."""
    out: Counter[str] = Counter(retired)
    for counters in live:
        out.update(cumulative(counters))
    out.update(own)
    out["syscalls"] = sum(out[key] for key in SYSCALL_KEYS)
    return dict(out)


class Counted(Protocol):
    """What a :class:`Tally` keeps: a QP or CQ of an engine."""

    @property
    def handle(self) -> int: ...

    def statistics(self) -> dict[str, int]: ...


T = TypeVar("T", bound=Counted)


class Tally(Generic[T]):
    """An engine's QPs and CQs, for its ``statistics()``: the live ones by handle, and
    the cumulative counters of those destroyed, which stay in the totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, T] = {}
        self._retired: Counter[str] = Counter()

    def add(self, obj: T) -> None:
        with self._lock:
            self._live[obj.handle] = obj

    def retire(self, obj: T) -> None:
        """*obj* is destroyed (a second call changes nothing)."""
        counters = cumulative(obj.statistics())
        with self._lock:
            if self._live.get(obj.handle) is obj:
                del self._live[obj.handle]
                self._retired.update(counters)

    def live(self) -> list[T]:
        with self._lock:
            return list(self._live.values())

    def total(self, own: dict[str, int]) -> dict[str, int]:
        """Every counter summed, with the engine's *own*, and ``syscalls``."""
        with self._lock:
            retired = Counter(self._retired)
            live = list(self._live.values())
        return total(retired, [obj.statistics() for obj in live], own)
