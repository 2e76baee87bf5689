"""The *other process* of the multi-process and network-namespace tests.

Run as ``python tests/peer_proc.py ROLE [options]``:

* ``rc-echo`` / ``stream-echo``: listen on ``--host`` (port 0), print the port as the first
  line of stdout, accept one QP, send back every byte of ``--count`` messages of
  ``--size`` bytes, then wait for the peer to close and exit 0.
* ``rc-sink-then-die``: receive ``--count`` messages, then ``os._exit(1)`` mid-transfer.
* ``rc-sink-then-hang`` / ``stream-sink-then-hang``: receive ``--count`` messages (stream:
  ``count * size`` bytes), print ``stalled``, post no more receives and wait to be killed.
* ``rc-client`` / ``stream-client HOST PORT``: send ``--count`` messages of ``--size``
  bytes with a verifiable pattern, receive the echo, verify it, exit 0.

A watchdog (``--timeout``) ends the process whatever happens.  The tests import
:func:`spawn`, :func:`pattern` and :func:`exchange` from here too.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import tcpverbs as v
from tcpverbs.cm import Listener, connect
from tcpverbs.testing import poll_until

SCRIPT = Path(__file__).resolve()
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
OK = v.ibv_wc_status.IBV_WC_SUCCESS


def pattern(count: int, size: int) -> bytes:
    """The bytes of *count* messages of *size* bytes, message ``i`` seeded with ``i``."""
    return b"".join(random.Random(i).randbytes(size) for i in range(count))


CONTEXT_OPTIONS: dict[str, int | None] = {}  # --zerocopy-min: Context(zerocopy_min=...)


def setup(wire: str, depth: int) -> tuple[v.PD, v.CQ, v.QPInitAttr]:
    ctx = v.Context(**CONTEXT_OPTIONS)  # loopback comes first, in a namespace as well
    pd, cq = v.PD(ctx), v.CQ(ctx, 4 * depth + 16)
    cap = v.QPCap(depth, depth, 1, 1, 0)
    return pd, cq, v.QPInitAttr(scq=cq, rcq=cq, cap=cap, sq_sig_all=1, wire=wire)  # type: ignore[arg-type]


def post_recv(qp: v.QP, mr: v.MR, wr_id: int, off: int, length: int) -> None:
    qp.post_recv(v.RecvWR(wr_id, 1, [v.SGE(mr.buf + off, length, mr.lkey)]))


def post_send(qp: v.QP, mr: v.MR, wr_id: int, off: int, length: int) -> None:
    op = v.ibv_wr_opcode.IBV_WR_SEND
    qp.post_send(v.SendWR(wr_id, op, 1, 0, [v.SGE(mr.buf + off, length, mr.lkey)]))


def one(cq: v.CQ, timeout: float = 30.0) -> v.WC:
    wc = poll_until(cq, 1, timeout)[0]
    if wc.status != OK:
        raise AssertionError(f"unexpected completion {wc} (qp error: {qp_error(cq)})")
    return wc


def qp_error(cq: v.CQ) -> object:
    return [qp.error for qp in getattr(cq, "_qps", {}).values()]


def exchange(qp: v.QP, pd: v.PD, cq: v.CQ, count: int, size: int) -> bytes:
    """Send ``pattern(count, size)`` as *count* SENDs, receive as many bytes back; return them.

    rc: one receive per message; stream: one receive at a time over what is still missing.
    """
    total = count * size
    smr, rmr = v.MR(pd, total, LOCAL_WRITE), v.MR(pd, total, LOCAL_WRITE)
    smr.write(pattern(count, size), total)
    if qp.wire == "rc":
        for i in range(count):
            post_recv(qp, rmr, i, i * size, size)
    else:
        post_recv(qp, rmr, 0, 0, total)
    for i in range(count):
        post_send(qp, smr, i, i * size, size)
    sent = got = 0
    while sent < count or got < total:
        wc = one(cq)
        if wc.opcode == v.ibv_wc_opcode.IBV_WC_SEND:
            sent += 1
        else:
            got += wc.byte_len
            if qp.wire == "stream" and got < total:
                post_recv(qp, rmr, 0, got, total - got)
    return rmr.read(total, 0)


def serve_echo(qp: v.QP, pd: v.PD, cq: v.CQ, count: int, size: int) -> bytes:
    """Echo *count* messages of *size* bytes, each piece from where it landed; return them.

    No buffer is reused, so posting a receive never waits for a send completion.
    """
    total = count * size
    mr = v.MR(pd, total + 1, LOCAL_WRITE)
    if qp.wire == "rc":
        for i in range(count):
            post_recv(qp, mr, i, i * size, size)
    else:
        post_recv(qp, mr, 0, 0, total)
    backlog: deque[tuple[int, int, int]] = deque()  # (wr_id, offset, length) to echo
    got = echoed = outstanding = 0
    while echoed < total:
        wc = one(cq)
        if wc.opcode == v.ibv_wc_opcode.IBV_WC_SEND:
            echoed += wc.byte_len
            outstanding -= 1
        else:
            backlog.append((wc.wr_id, wc.wr_id * size if qp.wire == "rc" else got, wc.byte_len))
            got += wc.byte_len
            if qp.wire == "stream" and got < total:
                post_recv(qp, mr, 0, got, total - got)
        while backlog and outstanding < qp.cap.max_send_wr:  # stream: pieces may be many
            post_send(qp, mr, *backlog.popleft())
            outstanding += 1
    return mr.read(total, 0)


def echo(wire: str, host: str, count: int, size: int) -> None:
    pd, cq, init = setup(wire, count + 1 if wire == "rc" else 16)
    with Listener(host, 0) as listener:
        print(listener.address[1], flush=True)
        qp = listener.accept(pd, init, timeout=30)
    serve_echo(qp, pd, cq, count, size)
    mr = v.MR(pd, 1, LOCAL_WRITE)
    post_recv(qp, mr, count, 0, 1)
    wc = poll_until(cq, 1, 30)[0]  # the peer closes: this receive is flushed
    if wc.status != v.ibv_wc_status.IBV_WC_WR_FLUSH_ERR:
        raise SystemExit(f"expected the peer to close, got {wc}")


def sink(wire: str, host: str, count: int, size: int, then: str) -> None:
    pd, cq, init = setup(wire, count + 1)
    with Listener(host, 0) as listener:
        print(listener.address[1], flush=True)
        qp = listener.accept(pd, init, timeout=30)
    mr = v.MR(pd, max(1, count * size), LOCAL_WRITE)
    if wire == "rc":
        for i in range(count):
            post_recv(qp, mr, i, i * size, size)
        for _ in range(count):
            one(cq)
    else:
        got = 0
        while got < count * size:
            post_recv(qp, mr, 0, got, count * size - got)
            got += one(cq).byte_len
    if then == "die":
        os._exit(1)
    print("stalled", flush=True)
    time.sleep(3600)  # until killed (or the watchdog fires)


def client(wire: str, host: str, port: int, count: int, size: int) -> None:
    pd, cq, init = setup(wire, count + 1)
    qp = connect(host, port, pd, init)
    if exchange(qp, pd, cq, count, size) != pattern(count, size):
        raise SystemExit("echoed bytes differ from the sent ones")
    qp.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("role")
    parser.add_argument("address", nargs="*", help="HOST PORT (clients)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--zerocopy-min", type=int, default=None)
    args = parser.parse_args(argv)
    CONTEXT_OPTIONS["zerocopy_min"] = args.zerocopy_min
    signal.alarm(args.timeout)  # watchdog: SIGALRM ends the process
    wire, _, kind = args.role.partition("-")
    if kind == "echo":
        echo(wire, args.host, args.count, args.size)
    elif kind.startswith("sink-then-"):
        sink(wire, args.host, args.count, args.size, kind.removeprefix("sink-then-"))
    elif kind == "client":
        host, port = args.address
        client(wire, host, int(port), args.count, args.size)
    else:
        parser.error(f"unknown role {args.role!r}")


# -- for the tests --------------------------------------------------------------------------


@contextmanager
def spawn(*args: str, prefix: Sequence[str] = ()) -> Iterator[subprocess.Popen[str]]:
    """Run this script as another process (under *prefix*, e.g. ``ip netns exec NS``).

    On exit the process is killed if still running and always reaped, pipes closed.
    """
    cmd = [*prefix, sys.executable, str(SCRIPT), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def read_line(proc: subprocess.Popen[str]) -> str:
    """The next line the peer printed; its stderr in the error if it ended instead."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"peer exited ({proc.returncode}) without output:\n{err}")
    return line.strip()


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> int:
    """Wait for the peer to end; its exit status (its stderr in the error if not 0)."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"peer exited with {proc.returncode}:\n{err}"
    return proc.returncode


if __name__ == "__main__":
    main()
