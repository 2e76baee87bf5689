"""One-sided operations, atomics, RNR and fences over rc (issue #3 §1)."""

from __future__ import annotations

import errno
import sys
import threading
import time

import pytest

import tcpverbs as v
from tcpverbs.testing import (
    ALL_ACCESS,
    Endpoint,
    chain,
    make_endpoint,
    poll_until,
    qp_pair,
    tcp_socket_pair,
)

W = v.ibv_wc_status
OP = v.ibv_wr_opcode
F = v.ibv_send_flags
A = v.ibv_access_flags
LOCAL = A.IBV_ACCESS_LOCAL_WRITE


def rdma(
    wr_id: int,
    opcode: int,
    local: v.MR,
    length: int,
    remote: v.MR,
    offset: int = 0,
    flags: int = F.IBV_SEND_SIGNALED,
    imm: int = 0,
    local_offset: int = 0,
) -> v.SendWR:
    wr = v.SendWR(
        wr_id, opcode, 1, imm, [v.SGE(local.buf + local_offset, length, local.lkey)], flags
    )
    wr.set_wr_rdma(remote.rkey, remote.buf + offset)
    return wr


def atomic(
    wr_id: int, opcode: int, local: v.MR, remote: v.MR, offset: int, compare_add: int, swap: int = 0
) -> v.SendWR:
    wr = v.SendWR(wr_id, opcode, 1, 0, [v.SGE(local.buf, 8, local.lkey)])
    wr.set_wr_atomic(remote.rkey, remote.buf + offset, compare_add, swap)
    return wr


def u64(mr: v.MR, offset: int = 0) -> int:
    return int.from_bytes(mr.read(8, offset), sys.byteorder)


@pytest.fixture
def ends(ctx: v.Context) -> tuple[Endpoint, Endpoint]:
    return qp_pair(ctx, attr=v.QPAttr(max_rd_atomic=4, max_dest_rd_atomic=4, min_rnr_timer=1))


