"""perftest's result tables (and their JSON twin)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

__all__ = [
    "BwResult",
    "LatResult",
    "bw_header",
    "bw_row",
    "bw_sum",
    "lat_header",
    "lat_result",
    "lat_row",
]


@dataclass
class BwResult:
    size: int
    iterations: int  # messages, all QPs (and with -b both directions) together
    bw_peak: float  # MB/s (or Gb/s with --report_gbits)
    bw_avg: float
    msg_rate_mpps: float
    seconds: float
    qps: int = 1
    bytes: int = 0  # payload moved: iterations * size
    per_qp: list[int] = field(default_factory=list)  # messages on each QP, one direction
    directions: list[BwResult] = field(default_factory=list)  # -b: the client's, the server's

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> BwResult:
        """The inverse of :meth:`as_dict` (the server's half of a -b run arrives as JSON)."""
        parts = [cls.from_dict(p) for p in d.get("directions", [])]  # type: ignore[attr-defined]
        return cls(**{**d, "directions": parts})  # type: ignore[arg-type]


def bw_sum(parts: list[BwResult]) -> BwResult:
    """Both directions of a -b run as one row: perftest adds the peaks, averages and rates."""
    return BwResult(
        size=parts[0].size,
        iterations=sum(p.iterations for p in parts),
        bw_peak=sum(p.bw_peak for p in parts),
        bw_avg=sum(p.bw_avg for p in parts),
        msg_rate_mpps=sum(p.msg_rate_mpps for p in parts),
        seconds=max(p.seconds for p in parts),
        qps=parts[0].qps,
        bytes=sum(p.bytes for p in parts),
        directions=parts,
    )


@dataclass
class LatResult:
    size: int
    iterations: int
    t_min: float  # microseconds
    t_max: float
    t_typical: float
    t_avg: float
    t_stdev: float
    p99: float
    p999: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def bw_header(gbits: bool) -> str:
    unit = "Gb/sec" if gbits else "MB/sec"
    return f" #bytes     #iterations    BW peak[{unit}]    BW average[{unit}]   MsgRate[Mpps]"


def bw_row(r: BwResult) -> str:
    return (
        f" {r.size:<10d} {r.iterations:<10d}     {r.bw_peak:<16.2f}   {r.bw_avg:<16.2f}"
        f"     {r.msg_rate_mpps:.6f}"
    )


def lat_header() -> str:
    return (
        " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]"
        "    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]"
    )


def lat_row(r: LatResult) -> str:
    return (
        f" {r.size:<6d} {r.iterations:<10d}  {r.t_min:<13.2f}  {r.t_max:<13.2f} "
        f"{r.t_typical:<16.2f} {r.t_avg:<13.2f}  {r.t_stdev:<16.2f} {r.p99:<22.2f} "
        f"{r.p999:.2f}"
    )


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def lat_result(size: int, samples_us: list[float]) -> LatResult:
    """perftest's statistics over per-iteration latencies (microseconds)."""
    ordered = sorted(samples_us)
    return LatResult(
        size=size,
        iterations=len(ordered),
        t_min=ordered[0],
        t_max=ordered[-1],
        t_typical=statistics.median(ordered),
        t_avg=statistics.fmean(ordered),
        t_stdev=statistics.pstdev(ordered),
        p99=_percentile(ordered, 0.99),
        p999=_percentile(ordered, 0.999),
    )
