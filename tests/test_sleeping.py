"""Threads that sleep -- in ``CompChannel.get_cq_event`` or in ``CQ.wait`` -- before
anything has arrived.

The native engine's sleeper reads its QPs' sockets itself while it sleeps (wait.c); these
tests hold every engine to what a sleeper must see whoever reads: each message, the
target side of one-sided work, a peer that goes away, completions other threads make,
channels with more QPs and CQs than a sleeper polls.
"""

from __future__ import annotations

import errno
import threading
import time

import pytest

import tcpverbs as v
from tcpverbs.testing import ALL_ACCESS, Endpoint, connect, make_endpoint, poll_until

OP = v.ibv_wr_opcode
W = v.ibv_wc_status
F = v.ibv_send_flags


def sleeping_endpoint(ctx: v.Context, ch: v.CompChannel | None, wire: str = "rc") -> Endpoint:
    """An endpoint whose one CQ (sends and receives) raises events on *ch*, if any."""
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 256, channel=ch)
    init = v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(16, 16, 1, 1, 64), wire=wire)  # type: ignore[arg-type]
    return Endpoint(pd, cq, cq, v.QP(pd, init, v.QPAttr(qp_access_flags=ALL_ACCESS)))


def next_wc(end: Endpoint, ch: v.CompChannel | None) -> v.WC:
    """The next completion of *end*'s CQ, sleeping as verbs programs do: poll, arm, poll
    again, sleep on *ch* -- or, without a channel, in ``CQ.wait`` without spinning."""
    cq = end.rcq
    if ch is None:
        return cq.wait(1, timeout=10, spin_us=0)[0]
    while True:
        n, wcs = cq.poll(1)
        if n:
            return wcs[0]
        cq.req_notify()
        n, wcs = cq.poll(1)
        if n:
            return wcs[0]
        ch.get_cq_event(cq, timeout=10).ack_events(1)


@pytest.fixture(params=["get_cq_event", "wait"])
def how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_ping_pong_with_both_sides_sleeping(ctx: v.Context, wire: str, how: str) -> None:
    ping_pong_sleeping((ctx, ctx), wire, 200, how)


def ping_pong_sleeping(ctxs: tuple[v.Context, v.Context], wire: str, rounds: int, how: str) -> None:
    """*rounds* round trips between two threads that each sleep for every message, on a
    completion channel or in ``CQ.wait`` (*how*)."""
    size = 24
    chs = [v.CompChannel(c) if how == "get_cq_event" else None for c in ctxs]
    ends = [sleeping_endpoint(c, ch, wire) for c, ch in zip(ctxs, chs, strict=True)]
    connect(ends[0].qp, ends[1].qp)
    mrs = [v.MR(end.pd, 2 * size, ALL_ACCESS) for end in ends]
    seen: list[list[bytes]] = [[], []]
    failures: list[BaseException] = []

    def side(i: int) -> None:
        end, ch, mr = ends[i], chs[i], mrs[i]
        try:
            for r in range(rounds):
                end.qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf + size, size, mr.lkey)]))
                if i == 0 or r > 0:  # side 1 answers: it first waits for side 0's message
                    mr.write(f"{i}:{r:05d}".encode().ljust(size, b"."), size)
                    end.qp.post_send(
                        v.SendWR(2, OP.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, size, mr.lkey)])
                    )
                received = 0
                while not received:
                    wc = next_wc(end, ch)
                    assert wc.status == W.IBV_WC_SUCCESS, wc
                    if wc.opcode == v.ibv_wc_opcode.IBV_WC_RECV:
                        received = wc.byte_len
                        seen[i].append(mr.read(size, size))
                if i == 1 and r == rounds - 1:  # the last answer
                    mr.write(f"{i}:{r + 1:05d}".encode().ljust(size, b"."), size)
                    end.qp.post_send(
                        v.SendWR(2, OP.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, size, mr.lkey)])
                    )
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=side, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert not any(t.is_alive() for t in threads)
    assert seen[1] == [f"0:{r:05d}".encode().ljust(size, b".") for r in range(rounds)]
    assert seen[0] == [f"1:{r + 1:05d}".encode().ljust(size, b".") for r in range(rounds)]


