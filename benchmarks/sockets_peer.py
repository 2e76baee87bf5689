"""The plain-Python-sockets peer of the benchmark: the same jobs done the plain way.

Two processes, like ``tcpverbs perf``, so that each side can be measured on its own::

    python sockets_peer.py serve MODE SIZE COUNT [--busy]      prints its port, serves once
    python sockets_peer.py MODE SIZE COUNT --port PORT [--busy]   the client: prints JSON

MODE is one of

- ``bw``: the client ``sendall()``s COUNT x SIZE bytes; the server ``recv_into()``s them
  into a buffer of one message, 64 KiB at least (blocking, or with ``--busy`` spinning
  on a non-blocking socket);
- ``msg``: the same with one ``send()`` per message (Nagle on, as a plain program has it);
- ``lat``: ping-pong of SIZE bytes, TCP_NODELAY, blocking or (``--busy``) spinning.

The client prints one JSON line: ``{"seconds", "bytes", "messages"}`` and, for ``lat``,
``"latency"`` — the same statistics ``tcpverbs perf`` reports (one way = round trip / 2).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

from tcpverbs.perf.report import lat_result

ACCEPT_TIMEOUT = 60.0  # seconds the server waits for its client
MIN_RECV = 1 << 16  # the receiving side reads into a buffer of one message, 64 KiB at least


def _recv_into(sock: socket.socket, buf: memoryview) -> int:
    """One receive; spins (busy polling) when the socket is non-blocking."""
    while True:
        try:
            return sock.recv_into(buf)
        except BlockingIOError:
            continue


def _recv_exactly(sock: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = _recv_into(sock, buf[got:])
        if not n:
            raise ConnectionError("peer closed the connection early")
        got += n


def _send_all(sock: socket.socket, data: memoryview) -> None:
    """``sendall`` that also works (spinning) on a non-blocking socket."""
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:])
        except BlockingIOError:
            continue


def serve(mode: str, size: int, count: int, busy: bool) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(ACCEPT_TIMEOUT)  # a client that never comes ends the server too
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.settimeout(None)
    listener.close()
    if busy:
        conn.setblocking(False)
    if mode == "lat":
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = memoryview(bytearray(size))
        for _ in range(count):
            _recv_exactly(conn, buf)
            _send_all(conn, buf)
    else:
        buf = memoryview(bytearray(max(size, MIN_RECV)))
        left = size * count
        while left > 0:
            n = _recv_into(conn, buf)
            if not n:
                raise ConnectionError("peer closed the connection early")
            left -= n
        _send_all(conn, memoryview(b"k"))  # done: the client stops its clock on this
    conn.close()


def client(mode: str, size: int, count: int, port: int, busy: bool) -> dict[str, object]:
    sock = socket.create_connection(("127.0.0.1", port))
    payload = memoryview(os.urandom(size))
    result: dict[str, object] = {"bytes": size * count, "messages": count}
    start = time.perf_counter()
    if mode == "lat":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if busy:
            sock.setblocking(False)
        buf = memoryview(bytearray(size))
        samples: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            _send_all(sock, payload)
            _recv_exactly(sock, buf)
            samples.append((time.perf_counter_ns() - t0) / 2000)
        result["latency"] = lat_result(size, samples).as_dict()
    else:
        if mode == "bw":
            for _ in range(count):
                sock.sendall(payload)
        else:
            for _ in range(count):
                sent = sock.send(payload)
                if sent < size:  # rare (a signal): the rest, so the server gets it all
                    sock.sendall(payload[sent:])
        _recv_exactly(sock, memoryview(bytearray(1)))
    result["seconds"] = time.perf_counter() - start
    sock.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", help="[serve] MODE SIZE COUNT")
    parser.add_argument("--port", type=int, help="the server's port (client side)")
    parser.add_argument("--busy", action="store_true", help="spin instead of blocking")
    args = parser.parse_args()
    words = args.words
    serving = words[0] == "serve"
    if serving:
        words = words[1:]
    if len(words) != 3 or words[0] not in ("bw", "msg", "lat"):
        parser.error("expected [serve] {bw,msg,lat} SIZE COUNT")
    mode, size, count = words[0], int(words[1]), int(words[2])
    if serving:
        serve(mode, size, count, args.busy)
    elif args.port is None:
        parser.error("the client needs --port")
    else:
        print(json.dumps(client(mode, size, count, args.port, args.busy)))


if __name__ == "__main__":
    main()
