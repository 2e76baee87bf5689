"""Unreliable datagrams: a UD QP answers whoever wrote to it, from the GRH alone.

    python examples/ud_pingpong.py [--iters N]

The client knows the server's GID and QP number (here: in the same process); the server
knows nobody.  Each ping arrives behind its 40-byte GRH, and the server makes its answer's
address handle from the completion and that header (``AH(pd, wc=..., grh=...)``), as a
UD service on an RDMA NIC does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import tcpverbs as v
from tcpverbs.testing import poll_until

GRH = 40
QKEY = 0x1234
SIZE = 32


def ud_qp(pd: v.PD, cq: v.CQ) -> v.QP:
    init = v.QPInitAttr(
        qp_type=v.ibv_qp_type.IBV_QPT_UD, scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1), sq_sig_all=0
    )
    qp = v.QP(pd, init)  # sends unsignaled: each CQ sees only the receives
    qp.to_rts(v.QPAttr(qkey=QKEY, sq_psn=0))  # RESET -> INIT (Q_Key) -> RTR -> RTS
    return qp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000)
    iters = parser.parse_args().iters
    with v.Context(name="tcpv_lo") as ctx:
        pd = v.PD(ctx)
        server_cq, client_cq = v.CQ(ctx, 8), v.CQ(ctx, 8)
        server, client = ud_qp(pd, server_cq), ud_qp(pd, client_cq)
        local = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
        server_mr, client_mr = v.MR(pd, GRH + SIZE, local), v.MR(pd, 2 * (GRH + SIZE), local)
        route = v.GlobalRoute(dgid=ctx.query_gid(1, 0))
        to_server = v.AH(pd, attr=v.AHAttr(is_global=1, gr=route))
        inbox = client_mr.buf + GRH + SIZE  # the client sends from the start, receives here
        times = []
        for i in range(iters):
            server.post_recv(v.RecvWR(1, 1, [v.SGE(server_mr.buf, GRH + SIZE, server_mr.lkey)]))
            client.post_recv(v.RecvWR(2, 1, [v.SGE(inbox, GRH + SIZE, client_mr.lkey)]))
            client_mr.write(f"ping {i}".encode().ljust(SIZE), SIZE, 0)
            ping = v.SendWR(
                3, num_sge=1, sg=[v.SGE(client_mr.buf, SIZE, client_mr.lkey)], send_flags=0
            )
            ping.set_wr_ud(to_server, server.qp_num, QKEY)
            started = time.perf_counter()
            client.post_send(ping)
            (got,) = poll_until(server_cq)
            answer_to = v.AH(pd, wc=got, grh=server_mr.buf)  # where it came from
            payload = v.SGE(server_mr.buf + GRH, SIZE, server_mr.lkey)
            pong = v.SendWR(4, num_sge=1, sg=[payload], send_flags=0)
            pong.set_wr_ud(answer_to, got.src_qp, QKEY)
            server.post_send(pong)  # the ping's bytes go back as they came
            poll_until(client_cq)
            times.append(time.perf_counter() - started)
            assert client_mr.read(SIZE, GRH + SIZE + GRH).rstrip() == f"ping {i}".encode()
        print(f"round trips:   {iters}")
        print(f"median:        {statistics.median(times) * 1e6:.1f} us")
        print(f"dropped:       {server.statistics()['ud_dropped']}")


if __name__ == "__main__":
    main()
