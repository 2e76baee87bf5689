"""The native engine beyond the conformance suite: interoperation with the Python engine
on the wire, and what may be called concurrently (two threads posting on one QP while a
third polls).  The conformance tests (everything through the ``ctx`` fixture) run on the
native engine already; these need two engines at once, or several threads."""

from __future__ import annotations

import errno
import platform
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import tcpverbs as v
from tcpverbs.engine import available_engines
from tcpverbs.testing import Endpoint, poll_until, qp_pair

from .test_sleeping import ping_pong_sleeping

pytestmark = pytest.mark.skipif(
    "native" not in available_engines(), reason="the native extension is not built"
)

W = v.ibv_wc_status
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


@pytest.fixture
def contexts() -> Iterator[tuple[v.Context, v.Context]]:
    with (
        v.Context(name="tcpv_lo", engine="native") as native,
        v.Context(name="tcpv_lo", engine="python") as python,
    ):
        yield native, python


def exchange(sender: Endpoint, receiver: Endpoint, payloads: list[bytes]) -> list[bytes]:
    """Send each payload from two SGEs (split in the middle); return what landed, in
    order, each receive posted with room for exactly one payload."""
    size = max(len(p) for p in payloads)
    src = v.MR(sender.pd, size * len(payloads), LOCAL_WRITE)
    dst = v.MR(receiver.pd, size * len(payloads), LOCAL_WRITE)
    for i, p in enumerate(payloads):
        receiver.qp.post_recv(v.RecvWR(i, 1, [v.SGE(dst.buf + i * size, len(p), dst.lkey)]))
    for i, p in enumerate(payloads):
        src.write(p, len(p), i * size)
        half = len(p) // 2
        sges = [
            v.SGE(src.buf + i * size, half, src.lkey),
            v.SGE(src.buf + i * size + half, len(p) - half, src.lkey),
        ]
        sender.qp.post_send(v.SendWR(i, num_sge=2, sg=sges))
    sent = poll_until(sender.scq, len(payloads))
    assert [(w.wr_id, w.status) for w in sent] == [(i, W.IBV_WC_SUCCESS) for i in range(len(sent))]
    assert len(sent) == len(payloads)
    landed = poll_until(receiver.rcq, len(payloads))
    assert all(w.status == W.IBV_WC_SUCCESS for w in landed)
    return [dst.read(w.byte_len, w.wr_id * size) for w in landed]


@pytest.mark.parametrize("direction", ["native->python", "python->native"])
def test_a_native_stream_qp_talks_to_a_python_one(
    contexts: tuple[v.Context, v.Context], direction: str
) -> None:
    native, python = contexts
    first, second = (native, python) if direction == "native->python" else (python, native)
    a, b = qp_pair(first, "stream", v.QPCap(64, 64, 2, 2, 0), ctx_b=second)
    assert (a.qp.ctx.engine, b.qp.ctx.engine) == (first.engine, second.engine)
    payloads = [bytes([i]) * (1 + 97 * i) for i in range(20)]
    # a stream has no message boundaries: each receive holds exactly one payload, and
    # they are filled in order, so what lands is the payloads again
    assert exchange(a, b, payloads) == payloads
    assert exchange(b, a, payloads[::-1]) == payloads[::-1]


def test_two_threads_post_on_one_qp_while_a_third_polls(ctx: v.Context) -> None:
    """Each post is one WR (so its bytes are contiguous in the stream); every WR gets
    exactly one completion, and the stream is the WRs' records, each whole."""
    if ctx.engine != "native":
        pytest.skip("the native engine's locking (the Python one has its own tests)")
    per_thread, record = 300, 16
    a, b = qp_pair(ctx, "stream", v.QPCap(1024, 1024, 1, 1, 0))
    src = v.MR(a.pd, 2 * per_thread * record, LOCAL_WRITE)
    dst = v.MR(b.pd, 2 * per_thread * record, LOCAL_WRITE)
    for t in range(2):
        for i in range(per_thread):
            src.write(struct.pack("<QQ", t, i), record, (t * per_thread + i) * record)
    # one receive for the whole stream, re-posted after each partial landing
    done: list[v.WC] = []
    failures: list[BaseException] = []

    def poster(t: int) -> None:
        try:
            for i in range(per_thread):
                offset = (t * per_thread + i) * record
                sge = v.SGE(src.buf + offset, record, src.lkey)
                a.qp.post_send(v.SendWR(t * per_thread + i, num_sge=1, sg=[sge]))
        except BaseException as exc:
            failures.append(exc)

    def poller() -> None:
        try:
            done.extend(poll_until(a.scq, 2 * per_thread, timeout=30))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=poster, args=(t,)) for t in range(2)]
    threads.append(threading.Thread(target=poller))
    for th in threads:
        th.start()
    received = 0
    total = 2 * per_thread * record
    while received < total:
        room = v.SGE(dst.buf + received, total - received, dst.lkey)
        b.qp.post_recv(v.RecvWR(received, 1, [room]))
        (wc,) = poll_until(b.rcq, 1, timeout=30)
        assert wc.status == W.IBV_WC_SUCCESS
        received += wc.byte_len
    for th in threads:
        th.join(30)
    assert not failures
    assert sorted(w.wr_id for w in done) == list(range(2 * per_thread))
    assert all(w.status == W.IBV_WC_SUCCESS for w in done)
    records = [struct.unpack("<QQ", dst.read(record, k * record)) for k in range(2 * per_thread)]
    for t in range(2):  # each thread's records arrive whole and in its own order
        assert [i for (tt, i) in records if tt == t] == list(range(per_thread))


