"""UD QPs through the public API: datagrams, the GRH, drops, errors, the state machine."""

from __future__ import annotations

import errno
import ipaddress
import multiprocessing
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import pytest

import tcpverbs as v
from tcpverbs.engine import available_engines
from tcpverbs.errors import PostError, TcpverbsError
from tcpverbs.wire.frames import Opcode
from tcpverbs.wire.ud import GRH_SIZE, UDHeader, encode_ud, parse_grh

W = v.ibv_wc_status
QKEY = 0x11223344
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
UD = v.ibv_qp_type.IBV_QPT_UD


@dataclass
class UdEnd:
    qp: v.QP
    cq: v.CQ
    mr: v.MR


@pytest.fixture
def ends(ctx: v.Context) -> Iterator[tuple[UdEnd, UdEnd, v.PD]]:
    pd = v.PD(ctx)
    made = []
    for _ in range(2):
        cq = v.CQ(ctx, 64)
        qp = v.QP(pd, v.QPInitAttr(qp_type=UD, scq=cq, rcq=cq, cap=v.QPCap(16, 16, 2, 4)))
        qp.to_rts(v.QPAttr(qkey=QKEY, sq_psn=0))
        made.append(UdEnd(qp, cq, v.MR(pd, 8192, LOCAL_WRITE)))
    yield made[0], made[1], pd


def ah_to(pd: v.PD) -> v.AH:
    return v.AH(pd, attr=v.AHAttr(is_global=1, gr=v.GlobalRoute(dgid=pd.ctx.query_gid(1, 0))))


def send(
    end: UdEnd,
    ah: v.AH,
    dest: v.QP,
    data: bytes,
    *,
    wr_id: int = 1,
    qkey: int = QKEY,
    imm: int | None = None,
) -> None:
    end.mr.write(data, len(data), 0)
    opcode = v.ibv_wr_opcode.IBV_WR_SEND if imm is None else v.ibv_wr_opcode.IBV_WR_SEND_WITH_IMM
    wr = v.SendWR(wr_id, opcode, 1, imm or 0, [v.SGE(end.mr.buf, len(data), end.mr.lkey)])
    wr.set_wr_ud(ah, dest.qp_num, qkey)
    end.qp.post_send(wr)


def recv(end: UdEnd, length: int, *, wr_id: int = 9, offset: int = 4096) -> None:
    end.qp.post_recv(v.RecvWR(wr_id, 1, [v.SGE(end.mr.buf + offset, length, end.mr.lkey)]))


def completions(cq: v.CQ, count: int, timeout: float = 5.0) -> list[v.WC]:
    got: list[v.WC] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(cq.poll(count - len(got))[1])
    assert len(got) == count, got
    return got