def test_write_lands_without_the_target_doing_anything(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    src = v.MR(a.pd, 1 << 20, LOCAL)
    dst = v.MR(b.pd, 1 << 20, ALL_ACCESS)
    src.write(bytes(range(256)) * 4096, 1 << 20)
    a.qp.post_send(rdma(1, OP.IBV_WR_RDMA_WRITE, src, 1 << 20, dst))
    (wc,) = poll_until(a.scq)
    assert (wc.status, wc.opcode) == (W.IBV_WC_SUCCESS, v.ibv_wc_opcode.IBV_WC_RDMA_WRITE)
    assert dst.read(1 << 20, 0) == src.read(1 << 20, 0)  # visible once the requester polled
    assert b.rcq.poll()[0] == 0 and b.scq.poll()[0] == 0  # no completion at the target


def test_write_with_imm_consumes_a_receive(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    src, dst = v.MR(a.pd, 64, LOCAL), v.MR(b.pd, 64, ALL_ACCESS)
    src.write(b"imm!", 4)
    b.qp.post_recv(v.RecvWR(9, 0, []))
    a.qp.post_send(rdma(1, OP.IBV_WR_RDMA_WRITE_WITH_IMM, src, 4, dst, offset=10, imm=0x1234))
    (rwc,) = poll_until(b.rcq)
    assert rwc.opcode == v.ibv_wc_opcode.IBV_WC_RECV_RDMA_WITH_IMM
    assert (rwc.wr_id, rwc.byte_len, rwc.imm_data) == (9, 4, 0x1234)
    assert rwc.wc_flags & v.ibv_wc_flags.IBV_WC_WITH_IMM
    assert dst.read(4, 10) == b"imm!"
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS


def test_reads_several_outstanding_and_interleaved_with_sends(
    ends: tuple[Endpoint, Endpoint],
) -> None:
    a, b = ends
    remote = v.MR(b.pd, 64 * 1024, ALL_ACCESS)
    remote.write(bytes(i % 251 for i in range(64 * 1024)), 64 * 1024)
    local = v.MR(a.pd, 64 * 1024, LOCAL)
    rbuf = v.MR(b.pd, 64, LOCAL)
    for i in range(4):
        b.qp.post_recv(v.RecvWR(100 + i, 1, [v.SGE(rbuf.buf, 64, rbuf.lkey)]))
    wrs = []
    for i in range(16):  # more READs than max_rd_atomic: the rest wait their turn
        wrs.append(
            rdma(
                i, OP.IBV_WR_RDMA_READ, local, 4096, remote, offset=i * 4096, local_offset=i * 4096
            )
        )
        if i % 4 == 3:
            wrs.append(v.SendWR(100 + i, OP.IBV_WR_SEND, 1, 0, [v.SGE(local.buf, 8, local.lkey)]))
    a.qp.post_send(chain(wrs))
    wcs = poll_until(a.scq, 20)
    assert [w.wr_id for w in wcs] == [w.wr_id for w in wrs]  # in posting order
    assert all(w.status == W.IBV_WC_SUCCESS for w in wcs)
    reads = [w for w in wcs if w.opcode == v.ibv_wc_opcode.IBV_WC_RDMA_READ]
    assert len(reads) == 16 and all(w.byte_len == 4096 for w in reads)
    assert local.read(64 * 1024, 0) == remote.read(64 * 1024, 0)
    assert len(poll_until(b.rcq, 4)) == 4


def test_atomics(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    remote = v.MR(b.pd, 64, ALL_ACCESS)
    remote.write((41).to_bytes(8, sys.byteorder), 8, 16)
    old = v.MR(a.pd, 8, LOCAL)
    a.qp.post_send(atomic(1, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, old, remote, 16, 1))
    wc = poll_until(a.scq)[0]
    assert (wc.status, wc.opcode, wc.byte_len) == (
        W.IBV_WC_SUCCESS,
        v.ibv_wc_opcode.IBV_WC_FETCH_ADD,
        8,
    )
    assert u64(old) == 41 and u64(remote, 16) == 42
    a.qp.post_send(atomic(2, OP.IBV_WR_ATOMIC_CMP_AND_SWP, old, remote, 16, 7, 99))  # no match
    assert poll_until(a.scq)[0].opcode == v.ibv_wc_opcode.IBV_WC_COMP_SWAP
    assert u64(old) == 42 and u64(remote, 16) == 42
    a.qp.post_send(atomic(3, OP.IBV_WR_ATOMIC_CMP_AND_SWP, old, remote, 16, 42, 2**64 - 1))
    poll_until(a.scq)
    assert u64(old) == 42 and u64(remote, 16) == 2**64 - 1
    a.qp.post_send(atomic(4, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, old, remote, 16, 2))  # wraps
    poll_until(a.scq)
    assert u64(remote, 16) == 1


def test_atomics_from_many_qps_do_not_lose_updates(ctx: v.Context) -> None:
    target = make_endpoint(ctx)
    counter = v.MR(target.pd, 8, ALL_ACCESS)
    workers = []
    for _ in range(3):
        mine = make_endpoint(ctx)
        theirs = v.QP(
            target.pd,
            v.QPInitAttr(scq=target.scq, rcq=target.rcq),
            v.QPAttr(qp_access_flags=ALL_ACCESS),
        )
        sa, sb = tcp_socket_pair()
        for qp, sock in ((mine.qp, sa), (theirs, sb)):
            qp.to_rtr(v.QPAttr(sock=sock, max_dest_rd_atomic=4))
            qp.to_rts(v.QPAttr(max_rd_atomic=4))
        workers.append(mine)

    def hammer(end: Endpoint) -> None:
        old = v.MR(end.pd, 8, LOCAL)
        for i in range(200):
            end.qp.post_send(atomic(i, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, old, counter, 0, 1))
            assert poll_until(end.scq)[0].status == W.IBV_WC_SUCCESS

    threads = [threading.Thread(target=hammer, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert u64(counter) == 600


def test_zero_length_operations(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    mr, remote = v.MR(a.pd, 8, LOCAL), v.MR(b.pd, 8, ALL_ACCESS)
    b.qp.post_recv(v.RecvWR(1, 0, []))
    a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 0, 0, []))
    for wr_id, opcode in ((2, OP.IBV_WR_RDMA_WRITE), (3, OP.IBV_WR_RDMA_READ)):
        wr = v.SendWR(wr_id, opcode, 0, 0, [])
        wr.set_wr_rdma(remote.rkey, remote.buf)
        a.qp.post_send(wr)
    assert [(w.wr_id, w.status) for w in poll_until(a.scq, 3)] == [(1, 0), (2, 0), (3, 0)]
    assert poll_until(b.rcq)[0].byte_len == 0
    assert mr.read(8, 0) == bytes(8)


def test_target_busy_spinning_on_its_buffer_sees_the_write(ctx: v.Context) -> None:
    """perftest's write latency pattern: the target polls the last byte of its buffer."""
    a, b = qp_pair(ctx)
    src, dst = v.MR(a.pd, 4096, LOCAL), v.MR(b.pd, 4096, ALL_ACCESS)
    src.write(b"\x01" * 4096, 4096)
    seen = threading.Event()

    def spin() -> None:
        view = dst.view
        deadline = time.monotonic() + 5
        while view[4095] != 1 and time.monotonic() < deadline:
            pass
        if view[4095] == 1:
            seen.set()

    spinner = threading.Thread(target=spin)
    spinner.start()
    start = time.monotonic()
    a.qp.post_send(rdma(1, OP.IBV_WR_RDMA_WRITE, src, 4096, dst, flags=0))
    spinner.join(10)
    assert seen.is_set() and time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("bad rkey", W.IBV_WC_REM_ACCESS_ERR),
        ("out of range", W.IBV_WC_REM_ACCESS_ERR),
        ("mr lacks remote write", W.IBV_WC_REM_ACCESS_ERR),
        ("qp lacks remote read", W.IBV_WC_REM_ACCESS_ERR),
        ("mr of another pd", W.IBV_WC_REM_ACCESS_ERR),
        ("deregistered", W.IBV_WC_REM_ACCESS_ERR),
        ("misaligned atomic", W.IBV_WC_REM_INV_REQ_ERR),
    ],
)
def test_remote_errors(ctx: v.Context, case: str, status: int) -> None:
    a, b = qp_pair(ctx)
    local = v.MR(a.pd, 64, LOCAL)
    remote = v.MR(b.pd, 64, ALL_ACCESS)
    if case == "bad rkey":
        wr = rdma(1, OP.IBV_WR_RDMA_WRITE, local, 8, remote)
        wr.rkey ^= 0x1111
    elif case == "out of range":
        wr = rdma(1, OP.IBV_WR_RDMA_READ, local, 16, remote, offset=56)
    elif case == "mr lacks remote write":
        ro = v.MR(b.pd, 64, LOCAL | A.IBV_ACCESS_REMOTE_READ)
        wr = rdma(1, OP.IBV_WR_RDMA_WRITE, local, 8, ro)
    elif case == "qp lacks remote read":
        b.qp.modify(
            v.QPAttr(qp_access_flags=A.IBV_ACCESS_REMOTE_WRITE),
            v.ibv_qp_attr_mask.IBV_QP_ACCESS_FLAGS,
        )
        wr = rdma(1, OP.IBV_WR_RDMA_READ, local, 8, remote)
    elif case == "mr of another pd":
        foreign = v.MR(v.PD(ctx), 64, ALL_ACCESS)
        wr = rdma(1, OP.IBV_WR_RDMA_WRITE, local, 8, foreign)
    elif case == "deregistered":
        wr = rdma(1, OP.IBV_WR_RDMA_WRITE, local, 8, remote)
        remote.close()
    else:
        wr = atomic(1, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, local, remote, 4, 1)
    a.qp.post_send(wr)
    follow = v.SendWR(2, OP.IBV_WR_SEND, 1, 0, [v.SGE(local.buf, 1, local.lkey)], send_flags=0)
    a.qp.post_send(follow)  # unsignaled, but it completes (flushed) because of the error
    wcs = poll_until(a.scq, 2)
    assert [(w.wr_id, w.status) for w in wcs] == [(1, status), (2, W.IBV_WC_WR_FLUSH_ERR)]
    assert a.qp.error is not None and a.qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR
    deadline = time.monotonic() + 5
    while b.qp.qp_state != v.ibv_qp_state.IBV_QPS_ERR and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR  # both sides, nothing hangs
    types = set()
    while True:
        try:
            types.add(ctx.get_async_event(timeout=0.5).event_type)
        except v.TcpverbsError:
            break
    expected = (
        v.ibv_event_type.IBV_EVENT_QP_ACCESS_ERR
        if status == W.IBV_WC_REM_ACCESS_ERR
        else v.ibv_event_type.IBV_EVENT_QP_REQ_ERR
    )
    assert expected in types


def test_post_time_checks_for_rdma(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    local, remote = v.MR(a.pd, 64, LOCAL), v.MR(b.pd, 64, ALL_ACCESS)
    with pytest.raises(v.PostError) as info:
        a.qp.post_send(
            v.SendWR(1, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, 1, 0, [v.SGE(local.buf, 4, local.lkey)])
        )
    assert info.value.errno == errno.EINVAL
    with pytest.raises(v.PostError, match="cannot be inline"):
        a.qp.post_send(
            rdma(
                1,
                OP.IBV_WR_RDMA_READ,
                local,
                8,
                remote,
                flags=F.IBV_SEND_INLINE | F.IBV_SEND_SIGNALED,
            )
        )
    ro = v.MR(a.pd, 64, 0)  # a READ writes locally: needs LOCAL_WRITE
    a.qp.post_send(rdma(2, OP.IBV_WR_RDMA_READ, ro, 8, remote))
    assert poll_until(a.scq)[0].status == W.IBV_WC_LOC_PROT_ERR


def test_rnr_retry_until_a_receive_is_posted(ctx: v.Context) -> None:
    a, b = qp_pair(ctx, attr=v.QPAttr(min_rnr_timer=1, rnr_retry=7))
    src, dst = v.MR(a.pd, 8, LOCAL), v.MR(b.pd, 8, LOCAL)
    src.write(b"patience", 8)
    a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]))
    time.sleep(0.2)
    assert a.scq.poll()[0] == 0
    b.qp.post_recv(v.RecvWR(2, 1, [v.SGE(dst.buf, 8, dst.lkey)]))
    assert poll_until(b.rcq)[0].byte_len == 8 and dst.read(8, 0) == b"patience"
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert b.qp.statistics()["rnr_naks_sent"] >= 1


