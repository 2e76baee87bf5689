"""Every argument is checked at the API: a wrong type or range is ``EINVAL`` naming the
field, never a ``TypeError`` from deep inside, never a value silently truncated or
stored as it is (docs/semantics.md, "Errors")."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

import tcpverbs as v
from tcpverbs.testing import Endpoint, poll_until, qp_pair

OP = v.ibv_wr_opcode
LOCAL = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


@pytest.fixture
def pair(ctx: v.Context) -> tuple[Endpoint, Endpoint, v.MR]:
    a, b = qp_pair(ctx)
    return a, b, v.MR(a.pd, 64, LOCAL)


def good_sge(mr: v.MR) -> v.SGE:
    return v.SGE(mr.buf, 8, mr.lkey)


# (what is wrong, the WR built from the MR, the field the error must name)
BAD_SENDS: list[tuple[str, Callable[[v.MR], Any], str]] = [
    (
        "float length",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(m.buf, 1.5, m.lkey)]),
        "sg_list[0].length",
    ),
    (
        "None length",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(m.buf, None, m.lkey)]),
        "sg_list[0].length",
    ),
    (
        "length over 32 bits",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(m.buf, 2**32, m.lkey)]),
        "sg_list[0].length",
    ),
    (
        "negative addr",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(-8, 8, m.lkey)]),
        "sg_list[0].addr",
    ),
    (
        "str lkey",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(m.buf, 8, "k")]),
        "sg_list[0].lkey",
    ),
    (
        "tuple as SGE",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [(m.buf, 8, m.lkey)]),
        "sg_list[0]",
    ),
    (
        "second SGE bad",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 2, 0, [good_sge(m), v.SGE(m.buf, 8.0, m.lkey)]),
        "sg_list[1].length",
    ),
    ("sg not a list", lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, 5), "sg_list"),
    ("str wr_id", lambda m: v.SendWR("one", OP.IBV_WR_SEND, 1, 0, [good_sge(m)]), "wr_id"),
    ("wr_id of 2^64", lambda m: v.SendWR(2**64, OP.IBV_WR_SEND, 1, 0, [good_sge(m)]), "wr_id"),
    ("negative wr_id", lambda m: v.SendWR(-1, OP.IBV_WR_SEND, 1, 0, [good_sge(m)]), "wr_id"),
    (
        "imm over 32 bits",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND_WITH_IMM, 1, 2**32, [good_sge(m)]),
        "imm_data",
    ),
    ("float opcode", lambda m: v.SendWR(1, 0.0, 1, 0, [good_sge(m)]), "opcode"),
    (
        "None send_flags",
        lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [good_sge(m)], send_flags=None),
        "send_flags",
    ),
    ("float num_sge", lambda m: v.SendWR(1, OP.IBV_WR_SEND, 1.0, 0, [good_sge(m)]), "num_sge"),
    (
        "rkey over 32 bits",
        lambda m: v.SendWR(1, OP.IBV_WR_RDMA_WRITE, 1, 0, [good_sge(m)], rkey=2**32),
        "rkey",
    ),
    (
        "remote_addr float",
        lambda m: v.SendWR(1, OP.IBV_WR_RDMA_WRITE, 1, 0, [good_sge(m)], remote_addr=1.0),
        "remote_addr",
    ),
    (
        "swap over 64 bits",
        lambda m: v.SendWR(1, OP.IBV_WR_ATOMIC_CMP_AND_SWP, 1, 0, [good_sge(m)], swap=2**64),
        "swap",
    ),
]


@pytest.mark.parametrize(("what", "make", "field"), BAD_SENDS, ids=[c[0] for c in BAD_SENDS])
def test_a_bad_send_wr_is_refused_naming_the_field(
    pair: tuple[Endpoint, Endpoint, v.MR], what: str, make: Callable[[v.MR], Any], field: str
) -> None:
    a, b, mr = pair
    before = a.qp.statistics()["sq_outstanding"]
    with pytest.raises(v.PostError) as err:
        a.qp.post_send(make(mr))
    assert err.value.errno == errno.EINVAL and err.value.bad_wr_index == 0
    words = str(err.value).split("]", 1)[1].lstrip()
    assert words.removeprefix("Failed to post send: ").startswith(f"{field} must be")
    assert a.qp.statistics()["sq_outstanding"] == before  # nothing of it was posted
    # and the QP is unharmed
    b.qp.post_recv(v.RecvWR(5, 1, [good_sge(v.MR(b.pd, 8, LOCAL))]))
    a.qp.post_send(v.SendWR(2, OP.IBV_WR_SEND, 1, 0, [good_sge(mr)]))
    assert poll_until(a.scq)[0].status == v.ibv_wc_status.IBV_WC_SUCCESS


def test_the_wrs_before_a_bad_one_are_posted(pair: tuple[Endpoint, Endpoint, v.MR]) -> None:
    a, b, mr = pair
    b.qp.post_recv(v.RecvWR(5, 1, [good_sge(v.MR(b.pd, 8, LOCAL))]))
    bad = v.SendWR(2**70, OP.IBV_WR_SEND, 1, 0, [good_sge(mr)])
    with pytest.raises(v.PostError) as err:
        a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [good_sge(mr)], next_wr=bad))
    assert err.value.bad_wr_index == 1 and err.value.bad_wr is bad and "wr_id" in str(err.value)
    assert [wc.wr_id for wc in poll_until(a.scq)] == [1]


def test_post_send_takes_a_send_wr(pair: tuple[Endpoint, Endpoint, v.MR]) -> None:
    a, _, _ = pair
    with pytest.raises(v.PostError, match="post_send takes a SendWR, got dict") as err:
        a.qp.post_send({"wr_id": 1})  # type: ignore[arg-type]
    assert err.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda m: v.RecvWR("r", 1, [good_sge(m)]), "wr_id"),
        (lambda m: v.RecvWR(2**64, 1, [good_sge(m)]), "wr_id"),
        (lambda m: v.RecvWR(1, 1, [v.SGE(m.buf, 8.0, m.lkey)]), "sg_list[0].length"),
        (lambda m: v.RecvWR(1, 1, [v.SGE(m.buf, 8, -1)]), "sg_list[0].lkey"),
        (lambda m: v.RecvWR(1, 1, [[m.buf, 8, m.lkey]]), "sg_list[0]"),
    ],
    ids=["str wr_id", "wr_id of 2^64", "float length", "negative lkey", "list as SGE"],
)
def test_a_bad_recv_wr_is_refused_naming_the_field(
    pair: tuple[Endpoint, Endpoint, v.MR], make: Callable[[v.MR], Any], field: str
) -> None:
    a, _, mr = pair
    with pytest.raises(v.PostError) as err:
        a.qp.post_recv(make(mr))
    assert err.value.errno == errno.EINVAL and f"{field} must be" in str(err.value)
    assert a.qp.statistics()["rq_outstanding"] == 0


@pytest.mark.parametrize("bad", ["1", 0, -2, 1.0, None])
def test_poll_and_wait_check_num_entries(ctx: v.Context, bad: object) -> None:
    cq = v.CQ(ctx, 4)
    for call in (lambda: cq.poll(bad), lambda: cq.wait(bad, timeout=0)):  # type: ignore[arg-type]
        with pytest.raises(v.TcpverbsError, match="num_entries") as err:
            call()
        assert err.value.errno == errno.EINVAL


@pytest.mark.parametrize("bad", ["1", -1, -0.5, float("-inf"), True, float("nan")])
def test_every_timeout_is_checked(ctx: v.Context, bad: object) -> None:
    channel = v.CompChannel(ctx)
    cq = v.CQ(ctx, 4, channel=channel)
    calls = (
        lambda: cq.wait(1, timeout=bad),  # type: ignore[arg-type]
        lambda: channel.get_cq_event(timeout=bad),  # type: ignore[arg-type]
        lambda: ctx.get_async_event(timeout=bad),  # type: ignore[arg-type]
    )
    for call in calls:
        with pytest.raises(v.TcpverbsError, match="timeout must be") as err:
            call()
        assert err.value.errno == errno.EINVAL


@pytest.mark.parametrize("timeout", [0, 0.0, 0.001, 1e-9])
def test_wait_takes_int_and_float_timeouts(ctx: v.Context, timeout: float) -> None:
    cq = v.CQ(ctx, 4)
    with pytest.raises(v.TcpverbsError, match="no completion") as err:
        cq.wait(1, timeout=timeout, spin_us=0)
    assert err.value.errno == errno.ETIMEDOUT


def test_qp_access_flags_must_be_an_int(ctx: v.Context) -> None:
    a, _ = qp_pair(ctx)  # any QP; a fresh one in RESET
    qp = v.QP(a.pd, v.QPInitAttr(scq=a.scq, rcq=a.rcq))
    with pytest.raises(v.TcpverbsError, match=r"qp_access_flags 1\.5") as err:
        qp.to_init(v.QPAttr(qp_access_flags=1.5))  # type: ignore[arg-type]
    assert err.value.errno == errno.EINVAL


def test_a_device_name_is_a_string() -> None:
    with pytest.raises(v.TcpverbsError, match="str or bytes, got int") as err:
        v.Context(name=5)  # type: ignore[arg-type]
    assert err.value.errno == errno.EINVAL
