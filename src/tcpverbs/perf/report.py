"""perftest's result tables (and their JSON twin)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

__all__ = ["BwResult", "LatResult", "bw_header", "bw_row", "lat_header", "lat_result", "lat_row"]


@dataclass
class BwResult:
    size: int
    iterations: int
    bw_peak: float  # MB/s (or Gb/s with --report_gbits)
    bw_avg: float
    msg_rate_mpps: float
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


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

    def as_dict(self) -> dict[str, float | int]:
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
