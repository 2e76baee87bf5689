"""QP creation checks and the state machine (ibv_modify_qp rules)."""

from __future__ import annotations

import errno
import socket

import pytest

import tcpverbs as v
from tcpverbs.testing import tcp_socket_pair

S = v.ibv_qp_state
M = v.ibv_qp_attr_mask


@pytest.fixture
def qp(ctx: v.Context) -> v.QP:
    cq = v.CQ(ctx, 64)
    return v.QP(v.PD(ctx), v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 2, 2, 16)))


@pytest.mark.parametrize(
    ("change", "err"),
    [
        ({"qp_type": v.ibv_qp_type.IBV_QPT_UC}, errno.EOPNOTSUPP),
        ({"qp_type": v.ibv_qp_type.IBV_QPT_UD, "wire": "stream"}, errno.EINVAL),
        ({"wire": "iwarp"}, errno.EINVAL),
        ({"scq": None}, errno.EINVAL),
        ({"cap": v.QPCap(max_send_wr=0)}, errno.EINVAL),
        ({"cap": v.QPCap(max_recv_sge=1000)}, errno.EINVAL),
        ({"cap": v.QPCap(max_inline_data=1 << 20)}, errno.EINVAL),
    ],
)
def test_bad_init_attr(ctx: v.Context, change: dict[str, object], err: int) -> None:
    cq = v.CQ(ctx, 8)
    init = v.QPInitAttr(scq=cq, rcq=cq)
    for name, value in change.items():
        setattr(init, name, value)
    with pytest.raises(v.TcpverbsError) as info:
        v.QP(v.PD(ctx), init)
    assert info.value.errno == err


def test_cq_of_another_context_is_refused(ctx: v.Context) -> None:
    with v.Context(name="tcpv_lo") as other:
        cq = v.CQ(other, 8)
        with pytest.raises(v.TcpverbsError) as info:
            v.QP(v.PD(ctx), v.QPInitAttr(scq=cq, rcq=cq))
    assert info.value.errno == errno.EINVAL


def test_new_qp_is_in_reset_with_a_24_bit_number(qp: v.QP) -> None:
    assert qp.qp_state == S.IBV_QPS_RESET
    assert 0 < qp.qp_num < 1 << 24


def test_invalid_transitions_change_nothing(qp: v.QP) -> None:
    for target in (S.IBV_QPS_RTR, S.IBV_QPS_RTS, S.IBV_QPS_SQD):
        with pytest.raises(v.TcpverbsError) as info:
            qp.modify(v.QPAttr(qp_state=target), M.IBV_QP_STATE)
        assert info.value.errno == errno.EINVAL
        assert qp.qp_state == S.IBV_QPS_RESET
    with pytest.raises(v.TcpverbsError, match="requires attribute mask"):
        qp.modify(v.QPAttr(qp_state=S.IBV_QPS_INIT), M.IBV_QP_STATE)
    with pytest.raises(v.TcpverbsError, match="cur_qp_state"):
        qp.modify(
            v.QPAttr(qp_state=S.IBV_QPS_INIT, cur_qp_state=S.IBV_QPS_RTS),
            M.IBV_QP_STATE | M.IBV_QP_CUR_STATE,
        )
    with pytest.raises(v.TcpverbsError, match="port_num"):
        qp.to_init(v.QPAttr(port_num=2))
    assert qp.qp_state == S.IBV_QPS_RESET
    qp.to_init(v.QPAttr())
    assert qp.qp_state == S.IBV_QPS_INIT
    with pytest.raises(v.TcpverbsError, match="rnr_retry"):
        qp.modify(v.QPAttr(qp_state=S.IBV_QPS_INIT, rnr_retry=9), M.IBV_QP_RNR_RETRY)
    with pytest.raises(v.TcpverbsError) as info:
        qp.modify(v.QPAttr(), 1 << 30)
    assert info.value.errno == errno.EINVAL