def test_rnr_retry_exhausted(ctx: v.Context) -> None:
    a, _ = qp_pair(ctx, attr=v.QPAttr(min_rnr_timer=1, rnr_retry=2))
    src = v.MR(a.pd, 8, LOCAL)
    a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]))
    a.qp.post_send(v.SendWR(2, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]))
    wcs = poll_until(a.scq, 2)
    assert [(w.wr_id, w.status) for w in wcs] == [
        (1, W.IBV_WC_RNR_RETRY_EXC_ERR),
        (2, W.IBV_WC_WR_FLUSH_ERR),
    ]
    assert a.qp.statistics()["rnr_naks_received"] == 3  # the first try and 2 retries


def test_one_sided_traffic_is_not_blocked_behind_a_waiting_send(ctx: v.Context) -> None:
    a, b = qp_pair(ctx, attr=v.QPAttr(min_rnr_timer=20, rnr_retry=7))
    src, dst = v.MR(a.pd, 64, ALL_ACCESS), v.MR(b.pd, 64, ALL_ACCESS)
    src.write(b"from a", 6)
    a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]))  # no recv
    time.sleep(0.05)
    b.qp.post_send(rdma(7, OP.IBV_WR_RDMA_READ, dst, 6, src))  # b reads from a meanwhile
    assert poll_until(b.scq)[0].status == W.IBV_WC_SUCCESS and dst.read(6, 0) == b"from a"
    b.qp.post_send(rdma(8, OP.IBV_WR_RDMA_WRITE, dst, 6, src, offset=32))
    assert poll_until(b.scq)[0].status == W.IBV_WC_SUCCESS
    assert a.scq.poll()[0] == 0  # the SEND still waits for its receive
    b.qp.post_recv(v.RecvWR(3, 1, [v.SGE(dst.buf + 8, 8, dst.lkey)]))
    assert poll_until(a.scq, timeout=5)[0].status == W.IBV_WC_SUCCESS


