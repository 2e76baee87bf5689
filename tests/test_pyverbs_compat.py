"""What pyverbs programs meet in tcpverbs itself: pyverbs' exceptions, the extended
device queries, the walk through the QP states, ``bad_wr``, the attribute spellings
(issue #11).  The pyverbs face (``import pyverbs`` under ``tcpverbs run``) is tested in
``test_pyverbs_face.py``."""

from __future__ import annotations

import errno
import ipaddress
import pickle
import socket

import pytest

import tcpverbs as v
from tcpverbs.errors import (
    ClosedResourceError,
    ConnectionBrokenError,
    PostError,
    PyverbsError,
    PyverbsRDMAError,
    PyverbsUserError,
    TcpverbsError,
)
from tcpverbs.testing import ALL_ACCESS, Endpoint, make_endpoint
from tcpverbs.wire.ud import build_grh

S = v.ibv_qp_state


def connect_by_gid(ctx: v.Context, a: v.QP, b: v.QP, **attrs: int) -> None:
    """Bring *a* and *b* to RTS, each naming the other by GID and QP number (pyverbs'
    way), whatever state they are in; *attrs* go into both QPAttrs."""
    route = v.AHAttr(is_global=1, gr=v.GlobalRoute(dgid=ctx.query_gid(1, 0)))
    for qp, peer in ((a, b), (b, a)):
        qp.to_rts(v.QPAttr(dest_qp_num=peer.qp_num, ah_attr=route, **attrs))  # type: ignore[arg-type]


# -- exceptions ------------------------------------------------------------------------
def test_every_tcpverbs_error_is_a_pyverbs_rdma_error_with_its_text_first() -> None:
    err = TcpverbsError(errno.EINVAL, "Failed to query port 7")
    assert isinstance(err, PyverbsRDMAError) and isinstance(err, PyverbsError)
    assert isinstance(err, OSError) and err.errno == errno.EINVAL
    assert err.error_code == errno.EINVAL
    assert err.args == ("Failed to query port 7. Errno: 22, Invalid argument",)
    assert str(err) == "[EINVAL] Failed to query port 7"


def test_pyverbs_errors_built_by_programs_word_themselves_as_pyverbs_does() -> None:
    err = PyverbsRDMAError("Failed to create AH", errno.EOPNOTSUPP)
    assert err.error_code == errno.EOPNOTSUPP
    assert str(err) == "Failed to create AH. Errno: 95, Operation not supported"
    assert PyverbsRDMAError("no errno").error_code == -1
    assert str(PyverbsRDMAError("no errno")) == "no errno"
    user = PyverbsUserError("bad input")
    assert isinstance(user, PyverbsError) and not isinstance(user, PyverbsRDMAError)


