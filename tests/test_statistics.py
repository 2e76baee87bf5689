"""``statistics()`` on QP, CQ and Context, and ``CQ.wait`` (spin, then sleep)."""

from __future__ import annotations

import errno
import threading
import time

import pytest

import tcpverbs as v
from tcpverbs.cq import MAX_SPIN_US
from tcpverbs.engine import available_engines
from tcpverbs.testing import chain, poll_until

from .conftest import PairFactory
from .test_sendrecv import mr_with, recv, send

F = v.ibv_send_flags
W = v.ibv_wc_status


def test_a_lone_cq_counts_its_polls(ctx: v.Context) -> None:
    cq = v.CQ(ctx, 8)
    for _ in range(5):
        assert cq.poll() == (0, [])
    stats = cq.statistics()
    assert stats["polls"] == 5 and stats["polls_empty"] == 5
    assert stats["completions"] == 0 and stats["pending"] == 0


def test_counters_of_a_transfer_add_up(pair: PairFactory, ctx: v.Context) -> None:
    a, b = pair()
    ma, mb = mr_with(a, b"x" * 100), mr_with(b, 1000)
    for i in range(10):
        recv(b, mb, 100, wr_id=i, offset=100 * i)
    for i in range(10):
        send(a, ma, 100, wr_id=i)
    poll_until(a.scq, 10)
    poll_until(b.rcq, 10)
    sa, sb = a.qp.statistics(), b.qp.statistics()
    assert sa["wrs_sent"] == 10 and sa["frames_sent"] == 11  # the SENDs and the AUTH
    assert sa["bytes_sent"] >= 10 * 100
    assert sb["wrs_received"] == 10
    assert sb["frames_received"] == 11  # only those flow this way
    assert sb["bytes_received"] == sa["bytes_sent"]
    assert sb["recv_calls"] >= 1 and sa["sendmsg_calls"] >= 1
    assert sa["frames_received"] >= 1  # the ACKs
    assert a.scq.statistics()["completions"] == 10
    assert b.rcq.statistics()["completions"] == 10
    total = ctx.statistics()
    assert total["wrs_sent"] == 10 and total["wrs_received"] == 10
    assert total["qps"] == 2 and total["cqs"] == 4
    assert total["syscalls"] >= total["sendmsg_calls"] + total["recv_calls"]


def test_context_totals_outlive_closed_qps(pair: PairFactory, ctx: v.Context) -> None:
    a, b = pair()
    ma, mb = mr_with(a, b"hello"), mr_with(b, 5)
    recv(b, mb, 5)
    send(a, ma, 5)
    poll_until(b.rcq)
    poll_until(a.scq)
    before = ctx.statistics()
    a.pd.close()  # closes a's QP and MR
    after = ctx.statistics()
    assert after["qps"] == 1
    assert after["wrs_sent"] == before["wrs_sent"] == 1
    assert after["bytes_sent"] >= before["bytes_sent"]


def test_a_posted_list_leaves_in_few_system_calls(pair: PairFactory) -> None:
    """100 small SENDs posted as one list: one batch, not one write each."""
    a, b = pair(sq_sig_all=0, cap=v.QPCap(128, 128, 1, 1, 64))
    ma, mb = mr_with(a, b"y" * 64), mr_with(b, 64)
    b.qp.post_recv(chain([v.RecvWR(i, 1, [v.SGE(mb.buf, 64, mb.lkey)]) for i in range(100)]))
    wrs = [
        v.SendWR(i, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(ma.buf, 64, ma.lkey)], 0)
        for i in range(100)
    ]
    wrs[-1].send_flags = F.IBV_SEND_SIGNALED
    before = a.qp.statistics()["sendmsg_calls"]
    a.qp.post_send(chain(wrs))
    poll_until(b.rcq, 100)
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert a.qp.statistics()["sendmsg_calls"] - before <= 3


