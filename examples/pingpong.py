"""Ping-pong over an rc queue pair: the verbs "hello world".

    python examples/pingpong.py server [--port 18515]
    python examples/pingpong.py client 127.0.0.1 [--port 18515]
    python examples/pingpong.py --loopback          # both, in one process

Each side registers a buffer, posts a receive, and the client sends a message that the
server sends back; the round-trip time of every iteration is measured.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import threading
import time

import tcpverbs as v
from tcpverbs import cm

SIZE = 64
ACCESS = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


def wait(cq: v.CQ) -> v.WC:
    while True:
        n, wcs = cq.poll()
        if n:
            if wcs[0].status != v.ibv_wc_status.IBV_WC_SUCCESS:
                raise SystemExit(f"work request failed: {wcs[0]}")
            return wcs[0]


def run(role: str, host: str, port: int, iters: int, ready: queue.Queue[int] | None) -> None:
    with v.Context(name="tcpv_lo") as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 16)
        mr = v.MR(pd, 2 * SIZE, ACCESS)  # [0, SIZE) receive, [SIZE, 2*SIZE) send
        init = v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1, SIZE), wire="rc")
        if role == "server":
            with cm.Listener(host, port) as listener:
                if ready is not None:  # --loopback: tell the client where we listen
                    ready.put(listener.address[1])
                qp = listener.accept(pd, init)
        else:
            qp = cm.connect(host, port, pd, init)
        recv_wr = v.RecvWR(1, 1, [v.SGE(mr.buf, SIZE, mr.lkey)])
        send_wr = v.SendWR(
            2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf + SIZE, SIZE, mr.lkey)]
        )
        rtts = []
        for i in range(iters):
            qp.post_recv(recv_wr)
            if role == "client":
                mr.write(f"ping {i}".encode().ljust(SIZE, b"."), SIZE, SIZE)
                start = time.perf_counter()
                qp.post_send(send_wr)
                wait(cq)
                wait(cq)  # our send and the echo, in either order
                rtts.append(time.perf_counter() - start)
                assert mr.read(SIZE, 0) == mr.read(SIZE, SIZE)
            else:
                wait(cq)
                mr.write(mr.read(SIZE, 0), SIZE, SIZE)  # echo what arrived
                qp.post_send(send_wr)
                wait(cq)
        if role == "client":
            print(
                f"{iters} round trips of {SIZE} B: median {statistics.median(rtts) * 1e6:.1f} us,"
                f" min {min(rtts) * 1e6:.1f} us"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["server", "client"])
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18515)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--loopback", action="store_true")
    args = parser.parse_args()
    if args.loopback:
        ready: queue.Queue[int] = queue.Queue()
        server = threading.Thread(
            target=run, args=("server", "127.0.0.1", args.port, args.iters, ready)
        )
        server.start()
        run("client", "127.0.0.1", ready.get(timeout=10), args.iters, None)
        server.join()
    elif args.role:
        run(args.role, args.host, args.port, args.iters, None)
    else:
        parser.error("give server, client HOST, or --loopback")


if __name__ == "__main__":
    main()
