"""A deterministic workload for instruction counts: N polls of an empty CQ whose QP is
connected -- what a spinning application pays while it waits.

    valgrind --tool=callgrind python benchmarks/empty_poll_workload.py         # N = 20000
    N=0 valgrind --tool=callgrind python benchmarks/empty_poll_workload.py     # set-up alone

``ENGINE`` (python, native) chooses the engine.  Instructions per empty poll =
(Collected with N - Collected with N=0) / N.  Each poll also asks the kernel (a
non-blocking receive), which callgrind does not count.
"""

from __future__ import annotations

import os

import tcpverbs as v
from tcpverbs.testing import qp_pair


def main() -> None:
    count = int(os.environ.get("N", "20000"))
    ctx = v.Context(engine=os.environ.get("ENGINE"))
    a, _ = qp_pair(ctx, "rc")
    poll = a.rcq.poll
    for _ in range(count):
        poll(1)
    print(f"{count} empty polls")
    ctx.close()


if __name__ == "__main__":
    main()
