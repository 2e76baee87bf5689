"""Two processes over loopback: echo with a peer process, and a peer that dies mid-transfer.

The peer is ``tests/peer_proc.py``.  A dying peer must not lose anything: every posted
work request gets exactly one completion (successes first, then flushes), the QP ends in
ERR with the reason in ``qp.error``, and an ``IBV_EVENT_QP_FATAL`` async event is raised.
"""

from __future__ import annotations

import pytest

import tcpverbs as v
from tcpverbs.cm import Listener, connect
from tcpverbs.testing import poll_until

from .conftest import PairFactory
from .peer_proc import (
    exchange,
    finish,
    pattern,
    post_recv,
    post_send,
    read_line,
    serve_echo,
    spawn,
)

W = v.ibv_wc_status
KIB, MIB = 1024, 1024 * 1024
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
SIZES = [(64, 32), (64 * KIB, 16), (4 * MIB, 4)]  # (message size, messages)


def qp_init(
    ctx: v.Context, wire: str, depth: int, *, one_cq: bool = False
) -> tuple[v.PD, v.CQ, v.CQ, v.QPInitAttr]:
    pd, scq = v.PD(ctx), v.CQ(ctx, 256)
    rcq = scq if one_cq else v.CQ(ctx, 256)
    cap = v.QPCap(depth, depth, 1, 1, 0)
    init = v.QPInitAttr(scq=scq, rcq=rcq, cap=cap, sq_sig_all=1, wire=wire)  # type: ignore[arg-type]
    return pd, scq, rcq, init


@pytest.mark.parametrize(("size", "count"), SIZES, ids=["64B", "64KiB", "4MiB"])
def test_echo_with_peer_process(ctx: v.Context, wire: str, size: int, count: int) -> None:
    pd, cq, _, init = qp_init(ctx, wire, count + 1, one_cq=True)
    with spawn(f"{wire}-echo", "--count", str(count), "--size", str(size)) as proc:
        qp = connect("127.0.0.1", int(read_line(proc)), pd, init)
        assert exchange(qp, pd, cq, count, size) == pattern(count, size)
        assert cq.poll()[0] == 0
        qp.close()  # the echo server waits for this, then exits 0
        finish(proc)


def test_peer_process_as_client(ctx: v.Context, wire: str) -> None:
    """The roles swapped: this process listens and echoes, the peer process connects."""
    size, count = 64 * KIB, 8
    pd, cq, _, init = qp_init(ctx, wire, count + 1, one_cq=True)
    args = ("127.0.0.1", "--count", str(count), "--size", str(size))
    with Listener("127.0.0.1", 0) as listener:
        port = str(listener.address[1])
        with spawn(f"{wire}-client", *args[:1], port, *args[1:]) as proc:
            qp = listener.accept(pd, init, timeout=30)
            assert serve_echo(qp, pd, cq, count, size) == pattern(count, size)
            finish(proc)  # the client verified the echo byte for byte


def test_rc_send_completion_does_not_need_a_local_receive(pair: PairFactory) -> None:
    """B receives A's first SEND and echoes it; A's second SEND finds no receive at B.

    B's echo is acknowledged by A, so it must complete (the verbs contract: the peer has
    the data) without B posting another receive — else an echo server that reposts a
    buffer only after its echo completed deadlocks (it did, before RNR NAKs: B stopped
    reading at A's second SEND and never saw A's ACK behind it).
    """
    a, b = pair("rc")
    amr, bmr = v.MR(a.pd, 128, LOCAL_WRITE), v.MR(b.pd, 64, LOCAL_WRITE)
    post_recv(b.qp, bmr, 1, 0, 64)
    post_recv(a.qp, amr, 2, 64, 64)
    post_send(a.qp, amr, 3, 0, 64)
    post_send(a.qp, amr, 4, 0, 64)
    assert poll_until(b.rcq, 1, 5)[0].status == W.IBV_WC_SUCCESS
    post_send(b.qp, bmr, 5, 0, 64)
    assert poll_until(a.rcq, 1, 5)[0].status == W.IBV_WC_SUCCESS  # A has it: A ACKs it
    (wc,) = poll_until(b.scq, 1, 3)
    assert (wc.wr_id, wc.status) == (5, W.IBV_WC_SUCCESS)


def check_all_completed(
    sends: list[v.WC], recvs: list[v.WC], send_ids: range, recv_ids: range
) -> int:
    """Exactly one completion per WR, successes first then errors; the number of successes."""
    assert sorted(wc.wr_id for wc in sends) == list(send_ids), "send completions lost/duplicated"
    assert sorted(wc.wr_id for wc in recvs) == list(recv_ids), "recv completions lost/duplicated"
    ok = [wc.status == W.IBV_WC_SUCCESS for wc in sends]
    good = ok.count(True)
    assert ok == [True] * good + [False] * (len(ok) - good), "a success after an error"
    assert [wc.wr_id for wc in sends[:good]] == list(send_ids)[:good], "out of order"
    assert all(wc.status == W.IBV_WC_WR_FLUSH_ERR for wc in sends[good:]), sends[good:]
    assert all(wc.status == W.IBV_WC_WR_FLUSH_ERR for wc in recvs), recvs
    return good