def test_the_native_engine_names_itself(ctx: v.Context) -> None:
    stats = ctx.statistics()
    assert stats["engine"] == ctx.engine
    if ctx.engine == "native":
        a, b = qp_pair(ctx, "stream")
        mr_a, mr_b = v.MR(a.pd, 8, LOCAL_WRITE), v.MR(b.pd, 8, LOCAL_WRITE)
        b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr_b.buf, 8, mr_b.lkey)]))
        a.qp.post_send(v.SendWR(2, num_sge=1, sg=[v.SGE(mr_a.buf, 8, mr_a.lkey)]))
        poll_until(b.rcq)
        stats = ctx.statistics()
        assert stats["sendmsg_calls"] >= 1 and stats["recv_calls"] >= 1
        assert stats["syscalls"] >= stats["sendmsg_calls"] + stats["recv_calls"]


# -- SQ polling ---------------------------------------------------------------------------


def one_message(a: Endpoint, b: Endpoint, payload: bytes) -> bytes:
    src, dst = v.MR(a.pd, len(payload), LOCAL_WRITE), v.MR(b.pd, len(payload), LOCAL_WRITE)
    src.write(payload, len(payload))
    b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, len(payload), dst.lkey)]))
    a.qp.post_send(v.SendWR(2, num_sge=1, sg=[v.SGE(src.buf, len(payload), src.lkey)]))
    (wc,) = poll_until(b.rcq)
    assert wc.status == W.IBV_WC_SUCCESS
    return dst.read(wc.byte_len, 0)


@pytest.mark.parametrize("wire", ["rc", "stream"])
def test_with_sq_polling_the_engine_thread_sends_what_is_posted(wire: str) -> None:
    """The poster only flags its QP; the engine thread pushes the send, and once its spin
    is over and it sleeps, the next post rings its doorbell."""
    with v.Context(name="tcpv_lo", engine="native", sq_poll_us=100) as ctx:
        assert ctx.sq_poll_us == 100
        a, b = qp_pair(ctx, wire)  # type: ignore[arg-type]
        assert one_message(a, b, b"first") == b"first"
        pushes = ctx.statistics()["engine_sq_pushes"]
        assert pushes >= 1
        rang = 0
        for i in range(5):  # the thread may be awake for a timer of its own: then no ring
            time.sleep(0.05)  # far past the 100 us spin: the engine thread sleeps
            rings = ctx.statistics()["engine_wake_writes"]
            assert one_message(a, b, b"again %d" % i) == b"again %d" % i
            rang += ctx.statistics()["engine_wake_writes"] > rings
        assert ctx.statistics()["engine_sq_pushes"] >= pushes + 5
        assert rang >= 1


def test_without_sq_polling_the_poster_sends() -> None:
    with v.Context(name="tcpv_lo", engine="native") as ctx:
        a, b = qp_pair(ctx, "rc")
        assert one_message(a, b, b"x") == b"x"
        assert ctx.statistics()["engine_sq_pushes"] == 0


@pytest.mark.parametrize("bad", [-1, 1_000_001, 1.5, "50", None])
def test_sq_poll_us_must_be_a_sane_int(bad: object) -> None:
    with pytest.raises(v.TcpverbsError) as exc:
        v.Context(name="tcpv_lo", engine="native", sq_poll_us=bad)  # type: ignore[arg-type]
    assert exc.value.errno == errno.EINVAL and "sq_poll_us" in str(exc.value)


def test_the_python_engine_refuses_sq_polling() -> None:
    with pytest.raises(v.TcpverbsError) as exc:
        v.Context(name="tcpv_lo", engine="python", sq_poll_us=50)
    assert exc.value.errno == errno.EOPNOTSUPP and "native engine" in str(exc.value)


