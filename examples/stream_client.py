"""A stream-mode QP talking to an ordinary TCP server.

    python examples/stream_client.py HOST PORT     # e.g. socat TCP-LISTEN:7000,fork EXEC:cat
    python examples/stream_client.py --loopback    # starts a plain-socket echo server itself

In ``stream`` mode the TCP payload *is* the application's data, so the peer can be any
program with a socket.  The QP sends a registered buffer with SEND and lands whatever the
server answers in a posted receive, straight from the kernel into registered memory.
"""

from __future__ import annotations

import argparse
import socket
import threading

import tcpverbs as v
from tcpverbs.testing import poll_until

MESSAGE = b"GET / HTTP/1.0\r\n\r\n" + b"x" * 46


def plain_echo_server() -> tuple[str, int]:
    """A plain socket program: echo everything back (runs in a thread)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    host, port = listener.getsockname()
    return host, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", nargs="?")
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("--loopback", action="store_true")
    args = parser.parse_args()
    if args.loopback:
        host, port = plain_echo_server()
    elif args.host and args.port:
        host, port = args.host, args.port
    else:
        parser.error("give HOST PORT or --loopback")
    sock = socket.create_connection((host, port))  # an ordinary TCP connection...
    with v.Context(name="tcpv_lo") as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 8)
        mr = v.MR(pd, 4096, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        qp = v.QP(
            pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1, 0), wire="stream"), v.QPAttr()
        )
        qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf + 2048, 2048, mr.lkey)]))
        qp.to_rtr(v.QPAttr(sock=sock))  # ...handed to the QP, which owns it from now on
        qp.to_rts(v.QPAttr())
        mr.write(MESSAGE, len(MESSAGE))
        qp.post_send(
            v.SendWR(2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, len(MESSAGE), mr.lkey)])
        )
        for wc in poll_until(cq, 2):
            kind = "SEND acknowledged by TCP" if wc.wr_id == 2 else "RECV landed"
            print(f"{kind}: {wc.byte_len} bytes, status {v.ibv_wc_status(wc.status).name}")
            if wc.wr_id == 1:
                print(f"  server answered: {mr.read(wc.byte_len, 2048)[:40]!r}...")


if __name__ == "__main__":
    main()
