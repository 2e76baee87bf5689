"""The pyzmq peer of the benchmark: what a Python user picks for fast messaging.

Two processes, like ``tcpverbs perf`` and ``sockets_peer.py``::

    python zmq_peer.py serve SIZE COUNT              prints its port, serves once
    python zmq_peer.py SIZE COUNT --port PORT        the client: prints JSON

The client PUSHes COUNT messages of SIZE bytes to the server's PULL socket (libzmq's
own I/O thread batches them; no copy of the payload in Python), the server receives
them all and says so over a PUSH back to the client's PULL (whose port the client sent
first), and the client stops its clock.  It prints one JSON line ``{"seconds", "bytes",
"messages"}``, as sockets_peer.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import zmq

ACCEPT_TIMEOUT_MS = 60_000  # the server waits this long for its client


def serve(size: int, count: int) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    pull.setsockopt(zmq.RCVTIMEO, ACCEPT_TIMEOUT_MS)  # a client that never comes ends us
    back_port = int(pull.recv())
    pull.setsockopt(zmq.RCVTIMEO, -1)
    for _ in range(count):
        pull.recv(copy=False)
    done = ctx.socket(zmq.PUSH)
    done.connect(f"tcp://127.0.0.1:{back_port}")
    done.send(b"k")
    done.close(linger=5000)
    pull.close()
    ctx.term()


def client(size: int, count: int, port: int) -> dict[str, object]:
    ctx = zmq.Context()
    back = ctx.socket(zmq.PULL)
    back_port = back.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    push.send(str(back_port).encode())
    payload = os.urandom(size)
    start = time.perf_counter()
    for _ in range(count):
        push.send(payload, copy=size < 4096)  # zmq's advice: copy small, share big
    back.recv()
    seconds = time.perf_counter() - start
    push.close()
    back.close()
    ctx.term()
    return {"seconds": seconds, "bytes": size * count, "messages": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", help="[serve] SIZE COUNT")
    parser.add_argument("--port", type=int, help="the server's port (client side)")
    args = parser.parse_args()
    words = args.words
    serving = words[0] == "serve"
    if serving:
        words = words[1:]
    if len(words) != 2:
        parser.error("expected [serve] SIZE COUNT")
    size, count = int(words[0]), int(words[1])
    if serving:
        serve(size, count)
    elif args.port is None:
        parser.error("the client needs --port")
    else:
        print(json.dumps(client(size, count, args.port)))


if __name__ == "__main__":
    main()
