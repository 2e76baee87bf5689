"""The Python engine's MSG_ZEROCOPY bookkeeping (white box): its notifications, and the
gate that holds a completion while the kernel may still read the buffer.  What every
engine does with zerocopy: tests/test_zerocopy.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import tcpverbs as v
from tcpverbs.engine.py.zerocopy import MSG_ZEROCOPY, ZeroCopy
from tcpverbs.testing import ALL_ACCESS, Endpoint, poll_until, qp_pair, tcp_socket_pair

OP = v.ibv_wr_opcode
W = v.ibv_wc_status
SIZE = 1 << 20


@pytest.fixture
def zc_ctx() -> Iterator[v.Context]:
    with v.Context(name="tcpv_lo", zerocopy_min=64 * 1024, engine="python") as context:
        yield context


def filled_mr(end: Endpoint, seed: int) -> v.MR:
    mr = v.MR(end.pd, SIZE, ALL_ACCESS)
    mr.write(bytes((seed + i) % 251 for i in range(256)) * (SIZE // 256), SIZE)
    return mr


def test_notifications_are_counted_in_order_and_foreign_ones_ignored() -> None:
    sa, sb = tcp_socket_pair()
    with sa, sb:
        zc = ZeroCopy.enable(sa, 1)
        if zc is None:
            pytest.skip("SO_ZEROCOPY is not supported by this kernel")
        zc.issued = 5
        zc._release(2, 3, copied=False)  # out of order: nothing below 2 is done yet
        assert zc.done == 0 and zc.outstanding
        zc._release(0, 1, copied=True)
        assert zc.done == 4 and zc.copied == 2
        zc._release(1000, 2000, copied=False)  # never issued: ignored, no growth
        assert zc.done == 4 and len(zc._early) == 0
        zc._release(4, 4, copied=False)
        assert zc.done == 5 and not zc.outstanding


def test_a_real_zerocopy_send_is_reported_on_the_error_queue() -> None:
    sa, sb = tcp_socket_pair()
    with sa, sb:
        zc = ZeroCopy.enable(sa, 1)
        if zc is None:
            pytest.skip("SO_ZEROCOPY is not supported by this kernel")
        payload = memoryview(bytearray(b"z" * 100_000))
        sent = sa.sendmsg([payload], (), MSG_ZEROCOPY)
        zc.sent([payload])
        assert zc.outstanding and len(zc._pinned) == 1  # kept alive for the kernel
        got = 0
        sb.settimeout(5)
        while got < sent:
            got += len(sb.recv(sent))
        deadline = time.monotonic() + 5
        while zc.outstanding and time.monotonic() < deadline:
            zc.reap()  # error-queue reads never block
            time.sleep(0.001)
        assert not zc.outstanding and zc.copied == 1  # loopback: copied after all
        assert not zc._pinned


def test_a_completion_waits_for_the_kernel_to_release_earlier_zerocopy_calls(
    zc_ctx: v.Context,
) -> None:
    """The gate itself: over loopback the kernel releases so fast that an ACK never
    beats it, so pretend a zerocopy call is still out and watch the completion wait."""
    a, b = qp_pair(zc_ctx)
    src, dst = filled_mr(a, 5), v.MR(b.pd, SIZE, ALL_ACCESS)
    transport = a.qp._qp.transport
    assert transport is not None and transport._zerocopy is not None
    zc = transport._zerocopy
    with a.qp._qp.lock:
        pretend = zc.issued
        zc.issued += 1
    b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, 64, dst.lkey)]))
    a.qp.post_send(v.SendWR(7, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 64, src.lkey)]))
    assert poll_until(b.rcq)[0].status == W.IBV_WC_SUCCESS  # delivered and acknowledged...
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert a.scq.poll() == (0, [])  # ...but held while the kernel may read the buffer
    with a.qp._qp.lock:
        zc._release(pretend, pretend, copied=False)
        transport._zerocopy_released()
    (wc,) = poll_until(a.scq)
    assert wc.wr_id == 7 and wc.status == W.IBV_WC_SUCCESS
