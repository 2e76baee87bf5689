"""A deterministic workload for instruction counts: N 64-byte SENDs between two QPs of one
process, polled by the application (the figure that does not move with a noisy machine).

    valgrind --tool=callgrind python benchmarks/sends_workload.py          # N = 5000
    N=0 valgrind --tool=callgrind python benchmarks/sends_workload.py      # set-up alone

``ENGINE`` (python, native) and ``WIRE`` (rc, stream) choose what is measured.  Both
QPs live in one process; ``benchmarks/perf_instructions.py`` counts each side of a
two-process ``tcpverbs perf`` run instead.

Instructions per message = (Collected with N - Collected with N=0) / N.  Compare two
revisions by running both with PYTHONPATH pointing at each one's src/.
"""

from __future__ import annotations

import os

import tcpverbs as v
from tcpverbs.testing import qp_pair

SLOTS = 256  # receives kept posted


def main() -> None:
    count = int(os.environ.get("N", "5000"))
    wire = os.environ.get("WIRE", "rc")
    ctx = v.Context(engine=os.environ.get("ENGINE"))
    a, b = qp_pair(ctx, wire, cap=v.QPCap(SLOTS, SLOTS, 1, 1, 0))  # type: ignore[arg-type]
    local = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
    smr, rmr = v.MR(a.pd, 64, local), v.MR(b.pd, 64 * SLOTS, local)

    def recv(slot: int) -> v.RecvWR:
        return v.RecvWR(slot, 1, [v.SGE(rmr.buf + 64 * slot, 64, rmr.lkey)])

    for slot in range(SLOTS):
        b.qp.post_recv(recv(slot))
    wr = v.SendWR(0, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(smr.buf, 64, smr.lkey)])
    posted = sent = received = 0
    while received < count:
        while posted < count and posted - sent < SLOTS // 2:
            wr.wr_id = posted
            a.qp.post_send(wr)
            posted += 1
        sent += a.scq.poll(64)[0]
        n, wcs = b.rcq.poll(64)
        for wc in wcs:
            b.qp.post_recv(recv(wc.wr_id % SLOTS))
        received += n
    print(f"{received} messages")
    ctx.close()


if __name__ == "__main__":
    main()
