"""Deregistration revokes local access too (docs/semantics.md, "One-sided operations").

A WR whose memory is deregistered while it is queued or in flight completes with
``IBV_WC_LOC_PROT_ERR`` and the QP goes to ERR, as on hardware — never SUCCESS, and no
byte lands in the memory after ``dereg`` returned.
"""

from __future__ import annotations

import pytest

import tcpverbs as v
from tcpverbs.testing import ALL_ACCESS, poll_until, qp_pair

from .peer_proc import post_recv, post_send
from .test_stream_interop import to_plain_peer

W = v.ibv_wc_status
LOCAL = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
MIB = 1024 * 1024


def test_a_queued_receive_loses_its_memory(ctx: v.Context, wire: str) -> None:
    a, b = qp_pair(ctx, wire)
    gone, kept = v.MR(a.pd, 64, LOCAL), v.MR(a.pd, 64, LOCAL)
    post_recv(a.qp, gone, 1, 0, 64)
    post_recv(a.qp, kept, 2, 0, 64)
    gone.close()
    wcs = poll_until(a.rcq, 2)
    assert [(wc.wr_id, wc.status) for wc in wcs] == [
        (1, W.IBV_WC_LOC_PROT_ERR),
        (2, W.IBV_WC_WR_FLUSH_ERR),
    ]
    # a's event (rc: b's too, once a's TERMINATE reaches it; either may come first)
    event = ctx.get_async_event(timeout=5)
    if event.element is not a.qp:
        event = ctx.get_async_event(timeout=5)
    assert event.element is a.qp and "was deregistered" in event.reason
    assert a.qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR
    # what the peer sends now lands nowhere: the connection is gone
    src = v.MR(b.pd, 64, LOCAL)
    src.write(b"late" * 16, 64)
    post_send(b.qp, src, 3, 0, 64)
    (swc,) = poll_until(b.scq)
    assert swc.status != W.IBV_WC_SUCCESS
    assert kept.read(64, 0) == bytes(64)


def test_a_send_waiting_for_a_receive_loses_its_memory(ctx: v.Context) -> None:
    """rc: the peer has no receive posted (RNR, retried for ever); the source MR goes."""
    a, _ = qp_pair(ctx, attr=v.QPAttr(rnr_retry=7, min_rnr_timer=14))
    src, other = v.MR(a.pd, 4096, LOCAL), v.MR(a.pd, 64, LOCAL)
    post_send(a.qp, src, 1, 0, 4096)
    post_send(a.qp, other, 2, 0, 64)
    assert a.scq.poll()[0] == 0
    src.close()
    wcs = poll_until(a.scq, 2)
    assert [(wc.wr_id, wc.status) for wc in wcs] == [
        (1, W.IBV_WC_LOC_PROT_ERR),
        (2, W.IBV_WC_WR_FLUSH_ERR),
    ]


def test_a_stream_send_not_yet_acknowledged_loses_its_memory(ctx: v.Context) -> None:
    """The peer does not read: 32 MiB stay unacknowledged; deregistering the source MR
    ends the SEND with LOC_PROT_ERR, not SUCCESS once the peer reads after all."""
    from tcpverbs.testing import make_endpoint

    end = make_endpoint(ctx, "stream", v.QPCap(4, 4, 1, 1, 0))
    with to_plain_peer(end, rcvbuf=64 * 1024):
        mr = v.MR(end.pd, 32 * MIB, LOCAL)
        post_send(end.qp, mr, 7, 0, 32 * MIB)
        assert end.scq.poll()[0] == 0
        mr.close()
        (wc,) = poll_until(end.scq)
        assert (wc.wr_id, wc.status) == (7, W.IBV_WC_LOC_PROT_ERR)


def test_a_second_sge_in_another_mr_counts_too(ctx: v.Context) -> None:
    a, _ = qp_pair(ctx)
    first, second = v.MR(a.pd, 16, LOCAL), v.MR(a.pd, 16, LOCAL)
    sges = [v.SGE(first.buf, 16, first.lkey), v.SGE(second.buf, 16, second.lkey)]
    a.qp.post_recv(v.RecvWR(4, 2, sges))
    second.close()
    (wc,) = poll_until(a.rcq)
    assert (wc.wr_id, wc.status) == (4, W.IBV_WC_LOC_PROT_ERR)


@pytest.mark.parametrize("wire", ["rc", "stream"])
def test_an_mr_no_work_uses_goes_quietly(ctx: v.Context, wire: str) -> None:
    a, b = qp_pair(ctx, wire)
    used, idle = v.MR(a.pd, 64, ALL_ACCESS), v.MR(a.pd, 64, ALL_ACCESS)
    post_recv(a.qp, used, 1, 0, 64)
    idle.close()
    assert a.qp.qp_state == v.ibv_qp_state.IBV_QPS_RTS
    src = v.MR(b.pd, 8, LOCAL)
    src.write(b"arrived!", 8)
    post_send(b.qp, src, 2, 0, 8)
    (wc,) = poll_until(a.rcq)
    assert (wc.wr_id, wc.status, wc.byte_len) == (1, W.IBV_WC_SUCCESS, 8)
    assert used.read(8, 0) == b"arrived!"
