"""Ping-pong over a queue pair: the verbs "hello world".

    python examples/pingpong.py server [--port 18515]
    python examples/pingpong.py client 127.0.0.1 [--port 18515]
    python examples/pingpong.py --loopback          # both, in one process (two threads)
    python examples/pingpong.py --loopback --engine native [--wire stream]

Each side registers a buffer, posts a receive, and the client sends a message that the
server sends back; the round-trip time of every iteration is measured.  Both sides wait
with ``CQ.wait``, spinning: on the native engine that spin runs in C without the GIL, so
the two threads of ``--loopback`` do not take turns for it (on the Python engine they
do, and a round trip costs milliseconds instead of tens of microseconds).  ``--wire
stream`` has no message boundaries, so a message may land in pieces: each side receives
until it has all of it.
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
    (wc,) = cq.wait(1, timeout=10, spin_us=10_000_000)  # spin: this is a latency test
    if wc.status != v.ibv_wc_status.IBV_WC_SUCCESS:
        raise SystemExit(f"work request failed: {wc}")
    return wc


def complete(qp: v.QP, cq: v.CQ, mr: v.MR, sending: bool) -> None:
    """Wait until a whole message has landed at [0, SIZE) of *mr* (in pieces, on a stream:
    receives are re-posted for the rest) and, if *sending*, our SEND completed too."""
    got = 0
    while got < SIZE or sending:
        wc = wait(cq)
        if not wc.opcode & v.ibv_wc_opcode.IBV_WC_RECV:
            sending = False  # our send and the echo come in either order
            continue
        got += wc.byte_len
        if got < SIZE:
            qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf + got, SIZE - got, mr.lkey)]))


def run(
    role: str,
    host: str,
    port: int,
    iters: int,
    ready: queue.Queue[int] | None,
    engine: str | None = None,
    wire: str = "rc",
) -> None:
    with v.Context(name="tcpv_lo", engine=engine) as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 16)
        mr = v.MR(pd, 2 * SIZE, ACCESS)  # [0, SIZE) receive, [SIZE, 2*SIZE) send
        init = v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1, SIZE), wire=wire)  # type: ignore[arg-type]
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
                complete(qp, cq, mr, sending=True)
                rtts.append(time.perf_counter() - start)
                assert mr.read(SIZE, 0) == mr.read(SIZE, SIZE)
            else:
                complete(qp, cq, mr, sending=False)
                mr.write(mr.read(SIZE, 0), SIZE, SIZE)  # echo what arrived
                qp.post_send(send_wr)
                wait(cq)
        if role == "client":
            print(
                f"{iters} round trips of {SIZE} B ({ctx.engine} engine, {wire}): median "
                f"{statistics.median(rtts) * 1e6:.1f} us, min {min(rtts) * 1e6:.1f} us"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["server", "client"])
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18515)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--loopback", action="store_true")
    parser.add_argument("--engine", choices=["python", "native"], help="default: the default")
    parser.add_argument("--wire", choices=["rc", "stream"], default="rc")
    args = parser.parse_args()
    options = (args.engine, args.wire)
    if args.loopback:
        ready: queue.Queue[int] = queue.Queue()
        server = threading.Thread(
            target=run, args=("server", "127.0.0.1", args.port, args.iters, ready, *options)
        )
        server.start()
        run("client", "127.0.0.1", ready.get(timeout=10), args.iters, None, *options)
        server.join()
    elif args.role:
        run(args.role, args.host, args.port, args.iters, None, *options)
    else:
        parser.error("give server, client HOST, or --loopback")


if __name__ == "__main__":
    main()
