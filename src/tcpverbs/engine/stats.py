"""What every engine's ``statistics()`` shares: the counted system calls and the sums."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["SYSCALL_KEYS", "cumulative", "total"]

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
