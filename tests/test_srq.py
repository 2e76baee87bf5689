"""Shared receive queues (issue #11): through the public API, on every engine.

Receivers are QPs of one SRQ; senders are plain QPs connected to them one to one."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import tcpverbs as v
from tcpverbs.enums import ibv_srq_init_attr_mask, ibv_srq_type
from tcpverbs.errors import TcpverbsError
from tcpverbs.testing import ALL_ACCESS, connect, poll_until

E = v.ibv_event_type
W = v.ibv_wc_status
S = v.ibv_qp_state
SRQ_MAX_WR = v.ibv_srq_attr_mask.IBV_SRQ_MAX_WR
SRQ_LIMIT = v.ibv_srq_attr_mask.IBV_SRQ_LIMIT
LOCAL = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
SIZE = 16


@dataclass
class Setup:
    ctx: v.Context
    pd: v.PD
    srq: v.SRQ
    rcq: v.CQ  # the receivers' completions
    scq: v.CQ  # the senders'
    receivers: list[v.QP]
    senders: list[v.QP]
    inbox: v.MR  # SIZE-byte buffers for the SRQ's WRs, one after the other
    outbox: v.MR

    def post(self, *indexes: int) -> None:
        """One SRQ WR per index, into inbox buffer *index* (wr_id = index)."""
        for i in indexes:
            sge = v.SGE(self.inbox.buf + SIZE * i, SIZE, self.inbox.lkey)
            self.srq.post_recv(v.RecvWR(i, 1, [sge]))

    def send(self, sender: int, data: bytes, wr_id: int = 100) -> None:
        self.outbox.write(data.ljust(SIZE), SIZE)
        sge = v.SGE(self.outbox.buf, SIZE, self.outbox.lkey)
        self.senders[sender].post_send(v.SendWR(wr_id, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [sge]))

    def slot(self, i: int) -> bytes:
        return self.inbox.read(SIZE, SIZE * i).rstrip(b" ")


def make_qp(pd: v.PD, cq: v.CQ, srq: v.SRQ | None) -> v.QP:
    # with an SRQ the receive caps are not used: 0 is fine, as ibv_srq_pingpong passes
    cap = v.QPCap(16, 0, 2, 0) if srq is not None else v.QPCap(16, 16, 2, 2)
    init = v.QPInitAttr(scq=cq, rcq=cq, srq=srq, cap=cap)
    return v.QP(pd, init, v.QPAttr(qp_access_flags=ALL_ACCESS))


@pytest.fixture
def setup(ctx: v.Context) -> Iterator[Setup]:
    pd = v.PD(ctx)
    srq = v.SRQ(pd, v.SrqInitAttr(v.SrqAttr(max_wr=16, max_sge=2)))
    rcq, scq = v.CQ(ctx, 64), v.CQ(ctx, 64)
    receivers = [make_qp(pd, rcq, srq) for _ in range(2)]
    senders = [make_qp(pd, scq, None) for _ in range(2)]
    for receiver, sender in zip(receivers, senders, strict=True):
        connect(receiver, sender)
    yield Setup(
        ctx,
        pd,
        srq,
        rcq,
        scq,
        receivers,
        senders,
        v.MR(pd, SIZE * 16, LOCAL),
        v.MR(pd, SIZE, LOCAL),
    )


def test_messages_to_any_qp_land_in_the_srq_s_wrs_in_order(setup: Setup) -> None:
    setup.post(0, 1, 2, 3)
    for i in range(4):
        setup.send(i % 2, f"to QP {i % 2}, #{i}".encode())
        assert poll_until(setup.scq)[0].status == W.IBV_WC_SUCCESS
        wc = poll_until(setup.rcq)[0]
        assert (wc.wr_id, wc.status, wc.byte_len) == (i, W.IBV_WC_SUCCESS, SIZE)
        assert wc.qp_num == setup.receivers[i % 2].qp_num  # the QP that took it
        assert setup.slot(i) == f"to QP {i % 2}, #{i}".encode()
    assert setup.srq.query().max_wr == 16


def test_the_armed_limit_fires_once_when_fewer_wrs_are_left(setup: Setup) -> None:
    setup.post(*range(10))
    setup.srq.modify(v.SrqAttr(srq_limit=7), SRQ_LIMIT)
    assert setup.srq.query().srq_limit == 7
    for _ in range(3):  # 9, 8, 7 left: not below the limit yet
        setup.send(0, b"x")
        poll_until(setup.rcq)
    with pytest.raises(TcpverbsError) as quiet:
        setup.ctx.get_async_event(timeout=0.2)
    assert quiet.value.errno == errno.ETIMEDOUT
    setup.send(1, b"y")  # 6 left
    poll_until(setup.rcq)
    event = setup.ctx.get_async_event(timeout=10)
    assert event.event_type == E.IBV_EVENT_SRQ_LIMIT_REACHED and event.element is setup.srq
    assert setup.srq.query().srq_limit == 0  # disarmed
    setup.send(0, b"z")
    poll_until(setup.rcq)
    with pytest.raises(TcpverbsError):
        setup.ctx.get_async_event(timeout=0.2)


def test_a_message_before_any_wr_waits_for_one_rnr(setup: Setup) -> None:
    setup.send(0, b"early")  # RNR NAKed, sent again after the RNR timer
    with pytest.raises(TcpverbsError):
        poll_until(setup.rcq, timeout=0.1)
    setup.post(5)
    assert poll_until(setup.rcq)[0].wr_id == 5 and setup.slot(5) == b"early"


def test_resizing_grows_it_and_never_below_what_it_holds(setup: Setup) -> None:
    setup.post(*range(4))
    setup.srq.modify(v.SrqAttr(max_wr=32, max_sge=4), SRQ_MAX_WR)
    assert (setup.srq.query().max_wr, setup.srq.query().max_sge) == (32, 4)
    # a 4-SGE WR now fits, and the WRs posted before the resize are still there, first
    four = [v.SGE(setup.inbox.buf + SIZE * 8 + 4 * k, 4, setup.inbox.lkey) for k in range(4)]
    setup.srq.post_recv(v.RecvWR(8, 4, four))
    for i in (0, 1, 2, 3, 8):
        setup.send(0, f"message {i}".encode())
        assert poll_until(setup.rcq)[0].wr_id == i
    assert setup.slot(8) == b"message 8"  # scattered over the four SGEs
    setup.post(*range(3))
    for attr, err in (
        (v.SrqAttr(max_wr=2, max_sge=4), errno.EINVAL),  # below the 3 WRs it holds
        (v.SrqAttr(max_wr=0, max_sge=4), errno.EINVAL),
    ):
        with pytest.raises(TcpverbsError) as info:
            setup.srq.modify(attr, SRQ_MAX_WR)
        assert info.value.errno == err
    with pytest.raises(TcpverbsError) as limit:
        setup.srq.modify(v.SrqAttr(srq_limit=33), SRQ_LIMIT)
    assert limit.value.errno == errno.EINVAL
    setup.srq.modify(v.SrqAttr(max_wr=40), SRQ_MAX_WR)  # SrqAttr's max_sge=1: no change
    assert (setup.srq.query().max_wr, setup.srq.query().max_sge) == (40, 4)


def test_a_full_srq_refuses_with_enomem_and_bad_wrs_name_themselves(setup: Setup) -> None:
    setup.post(*range(16))
    with pytest.raises(v.PostError) as full:
        setup.post(0)
    assert full.value.errno == errno.ENOMEM and "SRQ" in str(full.value)
    setup.srq.modify(v.SrqAttr(max_wr=17, max_sge=2), SRQ_MAX_WR)
    three = [v.SGE(setup.inbox.buf, 1, setup.inbox.lkey)] * 3
    with pytest.raises(v.PostError) as sges:
        setup.srq.post_recv(v.RecvWR(1, 3, three))
    assert sges.value.errno == errno.EINVAL and "max SGE 2" in str(sges.value)
    with pytest.raises(v.PostError) as field:
        setup.srq.post_recv(v.RecvWR(-1, 1, three[:1]))
    assert field.value.errno == errno.EINVAL


def test_a_qp_of_an_srq_takes_no_receives_of_its_own(setup: Setup) -> None:
    sge = v.SGE(setup.inbox.buf, SIZE, setup.inbox.lkey)
    with pytest.raises(TcpverbsError) as info:
        setup.receivers[0].post_recv(v.RecvWR(1, 1, [sge]))
    assert info.value.errno == errno.EINVAL and "SRQ" in str(info.value)


def test_a_failed_qp_flushes_the_wr_it_took_and_leaves_the_rest(setup: Setup) -> None:
    """A WR a QP took is that QP's; the others stay for the other QPs."""
    setup.post(0, 1)
    big = v.MR(setup.pd, SIZE * 2, LOCAL)  # too big for a 16-byte receive
    setup.senders[0].post_send(
        v.SendWR(7, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(big.buf, SIZE * 2, big.lkey)])
    )
    wc = poll_until(setup.rcq)[0]
    assert (wc.wr_id, wc.status) == (0, W.IBV_WC_LOC_LEN_ERR)
    # the receiver's QP_FATAL and LAST_WQE_REACHED, and the sender's QP_FATAL, any order
    events = [setup.ctx.get_async_event(timeout=10) for _ in range(3)]
    last = [e.element for e in events if e.event_type == E.IBV_EVENT_QP_LAST_WQE_REACHED]
    assert last == [setup.receivers[0]]
    assert setup.receivers[0].qp_state == S.IBV_QPS_ERR
    setup.send(1, b"still served")
    wc = poll_until(setup.rcq)[0]
    assert (wc.wr_id, wc.status) == (1, W.IBV_WC_SUCCESS) and setup.slot(1) == b"still served"


