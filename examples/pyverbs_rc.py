"""A plain pyverbs program -- it imports nothing from tcpverbs -- run on tcpverbs unchanged:

    tcpverbs run -- python examples/pyverbs_rc.py [--dev tcpv_lo]

Two RC QPs of one device, connected the classic verbs way (GID, QP number and PSN,
exchanged here through local variables), SEND a message and RDMA WRITE another; the
program checks what landed.  On a machine with rdma-core and an RDMA device the same file
runs with the real pyverbs (``python examples/pyverbs_rc.py --dev mlx5_0``).
"""

from __future__ import annotations

import argparse
import random
import time

import pyverbs.enums as e
from pyverbs.addr import AHAttr, GlobalRoute
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.pyverbs_error import PyverbsRDMAError
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import SGE, RecvWR, SendWR

SIZE = 64
ACCESS = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE


def poll(cq: CQ, count: int, timeout: float = 10.0) -> list:
    """*count* completions, each checked for success."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        n, wcs = cq.poll(count - len(got))
        got.extend(wcs[:n])
        if time.monotonic() > deadline:
            raise PyverbsRDMAError(f"only {len(got)} of {count} completions in {timeout} s")
    for wc in got:
        if wc.status != e.IBV_WC_SUCCESS:
            raise PyverbsRDMAError(f"work request {wc.wr_id} failed: status {wc.status}")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default="tcpv_lo")
    parser.add_argument("--gid-index", type=int, default=0)
    args = parser.parse_args()
    with Context(name=args.dev) as ctx:
        pd = PD(ctx)
        cq = CQ(ctx, 16, None, None, 0)
        init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=QPCap(8, 8, 1, 1))
        a, b = QP(pd, init, QPAttr()), QP(pd, init, QPAttr(qp_access_flags=ACCESS))
        mr_a, mr_b = MR(pd, 2 * SIZE, ACCESS), MR(pd, 2 * SIZE, ACCESS)
        gid = ctx.query_gid(1, args.gid_index)
        psn = {a: random.getrandbits(24), b: random.getrandbits(24)}
        for qp, peer in ((a, b), (b, a)):
            attr = QPAttr(qp_access_flags=ACCESS)
            attr.path_mtu = e.IBV_MTU_1024
            attr.dest_qp_num = peer.qp_num
            attr.rq_psn, attr.sq_psn = psn[peer], psn[qp]
            attr.ah_attr = AHAttr(is_global=1, gr=GlobalRoute(dgid=gid, sgid_index=args.gid_index))
            qp.to_rts(attr)  # through INIT and RTR, as pyverbs does
        b.post_recv(RecvWR(1, 1, [SGE(mr_b.buf, SIZE, mr_b.lkey)]))
        mr_a.write(b"sent by SEND".ljust(SIZE, b"."), SIZE, 0)
        mr_a.write(b"written by RDMA WRITE".ljust(SIZE, b"."), SIZE, SIZE)
        send = SendWR(2, e.IBV_WR_SEND, 1, 0, [SGE(mr_a.buf, SIZE, mr_a.lkey)])
        write = SendWR(3, e.IBV_WR_RDMA_WRITE, 1, 0, [SGE(mr_a.buf + SIZE, SIZE, mr_a.lkey)])
        write.set_wr_rdma(mr_b.rkey, mr_b.buf + SIZE)
        a.post_send(send)
        a.post_send(write)
        poll(cq, 3)  # the receive, the SEND and the WRITE
        assert mr_b.read(SIZE, 0) == mr_a.read(SIZE, 0)
        assert mr_b.read(SIZE, SIZE) == mr_a.read(SIZE, SIZE)
        print(f"{args.dev}: {mr_b.read(12, 0).decode()!r}, {mr_b.read(21, SIZE).decode()!r}: OK")


if __name__ == "__main__":
    main()
