"""The requester timeout (``QPAttr.timeout`` and ``retry_cnt``) against live peers.

A black hole must end outstanding work (tests/test_netns.py shows it across two
namespaces); a peer that is alive but slow — no receive posted, or not reading its
socket — must not: the kernel still hears from its host.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

import tcpverbs as v
from tcpverbs.engine.api import requester_timeout
from tcpverbs.testing import make_endpoint, poll_until, qp_pair

from .peer_proc import post_recv, post_send
from .test_stream_interop import recv_all, to_plain_peer

W = v.ibv_wc_status
LOCAL = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
KIB, MIB = 1024, 1024 * 1024
ONE_SECOND = v.QPAttr(timeout=14, retry_cnt=0)  # 4.096 µs * 2^14 * 1 = 67 ms -> 1 s


def test_the_verbs_formula() -> None:
    assert requester_timeout(0, 7) is None  # 0: wait for ever, as in verbs
    assert requester_timeout(14, 0) == 1.0  # at least one second
    assert requester_timeout(20, 7) == pytest.approx(4.096e-6 * 2**20 * 8)
    assert requester_timeout(31, 7) == pytest.approx(70368.7, rel=1e-4)


@pytest.mark.parametrize("bad", [-1, 32, 99, 1.5, None])
def test_timeout_is_a_5_bit_field(ctx: v.Context, bad: object) -> None:
    end = make_endpoint(ctx)
    end.qp.to_init(v.QPAttr())
    with pytest.raises(v.TcpverbsError) as err:
        end.qp.modify(v.QPAttr(timeout=bad), v.ibv_qp_attr_mask.IBV_QP_TIMEOUT)  # type: ignore[arg-type]
    assert err.value.errno == errno.EINVAL and "timeout" in str(err.value)


def test_a_peer_without_receives_is_not_a_timeout(ctx: v.Context) -> None:
    """RNR NAKs keep coming back: the peer answers, however long it has no receive."""
    a, b = qp_pair(ctx, attr=v.QPAttr(timeout=14, retry_cnt=0, min_rnr_timer=14, rnr_retry=7))
    src, dst = v.MR(a.pd, 8, LOCAL), v.MR(b.pd, 8, LOCAL)
    src.write(b"patience", 8)
    post_send(a.qp, src, 1, 0, 8)
    time.sleep(2.5)
    assert a.scq.poll()[0] == 0 and a.qp.error is None
    post_recv(b.qp, dst, 2, 0, 8)
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert dst.read(8, 0) == b"patience"


def test_a_peer_that_does_not_read_is_not_a_timeout(ctx: v.Context) -> None:
    """A stream peer with a closed window for 2.5 s, against a 1 s timeout: its kernel
    answers the window probes, so the SEND waits and then completes."""
    size = 32 * MIB  # more than the kernels' buffers hold
    end = make_endpoint(ctx, "stream", v.QPCap(4, 4, 1, 1, 0))
    with to_plain_peer(end, rcvbuf=64 * KIB, attr=ONE_SECOND) as theirs:
        data = os.urandom(size)
        mr = v.MR(end.pd, size, LOCAL)
        mr.write(data, size)
        post_send(end.qp, mr, 9, 0, size)
        time.sleep(2.5)
        assert end.scq.poll() == (0, []) and end.qp.error is None
        assert recv_all(theirs, size) == data
        (wc,) = poll_until(end.scq)
        assert (wc.wr_id, wc.status) == (9, W.IBV_WC_SUCCESS)