@pytest.mark.parametrize(
    "err",
    [
        TcpverbsError(errno.EINVAL, "bad"),
        PostError(errno.ENOMEM, "full", None, 2),
        ClosedResourceError("QP"),
        ConnectionBrokenError(errno.ECONNRESET, "gone"),
        TcpverbsError(errno.EINVAL, "too small", error_code=-errno.EINVAL),
    ],
)
def test_errors_survive_pickling(err: TcpverbsError) -> None:
    """multiprocessing sends them between processes (rdma-core's tests do)."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.errno, back.strerror, back.args, back.error_code) == (
        err.errno,
        err.strerror,
        err.args,
        err.error_code,
    )
    assert getattr(back, "bad_wr_index", None) == getattr(err, "bad_wr_index", None)


# -- the extended queries ----------------------------------------------------------------
def test_query_device_ex_reports_no_extended_capabilities(ctx: v.Context) -> None:
    ex = ctx.query_device_ex()
    assert ex.orig_attr == ctx.query_device()
    assert ex.phys_port_cnt_ex == ex.orig_attr.phys_port_cnt == 1
    assert ex.device_cap_flags_ex == ex.orig_attr.device_cap_flags
    assert ex.max_dm_size == 0 and ex.odp_caps.general_caps == 0 and ex.tso_caps.max_tso == 0
    assert ex.tm_caps.max_num_tags == 0 and ex.raw_packet_caps == 0
    assert ex.orig_attr.fw_version == ex.orig_attr.fw_ver
    assert ctx.num_comp_vectors == 1


def test_the_gid_table_is_the_interfaces_addresses(ctx: v.Context) -> None:
    count = ctx.query_port(1).gid_tbl_len
    table = ctx.query_gid_table(count)
    assert [e.gid for e in table] == [ctx.query_gid(1, i) for i in range(count)]
    assert [e.gid_index for e in table] == list(range(count))
    roce_v2 = v.enums.ibv_gid_type.IBV_GID_TYPE_ROCE_V2
    assert all(e.port_num == 1 and e.gid_type == roce_v2 for e in table)
    entry = ctx.query_gid_ex(1, 0)
    assert entry == table[0] and entry.gid_str() == table[0].gid.gid
    assert entry.ndev_ifindex > 0
    sysfs = v.enums.ibv_gid_type_sysfs.IBV_GID_TYPE_SYSFS_ROCE_V2
    assert ctx.query_gid_type(1, 0) == sysfs


def test_gid_table_queries_refuse_as_libibverbs_does(ctx: v.Context) -> None:
    count = ctx.query_port(1).gid_tbl_len
    with pytest.raises(TcpverbsError) as small:
        ctx.query_gid_table(count - 1)
    # ibv_query_gid_table returns -EINVAL, and pyverbs passes that on
    assert small.value.errno == errno.EINVAL and small.value.error_code == -errno.EINVAL
    for bad in (lambda: ctx.query_gid_ex(1, count), lambda: ctx.query_gid_type(1, count)):
        with pytest.raises(TcpverbsError) as info:
            bad()
        assert info.value.error_code == errno.EINVAL
    with pytest.raises(TcpverbsError) as port:
        ctx.query_port(2)
    assert "Failed to query port" in port.value.args[0] and "Invalid argument" in port.value.args[0]


def test_the_one_pkey_is_the_default(ctx: v.Context) -> None:
    assert ctx.query_pkey(1, 0) == 0xFFFF
    assert ctx.get_pkey_index(1, 0xFFFF) == 0
    with pytest.raises(TcpverbsError) as index:
        ctx.query_pkey(1, 1)
    assert index.value.errno == errno.EINVAL
    with pytest.raises(TcpverbsError) as pkey:
        ctx.get_pkey_index(1, 0x8001)
    assert pkey.value.errno == errno.ENOENT


# -- objects -----------------------------------------------------------------------------
def test_to_rts_walks_from_reset_and_init_as_pyverbs_does(ctx: v.Context) -> None:
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    fresh = v.QP(a.pd, v.QPInitAttr(scq=a.scq, rcq=a.rcq))
    assert fresh.qp_state == S.IBV_QPS_RESET and b.qp.qp_state == S.IBV_QPS_INIT
    connect_by_gid(ctx, fresh, b.qp)
    assert fresh.qp_state == b.qp.qp_state == S.IBV_QPS_RTS
    with pytest.raises(TcpverbsError) as again:  # from RTS there is nothing to walk
        fresh.to_rtr(v.QPAttr())
    assert again.value.errno == errno.EINVAL


def test_a_refused_wr_is_copied_into_bad_wr(ctx: v.Context) -> None:
    a = make_endpoint(ctx)  # INIT: posting a send is refused
    wr = v.SendWR(wr_id=77, num_sge=0)
    bad = v.SendWR()
    with pytest.raises(PostError) as info:
        a.qp.post_send(wr, bad)
    assert bad.wr_id == 77 and info.value.bad_wr is wr
    assert "Failed to post send" in info.value.args[0]


def test_qp_init_attr_spells_the_capabilities_as_pyverbs_does() -> None:
    init = v.QPInitAttr()
    init.max_send_wr, init.max_recv_sge = 33, 3
    assert init.cap.max_send_wr == 33 and init.cap.max_recv_sge == 3
    init.cap.max_inline_data = 64
    assert init.max_inline_data == 64


def test_cq_takes_a_whole_float_cqe_and_names_its_channel_as_pyverbs_does(
    ctx: v.Context,
) -> None:
    ch = v.CompChannel(ctx)
    cq = v.CQ(ctx, 100.0, channel=ch)
    assert cq.cqe == 100 and isinstance(cq.cqe, int) and cq.comp_channel is ch
    with pytest.raises(TcpverbsError) as info:
        v.CQ(ctx, 10.5)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("flag", "err"),
    [
        (v.ibv_access_flags.IBV_ACCESS_MW_BIND, errno.EOPNOTSUPP),
        (v.ibv_access_flags.IBV_ACCESS_ON_DEMAND, errno.EOPNOTSUPP),
        (v.ibv_access_flags.IBV_ACCESS_ZERO_BASED, errno.EOPNOTSUPP),
        (1 << 30, errno.EINVAL),
    ],
)
def test_access_a_tcp_device_has_not_is_eopnotsupp_unknown_bits_einval(
    ctx: v.Context, flag: int, err: int
) -> None:
    pd = v.PD(ctx)
    with pytest.raises(TcpverbsError) as info:
        v.MR(pd, 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE | flag)
    assert info.value.errno == err and "Failed to register a MR" in info.value.args[0]


def test_the_command_fd_names_the_context_and_cannot_be_imported(ctx: v.Context) -> None:
    """pyverbs' ``cmd_fd`` is a real descriptor (a program may dup it); importing a
    context from one (``ibv_import_device``) is not something a TCP device does."""
    import os

    fd = ctx.cmd_fd
    assert ctx.cmd_fd == fd
    copy = os.dup(fd)
    try:
        assert os.path.samestat(os.fstat(copy), os.fstat(fd))
        with v.Context(name="tcpv_lo", engine=ctx.engine) as other:
            assert other.cmd_fd not in (fd, copy)
        with pytest.raises(TcpverbsError) as info:
            v.Context(cmd_fd=copy)
        assert info.value.errno == errno.EOPNOTSUPP
        assert info.value.error_code == errno.EOPNOTSUPP
    finally:
        os.close(copy)
    ctx.close()
    with pytest.raises(v.ClosedResourceError):
        _ = ctx.cmd_fd


def test_a_context_s_name_is_the_str_asked_for_as_in_pyverbs(ctx: v.Context) -> None:
    """pyverbs' tests match ``dev.name.decode() == ctx.name``; a Device's name is bytes."""
    assert ctx.name == "tcpv_lo"
    assert [d for d in v.get_device_list() if d.name.decode() == ctx.name]


def test_mrs_and_pds_have_handles_no_other_object_of_the_context_has(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    handles = [pd.handle, *(v.MR(pd, 8, 0).handle for _ in range(3)), v.PD(ctx).handle]
    assert len(set(handles)) == len(handles) and all(isinstance(h, int) for h in handles)


# -- ibv_create_qp_ex --------------------------------------------------------------------
X = v.enums.ibv_qp_init_attr_mask


def test_a_qp_made_from_the_context_with_init_attr_ex_carries_traffic(ctx: v.Context) -> None:
    pd, cq = v.PD(ctx), v.CQ(ctx, 16)
    attr = v.QPInitAttrEx(pd=pd, comp_mask=X.IBV_QP_INIT_ATTR_PD, cap=v.QPCap(4, 4, 1, 1))
    attr.send_cq = attr.recv_cq = cq
    attr.max_inline_data = 16
    qp = v.QP(ctx, attr)
    assert qp.qp_state == S.IBV_QPS_RESET and qp.pd is pd and qp.cap.max_inline_data == 16
    assert v.QP(ctx, attr, v.QPAttr()).qp_state == S.IBV_QPS_INIT
    peer = make_endpoint(ctx)
    connect_by_gid(ctx, qp, peer.qp)
    mr, rmr = v.MR(pd, 8, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE), v.MR(peer.pd, 8, 1)
    mr.write(b"ex-made!", 8)
    peer.qp.post_recv(v.RecvWR(1, 1, [v.SGE(rmr.buf, 8, rmr.lkey)]))
    qp.post_send(v.SendWR(2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, 8, mr.lkey)]))
    from tcpverbs.testing import poll_until

    assert poll_until(peer.rcq)[0].byte_len == 8 and rmr.read(8, 0) == b"ex-made!"


@pytest.mark.parametrize(
    ("change", "err"),
    [
        ({"comp_mask": 0}, errno.EINVAL),  # no PD named
        ({"pd": None}, errno.EINVAL),
        ({"comp_mask": X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_XRCD}, errno.EOPNOTSUPP),
        ({"comp_mask": X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_RX_HASH}, errno.EOPNOTSUPP),
        (
            {
                "comp_mask": X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_CREATE_FLAGS,
                "create_flags": 2,
            },
            errno.EOPNOTSUPP,
        ),
        (
            {
                "comp_mask": X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
                "send_ops_flags": v.enums.ibv_qp_create_send_ops_flags.IBV_QP_EX_WITH_BIND_MW,
            },
            errno.EOPNOTSUPP,
        ),
        ({"comp_mask": 1 << 20}, errno.EINVAL),
        ({"qp_type": v.ibv_qp_type.IBV_QPT_UC}, errno.EOPNOTSUPP),
    ],
)
def test_create_qp_ex_refuses_what_a_tcpverbs_qp_cannot_be(
    ctx: v.Context, change: dict[str, object], err: int
) -> None:
    pd, cq = v.PD(ctx), v.CQ(ctx, 16)
    attr = v.QPInitAttrEx(pd=pd, scq=cq, rcq=cq, comp_mask=X.IBV_QP_INIT_ATTR_PD)
    for name, value in change.items():
        setattr(attr, name, value)
    with pytest.raises(TcpverbsError) as info:
        v.QP(ctx, attr)
    assert info.value.errno == err


def test_each_way_of_making_a_qp_takes_its_own_attributes(ctx: v.Context) -> None:
    pd, cq = v.PD(ctx), v.CQ(ctx, 16)
    with pytest.raises(TcpverbsError, match="QPInitAttrEx goes with QP"):
        v.QP(pd, v.QPInitAttrEx(pd=pd, scq=cq, rcq=cq, comp_mask=1))  # type: ignore[arg-type]
    with pytest.raises(TcpverbsError, match="takes a QPInitAttrEx"):
        v.QP(ctx, v.QPInitAttr(scq=cq, rcq=cq))
    with v.Context(name="tcpv_lo", engine=ctx.engine) as other:
        attr = v.QPInitAttrEx(pd=v.PD(other), scq=cq, rcq=cq, comp_mask=1)
        with pytest.raises(TcpverbsError, match="another context"):
            v.QP(ctx, attr)


# -- address handles ---------------------------------------------------------------------
def test_an_address_handle_is_a_gid_on_port_1(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    route = v.GlobalRoute(dgid=ctx.query_gid(1, 0), sgid_index=0)
    attr = v.AHAttr(is_global=1, gr=route, port_num=1)
    ah = v.AH(pd, attr=attr)
    route.sgid_index = 5  # the AH took a copy
    assert ah.attr.gr is not None and ah.attr.gr.sgid_index == 0 and ah.pd is pd
    assert ah.attr.gr.dgid == ctx.query_gid(1, 0)
    pd.close()  # the AH goes with its PD
    assert ah.closed


@pytest.mark.parametrize(
    ("attr", "err"),
    [
        (v.AHAttr(is_global=0), errno.EINVAL),  # a RoCE-like port needs a GRH
        (v.AHAttr(is_global=1, gr=v.GlobalRoute()), errno.EINVAL),  # no dgid
        (v.AHAttr(is_global=1, gr=v.GlobalRoute(dgid="::1", sgid_index=99)), errno.EINVAL),
        (v.AHAttr(is_global=1, gr=v.GlobalRoute(dgid="::1"), port_num=2), errno.EINVAL),
    ],
)
def test_address_handles_a_tcpverbs_port_cannot_reach_are_refused(
    ctx: v.Context, attr: v.AHAttr, err: int
) -> None:
    with pytest.raises(TcpverbsError) as info:
        v.AH(v.PD(ctx), attr=attr)
    assert info.value.errno == err and "Failed to create AH" in str(info.value)


def test_an_address_handle_answers_a_ud_message_from_its_grh(ctx: v.Context) -> None:
    """``ibv_create_ah_from_wc``: back to the GRH's source, from the GID it came to."""
    pd = v.PD(ctx)
    local = ctx.query_gid(1, 0)
    sender = ipaddress.ip_address("192.0.2.7")
    mr = v.MR(pd, 128, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
    mr.write(build_grh(sender, ipaddress.ip_address(local_ip(local)), 40), 40, 16)
    wc = v.WC(byte_len=44, wc_flags=v.ibv_wc_flags.IBV_WC_GRH, src_qp=0x1200)
    for grh in (mr.buf + 16, mr.read(40, 16)):  # an address in an MR, or the bytes
        ah = v.AH(pd, wc=wc, grh=grh, port_num=1)
        assert ah.dest == v.GID(str(sender))
        assert ah.attr.gr is not None and ah.attr.gr.sgid_index == 0 and ah.attr.is_global


def local_ip(gid: v.GID) -> str:
    addr = ipaddress.IPv6Address(gid.raw)
    return str(addr.ipv4_mapped or addr)


@pytest.mark.parametrize(
    ("flags", "grh", "why"),
    [
        (0, b"", "no GRH"),  # a RoCE-like port cannot answer without the sender's address
        (1, bytes(40), "no IPv6 header"),  # 40 bytes that are not a GRH
        (1, bytes(12), "40 bytes"),
        (1, 0x1000, "not inside memory registered"),  # never a read of stray memory
        (1, 3.5, "address or a buffer"),
    ],
)
def test_an_address_handle_from_a_completion_checks_what_it_reads(
    ctx: v.Context, flags: int, grh: object, why: str
) -> None:
    with pytest.raises(TcpverbsError, match=why) as info:
        v.AH(v.PD(ctx), wc=v.WC(wc_flags=flags), grh=grh)
    assert info.value.errno == errno.EINVAL


# -- extended CQs ------------------------------------------------------------------------
def test_an_extended_cq_is_polled_one_completion_at_a_time(ctx: v.Context) -> None:
    ch = v.CompChannel(ctx)
    cq = v.CQEX(ctx, v.CqInitAttrEx(cqe=64, channel=ch, wc_flags=v.cq_ex.STANDARD_WC_FLAGS))
    pd = v.PD(ctx)
    mine = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(8, 8, 1, 1)), v.QPAttr())
    peer = make_endpoint(ctx)
    connect_by_gid(ctx, mine, peer.qp)
    assert cq.start_poll(v.PollCqAttr()) == errno.ENOENT  # empty: no session
    with pytest.raises(TcpverbsError) as none:
        cq.read_byte_len()
    assert none.value.errno == errno.EINVAL
    mr = v.MR(pd, 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
    for i in range(3):
        mine.post_recv(v.RecvWR(10 + i, 1, [v.SGE(mr.buf + 8 * i, 8, mr.lkey)]))
    src = v.MR(peer.pd, 8, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
    cq.req_notify()
    for i in range(3):
        op = v.ibv_wr_opcode.IBV_WR_SEND_WITH_IMM
        peer.qp.post_send(v.SendWR(i, op, 1, 100 + i, [v.SGE(src.buf, 5 + i, src.lkey)]))
    assert ch.get_cq_event(cq, timeout=10) is cq  # an extended CQ raises events as any
    cq.ack_events(1)
    from tcpverbs.testing import poll_until

    poll_until(peer.scq, 3)
    seen = []
    ret = cq.start_poll(v.PollCqAttr())
    while ret == errno.ENOENT:  # the last may still be on its way
        ret = cq.start_poll(v.PollCqAttr())
    try:
        while ret == 0:
            assert cq.status == v.ibv_wc_status.IBV_WC_SUCCESS
            assert cq.read_opcode() == v.ibv_wc_opcode.IBV_WC_RECV
            assert cq.read_qp_num() == mine.qp_num and cq.read_wc_flags() & 2  # WITH_IMM
            seen.append((cq.wr_id, cq.read_byte_len(), cq.read_imm_data()))
            ret = cq.poll_next()
            while ret == errno.ENOENT and len(seen) < 3:
                ret = cq.poll_next()
    finally:
        cq.end_poll()
    cq.end_poll()  # harmless without a session
    assert seen == [(10, 5, 100), (11, 6, 101), (12, 7, 102)]


W_EX = v.enums.ibv_create_cq_wc_flags
CQ_FLAGS = v.enums.ibv_create_cq_attr_flags
CQ_MASK = v.enums.ibv_cq_init_attr_mask


@pytest.mark.parametrize(
    ("attr", "err"),
    [
        (v.CqInitAttrEx(wc_flags=W_EX.IBV_WC_EX_WITH_COMPLETION_TIMESTAMP), errno.EOPNOTSUPP),
        (v.CqInitAttrEx(wc_flags=W_EX.IBV_WC_EX_WITH_TM_INFO), errno.EOPNOTSUPP),
        (v.CqInitAttrEx(wc_flags=1 << 30), errno.EINVAL),
        (
            v.CqInitAttrEx(
                comp_mask=CQ_MASK.IBV_CQ_INIT_ATTR_MASK_FLAGS,
                flags=CQ_FLAGS.IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN,
            ),
            errno.EOPNOTSUPP,
        ),
        (v.CqInitAttrEx(comp_mask=CQ_MASK.IBV_CQ_INIT_ATTR_MASK_PD), errno.EOPNOTSUPP),
        (v.CqInitAttrEx(comp_mask=1 << 9), errno.EINVAL),
        (v.CqInitAttrEx(cqe=10**9), errno.EINVAL),
        (v.CqInitAttrEx(comp_vector=2), errno.EINVAL),
    ],
)
def test_extended_cqs_refuse_what_a_tcpverbs_completion_cannot_carry(
    ctx: v.Context, attr: v.CqInitAttrEx, err: int
) -> None:
    with pytest.raises(TcpverbsError) as info:
        v.CQEX(ctx, attr)
    assert info.value.errno == err


def test_a_single_threaded_extended_cq_is_an_ordinary_one(ctx: v.Context) -> None:
    attr = v.CqInitAttrEx(
        cqe=8,
        comp_mask=CQ_MASK.IBV_CQ_INIT_ATTR_MASK_FLAGS,
        flags=CQ_FLAGS.IBV_CREATE_CQ_ATTR_SINGLE_THREADED,
    )
    cq = v.CQEX(ctx, attr)
    assert cq.cqe == 8 and cq.start_poll() == errno.ENOENT
    with pytest.raises(TcpverbsError) as info:
        ctx.query_rt_values_ex()
    assert info.value.errno == errno.EOPNOTSUPP


# -- extended QPs: the ibv_wr_* post API ---------------------------------------------------
OPS = v.enums.ibv_qp_create_send_ops_flags


def qp_ex_pair(ctx: v.Context, ops: int) -> tuple[v.QPEx, Endpoint, v.MR, v.MR]:
    """A QPEx connected to an ordinary endpoint, with an MR on each side."""
    pd, cq = v.PD(ctx), v.CQ(ctx, 64)
    attr = v.QPInitAttrEx(
        pd=pd,
        scq=cq,
        rcq=cq,
        cap=v.QPCap(16, 16, 2, 2),
        comp_mask=X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
        send_ops_flags=ops,
    )
    qp = v.QPEx(ctx, attr, v.QPAttr())
    peer = make_endpoint(ctx)
    connect_by_gid(ctx, qp, peer.qp, max_rd_atomic=4, max_dest_rd_atomic=4)
    return qp, peer, v.MR(pd, 64, ALL_ACCESS), v.MR(peer.pd, 64, ALL_ACCESS)


def test_a_batch_of_work_requests_goes_in_one_call(ctx: v.Context) -> None:
    from tcpverbs.testing import poll_until

    qp, peer, mine, theirs = qp_ex_pair(ctx, int(v.qp_ex.SUPPORTED_SEND_OPS))
    mine.write(b"sent....written.", 16)
    theirs.write((7).to_bytes(8, "little") + b"to read!", 16, 32)
    peer.qp.post_recv(v.RecvWR(50, 1, [v.SGE(theirs.buf, 8, theirs.lkey)]))
    signaled = v.ibv_send_flags.IBV_SEND_SIGNALED
    qp.wr_start()
    qp.wr_id, qp.wr_flags = 1, signaled
    qp.wr_send_imm(0x01020304)
    qp.wr_set_sge(v.SGE(mine.buf, 8, mine.lkey))
    qp.wr_id = 2
    qp.wr_rdma_write(theirs.rkey, theirs.buf + 8)
    qp.wr_set_sge_list([v.SGE(mine.buf + 8, 4, mine.lkey), v.SGE(mine.buf + 12, 4, mine.lkey)])
    qp.wr_id = 3
    qp.wr_rdma_read(theirs.rkey, theirs.buf + 40)
    qp.wr_set_sge(v.SGE(mine.buf + 16, 8, mine.lkey))
    qp.wr_id = 4
    qp.wr_atomic_fetch_add(theirs.rkey, theirs.buf + 32, 5)
    qp.wr_set_sge(v.SGE(mine.buf + 24, 8, mine.lkey))
    qp.wr_id = 5
    qp.wr_atomic_cmp_swp(theirs.rkey, theirs.buf + 32, 12, 99)
    qp.wr_set_sge(v.SGE(mine.buf + 32, 8, mine.lkey))
    assert qp.scq.poll(1)[0] == 0  # nothing goes before wr_complete
    qp.wr_complete()
    wcs = poll_until(qp.scq, 5)
    assert [(w.wr_id, w.status) for w in wcs] == [
        (i, v.ibv_wc_status.IBV_WC_SUCCESS) for i in range(1, 6)
    ]
    (recv,) = poll_until(peer.rcq)
    assert recv.imm_data == socket.htonl(0x01020304)  # given in host order, sent in network order
    assert theirs.read(16, 0) == b"sent....written."
    assert mine.read(8, 16) == b"to read!"
    assert int.from_bytes(mine.read(8, 24), "little") == 7  # fetched before the add
    assert int.from_bytes(mine.read(8, 32), "little") == 12  # compared equal: swapped
    assert int.from_bytes(theirs.read(8, 32), "little") == 99


def test_an_aborted_batch_posts_nothing_and_misuse_is_refused(ctx: v.Context) -> None:
    qp, _, mine, theirs = qp_ex_pair(ctx, OPS.IBV_QP_EX_WITH_RDMA_WRITE)
    with pytest.raises(TcpverbsError, match="wr_start first"):
        qp.wr_rdma_write(theirs.rkey, theirs.buf)
    qp.wr_start()
    with pytest.raises(TcpverbsError, match="no work request"):
        qp.wr_set_sge(v.SGE(mine.buf, 8, mine.lkey))
    with pytest.raises(TcpverbsError, match="not created with IBV_QP_EX_WITH_SEND"):
        qp.wr_send()
    qp.wr_rdma_write(theirs.rkey, theirs.buf)
    qp.wr_set_sge(v.SGE(mine.buf, 8, mine.lkey))
    qp.wr_abort()
    with pytest.raises(TcpverbsError, match="wr_start first"):
        qp.wr_complete()
    assert qp.statistics()["sq_outstanding"] == 0
    with pytest.raises(TcpverbsError, match="wr_start first") as no_batch:
        qp.wr_set_ud_addr(None, 1, 1)  # (offered: UD QPs take it)
    assert no_batch.value.errno == errno.EINVAL
    for call in (
        lambda: qp.wr_bind_mw(None, 0, None),
        lambda: qp.wr_local_inv(0),
        lambda: qp.wr_set_xrc_srqn(1),
    ):
        with pytest.raises(TcpverbsError) as info:
            call()
        assert info.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize(
    ("mask", "ops", "err"),
    [
        (X.IBV_QP_INIT_ATTR_PD, OPS.IBV_QP_EX_WITH_SEND, errno.EINVAL),  # no SEND_OPS_FLAGS
        (
            X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
            OPS.IBV_QP_EX_WITH_TSO,
            errno.EOPNOTSUPP,
        ),
        (X.IBV_QP_INIT_ATTR_PD | X.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, 1 << 40, errno.EINVAL),
    ],
)
def test_an_extended_qp_builds_only_what_a_tcpverbs_qp_sends(
    ctx: v.Context, mask: int, ops: int, err: int
) -> None:
    pd, cq = v.PD(ctx), v.CQ(ctx, 8)
    attr = v.QPInitAttrEx(pd=pd, scq=cq, rcq=cq, comp_mask=mask, send_ops_flags=ops)
    with pytest.raises(TcpverbsError) as info:
        v.QPEx(ctx, attr)
    assert info.value.errno == err


# -- MR: raw addresses and ibv_rereg_mr --------------------------------------------------
RR = v.enums.ibv_rereg_mr_flags
LOCAL = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


def write_to(writer: Endpoint, target: v.MR, data: bytes) -> v.ibv_wc_status:
    """RDMA WRITE *data* into *target* from *writer*; the writer's completion status."""
    from tcpverbs.testing import poll_until

    src = v.MR(writer.pd, len(data), LOCAL)
    src.write(data, len(data))
    wr = v.SendWR(1, v.ibv_wr_opcode.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(src.buf, len(data), src.lkey)])
    wr.set_wr_rdma(target.rkey, target.buf)
    writer.qp.post_send(wr)
    return v.ibv_wc_status(poll_until(writer.scq)[0].status)


def test_rereg_changes_access_and_keeps_the_keys(ctx: v.Context) -> None:
    from tcpverbs.testing import qp_pair

    a, b = qp_pair(ctx)
    mr = v.MR(b.pd, 16, LOCAL)
    keys = (mr.lkey, mr.rkey)
    mr.rereg(
        RR.IBV_REREG_MR_CHANGE_ACCESS, access=LOCAL | v.ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    )
    assert (mr.lkey, mr.rkey) == keys and mr.access & v.ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    assert write_to(a, mr, b"now writable....") == v.ibv_wc_status.IBV_WC_SUCCESS
    assert mr.read(16, 0) == b"now writable...."
    mr.rereg(RR.IBV_REREG_MR_CHANGE_ACCESS, access=LOCAL)
    assert write_to(a, mr, b"refused.........") == v.ibv_wc_status.IBV_WC_REM_ACCESS_ERR


def test_rereg_moves_an_mr_to_another_pd_and_to_other_memory(ctx: v.Context) -> None:
    import ctypes

    old_pd, new_pd = v.PD(ctx), v.PD(ctx)
    mr = v.MR(old_pd, 64, LOCAL)
    mr.rereg(RR.IBV_REREG_MR_CHANGE_PD, pd=new_pd)
    assert mr.pd is new_pd
    old_pd.close()
    assert not mr.closed  # it depends on its new PD now
    raw = ctypes.create_string_buffer(b"raw memory of the program", 32)
    mr.rereg(RR.IBV_REREG_MR_CHANGE_TRANSLATION, addr=ctypes.addressof(raw), length=25)
    assert (mr.buf, mr.length) == (ctypes.addressof(raw), 25)
    assert mr.read(25, 0) == b"raw memory of the program"
    mr.write(b"RAW", 3)
    assert raw.value.startswith(b"RAW memory")
    new_pd.close()
    assert mr.closed


def send_to(sender: Endpoint, receiver: Endpoint, target: v.MR, data: bytes) -> tuple[int, int]:
    """A receive into *target* was posted already; SEND *data*: (sender's, receiver's)
    completion status."""
    from tcpverbs.testing import poll_until

    src = v.MR(sender.pd, len(data), LOCAL)
    src.write(data, len(data))
    sge = v.SGE(src.buf, len(data), src.lkey)
    sender.qp.post_send(v.SendWR(2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [sge]))
    return poll_until(sender.scq)[0].status, poll_until(receiver.rcq)[0].status


def post_recv_into(end: Endpoint, mr: v.MR, length: int) -> None:
    end.qp.post_recv(v.RecvWR(9, 1, [v.SGE(mr.buf, length, mr.lkey)]))


def test_a_posted_receive_meets_the_new_registration_when_it_is_used(
    ctx: v.Context, wire: str
) -> None:
    """ibv_rereg_mr leaves posted receives queued; the lkey is checked when a message
    comes.  Still covered: the payload lands."""
    from tcpverbs.testing import qp_pair

    a, b = qp_pair(ctx, wire)
    mr = v.MR(b.pd, 16, LOCAL)
    post_recv_into(b, mr, 16)
    more = LOCAL | v.ibv_access_flags.IBV_ACCESS_REMOTE_READ
    mr.rereg(RR.IBV_REREG_MR_CHANGE_ACCESS, access=more)
    ok = v.ibv_wc_status.IBV_WC_SUCCESS
    assert send_to(a, b, mr, b"after the rereg.") == (ok, ok)
    assert mr.read(16, 0) == b"after the rereg."


@pytest.mark.parametrize("change", ["pd", "translation"])
def test_a_posted_receive_the_rereg_took_away_fails_when_used_and_reset_recovers(
    ctx: v.Context, change: str
) -> None:
    """The receive completes with LOC_PROT_ERR, the SEND with REM_OP_ERR (rdma-core's
    test_mr_rereg_pd / _addr); RESET and a new connection carry traffic again."""
    import ctypes

    from tcpverbs.testing import connect, qp_pair

    a, b = qp_pair(ctx)
    mr = v.MR(b.pd, 16, LOCAL)
    post_recv_into(b, mr, 16)
    other = ctypes.create_string_buffer(16)
    if change == "pd":
        mr.rereg(RR.IBV_REREG_MR_CHANGE_PD, pd=v.PD(ctx))
    else:
        mr.rereg(RR.IBV_REREG_MR_CHANGE_TRANSLATION, addr=ctypes.addressof(other), length=16)
    W = v.ibv_wc_status
    assert send_to(a, b, mr, b"nowhere to land.") == (W.IBV_WC_REM_OP_ERR, W.IBV_WC_LOC_PROT_ERR)
    assert b.qp.qp_state == S.IBV_QPS_ERR
    for end in (a, b):
        end.qp.modify(v.QPAttr(qp_state=S.IBV_QPS_RESET), v.ibv_qp_attr_mask.IBV_QP_STATE)
    connect(a.qp, b.qp)
    if change == "pd":
        mr.rereg(RR.IBV_REREG_MR_CHANGE_PD, pd=b.pd)
    post_recv_into(b, mr, 16)
    assert send_to(a, b, mr, b"lands after all.") == (W.IBV_WC_SUCCESS, W.IBV_WC_SUCCESS)
    assert mr.read(16, 0) == b"lands after all."


def test_rereg_revokes_a_send_that_uses_the_mr(ctx: v.Context) -> None:
    """A send WR is not checked again: rereg under it revokes it, as dereg does."""
    from tcpverbs.testing import poll_until, qp_pair

    a, _ = qp_pair(ctx)
    mr = v.MR(a.pd, 16, LOCAL)
    # no receive at b: the SEND waits for one (RNR), so it is still the QP's when rereg comes
    sge = v.SGE(mr.buf, 16, mr.lkey)
    a.qp.post_send(v.SendWR(3, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [sge]))
    mr.rereg(RR.IBV_REREG_MR_CHANGE_ACCESS, access=LOCAL)
    assert poll_until(a.scq)[0].status == v.ibv_wc_status.IBV_WC_LOC_PROT_ERR
    assert a.qp.qp_state == S.IBV_QPS_ERR


def test_rereg_and_raw_addresses_refuse_bad_input(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    mr = v.MR(pd, 64, LOCAL)
    for flags, kwargs, err in (
        (0, {}, errno.EINVAL),
        (1 << 5, {}, errno.EINVAL),
        (RR.IBV_REREG_MR_CHANGE_PD, {"pd": None}, errno.EINVAL),
        (
            RR.IBV_REREG_MR_CHANGE_ACCESS,
            {"access": LOCAL | v.ibv_access_flags.IBV_ACCESS_MW_BIND},
            errno.EOPNOTSUPP,
        ),
        (RR.IBV_REREG_MR_CHANGE_TRANSLATION, {"addr": 4096, "length": 64}, errno.EFAULT),
    ):
        with pytest.raises(TcpverbsError) as info:
            mr.rereg(flags, **kwargs)  # type: ignore[arg-type]
        assert info.value.errno == err
    assert not mr.closed and mr.read(4, 0) == bytes(4)  # a refused rereg changed nothing
    with pytest.raises(TcpverbsError) as unmapped:
        v.MR(pd, 64, LOCAL, address=4096)  # the first page is never mapped
    assert unmapped.value.errno == errno.EFAULT