@pytest.mark.parametrize("change", ["dereg", "rereg_pd", "rereg_access"])
def test_an_mr_changed_under_the_srq_s_wrs(setup: Setup, change: str) -> None:
    """Deregistered or moved away: the WR fails when taken (LOC_PROT_ERR; the sender's
    SEND gets REM_OP_ERR); still covered: the payload lands."""
    mine = v.MR(setup.pd, SIZE, LOCAL)
    setup.srq.post_recv(v.RecvWR(3, 1, [v.SGE(mine.buf, SIZE, mine.lkey)]))
    rr = v.enums.ibv_rereg_mr_flags
    if change == "dereg":
        mine.close()
    elif change == "rereg_pd":
        mine.rereg(rr.IBV_REREG_MR_CHANGE_PD, pd=v.PD(setup.ctx))
    else:
        mine.rereg(rr.IBV_REREG_MR_CHANGE_ACCESS, access=LOCAL | ALL_ACCESS)
    setup.send(0, b"after the change")
    sender_wc, receiver_wc = poll_until(setup.scq)[0], poll_until(setup.rcq)[0]
    assert receiver_wc.wr_id == 3
    if change == "rereg_access":
        assert (sender_wc.status, receiver_wc.status) == (W.IBV_WC_SUCCESS, W.IBV_WC_SUCCESS)
        assert mine.read(SIZE, 0) == b"after the change"
    else:
        assert sender_wc.status == W.IBV_WC_REM_OP_ERR
        assert receiver_wc.status == W.IBV_WC_LOC_PROT_ERR