def test_fence_waits_for_earlier_reads(ends: tuple[Endpoint, Endpoint]) -> None:
    a, b = ends
    remote = v.MR(b.pd, 64, ALL_ACCESS)
    remote.write(b"old data", 8)
    local = v.MR(a.pd, 64, LOCAL)
    local.write(b"new data", 8, 32)
    read = rdma(1, OP.IBV_WR_RDMA_READ, local, 8, remote)
    write = rdma(
        2,
        OP.IBV_WR_RDMA_WRITE,
        local,
        8,
        remote,
        local_offset=32,
        flags=F.IBV_SEND_SIGNALED | F.IBV_SEND_FENCE,
    )
    read.next_wr = write
    a.qp.post_send(read)
    assert [w.wr_id for w in poll_until(a.scq, 2)] == [1, 2]
    assert local.read(8, 0) == b"old data" and remote.read(8, 0) == b"new data"


def test_solicited_write_with_imm_wakes_a_solicited_only_cq(ctx: v.Context) -> None:
    ch = v.CompChannel(ctx)
    cq = v.CQ(ctx, 16, channel=ch)
    a = make_endpoint(ctx)
    pd = v.PD(ctx)
    b = Endpoint(
        pd, cq, cq, v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq), v.QPAttr(qp_access_flags=ALL_ACCESS))
    )
    sa, sb = tcp_socket_pair()
    for end, sock in ((a, sa), (b, sb)):
        end.qp.to_rtr(v.QPAttr(sock=sock))
        end.qp.to_rts(v.QPAttr())
    src, dst = v.MR(a.pd, 8, LOCAL), v.MR(pd, 8, ALL_ACCESS)
    b.qp.post_recv(v.RecvWR(1, 0, []))
    cq.req_notify(solicited_only=True)
    a.qp.post_send(
        rdma(
            1,
            OP.IBV_WR_RDMA_WRITE_WITH_IMM,
            src,
            8,
            dst,
            imm=5,
            flags=F.IBV_SEND_SIGNALED | F.IBV_SEND_SOLICITED,
        )
    )
    assert ch.get_cq_event(cq, timeout=5) is cq
    cq.ack_events(1)


