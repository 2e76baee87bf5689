"""The verbs object tree: PD, MR, CQ, CompChannel life cycles and argument checks."""

from __future__ import annotations

import errno
import itertools
import mmap
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

import tcpverbs as v

A = v.ibv_access_flags


def test_context_closes_children_first_and_close_is_idempotent() -> None:
    ctx = v.Context(name=b"tcpv_lo")
    pd = v.PD(ctx)
    mr = v.MR(pd, 4096, A.IBV_ACCESS_LOCAL_WRITE)
    cq = v.CQ(ctx, 16)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq))
    ctx.close()
    assert all(o.closed for o in (ctx, pd, mr, cq, qp))
    ctx.close()
    with pytest.raises(v.ClosedResourceError) as info:
        v.PD(ctx)
    assert info.value.errno == errno.EBADF


def test_closing_a_cq_closes_the_qps_using_it(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 16)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq))
    cq.close()
    assert qp.closed and not pd.closed


def test_context_managers(ctx: v.Context) -> None:
    with v.PD(ctx) as pd, v.MR(pd, 64, 0) as mr:
        assert not mr.closed
    assert pd.closed and mr.closed


def test_unknown_device() -> None:
    with pytest.raises(v.TcpverbsError) as info:
        v.Context(name="tcpv_nonexistent0")
    assert info.value.errno == errno.ENODEV


