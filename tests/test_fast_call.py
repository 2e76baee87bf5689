"""The native engine's FastCall: ``CQ.poll``, ``QP.post_send`` and ``QP.post_recv`` without
a Python frame (``tcpverbs/_native/py_fast.c``).

A FastCall does the common path in C and hands everything else to the Python method it
shadows, so these tests hold it to that method: the same call, made through the
FastCall and through the method itself (``CQ.poll(cq, ...)``), must end the same way --
the same answer, or the same exception with the same errno and words.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tcpverbs as v
from tcpverbs.cq import CQ
from tcpverbs.engine import available_engines
from tcpverbs.errors import ClosedResourceError
from tcpverbs.qp import QP
from tcpverbs.testing import Endpoint, poll_until, qp_pair

pytestmark = pytest.mark.skipif(
    "native" not in available_engines(), reason="the native extension is not built"
)
from tcpverbs import _native  # noqa: E402  (after the skip: absent without the extension)

LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


@pytest.fixture
def ends() -> Iterator[tuple[Endpoint, Endpoint]]:
    with v.Context(name="tcpv_lo", engine="native") as ctx:
        yield qp_pair(ctx, "rc", cqe=4)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call ended with, comparable between two calls."""
    try:
        return "returned", call()
    except v.TcpverbsError as exc:
        return type(exc).__name__, (exc.errno, str(exc))
    except Exception as exc:  # TypeError and the like: compared by kind
        return type(exc).__name__, None


def test_the_native_engine_binds_the_hot_calls(ends: tuple[Endpoint, Endpoint]) -> None:
    a, _ = ends
    assert isinstance(a.scq.poll, _native.FastCall)
    assert isinstance(a.qp.post_send, _native.FastCall)
    assert isinstance(a.qp.post_recv, _native.FastCall)


def test_the_python_engine_keeps_the_methods() -> None:
    with v.Context(name="tcpv_lo", engine="python") as ctx:
        a, _ = qp_pair(ctx, "rc")
        assert a.scq.poll.__func__ is CQ.poll  # type: ignore[attr-defined]
        assert a.qp.post_send.__func__ is QP.post_send  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),
        ((1,), {}),
        ((7,), {}),
        ((0,), {}),
        ((-1,), {}),
        ((2**31,), {}),
        ((2**70,), {}),
        ((1.0,), {}),
        (("1",), {}),
        ((True,), {}),
        ((None,), {}),
        ((), {"num_entries": 3}),
        ((), {"entries": 3}),
        ((1, 2), {}),
    ],
)
def test_poll_ends_as_the_method_does(
    ends: tuple[Endpoint, Endpoint], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    a, _ = ends
    fast = outcome(lambda: a.scq.poll(*args, **kwargs))
    method = outcome(lambda: CQ.poll(a.scq, *args, **kwargs))
    assert fast == method


def test_poll_returns_what_arrived_as_the_method_does(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    mr = v.MR(a.pd, 64, LOCAL_WRITE)
    rmr = v.MR(b.pd, 64, LOCAL_WRITE)
    for i in range(2):
        b.qp.post_recv(v.RecvWR(i, 1, [v.SGE(rmr.buf, 64, rmr.lkey)]))
    send = v.SendWR(9, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, 8, mr.lkey)])
    send.send_flags = v.ibv_send_flags.IBV_SEND_SIGNALED
    a.qp.post_send(send)
    a.qp.post_send(send)
    poll_until(b.rcq, 2)
    deadline = time.monotonic() + 10
    while len(a.scq) < 2:  # until both completions wait: the polls below only take them
        assert time.monotonic() < deadline, "the sends never completed"
        b.rcq.poll(1)  # (an empty poll: b's progress, which sends a held ACK)
    n, wcs = a.scq.poll(1)
    assert n == 1 and isinstance(wcs, list) and wcs[0].wr_id == 9 and wcs[0].status == 0
    n2, wcs2 = CQ.poll(a.scq, 1)
    assert n2 == 1 and wcs2[0].wr_id == 9
    assert a.scq.poll(4) == (0, [])


