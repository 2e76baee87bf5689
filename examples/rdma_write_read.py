"""One-sided RDMA between two QPs connected the classic way: by GID and QP number.

    python examples/rdma_write_read.py

The "server" side only registers memory and publishes (GID, QP number, PSN, rkey, address) —
here through a dict standing in for any out-of-band channel.  The client then WRITEs into
that memory, READs it back and bumps a counter with FETCH_AND_ADD, while the server
application does nothing at all.
"""

from __future__ import annotations

import random
import sys

import tcpverbs as v
from tcpverbs.testing import ALL_ACCESS, poll_until

OP = v.ibv_wr_opcode


def main() -> None:
    with v.Context(name="tcpv_lo") as ctx:
        gid = ctx.query_gid(1, 0)
        pd_s, pd_c = v.PD(ctx), v.PD(ctx)
        cq_s, cq_c = v.CQ(ctx, 16), v.CQ(ctx, 16)
        server_mr = v.MR(pd_s, 4096, ALL_ACCESS)
        init = {"cap": v.QPCap(8, 8, 1, 1, 0)}
        server = v.QP(
            pd_s, v.QPInitAttr(scq=cq_s, rcq=cq_s, **init), v.QPAttr(qp_access_flags=ALL_ACCESS)
        )
        client = v.QP(pd_c, v.QPInitAttr(scq=cq_c, rcq=cq_c, **init), v.QPAttr())
        # the out-of-band exchange (a TCP socket, a file, a job scheduler...); the random
        # PSNs are how each side's context knows the connection comes from the other
        psn = {server: random.getrandbits(24), client: random.getrandbits(24)}
        published = {
            "gid": gid,
            "qpn": server.qp_num,
            "psn": psn[server],
            "rkey": server_mr.rkey,
            "addr": server_mr.buf,
        }
        peers = ((server, client.qp_num, psn[client]), (client, published["qpn"], psn[server]))
        for qp, peer_qpn, peer_psn in peers:
            route = v.GlobalRoute(dgid=gid, sgid_index=0)
            qp.to_rtr(
                v.QPAttr(
                    ah_attr=v.AHAttr(is_global=1, gr=route),
                    dest_qp_num=peer_qpn,
                    rq_psn=peer_psn,
                    max_dest_rd_atomic=4,
                )
            )
            qp.to_rts(v.QPAttr(sq_psn=psn[qp], max_rd_atomic=4))
        local = v.MR(pd_c, 4096, ALL_ACCESS)
        local.write(b"written by RDMA", 15)
        write = v.SendWR(1, OP.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(local.buf, 15, local.lkey)])
        write.set_wr_rdma(published["rkey"], published["addr"])
        read = v.SendWR(2, OP.IBV_WR_RDMA_READ, 1, 0, [v.SGE(local.buf + 100, 15, local.lkey)])
        read.set_wr_rdma(published["rkey"], published["addr"])
        add = v.SendWR(
            3, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, 1, 0, [v.SGE(local.buf + 200, 8, local.lkey)]
        )
        add.set_wr_atomic(published["rkey"], published["addr"] + 1024, 42)
        write.next_wr, read.next_wr = read, add
        client.post_send(write)
        for wc in poll_until(cq_c, 3):
            print(
                f"wr {wc.wr_id}: {v.ibv_wc_opcode(wc.opcode).name} "
                f"{v.ibv_wc_status(wc.status).name}"
            )
        print("server memory:", server_mr.read(15, 0))
        print("read back:    ", local.read(15, 100))
        print("counter:      ", int.from_bytes(server_mr.read(8, 1024), sys.byteorder))


if __name__ == "__main__":
    main()