def test_allocated_mr_is_zeroed_page_aligned_and_readable(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    mr = v.MR(pd, 10000, A.IBV_ACCESS_LOCAL_WRITE | A.IBV_ACCESS_REMOTE_WRITE)
    assert mr.buf % mmap.PAGESIZE == 0
    assert mr.read(10000, 0) == bytes(10000)
    mr.write(b"hello world", 5, 100)
    assert mr.read(7, 99) == b"\0hello\0"
    with pytest.raises(v.TcpverbsError) as info:
        mr.read(10, 9995)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("kind", ["bytearray", "mmap", "numpy", "memoryview"])
def test_caller_buffers_are_registered_without_copying(ctx: v.Context, kind: str) -> None:
    pd = v.PD(ctx)
    storage: object
    if kind == "bytearray":
        storage = bytearray(256)
    elif kind == "mmap":
        storage = mmap.mmap(-1, 256)
    elif kind == "numpy":
        storage = np.zeros(64, dtype=np.uint32)
    else:
        storage = memoryview(bytearray(256))
    mr = v.MR(pd, 256, A.IBV_ACCESS_LOCAL_WRITE, address=storage)  # type: ignore[arg-type]
    mr.write(b"\x01\x02\x03\x04", 4, 0)
    assert bytes(memoryview(storage).cast("B")[:4]) == b"\x01\x02\x03\x04"  # type: ignore[arg-type]
    memoryview(storage).cast("B")[8] = 9  # type: ignore[arg-type]
    assert mr.read(1, 8) == b"\x09"
    mr.close()


def test_registered_bytearray_cannot_be_resized(ctx: v.Context) -> None:
    buf = bytearray(128)
    mr = v.MR(v.PD(ctx), 128, A.IBV_ACCESS_LOCAL_WRITE, address=buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    mr.close()
    buf.extend(b"x")  # released on deregistration


@pytest.mark.parametrize(
    ("length", "access", "address", "err"),
    [
        (64, A.IBV_ACCESS_REMOTE_WRITE, None, errno.EINVAL),
        (64, A.IBV_ACCESS_REMOTE_ATOMIC, None, errno.EINVAL),
        (64, 1 << 15, None, errno.EINVAL),
        (0, A.IBV_ACCESS_LOCAL_WRITE, None, errno.EINVAL),
        (-1, A.IBV_ACCESS_LOCAL_WRITE, None, errno.EINVAL),
        (64, A.IBV_ACCESS_LOCAL_WRITE, b"read-only bytes" * 10, errno.EACCES),
        (65, A.IBV_ACCESS_LOCAL_WRITE, bytearray(64), errno.EINVAL),
        (4, A.IBV_ACCESS_LOCAL_WRITE, 12345, errno.EFAULT),  # a raw address, not mapped
    ],
)
def test_bad_mr_arguments(
    ctx: v.Context, length: int, access: int, address: object, err: int
) -> None:
    with pytest.raises(v.TcpverbsError) as info:
        v.MR(v.PD(ctx), length, access, address=address)  # type: ignore[arg-type]
    assert info.value.errno == err


def test_keys_are_unpredictable_and_unique(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    keys = [v.MR(pd, 64, 0).lkey for _ in range(64)]
    assert len(set(keys)) == 64 and 0 not in keys
    steps = {b - a for a, b in itertools.pairwise(keys)}
    assert len(steps) > 32  # not a counter


def test_cq_arguments(ctx: v.Context) -> None:
    for cqe in (0, -1, 1 << 30):
        with pytest.raises(v.TcpverbsError) as info:
            v.CQ(ctx, cqe)
        assert info.value.errno == errno.EINVAL
    cq = v.CQ(ctx, 8)
    assert cq.poll(4) == (0, [])
    with pytest.raises(v.TcpverbsError):
        cq.poll(0)
    with pytest.raises(v.TcpverbsError) as info:
        cq.req_notify()  # no channel
    assert info.value.errno == errno.EINVAL


def test_comp_channel_times_out_cleanly(ctx: v.Context) -> None:
    ch = v.CompChannel(ctx)
    cq = v.CQ(ctx, 8, channel=ch)
    cq.req_notify()
    with pytest.raises(v.TcpverbsError) as info:
        ch.get_cq_event(cq, timeout=0.05)
    assert info.value.errno == errno.ETIMEDOUT
    with pytest.raises(v.TcpverbsError):
        cq.ack_events(1)  # nothing to acknowledge
    ch.close()
    assert cq.closed


def test_device_queries(ctx: v.Context) -> None:
    attr = ctx.query_device()
    assert attr.node_guid and attr.vendor_id and attr.phys_port_cnt == 1
    assert attr.max_qp_wr > 0 and attr.max_sge > 0
    port = ctx.query_port(1)
    assert port.state == v.ibv_port_state.IBV_PORT_ACTIVE
    assert port.link_layer == v.ibv_link_layer.IBV_LINK_LAYER_ETHERNET
    assert str(ctx.query_gid(1, 0)).endswith("ffff:7f00:0001")
    with pytest.raises(v.TcpverbsError) as info:
        ctx.query_port(2)
    assert info.value.errno == errno.EINVAL


def test_mr_access_is_fixed_at_registration() -> None:
    """What post-time checks use cannot drift from what ``mr.access`` says."""
    with v.Context(name="tcpv_lo") as ctx:
        mr = v.MR(v.PD(ctx), 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        assert mr.access == v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
        with pytest.raises(AttributeError):
            mr.access = v.ibv_access_flags(0)  # type: ignore[misc]


def _closing_wakes(wait: Callable[[], object], close: Callable[[], object]) -> BaseException:
    """Run *wait* (a call that blocks without a timeout) in a thread, *close* its object,
    and return what the waiter raised: it must not stay blocked."""
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            wait()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(0.2)  # let it block
    close()
    thread.join(5)
    assert not thread.is_alive(), "the blocked call outlived its object"
    assert raised, "the blocked call returned instead of raising"
    return raised[0]


def test_closing_a_channel_ends_a_get_cq_event_without_timeout(ctx: v.Context) -> None:
    channel = v.CompChannel(ctx)
    cq = v.CQ(ctx, 4, channel=channel)
    cq.req_notify()
    exc = _closing_wakes(channel.get_cq_event, channel.close)
    assert isinstance(exc, v.ClosedResourceError) and exc.errno == errno.EBADF


def test_closing_a_context_ends_a_get_async_event_without_timeout(engine: str) -> None:
    ctx = v.Context(name="tcpv_lo", engine=engine)
    exc = _closing_wakes(ctx.get_async_event, ctx.close)
    assert isinstance(exc, v.ClosedResourceError) and exc.errno == errno.EBADF


def test_closing_a_context_wakes_every_thread_in_get_async_event(engine: str) -> None:
    ctx = v.Context(name="tcpv_lo", engine=engine)
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            ctx.get_async_event()
        except BaseException as exc:
            raised.append(exc)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    ctx.close()
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads), "a waiter outlived the context"
    assert len(raised) == 3 and all(isinstance(e, v.ClosedResourceError) for e in raised)


def test_an_event_of_a_cq_closed_meanwhile_still_names_it(ctx: v.Context) -> None:
    """An event read after its CQ was closed still comes out with that (closed) CQ."""
    import select

    from tcpverbs.testing import ALL_ACCESS, connect, make_endpoint

    channel = v.CompChannel(ctx)
    cq = v.CQ(ctx, 8, channel=channel)
    pd = v.PD(ctx)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1, 0)), v.QPAttr())
    other = make_endpoint(ctx)
    connect(qp, other.qp)
    mine, theirs = v.MR(pd, 8, A.IBV_ACCESS_LOCAL_WRITE), v.MR(other.pd, 8, ALL_ACCESS)
    other.qp.post_recv(v.RecvWR(1, 1, [v.SGE(theirs.buf, 8, theirs.lkey)]))
    cq.req_notify()
    qp.post_send(v.SendWR(2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mine.buf, 8, mine.lkey)]))
    assert select.select([channel.fd], [], [], 5)[0], "no completion event"
    cq.close()  # (and the QP that uses it)
    assert channel.get_cq_event(timeout=1) is cq