def test_a_closed_object_raises_as_the_method_does(ends: tuple[Endpoint, Endpoint]) -> None:
    a, _ = ends
    mr = v.MR(a.pd, 64, LOCAL_WRITE)
    wr = v.SendWR(1, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, 8, mr.lkey)])
    recv_wr = v.RecvWR(1, 1, [v.SGE(mr.buf, 8, mr.lkey)])
    poll, post_send, post_recv = a.scq.poll, a.qp.post_send, a.qp.post_recv
    a.qp.close()
    a.scq.close()
    for call in (lambda: poll(1), lambda: post_send(wr), lambda: post_recv(recv_wr)):
        with pytest.raises(ClosedResourceError):
            call()


def test_a_refused_post_raises_as_the_method_does(ends: tuple[Endpoint, Endpoint]) -> None:
    a, _ = ends
    mr = v.MR(a.pd, 64, LOCAL_WRITE)
    many = [v.SGE(mr.buf, 1, mr.lkey)] * 64  # more SGEs than the QP takes
    wr = v.SendWR(5, v.ibv_wr_opcode.IBV_WR_SEND, len(many), 0, many)
    recv_wr = v.RecvWR(6, len(many), many)
    for fast, method in (
        (a.qp.post_send, lambda w, *bad: QP.post_send(a.qp, w, *bad)),
        (a.qp.post_recv, lambda w, *bad: QP.post_recv(a.qp, w, *bad)),
    ):
        got = outcome(lambda: fast(wr if fast is a.qp.post_send else recv_wr))  # noqa: B023
        want = outcome(lambda: method(wr if fast is a.qp.post_send else recv_wr))  # noqa: B023
        assert got == want and got[0] == "PostError"
    # pyverbs' bad_wr: filled in with a copy of the refused WR, by both
    bad_fast, bad_method = v.SendWR(), v.SendWR()
    with pytest.raises(v.PostError):
        a.qp.post_send(wr, bad_fast)
    with pytest.raises(v.PostError):
        QP.post_send(a.qp, wr, bad_wr=bad_method)
    assert bad_fast.wr_id == bad_method.wr_id == 5


def test_an_overrun_raises_as_the_method_does() -> None:
    with v.Context(name="tcpv_lo", engine="native") as ctx:
        a, b = qp_pair(ctx, "rc", cqe=2)
        rmr = v.MR(a.pd, 64, LOCAL_WRITE)
        for i in range(3):
            a.qp.post_recv(v.RecvWR(i, 1, [v.SGE(rmr.buf, 8, rmr.lkey)]))
        b.qp.close()  # a's three receives are flushed into room for two
        for _ in range(2):
            ctx.get_async_event(timeout=5)
        with pytest.raises(v.TcpverbsError) as info:
            a.rcq.poll(1)
        assert "1 completions did not fit in 2" in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_an_overriding_subclass_is_not_shadowed() -> None:
    class CountingCQ(CQ):
        polls = 0

        def poll(self, num_entries: int = 1) -> tuple[int, list[v.WC]]:
            self.polls += 1
            return super().poll(num_entries)

    with v.Context(name="tcpv_lo", engine="native") as ctx:
        cq = CountingCQ(ctx, 4)
        assert cq.poll(2) == (0, [])
        assert cq.polls == 1


def test_a_qp_with_an_srq_keeps_its_post_recv() -> None:
    with v.Context(name="tcpv_lo", engine="native") as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 8)
        srq = v.SRQ(pd, v.SrqInitAttr(v.SrqAttr(max_wr=4, max_sge=1)))
        qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, srq=srq, cap=v.QPCap(4, 4, 1, 1)))
        assert qp.post_recv.__func__ is QP.post_recv  # type: ignore[attr-defined]
        mr = v.MR(pd, 8, LOCAL_WRITE)
        with pytest.raises(v.TcpverbsError, match="SRQ"):
            qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf, 8, mr.lkey)]))


def test_closed_objects_are_collected() -> None:
    with v.Context(name="tcpv_lo", engine="native") as ctx:
        cq = v.CQ(ctx, 4)
        ref = weakref.ref(cq)
        cq.close()
        del cq
        gc.collect()
        assert ref() is None


def test_bad_construction_is_refused(ends: tuple[Endpoint, Endpoint]) -> None:
    a, _ = ends
    f = a.scq._poll_wc
    with pytest.raises(TypeError):
        _native.FastCall(a.scq, 1, f, f, 0)
    with pytest.raises(ValueError, match="kind"):
        _native.FastCall(a.scq, f, f, f, 7)
    with pytest.raises(AttributeError, match="__dict__"):
        _native.FastCall(object(), f, f, f, 0)  # nowhere to see `_closed`