def test_closing_the_srq_closes_its_qps_and_drops_its_wrs(setup: Setup) -> None:
    setup.post(0, 1)
    setup.srq.close()
    assert all(qp.closed for qp in setup.receivers) and not setup.senders[0].closed
    with pytest.raises(v.ClosedResourceError):
        setup.post(2)
    assert setup.rcq.poll(4) == (0, [])  # dropped without completions, as verbs does


def test_what_an_srq_cannot_be(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    other = v.Context(name="tcpv_lo", engine=ctx.engine)
    srq = v.SRQ(pd, v.SrqInitAttr())
    cq = v.CQ(ctx, 4)
    stream = v.QPInitAttr(scq=cq, rcq=cq, srq=srq, wire="stream")
    xrc = v.SrqInitAttrEx()
    xrc.srq_type = ibv_srq_type.IBV_SRQT_XRC
    no_pd = v.SrqInitAttrEx()
    with_pd = v.SrqInitAttrEx(max_wr=4)
    with_pd.pd, with_pd.comp_mask = pd, ibv_srq_init_attr_mask.IBV_SRQ_INIT_ATTR_PD
    for make, err in (
        (lambda: v.QP(pd, stream), errno.EOPNOTSUPP),
        (lambda: v.QP(v.PD(ctx), v.QPInitAttr(scq=cq, rcq=cq, srq=srq)), errno.EINVAL),
        (
            lambda: v.QP(
                v.PD(other), v.QPInitAttr(scq=v.CQ(other, 4), rcq=v.CQ(other, 4), srq=srq)
            ),
            errno.EINVAL,
        ),
        (lambda: v.SRQ(pd, v.SrqInitAttr(v.SrqAttr(max_wr=0))), errno.EINVAL),
        (lambda: v.SRQ(pd, v.SrqInitAttr(v.SrqAttr(max_sge=33))), errno.EINVAL),
        (lambda: v.SRQ(pd, object()), errno.EINVAL),  # type: ignore[arg-type]
        (lambda: v.SRQ(ctx, xrc), errno.EOPNOTSUPP),
        (lambda: v.SRQ(ctx, no_pd), errno.EINVAL),
        (lambda: v.SRQ(ctx, v.SrqInitAttr()), errno.EINVAL),
        (srq.get_srq_num, errno.EOPNOTSUPP),
        (lambda: srq.modify(v.SrqAttr(), 0), errno.EINVAL),
    ):
        with pytest.raises(TcpverbsError) as info:
            make()
        assert info.value.errno == err
    made = v.SRQ(ctx, with_pd)  # ibv_create_srq_ex, basic
    assert made.query().max_wr == 4 and made.pd is pd
    other.close()


def test_the_device_says_it_has_srqs(ctx: v.Context) -> None:
    attr = ctx.query_device()
    assert attr.max_srq > 0 and attr.max_srq_wr >= 16 and attr.max_srq_sge >= 2
    assert attr.device_cap_flags & v.enums.ibv_device_cap_flags.IBV_DEVICE_SRQ_RESIZE


def test_a_qp_the_application_moves_to_err_says_last_wqe_reached(setup: Setup) -> None:
    setup.post(0)
    qp = setup.receivers[1]
    qp.modify(v.QPAttr(qp_state=S.IBV_QPS_ERR), v.ibv_qp_attr_mask.IBV_QP_STATE)
    events = []
    for _ in range(4):  # its own, and the sender's when its peer goes (any order)
        try:
            events.append(setup.ctx.get_async_event(timeout=2))
        except TcpverbsError:
            break
    last = [e.element for e in events if e.event_type == E.IBV_EVENT_QP_LAST_WQE_REACHED]
    assert last == [qp]
    setup.send(0, b"the other QP")  # the SRQ's WR is still there for the other one
    assert poll_until(setup.rcq)[0].wr_id == 0


def test_a_limit_armed_below_the_count_fires_at_the_next_take(setup: Setup) -> None:
    setup.post(0, 1)
    setup.srq.modify(v.SrqAttr(srq_limit=5), SRQ_LIMIT)
    setup.send(0, b"take one")
    poll_until(setup.rcq)
    event = setup.ctx.get_async_event(timeout=10)
    assert event.event_type == E.IBV_EVENT_SRQ_LIMIT_REACHED and event.element is setup.srq


def test_threads_posting_to_one_srq_while_both_qps_take(setup: Setup) -> None:
    """Posts from two threads and takes by two QPs meet in one SRQ: every message lands
    in a WR of its own, none twice."""
    import threading

    rounds = 8
    big = v.MR(setup.pd, SIZE * 2 * rounds, LOCAL)

    def poster(base: int) -> None:
        for i in range(rounds):
            slot = base + i
            sge = v.SGE(big.buf + SIZE * slot, SIZE, big.lkey)
            setup.srq.post_recv(v.RecvWR(slot, 1, [sge]))

    threads = [threading.Thread(target=poster, args=(base,)) for base in (0, rounds)]
    for thread in threads:
        thread.start()
    for i in range(2 * rounds):
        setup.send(i % 2, f"m{i}".encode(), wr_id=i)
        poll_until(setup.scq)
    for thread in threads:
        thread.join()
    wcs = poll_until(setup.rcq, 2 * rounds)
    assert sorted(wc.wr_id for wc in wcs) == list(range(2 * rounds))
    assert all(wc.status == W.IBV_WC_SUCCESS for wc in wcs)
    landed = {big.read(SIZE, SIZE * wc.wr_id).rstrip(b" ") for wc in wcs}
    assert landed == {f"m{i}".encode() for i in range(2 * rounds)}