def quiet(cq: v.CQ, seconds: float = 0.2) -> None:
    """Nothing completes on *cq* for *seconds* (a dropped datagram leaves no trace)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cq.poll(4)[0] == 0


def test_a_send_arrives_behind_its_grh(ends: tuple[UdEnd, UdEnd, v.PD]) -> None:
    a, b, pd = ends
    recv(b, 64)
    send(a, ah_to(pd), b.qp, b"datagram!", imm=0xC0FFEE)
    (sent,) = completions(a.cq, 1)
    assert (sent.status, sent.opcode, sent.byte_len) == (W.IBV_WC_SUCCESS, 0, 9)
    (got,) = completions(b.cq, 1)
    assert got.status == W.IBV_WC_SUCCESS and got.opcode == v.ibv_wc_opcode.IBV_WC_RECV
    assert got.byte_len == GRH_SIZE + 9 and got.src_qp == a.qp.qp_num
    assert got.qp_num == b.qp.qp_num and got.imm_data == 0xC0FFEE
    flags = v.ibv_wc_flags
    assert got.wc_flags == flags.IBV_WC_GRH | flags.IBV_WC_WITH_IMM
    source, dest = parse_grh(b.mr.read(GRH_SIZE, 4096))
    local = ipaddress.IPv6Address(pd.ctx.query_gid(1, 0).raw)
    assert source == dest == (local.ipv4_mapped or local)
    assert b.mr.read(9, 4096 + GRH_SIZE) == b"datagram!"


def test_an_answer_goes_back_by_the_address_handle_of_the_completion(
    ends: tuple[UdEnd, UdEnd, v.PD],
) -> None:
    a, b, pd = ends
    recv(b, 64)
    recv(a, 64)
    send(a, ah_to(pd), b.qp, b"ping")
    (got,) = completions(b.cq, 1)
    back = v.AH(pd, wc=got, grh=b.mr.buf + 4096)
    b.mr.write(b"pong", 4, 0)
    wr = v.SendWR(2, num_sge=1, sg=[v.SGE(b.mr.buf, 4, b.mr.lkey)])
    wr.set_wr_ud(back, got.src_qp, QKEY)
    b.qp.post_send(wr)
    answers = [wc for wc in completions(a.cq, 2) if wc.opcode == v.ibv_wc_opcode.IBV_WC_RECV]
    assert len(answers) == 1 and answers[0].src_qp == b.qp.qp_num
    assert a.mr.read(4, 4096 + GRH_SIZE) == b"pong"


def test_grh_and_payload_are_scattered_across_the_receive_sges(
    ends: tuple[UdEnd, UdEnd, v.PD],
) -> None:
    a, b, pd = ends
    mr = b.mr
    sges = [v.SGE(mr.buf + 4096, 30, mr.lkey), v.SGE(mr.buf + 6000, 100, mr.lkey)]
    b.qp.post_recv(v.RecvWR(5, 2, sges))
    send(a, ah_to(pd), b.qp, bytes(range(50)))
    (got,) = completions(b.cq, 1)
    assert got.status == W.IBV_WC_SUCCESS and got.byte_len == GRH_SIZE + 50
    grh = mr.read(30, 4096) + mr.read(10, 6000)
    assert parse_grh(grh)[0] is not None
    assert mr.read(50, 6010) == bytes(range(50))


def test_a_receive_too_small_completes_with_a_length_error(
    ends: tuple[UdEnd, UdEnd, v.PD],
) -> None:
    a, b, pd = ends
    recv(b, GRH_SIZE + 3, wr_id=1)  # GRH and three bytes: not enough for four
    recv(b, 64, wr_id=2, offset=5000)
    send(a, ah_to(pd), b.qp, b"four")
    send(a, ah_to(pd), b.qp, b"next")
    first, second = completions(b.cq, 2)
    assert (first.wr_id, first.status) == (1, W.IBV_WC_LOC_LEN_ERR)
    assert (second.wr_id, second.status) == (2, W.IBV_WC_SUCCESS)
    assert b.mr.read(4, 5000 + GRH_SIZE) == b"next"
    assert b.qp.qp_state is v.ibv_qp_state.IBV_QPS_RTS


def test_wrong_q_keys_and_missing_receives_drop_the_datagram_and_count_it(
    ends: tuple[UdEnd, UdEnd, v.PD],
) -> None:
    a, b, pd = ends
    send(a, ah_to(pd), b.qp, b"nobody waits", wr_id=1)  # no receive posted yet
    completions(a.cq, 1)
    quiet(b.cq)
    recv(b, 64)
    send(a, ah_to(pd), b.qp, b"wrong key", wr_id=2, qkey=QKEY + 1)
    completions(a.cq, 1)  # UD: the sender cannot know
    quiet(b.cq)
    stats = b.qp.statistics()
    assert stats["ud_dropped"] == 2 and stats["qkey_violations"] == 1
    send(a, ah_to(pd), b.qp, b"own key", wr_id=3, qkey=0x80000000)  # bit 31: the QP's own
    (got,) = completions(b.cq, 1)
    assert got.status == W.IBV_WC_SUCCESS and b.mr.read(7, 4096 + GRH_SIZE) == b"own key"


def test_sends_that_cannot_go_complete_with_an_error_and_the_qp_goes_on(
    ends: tuple[UdEnd, UdEnd, v.PD],
) -> None:
    a, b, pd = ends
    mtu = 128 << pd.ctx.query_port(1).active_mtu
    big = v.SendWR(1, num_sge=1, sg=[v.SGE(a.mr.buf, mtu + 1, a.mr.lkey)])
    big.set_wr_ud(ah_to(pd), b.qp.qp_num, QKEY)
    a.qp.post_send(big)
    rc_number = v.SendWR(2, num_sge=1, sg=[v.SGE(a.mr.buf, 8, a.mr.lkey)])
    rc_number.set_wr_ud(ah_to(pd), b.qp.qp_num | 1, QKEY)  # an rc QP's: low byte not 0
    a.qp.post_send(rc_number)
    first, second = completions(a.cq, 2)
    assert (first.wr_id, first.status) == (1, W.IBV_WC_LOC_LEN_ERR)
    assert (second.wr_id, second.status) == (2, W.IBV_WC_LOC_QP_OP_ERR)
    recv(b, 64)
    send(a, ah_to(pd), b.qp, b"still up", wr_id=3)
    assert completions(b.cq, 1)[0].status == W.IBV_WC_SUCCESS


@pytest.mark.parametrize(
    ("change", "words", "err"),
    [
        (
            lambda wr: setattr(wr, "opcode", v.ibv_wr_opcode.IBV_WR_RDMA_WRITE),
            "RDMA_WRITE is not supported on a ud QP",
            errno.EOPNOTSUPP,
        ),
        (lambda wr: setattr(wr, "ah", None), "ah", errno.EINVAL),
        (lambda wr: setattr(wr, "remote_qpn", 1 << 24), "remote_qpn", errno.EINVAL),
    ],
)
def test_ud_posts_the_qp_cannot_carry_are_refused(
    ends: tuple[UdEnd, UdEnd, v.PD], change: object, words: str, err: int
) -> None:
    a, b, pd = ends
    wr = v.SendWR(1, num_sge=1, sg=[v.SGE(a.mr.buf, 8, a.mr.lkey)])
    wr.set_wr_ud(ah_to(pd), b.qp.qp_num, QKEY)
    change(wr)  # type: ignore[operator]
    with pytest.raises(PostError, match=words) as info:
        a.qp.post_send(wr)
    assert info.value.errno == err


def test_an_address_handle_of_another_pd_is_refused(ends: tuple[UdEnd, UdEnd, v.PD]) -> None:
    a, b, pd = ends
    wr = v.SendWR(1, num_sge=1, sg=[v.SGE(a.mr.buf, 8, a.mr.lkey)])
    wr.set_wr_ud(ah_to(v.PD(pd.ctx)), b.qp.qp_num, QKEY)
    with pytest.raises(PostError, match="ah"):
        a.qp.post_send(wr)


def test_hostile_datagrams_are_dropped_before_memory_is_touched(
    ends: tuple[UdEnd, UdEnd, v.PD],
) -> None:
    b = ends[1]
    recv(b, 256)
    b.mr.write(b"\xee" * 256, 256, 4096)
    header = UDHeader(Opcode.SEND, b.qp.qp_num, 0x100, QKEY)
    port = b.qp.qp_num >> 8
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for datagram in (
            b"",
            b"TVUD",
            b"junk" * 10,
            encode_ud(header)[:-1],
            encode_ud(UDHeader(Opcode.SEND, b.qp.qp_num + 256, 0x100, QKEY)) + b"other QP",
            b"XVUD" + encode_ud(header)[4:] + b"bad magic",
            b"\x00" * 5000,  # longer than the MTU allows
        ):
            raw.sendto(datagram, ("127.0.0.1", port))
        quiet(b.cq)
        assert b.mr.read(256, 4096) == b"\xee" * 256
        assert b.qp.statistics()["ud_dropped"] == 7
        raw.sendto(encode_ud(header) + b"from a plain socket", ("127.0.0.1", port))
    (got,) = completions(b.cq, 1)
    assert got.src_qp == 0x100 and got.byte_len == GRH_SIZE + 19
    assert b.mr.read(19, 4096 + GRH_SIZE) == b"from a plain socket"


def test_what_arrives_before_rtr_is_dropped(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 8)
    qp = v.QP(pd, v.QPInitAttr(qp_type=UD, scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1)))
    qp.to_init(v.QPAttr(qkey=QKEY))
    mr = v.MR(pd, 256, LOCAL_WRITE)
    qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf, 256, mr.lkey)]))
    header = UDHeader(Opcode.SEND, qp.qp_num, 0x100, QKEY)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(encode_ud(header) + b"early", ("127.0.0.1", qp.qp_num >> 8))
        time.sleep(0.05)
        qp.to_rts(v.QPAttr(sq_psn=0))
        quiet(cq)
        raw.sendto(encode_ud(header) + b"in time", ("127.0.0.1", qp.qp_num >> 8))
    (got,) = completions(cq, 1)
    assert got.status == W.IBV_WC_SUCCESS and mr.read(7, GRH_SIZE) == b"in time"
    assert qp.statistics()["ud_dropped"] == 1


def test_the_ud_state_machine(ends: tuple[UdEnd, UdEnd, v.PD]) -> None:
    a, b, pd = ends
    M = v.ibv_qp_attr_mask
    assert a.qp.qp_type is UD and a.qp.qp_num & 0xFF == 0
    attr, _ = a.qp.query(M.IBV_QP_QKEY)
    assert attr.qkey == QKEY
    number = a.qp.qp_num
    a.qp.modify(v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_RESET), M.IBV_QP_STATE)
    with pytest.raises(TcpverbsError, match="QKEY") as info:  # RESET -> INIT needs it
        a.qp.modify(
            v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_INIT),
            M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT,
        )
    assert info.value.errno == errno.EINVAL
    with pytest.raises(TcpverbsError, match="unsupported attribute mask bits 0x8 for a UD QP"):
        a.qp.modify(
            v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_INIT),
            M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
        )
    a.qp.to_rts(v.QPAttr(qkey=QKEY, sq_psn=0))  # back up: the same number, working
    assert a.qp.qp_num == number
    recv(a, 64)
    send(b, ah_to(pd), a.qp, b"again")
    assert [wc.status for wc in completions(a.cq, 1)] == [W.IBV_WC_SUCCESS]


def test_rc_qps_refuse_a_q_key(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 8)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1)))
    M = v.ibv_qp_attr_mask
    with pytest.raises(TcpverbsError, match="bits 0x40 for an RC QP"):
        qp.modify(
            v.QPAttr(qp_state=v.ibv_qp_state.IBV_QPS_INIT, qkey=1),
            M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_QKEY,
        )


def test_a_sleeper_on_a_completion_channel_gets_a_datagram(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    ch = v.CompChannel(ctx)
    cq = v.CQ(ctx, 8, None, ch)
    init = v.QPInitAttr(qp_type=UD, scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1), sq_sig_all=0)
    qps = [v.QP(pd, init) for _ in range(2)]
    for qp in qps:
        qp.to_rts(v.QPAttr(qkey=QKEY, sq_psn=0))
    mr = v.MR(pd, 512, LOCAL_WRITE)
    qps[1].post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf + 256, 256, mr.lkey)]))
    cq.req_notify()
    wr = v.SendWR(2, num_sge=1, sg=[v.SGE(mr.buf, 16, mr.lkey)], send_flags=0)
    wr.set_wr_ud(ah_to(pd), qps[1].qp_num, QKEY)
    qps[0].post_send(wr)
    assert ch.get_cq_event(timeout=5) is cq
    cq.ack_events(1)
    (got,) = completions(cq, 1)
    assert got.wr_id == 1 and got.byte_len == GRH_SIZE + 16


def ud_end(ctx: v.Context, pd: v.PD | None = None) -> UdEnd:
    pd = pd if pd is not None else v.PD(ctx)
    cq = v.CQ(ctx, 16)
    qp = v.QP(pd, v.QPInitAttr(qp_type=UD, scq=cq, rcq=cq, cap=v.QPCap(8, 8, 1, 1)))
    qp.to_rts(v.QPAttr(qkey=QKEY, sq_psn=0))
    return UdEnd(qp, cq, v.MR(pd, 8192, LOCAL_WRITE))


@pytest.mark.skipif(
    len(available_engines()) < 2, reason="the native extension is not built: one engine"
)
def test_the_engines_exchange_datagrams_both_ways() -> None:
    """The datagram is the wire format: a native UD QP and a Python-engine one talk."""
    with (
        v.Context(name="tcpv_lo", engine="native") as native,
        v.Context(name="tcpv_lo", engine="python") as python,
    ):
        ends = {"native": ud_end(native), "python": ud_end(python)}
        for sender, receiver in (("native", "python"), ("python", "native")):
            a, b = ends[sender], ends[receiver]
            recv(b, 64)
            send(a, ah_to(a.qp.pd), b.qp, f"from {sender}".encode(), imm=7)
            (got,) = completions(b.cq, 1)
            assert got.status == W.IBV_WC_SUCCESS and got.src_qp == a.qp.qp_num
            assert got.imm_data == 7 and got.wc_flags & v.ibv_wc_flags.IBV_WC_GRH
            assert b.mr.read(len(sender) + 5, 4096 + GRH_SIZE) == f"from {sender}".encode()
            assert completions(a.cq, 1)[0].status == W.IBV_WC_SUCCESS


def _echo_process(engine: str, out: multiprocessing.Queue[int], done: Event) -> None:
    """A UD echo in another process: its QP number out, then each datagram back."""
    with v.Context(name="tcpv_lo", engine=engine) as ctx:
        end = ud_end(ctx)
        for i in range(4):
            recv(end, 256, wr_id=i)
        out.put(end.qp.qp_num)
        for _ in range(4):
            (got,) = completions(end.cq, 1, timeout=20)
            back = v.AH(end.qp.pd, wc=got, grh=end.mr.buf + 4096)
            wr = v.SendWR(9, num_sge=1, sg=[v.SGE(end.mr.buf + 4096 + GRH_SIZE, 16, end.mr.lkey)])
            wr.set_wr_ud(back, got.src_qp, QKEY)
            end.qp.post_send(wr)
            completions(end.cq, 1)
        done.wait(20)


def test_a_ud_echo_in_another_process(ctx: v.Context) -> None:
    mp = multiprocessing.get_context("spawn")
    numbers: multiprocessing.Queue[int] = mp.Queue()
    done = mp.Event()
    echo = mp.Process(target=_echo_process, args=(ctx.engine, numbers, done))
    echo.start()
    try:
        peer = numbers.get(timeout=30)
        end = ud_end(ctx)
        dest = v.AH(
            end.qp.pd, attr=v.AHAttr(is_global=1, gr=v.GlobalRoute(dgid=ctx.query_gid(1, 0)))
        )
        for i in range(4):
            recv(end, 256, offset=4096)
            end.mr.write(f"echo number {i}...".encode(), 16, 0)
            wr = v.SendWR(i, num_sge=1, sg=[v.SGE(end.mr.buf, 16, end.mr.lkey)])
            wr.set_wr_ud(dest, peer, QKEY)
            end.qp.post_send(wr)
            got = completions(end.cq, 2, timeout=20)
            answer = [wc for wc in got if wc.opcode == v.ibv_wc_opcode.IBV_WC_RECV]
            assert len(answer) == 1 and answer[0].src_qp == peer
            assert end.mr.read(16, 4096 + GRH_SIZE) == f"echo number {i}...".encode()
    finally:
        done.set()
        echo.join(30)
    assert echo.exitcode == 0


def test_pyverbs_conveniences_for_ud(ctx: v.Context) -> None:
    """QP(pd, init, QPAttr) makes a UD QP ready (RTS), as pyverbs does; QPEx addresses a
    UD send with wr_set_ud_addr; the data of a message lands in order."""
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 16)
    init = v.QPInitAttrEx(
        qp_type=UD,
        scq=cq,
        rcq=cq,
        cap=v.QPCap(4, 4, 1, 1),
        pd=pd,
        comp_mask=v.enums.ibv_qp_init_attr_mask.IBV_QP_INIT_ATTR_PD
        | v.enums.ibv_qp_init_attr_mask.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
        send_ops_flags=v.enums.ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_SEND_WITH_IMM,
    )
    sender = v.QPEx(ctx, init)
    sender.to_rts(v.QPAttr(qkey=QKEY, sq_psn=0))
    receiver = v.QP(
        pd, v.QPInitAttr(qp_type=UD, scq=cq, rcq=cq, cap=v.QPCap(4, 4, 1, 1)), v.QPAttr(qkey=QKEY)
    )
    assert receiver.qp_state is v.ibv_qp_state.IBV_QPS_RTS
    assert receiver.query_data_in_order(v.ibv_wr_opcode.IBV_WR_SEND) == 1
    mr = v.MR(pd, 256, LOCAL_WRITE)
    mr.write(b"by QPEx!", 8, 0)
    receiver.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf + 64, 128, mr.lkey)]))
    sender.wr_start()
    sender.wr_id = 2
    sender.wr_flags = v.ibv_send_flags.IBV_SEND_SIGNALED
    sender.wr_send_imm(0x1234)
    sender.wr_set_ud_addr(ah_to(pd), receiver.qp_num, QKEY)
    sender.wr_set_sge(v.SGE(mr.buf, 8, mr.lkey))
    sender.wr_complete()
    got = {wc.wr_id: wc for wc in completions(cq, 2)}
    # (the extended API's immediate is big-endian, as ibv_wr_send_imm's __be32)
    assert got[2].status == W.IBV_WC_SUCCESS and got[1].imm_data == socket.htonl(0x1234)
    assert mr.read(8, 64 + GRH_SIZE) == b"by QPEx!"


def test_a_cq_keeps_its_size(ctx: v.Context) -> None:
    """``ibv_resize_cq`` is not offered, as by siw: EOPNOTSUPP, which programs and
    rdma-core's tests take as "not supported"; a bad size is still EINVAL."""
    cq = v.CQ(ctx, 8)
    with pytest.raises(TcpverbsError) as info:
        cq.resize(16)
    assert info.value.errno == errno.EOPNOTSUPP and cq.cqe == 8
    with pytest.raises(TcpverbsError) as bad:
        cq.resize(0)
    assert bad.value.errno == errno.EINVAL
