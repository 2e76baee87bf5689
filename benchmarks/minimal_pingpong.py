"""The smallest Python ping-pong over tcpverbs: what the library costs a round trip,
without a benchmark tool's bookkeeping.  8 B SENDs on an rc QP, both sides busy polling.

    python benchmarks/minimal_pingpong.py serve PORT N        # one side
    python benchmarks/minimal_pingpong.py PORT N              # the other: prints JSON

Each round trip is the client's post (unsignaled, inline) and poll until the reply,
then a receive posted again; the server polls, then posts a receive and the reply.  For
instruction counts run the client under ``valgrind --tool=callgrind`` twice (N = 2000
and N = 6000): (difference) / 4000 is a round trip's cost, start-up cancelled out, to
hold against ``sockets_peer.py lat 8 N --busy`` measured the same way.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import tcpverbs as v
from tcpverbs import cm

SIZE = 8


def main() -> None:
    args = sys.argv[1:]
    serving = args[:1] == ["serve"]
    port, count = int(args[-2]), int(args[-1])
    with v.Context(name="tcpv_lo") as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 16)
        mr = v.MR(pd, 2 * SIZE, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        init = v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1, SIZE), sq_sig_all=0)
        if serving:
            with cm.Listener("127.0.0.1", port) as listener:
                qp = listener.accept(pd, init)
        else:
            qp = cm.connect("127.0.0.1", port, pd, init)
        recv_wr = v.RecvWR(1, 1, [v.SGE(mr.buf, SIZE, mr.lkey)])
        send_wr = v.SendWR(
            2,
            v.ibv_wr_opcode.IBV_WR_SEND,
            1,
            0,
            [v.SGE(mr.buf + SIZE, SIZE, mr.lkey)],
            v.ibv_send_flags.IBV_SEND_INLINE,
        )
        poll, post_recv, post_send = cq.poll, qp.post_recv, qp.post_send

        def reply() -> None:  # the next completion: the peer's message (sends are unsignaled)
            while True:
                n, wcs = poll(1)
                if n:
                    if wcs[0].status:
                        raise SystemExit(f"failed: {wcs[0]}")
                    return

        post_recv(recv_wr)
        rtts = []
        for _ in range(count):
            if serving:
                reply()
                post_recv(recv_wr)
                post_send(send_wr)
            else:
                t0 = time.perf_counter_ns()
                post_send(send_wr)
                reply()
                post_recv(recv_wr)
                rtts.append(time.perf_counter_ns() - t0)
        if serving:
            time.sleep(0.2)  # the last reply leaves before the connection closes
        else:
            p50 = statistics.median(rtts) / 2e3
            print(json.dumps({"round_trips": count, "p50_one_way_us": p50}))


if __name__ == "__main__":
    main()