def test_rtr_needs_a_connected_tcp_socket(qp: v.QP) -> None:
    qp.to_init(v.QPAttr())
    with pytest.raises(v.TcpverbsError, match=r"QPAttr\.sock") as info:
        qp.to_rtr(v.QPAttr())
    assert info.value.errno == errno.EINVAL
    unconnected = socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with unconnected, udp:
        for bad in (unconnected, udp, "not a socket"):
            with pytest.raises(v.TcpverbsError) as info:
                qp.to_rtr(v.QPAttr(sock=bad))  # type: ignore[arg-type]
            assert info.value.errno == errno.EINVAL
            assert qp.qp_state == S.IBV_QPS_INIT
        assert unconnected.fileno() >= 0  # a refused socket stays the caller's


def test_handoff_takes_ownership_of_socket_objects_and_fds(ctx: v.Context) -> None:
    cq = v.CQ(ctx, 8)
    pd = v.PD(ctx)
    a, b = tcp_socket_pair()
    qa = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq), v.QPAttr())
    qb = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq), v.QPAttr())
    attr = v.QPAttr(sock=a)
    qa.to_rtr(attr)
    assert a.fileno() == -1 and attr.sock is None  # detached: the library owns it
    fd = b.detach()
    qb.to_rtr(v.QPAttr(sock=fd))
    assert qa.qp_state == qb.qp_state == S.IBV_QPS_RTR


def test_posting_in_reset_and_before_rts(ctx: v.Context, qp: v.QP) -> None:
    mr = v.MR(v.PD(ctx), 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
    sge = [v.SGE(mr.buf, 8, mr.lkey)]
    with pytest.raises(v.PostError) as info:
        qp.post_recv(v.RecvWR(1, 1, sge))
    assert info.value.errno == errno.EINVAL and info.value.bad_wr_index == 0
    with pytest.raises(v.PostError) as info:
        qp.post_send(v.SendWR(1, num_sge=1, sg=sge))
    assert info.value.errno == errno.EINVAL
    qp.to_init(v.QPAttr())
    with pytest.raises(v.PostError, match="IBV_QPS_INIT"):
        qp.post_send(v.SendWR(1, num_sge=1, sg=sge))


def test_query_reflects_state_and_feeds_back(qp: v.QP) -> None:
    qp.to_init(v.QPAttr(qp_access_flags=v.ibv_access_flags.IBV_ACCESS_REMOTE_WRITE))
    attr, init = qp.query(M.IBV_QP_STATE)
    assert attr.qp_state == S.IBV_QPS_INIT
    assert attr.qp_access_flags == v.ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    assert attr.cap.max_send_wr == 4 and init.cap.max_inline_data == 16
    attr.qp_state = S.IBV_QPS_INIT
    qp.modify(attr, M.IBV_QP_STATE | M.IBV_QP_ACCESS_FLAGS)


def test_err_and_reset_cycle(ctx: v.Context, qp: v.QP) -> None:
    mr = v.MR(v.PD(ctx), 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
    qp.to_init(v.QPAttr())
    qp.modify(v.QPAttr(qp_state=S.IBV_QPS_ERR), M.IBV_QP_STATE)
    assert qp.qp_state == S.IBV_QPS_ERR and qp.error is not None
    event = ctx.get_async_event(timeout=1)
    assert event.event_type == v.ibv_event_type.IBV_EVENT_QP_FATAL and event.element is qp
    with pytest.raises(v.TcpverbsError):
        qp.to_rts(v.QPAttr())  # ERR -> RTS is not a transition
    qp.modify(v.QPAttr(qp_state=S.IBV_QPS_RESET), M.IBV_QP_STATE)
    assert qp.qp_state == S.IBV_QPS_RESET and qp.error is None
    qp.to_init(v.QPAttr())
    qp.post_recv(v.RecvWR(7, 1, [v.SGE(mr.buf, 8, mr.lkey)]))
