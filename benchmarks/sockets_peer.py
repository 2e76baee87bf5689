"""The plain-Python-sockets peer of the benchmark: the same jobs done the plain way.

    python sockets_peer.py bw SIZE COUNT        sendall/recv_into of COUNT x SIZE bytes
    python sockets_peer.py msg SIZE COUNT       one send() per message (Nagle on)
    python sockets_peer.py lat SIZE COUNT [--busy]   ping-pong, blocking or busy-polling

Runs both ends itself (the receiver as a child process) and prints one JSON line:
``{"seconds": ..., "bytes": ..., "samples_us": [...]}``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time


def receiver(conn: socket.socket, total: int, chunk: int) -> None:
    buf = memoryview(bytearray(max(chunk, 1 << 16)))
    got = 0
    while got < total:
        n = conn.recv_into(buf)
        if not n:
            break
        got += n
    conn.sendall(b"k")  # done: the sender stops its clock when this arrives


def echo(conn: socket.socket, size: int, count: int, busy: bool) -> None:
    buf = memoryview(bytearray(size))
    if busy:
        conn.setblocking(False)
    for _ in range(count):
        _recv_exactly(conn, buf)
        _send_all_busy(conn, buf)


def _recv_exactly(sock: socket.socket, buf: memoryview) -> None:
    """Fill *buf*; spins when the socket is non-blocking (busy polling)."""
    got = 0
    while got < len(buf):
        try:
            got += sock.recv_into(buf[got:])
        except BlockingIOError:
            continue


def main() -> None:
    mode, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    busy = "--busy" in sys.argv
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # the other process
        conn, _ = listener.accept()
        if mode == "lat":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            echo(conn, size, count, busy)
        else:
            receiver(conn, size * count, size)
        os._exit(0)
    listener.close()
    sock = socket.create_connection(("127.0.0.1", port))
    payload = memoryview(os.urandom(size))
    samples: list[float] = []
    start = time.perf_counter()
    if mode == "bw":
        for _ in range(count):
            sock.sendall(payload)
        sock.recv(1)
    elif mode == "msg":
        for _ in range(count):
            sock.send(payload)
        sock.recv(1)
    else:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if busy:
            sock.setblocking(False)
        buf = memoryview(bytearray(size))
        for _ in range(count):
            t0 = time.perf_counter_ns()
            if busy:
                _send_all_busy(sock, payload)
            else:
                sock.sendall(payload)
            _recv_exactly(sock, buf)
            samples.append((time.perf_counter_ns() - t0) / 2000)  # one way, like perftest
    seconds = time.perf_counter() - start
    os.waitpid(child, 0)
    print(json.dumps({"seconds": seconds, "bytes": size * count, "samples_us": samples}))


def _send_all_busy(sock: socket.socket, data: memoryview) -> None:
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:])
        except BlockingIOError:
            continue


if __name__ == "__main__":
    main()
