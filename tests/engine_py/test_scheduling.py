"""The Python engine's scheduling, seen from inside: parked reads, held-back ACKs, the
channel sleeper that reads its own sockets, and how often the progress thread wakes.

White-box tests of :mod:`tcpverbs.engine.py` (its transports and counters); the
behaviour every engine owes is tested through the public API in ``tests/``.
"""

from __future__ import annotations

import os
import time

import pytest

import tcpverbs as v
from tcpverbs.testing import connect

from ..conftest import LOCAL_WRITE
from ..test_sendrecv import OP, W, mr_with, recv, send


def test_comp_channel_fd_is_readable_only_with_an_event(ctx: v.Context) -> None:
    """A drained channel must not look readable (or get_cq_event would spin)."""
    import select as select_mod

    ch = v.CompChannel(ctx)
    cq = v.CQ(ctx, 8, channel=ch)
    ch._channel.notify(cq._cq)  # type: ignore[attr-defined]
    assert select_mod.select([ch.fd], [], [], 0)[0]
    assert ch.get_cq_event(cq, timeout=1) is cq
    assert not select_mod.select([ch.fd], [], [], 0)[0]
    os.eventfd_write(ch.fd, 1)  # a stray wake-up with nothing queued
    start = time.process_time()
    with pytest.raises(v.TcpverbsError):
        ch.get_cq_event(cq, timeout=0.3)
    assert time.process_time() - start < 0.2  # it slept, it did not spin
    assert not select_mod.select([ch.fd], [], [], 0)[0]


def test_a_spinning_poller_keeps_the_progress_thread_asleep(ctx: v.Context) -> None:
    """Every wake-up of the progress thread costs a GIL hand-over; while the application
    polls, it receives by itself and the thread stays parked."""
    from tcpverbs.testing import qp_pair

    a, b = qp_pair(ctx, sq_sig_all=0)
    ma, mb = mr_with(a, b"ping"), mr_with(b, b"pong")
    rounds = 300

    def wakeups() -> int:
        return int(ctx.statistics()["engine_wakeups"])

    for end, mr in ((a, ma), (b, mb)):
        recv(end, mr, 4)
    before = wakeups()
    for _ in range(rounds):
        send(a, ma, 4, flags=0)
        while not b.rcq.poll()[0]:
            a.rcq.poll()
        recv(b, mb, 4)
        send(b, mb, 4, flags=0)
        while not a.rcq.poll()[0]:
            b.rcq.poll()
        recv(a, ma, 4)
    # about 25 here; 100-160 when every arrival woke the thread
    woken = wakeups() - before
    assert woken < rounds // 5, woken


