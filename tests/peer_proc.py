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
* ``ud-echo``: print its UD QP's number as the first line, then answer ``--count``
  datagrams (of at most ``--size`` bytes) each to where it came from (the AH of its
  completion and GRH), and exit 0.
* ``ud-client HOST QPN``: send ``--count`` datagrams of ``--size`` bytes with a
  verifiable pattern to that UD QP, receive each echo, verify it, exit 0.
* ``rc-probe`` / ``stream-probe HOST PORT``: connect with ``--qp-timeout`` and
  ``--retry-cnt``, exchange one message with an echo server, print ``ready``, wait for a
  line on stdin, then post ``--count`` receives and SENDs of ``--size`` bytes and print
  one JSON line: every completion's status, when the first error came, whether the echo
  was intact, ``qp.error`` and the async event (the black-hole tests).

A watchdog (``--timeout``) ends the process whatever happens.  The tests import
:func:`spawn`, :func:`pattern` and :func:`exchange` from here too.
"""

from __future__ import annotations

import argparse
import json
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


def post_pattern(qp: v.QP, pd: v.PD, count: int, size: int) -> v.MR:
    """Post receives for *count* messages of *size* bytes (rc: one per message; stream:
    one over all of it), then SEND ``pattern(count, size)`` as *count* WRs; the MR the
    echo lands in."""
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
    return rmr


def exchange(qp: v.QP, pd: v.PD, cq: v.CQ, count: int, size: int) -> bytes:
    """Send ``pattern(count, size)`` as *count* SENDs, receive as many bytes back; return them.

    rc: one receive per message; stream: one receive at a time over what is still missing.
    """
    total = count * size
    rmr = post_pattern(qp, pd, count, size)
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


def probe(wire: str, host: str, port: int, count: int, size: int, attr: v.QPAttr) -> None:
    pd, cq, init = setup(wire, count + 1)
    qp = connect(host, port, pd, init, attr)
    if exchange(qp, pd, cq, 1, size) != pattern(1, size):
        raise SystemExit("the first echo differs")
    print("ready", flush=True)
    sys.stdin.readline()
    total = count * size
    start = time.monotonic()
    rmr = post_pattern(qp, pd, count, size)
    sends: list[str] = []  # the statuses of the SENDs, in completion order
    first_error: float | None = None
    got = 0
    deadline = start + 120
    while (len(sends) < count or (got < total and first_error is None)) and (
        time.monotonic() < deadline
    ):
        _, wcs = cq.poll(16)
        if not wcs:
            time.sleep(0.001)
        for wc in wcs:
            if wc.status != OK and first_error is None:
                first_error = time.monotonic() - start
            if wc.opcode == v.ibv_wc_opcode.IBV_WC_SEND:  # also on errors (tcpverbs sets it)
                sends.append(v.ibv_wc_status(wc.status).name)
            elif wc.status == OK:
                got += wc.byte_len
                if wire == "stream" and got < total:
                    post_recv(qp, rmr, 0, got, total - got)
    event = qp.ctx.get_async_event(timeout=0) if first_error is not None else None
    print(
        json.dumps(
            {
                "sends": sends,
                "first_error": first_error,
                "echo_intact": got == total and rmr.read(total, 0) == pattern(count, size),
                "error": None if qp.error is None else [qp.error.errno, qp.error.strerror],
                "event": None if event is None else event.event_type.name,
                "state": qp.qp_state.name,
            }
        ),
        flush=True,
    )


UD_QKEY = 0x0BADCAFE
GRH = 40


def ud_setup(size: int) -> tuple[v.PD, v.QP, v.CQ, v.MR]:
    ctx = v.Context(**CONTEXT_OPTIONS)
    pd, cq = v.PD(ctx), v.CQ(ctx, 64)
    init = v.QPInitAttr(
        qp_type=v.ibv_qp_type.IBV_QPT_UD, scq=cq, rcq=cq, cap=v.QPCap(8, 8, 1, 1), sq_sig_all=0
    )
    qp = v.QP(pd, init, v.QPAttr(qkey=UD_QKEY))  # ready (RTS) at once
    return pd, qp, cq, v.MR(pd, 2 * (GRH + size), LOCAL_WRITE)


def ud_send(qp: v.QP, mr: v.MR, ah: v.AH, qpn: int, off: int, length: int) -> None:
    wr = v.SendWR(0, num_sge=1, sg=[v.SGE(mr.buf + off, length, mr.lkey)], send_flags=0)
    wr.set_wr_ud(ah, qpn, UD_QKEY)
    qp.post_send(wr)


def ud_echo(count: int, size: int) -> None:
    pd, qp, cq, mr = ud_setup(size)
    print(qp.qp_num, flush=True)
    for i in range(count):
        post_recv(qp, mr, i, 0, GRH + size)
        wc = one(cq)
        back = v.AH(pd, wc=wc, grh=mr.buf)  # to where it came from
        ud_send(qp, mr, back, wc.src_qp, GRH, wc.byte_len - GRH)


def ud_client(host: str, qpn: int, count: int, size: int) -> None:
    pd, qp, cq, mr = ud_setup(size)
    data = pattern(count, size)
    to = v.AH(pd, attr=v.AHAttr(is_global=1, gr=v.GlobalRoute(dgid=v.GID(host))))
    for i in range(count):
        chunk = data[i * size : (i + 1) * size]
        post_recv(qp, mr, i, size, GRH + size)
        mr.write(chunk, size, 0)
        ud_send(qp, mr, to, qpn, 0, size)
        wc = one(cq)
        if wc.byte_len != GRH + size or mr.read(size, size + GRH) != chunk:
            raise AssertionError(f"echo {i} differs: {wc}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("role")
    parser.add_argument("address", nargs="*", help="HOST PORT (clients)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--zerocopy-min", type=int, default=None)
    parser.add_argument("--qp-timeout", type=int, default=14, help="QPAttr.timeout")
    parser.add_argument("--retry-cnt", type=int, default=7, help="QPAttr.retry_cnt")
    args = parser.parse_args(argv)
    CONTEXT_OPTIONS["zerocopy_min"] = args.zerocopy_min
    signal.alarm(args.timeout)  # watchdog: SIGALRM ends the process
    wire, _, kind = args.role.partition("-")
    if args.role == "ud-echo":
        ud_echo(args.count, args.size)
    elif args.role == "ud-client":
        host, qpn = args.address
        ud_client(host, int(qpn), args.count, args.size)
    elif kind == "echo":
        echo(wire, args.host, args.count, args.size)
    elif kind.startswith("sink-then-"):
        sink(wire, args.host, args.count, args.size, kind.removeprefix("sink-then-"))
    elif kind == "client":
        host, port = args.address
        client(wire, host, int(port), args.count, args.size)
    elif kind == "probe":
        host, port = args.address
        attr = v.QPAttr(timeout=args.qp_timeout, retry_cnt=args.retry_cnt)
        probe(wire, host, int(port), args.count, args.size, attr)
    else:
        parser.error(f"unknown role {args.role!r}")


# -- for the tests --------------------------------------------------------------------------


@contextmanager
def spawn(*args: str, prefix: Sequence[str] = ()) -> Iterator[subprocess.Popen[str]]:
    """Run this script as another process (under *prefix*, e.g. ``ip netns exec NS``).

    On exit the process is killed if still running and always reaped, pipes closed.
    """
    cmd = [*prefix, sys.executable, str(SCRIPT), *args]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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
