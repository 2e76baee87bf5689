"""Two processes connecting QPs by GID + QP number, as programs for RDMA hardware do.

``python tests/oob_proc.py target DEVICE``
    prints ``GID QPN RKEY ADDR`` of a fresh QP and MR; reads the peer's QP number from
    stdin, connects, prints ``ready``; sleeps in ``readline()`` (one-sided operations need
    nothing from it) and, on the next line, prints the first 8 bytes and the counter.
``python tests/oob_proc.py initiator DEVICE GID QPN RKEY ADDR``
    prints its own QP number, connects, WRITEs ``parent!!``, READs 12 bytes, adds 5 to the
    counter, and prints ``ok <bytes read>``.
"""

from __future__ import annotations

import signal
import sys

import tcpverbs as v
from tcpverbs.testing import ALL_ACCESS, make_endpoint, poll_until

OP = v.ibv_wr_opcode


def connect(qp: v.QP, gid: v.GID, peer_qpn: int) -> None:
    route = v.GlobalRoute(dgid=gid, sgid_index=0)
    qp.to_rtr(
        v.QPAttr(
            ah_attr=v.AHAttr(is_global=1, gr=route, port_num=1),
            dest_qp_num=peer_qpn,
            max_dest_rd_atomic=4,
        )
    )
    qp.to_rts(v.QPAttr(max_rd_atomic=4))


def target(ctx: v.Context) -> None:
    end = make_endpoint(ctx)
    mr = v.MR(end.pd, 4096, ALL_ACCESS)
    mr.write(b"child memory", 12, 100)
    print(ctx.query_gid(1, 0).gid, end.qp.qp_num, mr.rkey, mr.buf, flush=True)
    peer_gid, peer_qpn = sys.stdin.readline().split()
    connect(end.qp, v.GID(peer_gid), int(peer_qpn))
    print("ready", flush=True)
    sys.stdin.readline()
    print(mr.read(8, 0).decode(), int.from_bytes(mr.read(8, 200), sys.byteorder), flush=True)


def initiator(ctx: v.Context, gid: str, qpn: str, rkey: str, addr: str) -> None:
    end = make_endpoint(ctx)
    print(ctx.query_gid(1, 0).gid, end.qp.qp_num, flush=True)
    connect(end.qp, v.GID(gid), int(qpn))
    local = v.MR(end.pd, 64, ALL_ACCESS)
    local.write(b"parent!!", 8)
    write = v.SendWR(1, OP.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(local.buf, 8, local.lkey)])
    write.set_wr_rdma(int(rkey), int(addr))
    read = v.SendWR(2, OP.IBV_WR_RDMA_READ, 1, 0, [v.SGE(local.buf + 16, 12, local.lkey)])
    read.set_wr_rdma(int(rkey), int(addr) + 100)
    add = v.SendWR(3, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, 1, 0, [v.SGE(local.buf + 32, 8, local.lkey)])
    add.set_wr_atomic(int(rkey), int(addr) + 200, 5)
    write.next_wr, read.next_wr = read, add
    end.qp.post_send(write)
    wcs = poll_until(end.scq, 3, timeout=30)
    assert [(w.wr_id, w.status) for w in wcs] == [(1, 0), (2, 0), (3, 0)], wcs
    print("ok", local.read(12, 16).decode(), flush=True)


def main() -> None:
    signal.alarm(60)  # whatever happens, do not outlive the test
    role, device, *rest = sys.argv[1:]
    with v.Context(name=device) as ctx:
        if role == "target":
            target(ctx)
        else:
            initiator(ctx, *rest)


if __name__ == "__main__":
    main()