@pytest.mark.parametrize("how", ["get_cq_event", "wait"])
def test_a_sleeping_thread_reads_its_sockets_itself(how: str) -> None:
    """Handing the reads to the engine thread would wake it for every message, and then
    the sleeper: the sleeper reads instead (wait.c), and the engine threads stay asleep."""
    rounds = 300
    with (
        v.Context(name="tcpv_lo", engine="native") as ctx_a,
        v.Context(name="tcpv_lo", engine="native") as ctx_b,
    ):
        before = [woken_by_io(c) for c in (ctx_a, ctx_b)]
        ping_pong_sleeping((ctx_a, ctx_b), "rc", rounds, how)
        woke = [woken_by_io(c) - b for c, b in zip((ctx_a, ctx_b), before, strict=True)]
    # before the sleepers read for themselves, each side's engine thread woke for every
    # message it received (>= rounds).  Now the only messages it reads are those that land
    # more than the 2 ms grace after their sleeper left (a round the scheduler delayed):
    # on an idle machine a handful, under coverage on a loaded one half of them, at most
    # one wake-up each.  The park timers' wake-ups are not counted: a delayed round fires
    # one whoever reads.  (rc: a stream QP's sends complete on TCP's acknowledgements,
    # which its timers look at.)
    assert all(w < rounds * 3 // 4 for w in woke), woke


def woken_by_io(ctx: v.Context) -> int:
    """The engine thread's wake-ups for something other than its own timers."""
    stats = ctx.statistics()
    return stats["engine_wakeups"] - stats["engine_timers"]


# -- kernels without epoll_pwait2 ---------------------------------------------------------

_WITHOUT_EPOLL_PWAIT2 = r"""
import ctypes, errno, os, threading, time
import tcpverbs as v
from tcpverbs.testing import qp_pair

# a seccomp filter: epoll_pwait2 (x86-64 syscall 441) fails with ENOSYS, as on kernels
# before 5.11 and under valgrind; inherited by every thread created after it
libc = ctypes.CDLL(None, use_errno=True)

class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

rules = (Filter * 4)(
    Filter(0x20, 0, 0, 0),  # load the syscall number
    Filter(0x15, 0, 1, 441),  # epoll_pwait2?
    Filter(0x06, 0, 0, 0x00050000 | errno.ENOSYS),  # then fail with ENOSYS
    Filter(0x06, 0, 0, 0x7FFF0000),  # else allow
)
prog = Prog(4, rules)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
assert libc.syscall(441, -1, None, 0, None, None) == -1 and ctypes.get_errno() == errno.ENOSYS

with v.Context(name="tcpv_lo", engine="native") as ctx:
    a, b = qp_pair(ctx, "rc")
    src, dst = v.MR(a.pd, 8, 1), v.MR(b.pd, 8, 1)
    b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, 8, dst.lkey)]))
    got = []
    waiter = threading.Thread(target=lambda: got.extend(b.rcq.wait(1, timeout=10, spin_us=0)))
    waiter.start()
    time.sleep(0.3)  # the waiter sleeps: only the engine thread can read what comes
    a.qp.post_send(v.SendWR(2, num_sge=1, sg=[v.SGE(src.buf, 8, src.lkey)]))
    waiter.join()
    assert len(got) == 1 and got[0].status == 0, got
print("delivered")
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter names x86-64's number")
def test_the_engine_thread_runs_where_epoll_pwait2_is_missing() -> None:
    """Kernels before 5.11 (and valgrind) answer epoll_pwait2 with ENOSYS: the engine
    thread falls back to epoll_wait instead of stopping, so a sleeping application still
    gets what arrives."""
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EPOLL_PWAIT2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and "delivered" in out.stdout, out.stdout + out.stderr


def test_the_c_engine_refuses_another_context_s_srq() -> None:
    """The verbs layer checks that a QP's SRQ is of its PD; the C engine does not take
    one of another engine either (its WRs' pins belong to that engine's memory)."""
    from tcpverbs.engine.api import QPCaps, QPSpec

    with (
        v.Context(name="tcpv_lo", engine="native") as a,
        v.Context(name="tcpv_lo", engine="native") as b,
    ):
        srq = a._engine.create_srq(1, 1, 4, 1)
        cq = b._engine.create_cq(2, 4, None)
        spec = QPSpec(3, 256, 1, QPCaps(4, 0, 1, 0, 0), True, "rc", cq, cq, srq)
        with pytest.raises(OSError) as info:
            b._engine.create_qp(spec)
        assert info.value.errno == errno.EINVAL
        srq.destroy()
        cq.destroy()