# -- CQ.wait --------------------------------------------------------------------------
def test_wait_sleeps_until_a_completion_arrives(pair: PairFactory) -> None:
    a, b = pair()
    ma, mb = mr_with(a, b"late"), mr_with(b, 4)
    recv(b, mb, 4)
    timer = threading.Timer(0.1, lambda: send(a, ma, 4))
    timer.start()
    try:
        (wc,) = b.rcq.wait(spin_us=0, timeout=10)
    finally:
        timer.join()
    assert wc.status == W.IBV_WC_SUCCESS and mb.read(4, 0) == b"late"
    assert b.rcq.statistics()["sleeps"] >= 1


def test_wait_returns_at_once_when_completions_are_there(pair: PairFactory) -> None:
    a, b = pair()
    ma, mb = mr_with(a, b"now!"), mr_with(b, 4)
    recv(b, mb, 4)
    send(a, ma, 4)
    poll_until(a.scq)
    deadline = time.monotonic() + 5
    while not len(b.rcq) and time.monotonic() < deadline:
        time.sleep(0.001)  # let the progress thread queue it
    assert len(b.rcq.wait(num_entries=4, spin_us=0, timeout=5)) == 1
    assert b.rcq.statistics()["sleeps"] == 0


def test_wait_times_out_with_etimedout(ctx: v.Context) -> None:
    cq = v.CQ(ctx, 4, spin_us=100)
    start = time.monotonic()
    with pytest.raises(v.TcpverbsError) as info:
        cq.wait(timeout=0.05)
    assert info.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - start >= 0.05


def test_closing_the_cq_wakes_a_sleeping_wait(ctx: v.Context) -> None:
    cq = v.CQ(ctx, 4)
    raised: list[BaseException] = []

    def sleeper() -> None:
        try:
            cq.wait(spin_us=0, timeout=10)
        except BaseException as exc:  # the test inspects it
            raised.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    deadline = time.monotonic() + 5
    while not cq.statistics()["sleeps"] and time.monotonic() < deadline:
        time.sleep(0.001)
    cq.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], v.ClosedResourceError)


@pytest.mark.parametrize("bad", [-1, 1.5, 10**9, "1"])
def test_bad_spin_budgets_are_refused(ctx: v.Context, bad: object) -> None:
    for make in (
        lambda: v.Context(name="tcpv_lo", spin_us=bad),  # type: ignore[arg-type]
        lambda: v.CQ(ctx, 4, spin_us=bad),  # type: ignore[arg-type]
        lambda: v.CQ(ctx, 4).wait(spin_us=bad, timeout=0),  # type: ignore[arg-type]
    ):
        with pytest.raises(v.TcpverbsError) as info:
            make()
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("engine", available_engines())
def test_the_spin_budget_comes_from_the_call_then_the_cq_then_the_context(engine: str) -> None:
    """A wait that spins longer than its timeout never sleeps; one that may not spin
    sleeps at once (the CQ's ``sleeps`` counter tells them apart)."""

    def sleeps(cq: v.CQ, spin_us: int | None = None) -> int:
        began = time.monotonic()
        with pytest.raises(v.TcpverbsError) as err:
            cq.wait(1, timeout=0.05, spin_us=spin_us)
        assert err.value.errno == errno.ETIMEDOUT
        # the timeout ends a longer spin (MAX_SPIN_US is 10 s): a bound, not a speed
        assert time.monotonic() - began < MAX_SPIN_US / 2e6
        return cq.statistics()["sleeps"]

    with v.Context(name="tcpv_lo", engine=engine, spin_us=MAX_SPIN_US) as ctx:
        assert sleeps(v.CQ(ctx, 4)) == 0  # the context's: spins past the timeout
        assert sleeps(v.CQ(ctx, 4, spin_us=0)) > 0  # the CQ's
        assert sleeps(v.CQ(ctx, 4), spin_us=0) > 0  # the call's
        assert sleeps(v.CQ(ctx, 4, spin_us=0), spin_us=MAX_SPIN_US) == 0