def test_a_held_back_ack_waits_one_poll_at_most(
    ctx: v.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spinning receiver that reads something on every poll and never replies still
    acknowledges every other read: the ACK is never starved by a steady stream."""
    from tcpverbs.engine.py import transport
    from tcpverbs.testing import qp_pair

    monkeypatch.setattr(transport, "APP_POLL_GRACE", 30.0)  # b stays "spinning"
    a, b = qp_pair(ctx, sq_sig_all=0)
    ma, mb = mr_with(a, b"data"), mr_with(b, 4)
    tb = b.qp._qp.transport
    assert tb is not None
    for _ in range(4):
        recv(b, mb, 4)
    with b.qp._qp.lock:
        tb.app_polling()
        tb._park_reads()  # as when the engine saw data arrive during b's polling

    def frames_sent_after_one_message() -> int:
        send(a, ma, 4, flags=0)
        time.sleep(0.05)  # in b's socket: the next poll reads it
        assert b.rcq.poll()[0] == 1
        return b.qp.statistics()["frames_sent"]

    first = frames_sent_after_one_message()
    assert frames_sent_after_one_message() == first + 1  # owed from before: sent now
    assert frames_sent_after_one_message() == first + 1  # held back again...
    assert frames_sent_after_one_message() == first + 2  # ...for one poll only


def test_a_thread_asleep_on_a_channel_receives_without_waking_the_progress_thread(
    ctx: v.Context,
) -> None:
    """get_cq_event reads the sockets of its armed CQs' QPs itself: a message wakes the
    sleeping application only, not first the progress thread (one wake-up, not two)."""
    import threading

    from tcpverbs.testing import qp_pair

    with v.Context(name="tcpv_lo", engine="python") as ctx_b:
        a, b = qp_pair(ctx, ctx_b=ctx_b, sq_sig_all=0)
        channel = v.CompChannel(ctx_b)
        rcq = v.CQ(ctx_b, 64, channel=channel)
        cap = v.QPCap(64, 64, 1, 1, 0)
        receiver = v.QP(b.pd, v.QPInitAttr(scq=b.scq, rcq=rcq, cap=cap), v.QPAttr())
        sender = v.QP(a.pd, v.QPInitAttr(scq=a.scq, rcq=a.rcq, cap=cap), v.QPAttr())
        connect(sender, receiver)
        smr, rmr = mr_with(a, b"ping"), v.MR(b.pd, 64, LOCAL_WRITE)
        count = 20
        for i in range(count):
            receiver.post_recv(v.RecvWR(i, 1, [v.SGE(rmr.buf, 4, rmr.lkey)]))
        time.sleep(0.1)  # the hello is through
        before = ctx_b.statistics()["engine_wakeups"]

        def send_slowly() -> None:
            for i in range(count):
                time.sleep(0.01)  # the receiver is asleep in get_cq_event by then
                sender.post_send(
                    v.SendWR(i, OP.IBV_WR_SEND, 1, 0, [v.SGE(smr.buf, 4, smr.lkey)], 0)
                )

        feeder = threading.Thread(target=send_slowly)
        feeder.start()
        got: list[v.WC] = []
        while len(got) < count:
            rcq.req_notify()
            n, wcs = rcq.poll(count)
            if not n:
                channel.get_cq_event(rcq, timeout=5).ack_events(1)
                n, wcs = rcq.poll(count)
            got.extend(wcs)
        feeder.join()
        assert [w.wr_id for w in got] == list(range(count))
        assert all(w.status == W.IBV_WC_SUCCESS and w.byte_len == 4 for w in got)
        woken = ctx_b.statistics()["engine_wakeups"] - before
        assert woken < count // 2, f"the progress thread woke {woken} times for {count} messages"


def test_an_exception_inside_a_channel_sleep_hands_the_socket_back_to_the_engine(
    ctx: v.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal's exception may strike between a sleeper's mark on a transport and its
    bookkeeping: the mark must still go, or the engine would never read that QP again."""
    import select as select_module

    from tcpverbs.engine.py.transport import Transport

    channel = v.CompChannel(ctx)
    pd = v.PD(ctx)
    rcq, other = v.CQ(ctx, 16, channel=channel), v.CQ(ctx, 16)
    cap = v.QPCap(4, 4, 1, 1, 0)
    receiver = v.QP(pd, v.QPInitAttr(scq=other, rcq=rcq, cap=cap), v.QPAttr())
    sender = v.QP(pd, v.QPInitAttr(scq=other, rcq=other, cap=cap), v.QPAttr())
    connect(receiver, sender)
    mr = v.MR(pd, 64, LOCAL_WRITE)
    receiver.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf, 8, mr.lkey)]))
    time.sleep(0.1)
    enter = Transport.sleeper_enter

    def enter_then_interrupt(self: Transport, token: object) -> None:
        enter(self, token)
        raise KeyboardInterrupt  # before _sleep could note that it entered

    monkeypatch.setattr(Transport, "sleeper_enter", enter_then_interrupt)
    rcq.req_notify()
    with pytest.raises(KeyboardInterrupt):
        channel.get_cq_event(rcq, timeout=1)
    monkeypatch.undo()
    transport = receiver._qp.transport
    assert transport is not None and not transport._sleepers
    assert transport._registered_events & select_module.EPOLLIN
    sender.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf + 8, 8, mr.lkey)], 0))
    deadline = time.monotonic() + 2
    while not len(rcq) and time.monotonic() < deadline:
        time.sleep(0.01)  # nobody polls: only the progress thread can receive it
    assert len(rcq) == 1


def test_a_destroyed_qp_takes_no_connection(ctx: v.Context) -> None:
    """A socket handed over (by the out-of-band service) after the QP was destroyed is
    refused and left to the caller: no transport, no socket kept open."""
    from tcpverbs.testing import make_endpoint, tcp_socket_pair

    end = make_endpoint(ctx)
    handed, peer = tcp_socket_pair()
    end.qp.to_rtr(v.QPAttr(sock=handed))
    engine_qp = end.qp._qp
    end.qp.close()
    mine, theirs = tcp_socket_pair()
    assert engine_qp.attach(mine, None, None) is False
    assert mine.fileno() != -1  # still the caller's
    for sock in (mine, theirs, peer):
        sock.close()