def test_a_sleeper_still_serves_the_target_side_of_reads_and_atomics(ctx: v.Context) -> None:
    """The peer's READs and atomics need no completion here, so no event ends the sleep:
    whoever reads the socket meanwhile must answer them."""
    ch = v.CompChannel(ctx)
    target = sleeping_endpoint(ctx, ch)
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 64)
    init = v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(16, 16, 1, 1, 0))
    reader = Endpoint(pd, cq, cq, v.QP(pd, init, v.QPAttr(qp_access_flags=ALL_ACCESS)))
    connect(reader.qp, target.qp, v.QPAttr(max_rd_atomic=4, max_dest_rd_atomic=4))
    tmr = v.MR(target.pd, 64, ALL_ACCESS)
    tmr.write(b"what the sleeper holds".ljust(56, b"!"), 56, 8)
    local = v.MR(pd, 64, ALL_ACCESS)
    target.rcq.req_notify()
    slept: list[BaseException] = []

    def sleeper() -> None:
        try:
            ch.get_cq_event(target.rcq, timeout=3)
        except v.TcpverbsError as e:  # nothing completes here: the timeout is the end
            slept.append(e)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        for i in range(20):
            read = v.SendWR(i, OP.IBV_WR_RDMA_READ, 1, 0, [v.SGE(local.buf + 8, 56, local.lkey)])
            read.set_wr_rdma(tmr.rkey, tmr.buf + 8)
            add = v.SendWR(
                100 + i, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, 1, 0, [v.SGE(local.buf, 8, local.lkey)]
            )
            add.set_wr_atomic(tmr.rkey, tmr.buf, 1)
            reader.qp.post_send(read)
            reader.qp.post_send(add)
            wcs = poll_until(cq, 2, timeout=5)
            assert [wc.status for wc in wcs] == [W.IBV_WC_SUCCESS] * 2
            assert local.read(56, 8) == tmr.read(56, 8)
            assert int.from_bytes(local.read(8, 0), "little") == i
    finally:
        thread.join(10)
    assert not thread.is_alive()
    assert [e.errno for e in slept] == [errno.ETIMEDOUT]
    assert int.from_bytes(tmr.read(8, 0), "little") == 20


def test_a_sleeper_hears_of_a_peer_that_went_away(ctx: v.Context, wire: str) -> None:
    ch = v.CompChannel(ctx)
    sleeper = sleeping_endpoint(ctx, ch, wire)
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 16)
    peer = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, wire=wire), v.QPAttr())  # type: ignore[arg-type]
    connect(peer, sleeper.qp)
    mr = v.MR(sleeper.pd, 64, ALL_ACCESS)
    sleeper.qp.post_recv(v.RecvWR(7, 1, [v.SGE(mr.buf, 64, mr.lkey)]))
    sleeper.rcq.req_notify()
    timer = threading.Timer(0.3, peer.close)
    timer.start()
    try:
        assert ch.get_cq_event(sleeper.rcq, timeout=10) is sleeper.rcq
    finally:
        timer.join()
    sleeper.rcq.ack_events(1)
    wc = poll_until(sleeper.rcq)[0]
    assert (wc.wr_id, wc.status) == (7, W.IBV_WC_WR_FLUSH_ERR)
    if wire == "rc":  # a stream peer's end only ends the receive side
        assert sleeper.qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR


@pytest.mark.parametrize(("qps", "cqs"), [(10, 1), (2, 6)])
def test_channels_with_more_queues_than_a_sleeper_polls(ctx: v.Context, qps: int, cqs: int) -> None:
    """Past the sockets (8) and CQs (4) the native sleeper polls itself, it sleeps on the
    eventfd alone and the engine thread reads: the same events either way."""
    ch = v.CompChannel(ctx)
    cq_list = [v.CQ(ctx, 64, channel=ch) for _ in range(cqs)]
    pd = v.PD(ctx)
    pairs = []
    for i in range(qps):
        cq = cq_list[i % cqs]
        mine = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq), v.QPAttr())
        far = make_endpoint(ctx)  # an ordinary endpoint that polls
        connect(far.qp, mine)
        pairs.append((far, mine))
    mr = v.MR(pd, 64, ALL_ACCESS)
    for round_ in range(3):
        for i, (a, mine) in enumerate(pairs):
            cq = cq_list[i % cqs]
            mine.post_recv(v.RecvWR(i, 1, [v.SGE(mr.buf, 64, mr.lkey)]))
            for c in cq_list:
                c.req_notify()
            src = v.MR(a.pd, 8, ALL_ACCESS)
            src.write(f"{round_}-{i:06d}".encode(), 8)
            timer = threading.Timer(
                0.05,
                a.qp.post_send,
                args=(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]),),
            )
            timer.start()
            try:
                assert ch.get_cq_event(timeout=10) is cq
            finally:
                timer.join()
            cq.ack_events(1)
            wc = poll_until(cq)[0]
            assert (wc.wr_id, wc.status, wc.byte_len) == (i, W.IBV_WC_SUCCESS, 8)
            assert mr.read(8, 0) == f"{round_}-{i:06d}".encode()
            assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS


def test_cq_wait_wakes_for_completions_another_thread_makes(ctx: v.Context) -> None:
    """Moving the QP to ERR flushes its receives in the mover's thread: no socket says
    so, the sleeper must still wake."""
    end = sleeping_endpoint(ctx, None)
    far = make_endpoint(ctx)
    connect(far.qp, end.qp)
    mr = v.MR(end.pd, 64, ALL_ACCESS)
    end.qp.post_recv(v.RecvWR(5, 1, [v.SGE(mr.buf, 64, mr.lkey)]))
    to_error = v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_ERR)
    timer = threading.Timer(0.2, end.qp.modify, args=(to_error, v.ibv_qp_attr_mask.IBV_QP_STATE))
    timer.start()
    try:
        (wc,) = end.rcq.wait(1, timeout=10, spin_us=0)
    finally:
        timer.join()
    assert (wc.wr_id, wc.status) == (5, W.IBV_WC_WR_FLUSH_ERR)


@pytest.mark.parametrize("teardown", ["close", "reset"])
def test_a_qp_torn_down_while_a_thread_sleeps_on_its_channel_ends_the_connection_at_once(
    ctx: v.Context, teardown: str
) -> None:
    """The sleeper polls the QP's socket; destroying or resetting the QP must still end
    the connection now (the peer's WRs flush), not when the sleeper happens to wake."""
    channel = v.CompChannel(ctx)
    pd = v.PD(ctx)
    rcq, scq = v.CQ(ctx, 16, channel=channel), v.CQ(ctx, 16)
    cap = v.QPCap(4, 4, 1, 1, 0)
    sleeper_qp = v.QP(pd, v.QPInitAttr(scq=scq, rcq=rcq, cap=cap), v.QPAttr())
    peer_cq = v.CQ(ctx, 16)
    peer = v.QP(pd, v.QPInitAttr(scq=peer_cq, rcq=peer_cq, cap=cap), v.QPAttr())
    connect(sleeper_qp, peer)
    mr = v.MR(pd, 64, ALL_ACCESS)
    peer.post_recv(v.RecvWR(7, 1, [v.SGE(mr.buf, 8, mr.lkey)]))
    sleeper_qp.post_recv(v.RecvWR(8, 1, [v.SGE(mr.buf + 8, 8, mr.lkey)]))
    time.sleep(0.1)  # the hello is through
    outcome: list[BaseException] = []

    def sleep_on_channel() -> None:
        rcq.req_notify()
        try:
            channel.get_cq_event(rcq, timeout=3)
        except v.TcpverbsError as exc:  # expected: the QP is gone, no event can come
            outcome.append(exc)

    sleeper = threading.Thread(target=sleep_on_channel)
    sleeper.start()
    time.sleep(0.2)  # asleep, watching the socket
    if teardown == "close":
        sleeper_qp.close()
    else:
        sleeper_qp.modify(
            v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_RESET), v.ibv_qp_attr_mask.IBV_QP_STATE
        )
    (wc,) = poll_until(peer_cq, 1, timeout=1.5)  # not after the sleeper's 3 s
    assert wc.wr_id == 7 and wc.status == W.IBV_WC_WR_FLUSH_ERR
    sleeper.join(10)
    assert not sleeper.is_alive()
    assert [e.errno for e in outcome] == [errno.ETIMEDOUT]  # woke, found nothing, slept on