def test_qp_reconnects_after_reset(ctx: v.Context) -> None:
    a, b = qp_pair(ctx)
    b.qp.close()
    poll_deadline = time.monotonic() + 5
    while a.qp.qp_state != v.ibv_qp_state.IBV_QPS_ERR and time.monotonic() < poll_deadline:
        a.rcq.poll()
    rmr = v.MR(a.pd, 8, ALL_ACCESS)
    a.qp.post_recv(v.RecvWR(1, 1, [v.SGE(rmr.buf, 8, rmr.lkey)]))  # flushed at once (ERR)
    time.sleep(0.05)
    assert len(a.rcq) == 1
    a.qp.modify(v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_RESET), v.ibv_qp_attr_mask.IBV_QP_STATE)
    assert a.rcq.poll()[0] == 0  # RESET dropped the QP's unpolled completions
    c = make_endpoint(ctx)
    sa, sc = tcp_socket_pair()
    a.qp.to_init(v.QPAttr(qp_access_flags=ALL_ACCESS))
    attr, _ = a.qp.query(0)
    attr.sock = sa
    a.qp.to_rtr(attr)  # query() output fed straight back
    c.qp.to_rtr(v.QPAttr(sock=sc))
    a.qp.to_rts(a.qp.query(0)[0])
    c.qp.to_rts(v.QPAttr())
    src, dst = v.MR(c.pd, 8, LOCAL), v.MR(a.pd, 8, ALL_ACCESS)
    src.write(b"again!!!", 8)
    c.qp.post_send(rdma(1, OP.IBV_WR_RDMA_WRITE, src, 8, dst))
    assert poll_until(c.scq)[0].status == W.IBV_WC_SUCCESS and dst.read(8, 0) == b"again!!!"


def test_stream_mode_has_no_rdma(ctx: v.Context) -> None:
    a, b = qp_pair(ctx, "stream")
    local, remote = v.MR(a.pd, 8, LOCAL), v.MR(b.pd, 8, ALL_ACCESS)
    with pytest.raises(v.PostError) as info:
        a.qp.post_send(rdma(1, OP.IBV_WR_RDMA_WRITE, local, 8, remote))
    assert info.value.errno == errno.EINVAL