def check_dead(ctx: v.Context, qp: v.QP, scq: v.CQ, rcq: v.CQ) -> None:
    """ERR with a reason, QP_FATAL raised, nothing left over; new WRs flush at once."""
    assert qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR
    assert isinstance(qp.error, v.ConnectionBrokenError), repr(qp.error)
    assert scq.poll()[0] == 0 and rcq.poll()[0] == 0, "more completions than WRs"
    event = ctx.get_async_event(timeout=5)
    assert event.event_type == v.ibv_event_type.IBV_EVENT_QP_FATAL
    assert event.element is qp and event.reason
    mr = v.MR(qp.pd, 64, LOCAL_WRITE)
    post_send(qp, mr, 777, 0, 64)
    post_recv(qp, mr, 778, 0, 64)
    (s,) = poll_until(scq, 1, 5)
    (r,) = poll_until(rcq, 1, 5)
    assert (s.wr_id, s.status, r.wr_id, r.status) == (
        777,
        W.IBV_WC_WR_FLUSH_ERR,
        778,
        W.IBV_WC_WR_FLUSH_ERR,
    )


def test_peer_dies_mid_transfer(ctx: v.Context) -> None:
    """The peer takes 3 of 40 SENDs, then os._exit(1): all 40 sends and 8 receives complete."""
    keep, sends, recvs, size = 3, 40, 8, 64 * KIB
    pd, scq, rcq, init = qp_init(ctx, "rc", sends)
    smr, rmr = v.MR(pd, size, LOCAL_WRITE), v.MR(pd, recvs * size, LOCAL_WRITE)
    with spawn("rc-sink-then-die", "--count", str(keep), "--size", str(size)) as proc:
        qp = connect("127.0.0.1", int(read_line(proc)), pd, init)
        for i in range(recvs):
            post_recv(qp, rmr, 1000 + i, i * size, size)
        for i in range(sends):
            post_send(qp, smr, i, 0, size)
        send_wcs = poll_until(scq, sends, 20)
        recv_wcs = poll_until(rcq, recvs, 20)
        assert proc.wait(timeout=20) == 1
    good = check_all_completed(send_wcs, recv_wcs, range(sends), range(1000, 1000 + recvs))
    assert good <= keep
    check_dead(ctx, qp, scq, rcq)


def test_sigkill_during_multi_mib_transfer(ctx: v.Context, wire: str) -> None:
    """32 SENDs of 4 MiB; the peer takes one, posts no more receives, then gets SIGKILL."""
    sends, recvs, size = 32, 4, 4 * MIB
    pd, scq, rcq, init = qp_init(ctx, wire, sends)
    smr, rmr = v.MR(pd, size, LOCAL_WRITE), v.MR(pd, recvs * 4096, LOCAL_WRITE)
    with spawn(f"{wire}-sink-then-hang", "--count", "1", "--size", str(size)) as proc:
        qp = connect("127.0.0.1", int(read_line(proc)), pd, init)
        for i in range(recvs):
            post_recv(qp, rmr, 1000 + i, i * 4096, 4096)
        for i in range(sends):
            post_send(qp, smr, i, 0, size)
        assert read_line(proc) == "stalled"
        proc.kill()
        assert proc.wait(timeout=20) < 0
        send_wcs = poll_until(scq, sends, 20)
        recv_wcs = poll_until(rcq, recvs, 20)
    good = check_all_completed(send_wcs, recv_wcs, range(sends), range(1000, 1000 + recvs))
    assert good < sends
    if wire == "rc":
        assert good <= 1  # the peer placed one message
    check_dead(ctx, qp, scq, rcq)


def test_async_event_qp_fatal(ctx: v.Context) -> None:
    pd, _, rcq, init = qp_init(ctx, "rc", 4)
    mr = v.MR(pd, 4096, LOCAL_WRITE)
    with spawn("rc-sink-then-die", "--count", "1") as proc:
        qp = connect("127.0.0.1", int(read_line(proc)), pd, init)
        post_recv(qp, mr, 5, 0, 4096)
        post_send(qp, mr, 6, 0, 4096)
        assert proc.wait(timeout=20) == 1
        event = ctx.get_async_event(timeout=5)
    assert event.event_type == v.ibv_event_type.IBV_EVENT_QP_FATAL
    assert event.element is qp
    assert qp.error is not None and event.reason
    (wc,) = poll_until(rcq, 1, 5)
    assert (wc.wr_id, wc.status) == (5, W.IBV_WC_WR_FLUSH_ERR)
