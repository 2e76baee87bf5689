"""The verbs layer on its own: Context, PD, MR, CQ, QP over the in-memory FakeEngine.

No data moves here: the fake engine (``tcpverbs.testing.FakeEngine``) records every call
the verbs objects make and answers as a test programs it, so these tests pin down what
the verbs layer itself owns -- the choice of engine, validation, the QP state machine,
the wording of refused posts, WC construction, the async-event queue and the object tree.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator

import pytest

import tcpverbs as v
from tcpverbs.engine.api import EngineOptions, PostFailure, PostFault
from tcpverbs.testing import FakeCQ, FakeEngine, FakeQP, chain, tcp_socket_pair

S = v.ibv_qp_state
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
ALL_ACCESS = (
    v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
    | v.ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    | v.ibv_access_flags.IBV_ACCESS_REMOTE_READ
    | v.ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC
)
QP_CALLS = ("modify", "attach", "fail", "reset", "destroy_qp")


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fctx(fake: FakeEngine) -> Iterator[v.Context]:
    with v.Context(name="tcpv_lo", engine=fake.factory) as context:
        yield context


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = tcp_socket_pair()
    yield a, b
    a.close()
    b.close()


def make_qp(
    ctx: v.Context,
    fake: FakeEngine,
    wire: str = "rc",
    sq_sig_all: int = 1,
    cap: v.QPCap | None = None,
) -> tuple[v.QP, FakeQP]:
    """A QP in RESET (own PD and CQs) and the fake engine QP behind it."""
    pd = v.PD(ctx)
    scq, rcq = v.CQ(ctx, 16), v.CQ(ctx, 16)
    init = v.QPInitAttr(
        scq=scq,
        rcq=rcq,
        cap=cap or v.QPCap(8, 8, 2, 2, 32),
        sq_sig_all=sq_sig_all,
        wire=wire,  # type: ignore[arg-type]
    )
    qp = v.QP(pd, init)
    return qp, fake.qps[qp.qp_num]


def qp_calls(fake: FakeEngine) -> list[tuple[object, ...]]:
    return [call for call in fake.calls if call[0] in QP_CALLS]


def to_rts(qp: v.QP, sock: socket.socket) -> None:
    qp.to_init(v.QPAttr(qp_access_flags=ALL_ACCESS))
    qp.to_rtr(v.QPAttr(sock=sock))
    qp.to_rts(v.QPAttr())


# -- choosing the engine ---------------------------------------------------------------------


def test_a_factory_chooses_the_engine(fake: FakeEngine) -> None:
    """Context(engine=factory) runs on what the factory built, and says so."""
    with v.Context(name="tcpv_lo", engine=fake.factory, zerocopy_min=4096, sq_poll_us=50) as ctx:
        assert ctx.engine == "fake"
        stats = ctx.statistics()
        assert stats["engine"] == "fake"
        assert stats["syscalls"] == 0
    assert fake.calls[0] == ("open", "tcpv_lo", EngineOptions(zerocopy_min=4096, sq_poll_us=50))
    assert fake.calls[-1] == ("close",)


def test_the_fake_engine_class_is_a_factory() -> None:
    """The FakeEngine class itself can be passed as the engine factory."""
    with v.Context(name="tcpv_lo", engine=FakeEngine) as ctx:
        assert ctx.engine == "fake"
        assert ctx.statistics()["engine"] == "fake"


def test_an_unknown_engine_name_is_einval() -> None:
    """Context(engine="nonsense") raises EINVAL naming the choice."""
    with pytest.raises(v.TcpverbsError) as info:
        v.Context(name="tcpv_lo", engine="nonsense")
    assert info.value.errno == errno.EINVAL
    assert "engine='nonsense'" in str(info.value)


def test_an_unknown_engine_in_the_environment_is_einval(monkeypatch: pytest.MonkeyPatch) -> None:
    """TCPVERBS_ENGINE=nonsense makes Context() raise EINVAL naming the variable."""
    monkeypatch.setenv("TCPVERBS_ENGINE", "nonsense")
    with pytest.raises(v.TcpverbsError) as info:
        v.Context(name="tcpv_lo")
    assert info.value.errno == errno.EINVAL
    assert "TCPVERBS_ENGINE='nonsense'" in str(info.value)


def test_an_explicit_engine_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake: FakeEngine
) -> None:
    """An engine passed to Context() is used even when TCPVERBS_ENGINE names none."""
    monkeypatch.setenv("TCPVERBS_ENGINE", "nonsense")
    with v.Context(name="tcpv_lo", engine=fake.factory) as ctx:
        assert ctx.engine == "fake"


# -- memory regions ------------------------------------------------------------------------


def test_mr_registration_reaches_the_engine(fctx: v.Context, fake: FakeEngine) -> None:
    """MR() calls reg_mr with its key, its PD's handle and its access; close calls dereg_mr."""
    pd_a, pd_b = v.PD(fctx), v.PD(fctx)
    assert pd_a.handle != pd_b.handle
    mr = v.MR(pd_b, 4096, ALL_ACCESS)
    assert fake.called("reg_mr") == [("reg_mr", mr.lkey, pd_b.handle, int(ALL_ACCESS))]
    assert mr.lkey == mr.rkey
    pd, view, addr, access = fake.mrs[mr.lkey]
    assert (pd, len(view), addr, access) == (pd_b.handle, 4096, mr.buf, int(ALL_ACCESS))
    mr.close()
    mr.close()  # idempotent: one dereg_mr only
    assert fake.called("dereg_mr") == [("dereg_mr", mr.lkey)]
    assert mr.lkey not in fake.mrs


def test_a_caller_buffer_is_registered_in_place(fctx: v.Context, fake: FakeEngine) -> None:
    """MR(address=buf) hands the engine a view of the caller's own bytes."""
    buf = bytearray(64)
    mr = v.MR(v.PD(fctx), 32, LOCAL_WRITE, address=buf)
    _, view, _, _ = fake.mrs[mr.lkey]
    view[0:3] = b"abc"
    assert buf[:3] == b"abc"
    assert len(view) == 32
    mr.close()


def test_invalid_mrs_never_reach_the_engine(fctx: v.Context, fake: FakeEngine) -> None:
    """Bad access flags or lengths raise EINVAL, and access a TCP device does not offer
    (MW_BIND) EOPNOTSUPP, before reg_mr is called."""
    pd = v.PD(fctx)
    remote_write = v.ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    cases = ((4096, remote_write, errno.EINVAL), (0, LOCAL_WRITE, errno.EINVAL))
    for length, access, err in (*cases, (4096, 1 << 4, errno.EOPNOTSUPP)):
        with pytest.raises(v.TcpverbsError) as info:
            v.MR(pd, length, access)
        assert info.value.errno == err
    assert fake.called("reg_mr") == []


# -- QP creation and the state machine ------------------------------------------------------


def test_create_qp_passes_the_spec(fctx: v.Context, fake: FakeEngine) -> None:
    """create_qp gets the QP number, PD handle, caps, wire, signalling and the CQs' engines."""
    pd = v.PD(fctx)
    scq, rcq = v.CQ(fctx, 16), v.CQ(fctx, 32)
    init = v.QPInitAttr(scq=scq, rcq=rcq, cap=v.QPCap(5, 6, 3, 4, 64), sq_sig_all=0, wire="stream")
    qp = v.QP(pd, init)
    assert fake.called("create_qp") == [("create_qp", qp.qp_num)]
    spec = fake.qps[qp.qp_num].spec
    assert (spec.qp_num, spec.pd, spec.wire, spec.sq_sig_all) == (
        qp.qp_num,
        pd.handle,
        "stream",
        False,
    )
    caps = spec.caps
    assert (
        caps.max_send_wr,
        caps.max_recv_wr,
        caps.max_send_sge,
        caps.max_recv_sge,
        caps.max_inline_data,
    ) == (5, 6, 3, 4, 64)
    assert spec.scq is fake.cqs[scq.handle]
    assert spec.rcq is fake.cqs[rcq.handle]
    assert fake.called("create_cq") == [
        ("create_cq", scq.handle, 16),
        ("create_cq", rcq.handle, 32),
    ]
    assert qp.qp_state is S.IBV_QPS_RESET


def test_invalid_qp_init_attrs_never_reach_the_engine(fctx: v.Context, fake: FakeEngine) -> None:
    """A bad wire name or cap raises EINVAL before create_qp is called."""
    pd, cq = v.PD(fctx), v.CQ(fctx, 4)
    bad = [
        v.QPInitAttr(scq=cq, rcq=cq, wire="udp"),  # type: ignore[arg-type]
        v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(max_send_wr=0)),
        v.QPInitAttr(scq=cq, rcq=None),
    ]
    for init in bad:
        with pytest.raises(v.TcpverbsError) as info:
            v.QP(pd, init)
        assert info.value.errno == errno.EINVAL
    assert fake.called("create_qp") == []


def test_reset_init_rtr_rts(
    fctx: v.Context, fake: FakeEngine, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """RESET -> INIT -> RTR (socket handoff) -> RTS: one modify per step, then attach at RTR."""
    a, b = sockets
    qp, fq = make_qp(fctx, fake)
    n = qp.qp_num
    qp.to_init(v.QPAttr(qp_access_flags=ALL_ACCESS))
    assert qp.qp_state is S.IBV_QPS_INIT
    assert fq.params is not None and fq.params.access_flags == int(ALL_ACCESS)

    rtr = v.QPAttr(sock=a, min_rnr_timer=5, max_dest_rd_atomic=4)
    qp.to_rtr(rtr)
    assert qp.qp_state is S.IBV_QPS_RTR
    assert rtr.sock is None  # the library owns the socket now
    assert a.fileno() == -1  # ... the caller's object let go of it
    assert fq.sock is not None and fq.sock.getpeername() == b.getsockname()
    assert (fq.params.min_rnr_timer, fq.params.max_dest_rd_atomic) == (5, 4)
    assert fq.peer_hello is None

    qp.to_rts(v.QPAttr(timeout=20, retry_cnt=3, rnr_retry=6, max_rd_atomic=2))
    assert qp.qp_state is S.IBV_QPS_RTS
    assert (
        fq.params.timeout,
        fq.params.retry_cnt,
        fq.params.rnr_retry,
        fq.params.max_rd_atomic,
        fq.params.min_rnr_timer,  # kept from RTR
    ) == (20, 3, 6, 2, 5)
    assert qp_calls(fake) == [
        ("modify", n, S.IBV_QPS_RESET, S.IBV_QPS_INIT),
        ("modify", n, S.IBV_QPS_INIT, S.IBV_QPS_RTR),
        ("attach", n),
        ("modify", n, S.IBV_QPS_RTR, S.IBV_QPS_RTS),
    ]
    attr, _ = qp.query()
    assert attr.qp_state == attr.cur_qp_state == S.IBV_QPS_RTS
    assert attr.timeout == 20


def test_qp_attr_to_init_in_the_constructor(fctx: v.Context, fake: FakeEngine) -> None:
    """QP(pd, init, qp_attr) moves the new QP to INIT at once, as pyverbs does."""
    pd, cq = v.PD(fctx), v.CQ(fctx, 4)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq), v.QPAttr(qp_access_flags=LOCAL_WRITE))
    assert qp.qp_state is S.IBV_QPS_INIT
    assert qp_calls(fake) == [("modify", qp.qp_num, S.IBV_QPS_RESET, S.IBV_QPS_INIT)]


@pytest.mark.parametrize(
    ("steps", "target"),
    [
        (0, S.IBV_QPS_RTS),
        (0, S.IBV_QPS_RTR),
        (1, S.IBV_QPS_RTS),
        (0, S.IBV_QPS_SQD),
    ],
)
def test_invalid_transitions_call_nothing(
    fctx: v.Context, fake: FakeEngine, steps: int, target: v.ibv_qp_state
) -> None:
    """An illegal transition raises EINVAL naming it, and the engine hears nothing."""
    qp, _ = make_qp(fctx, fake)
    if steps:
        qp.to_init(v.QPAttr())
    cur = qp.qp_state
    before = list(fake.calls)
    with pytest.raises(v.TcpverbsError) as info:
        qp.modify(v.QPAttr(qp_state=target), v.ibv_qp_attr_mask.IBV_QP_STATE)
    assert info.value.errno == errno.EINVAL
    assert f"invalid QP state transition {cur.name} -> {target.name}" in str(info.value)
    assert fake.calls == before
    assert qp.qp_state is cur


def test_bad_attributes_call_nothing(
    fctx: v.Context, fake: FakeEngine, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """Missing mask bits, bad values, a wrong cur_qp_state or no connection: EINVAL, no call."""
    qp, _ = make_qp(fctx, fake)
    M = v.ibv_qp_attr_mask
    init_mask = M.IBV_QP_STATE | M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS
    before = list(fake.calls)
    cases: list[tuple[v.QPAttr, int, str]] = [
        (v.QPAttr(qp_state=S.IBV_QPS_INIT), M.IBV_QP_STATE, "requires attribute mask"),
        (v.QPAttr(qp_state=S.IBV_QPS_INIT, port_num=2), init_mask, "port_num 2"),
        (
            v.QPAttr(qp_state=S.IBV_QPS_INIT, qp_access_flags=1 << 4),
            init_mask,
            "unsupported qp_access_flags 0x10",
        ),
        (
            v.QPAttr(qp_state=S.IBV_QPS_INIT, cur_qp_state=S.IBV_QPS_INIT),
            M.IBV_QP_STATE | M.IBV_QP_CUR_STATE,
            "cur_qp_state IBV_QPS_INIT but the QP is in IBV_QPS_RESET",
        ),
        (v.QPAttr(), 1 << 30, "unsupported attribute mask bits"),
    ]
    for attr, mask, words in cases:
        with pytest.raises(v.TcpverbsError) as info:
            qp.modify(attr, mask)
        assert info.value.errno == errno.EINVAL
        assert words in str(info.value)
    assert fake.calls == before

    qp.to_init(v.QPAttr())
    before = list(fake.calls)
    with pytest.raises(v.TcpverbsError) as info:
        qp.to_rtr(v.QPAttr())  # neither a socket nor an address vector
    assert info.value.errno == errno.EINVAL
    assert "needs a connection" in str(info.value)
    listener = socket.socket()
    try:
        with pytest.raises(v.TcpverbsError) as info:
            qp.to_rtr(v.QPAttr(sock=listener))  # not connected
        assert "not connected" in str(info.value)
    finally:
        listener.close()
    assert fake.calls == before
    assert qp.qp_state is S.IBV_QPS_INIT


def test_a_qp_already_in_err_refuses_rtr_with_the_reason(
    fctx: v.Context, fake: FakeEngine, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """INIT -> RTR of a QP the engine put in ERR before the call: EINVAL with the engine's
    reason; nothing is asked of the engine and the socket stays the caller's."""
    a, _ = sockets
    qp, fq = make_qp(fctx, fake)
    qp.to_init(v.QPAttr())
    fq.state = S.IBV_QPS_ERR
    fq.error = v.TcpverbsError(errno.ECONNRESET, "peer reset the connection")
    before = list(fake.calls)
    attr = v.QPAttr(sock=a)
    with pytest.raises(v.TcpverbsError) as info:
        qp.to_rtr(attr)
    assert info.value.errno == errno.EINVAL
    message = str(info.value)
    assert "IBV_QPS_ERR -> IBV_QPS_RTR" in message
    assert "peer reset the connection" in message
    assert fake.calls == before
    assert attr.sock is a and a.fileno() != -1  # not taken


def test_a_qp_that_goes_to_err_meanwhile_closes_the_handed_socket(
    fctx: v.Context, fake: FakeEngine, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """The engine moving the QP to ERR between the verbs layer's look and its modify call:
    EINVAL with the engine's reason, no attach, the taken socket closed, attributes kept."""
    a, b = sockets
    qp, fq = make_qp(fctx, fake)
    qp.to_init(v.QPAttr())
    fq.before_modify = lambda q: q.fail(v.TcpverbsError(errno.ECONNRESET, "peer vanished"))
    with pytest.raises(v.TcpverbsError) as info:
        qp.to_rtr(v.QPAttr(sock=a, min_rnr_timer=3))
    assert info.value.errno == errno.EINVAL
    assert "invalid QP state transition IBV_QPS_ERR -> IBV_QPS_RTR" in str(info.value)
    assert "peer vanished" in str(info.value)
    assert fake.called("modify")[-1] == ("modify", qp.qp_num, S.IBV_QPS_INIT, S.IBV_QPS_RTR)
    assert fake.called("attach") == []
    assert a.fileno() == -1  # the QP took (detached) it ...
    b.settimeout(5)
    assert b.recv(1) == b""  # ... and closed it: the peer sees the end of the stream
    assert qp.qp_state is S.IBV_QPS_ERR
    attr, _ = qp.query()
    assert attr.min_rnr_timer == v.QPAttr().min_rnr_timer  # the RTR attributes were undone
    event = fctx.get_async_event(timeout=0)
    assert (event.element, event.event_type, event.reason) == (
        qp,
        v.ibv_event_type.IBV_EVENT_QP_FATAL,
        "peer vanished",
    )


def test_to_reset_and_to_err(fctx: v.Context, fake: FakeEngine) -> None:
    """Moving to RESET calls reset, to ERR calls fail with ECANCELED; INIT works again."""
    qp, fq = make_qp(fctx, fake)
    n = qp.qp_num
    qp.to_init(v.QPAttr())
    qp.modify(v.QPAttr(qp_state=S.IBV_QPS_ERR), v.ibv_qp_attr_mask.IBV_QP_STATE)
    assert qp.qp_state is S.IBV_QPS_ERR
    assert qp.error is not None and qp.error.errno == errno.ECANCELED
    qp.modify(v.QPAttr(qp_state=S.IBV_QPS_RESET), v.ibv_qp_attr_mask.IBV_QP_STATE)
    assert qp.qp_state is S.IBV_QPS_RESET
    assert qp.error is None
    qp.to_init(v.QPAttr())
    assert qp_calls(fake) == [
        ("modify", n, S.IBV_QPS_RESET, S.IBV_QPS_INIT),
        ("fail", n, errno.ECANCELED),
        ("reset", n),
        ("modify", n, S.IBV_QPS_RESET, S.IBV_QPS_INIT),
    ]
    assert fq.state is S.IBV_QPS_INIT


# -- posting -------------------------------------------------------------------------------

# (fault, value, limit, errno on rc, errno on stream, words in the message)
FAULTS = [
    (PostFault.BAD_STATE, S.IBV_QPS_INIT, 0, errno.EINVAL, errno.EINVAL, "on a QP in IBV_QPS_INIT"),
    (
        PostFault.BAD_OPCODE,
        v.ibv_wr_opcode.IBV_WR_TSO,
        0,
        errno.EOPNOTSUPP,
        errno.EINVAL,
        "opcode IBV_WR_TSO is not supported",
    ),
    (PostFault.TOO_MANY_SGE, 5, 2, errno.EINVAL, errno.EINVAL, "num_sge 5 exceeds"),
    (PostFault.SGE_COUNT, 3, 1, errno.EINVAL, errno.EINVAL, "num_sge 3 but 1 SGEs given"),
    (PostFault.INLINE_TOO_LONG, 100, 32, errno.EINVAL, errno.EINVAL, "100 bytes exceeds"),
    (
        PostFault.NOT_INLINABLE,
        v.ibv_wr_opcode.IBV_WR_RDMA_READ,
        0,
        errno.EINVAL,
        errno.EINVAL,
        "IBV_WR_RDMA_READ cannot be inline",
    ),
    (PostFault.ATOMIC_SHAPE, 2, 16, errno.EINVAL, errno.EINVAL, "got 2 SGEs of 16 bytes"),
    (PostFault.QUEUE_FULL, 0, 8, errno.ENOMEM, errno.ENOMEM, "send queue full (8 WRs"),
    (  # the engine names the field (here "wr_id"); the verbs layer shows its value
        PostFault.BAD_FIELD,
        0,
        64,
        errno.EINVAL,
        errno.EINVAL,
        "wr_id must be an int in 0..2^64-1, got int 10",
    ),
]


def test_every_post_fault_is_covered() -> None:
    """The table below names every PostFault but SETUP_FAILED (tested on its own)."""
    assert {row[0] for row in FAULTS} | {PostFault.SETUP_FAILED} == set(PostFault)


@pytest.mark.parametrize("wire", ["rc", "stream"])
@pytest.mark.parametrize(
    ("fault", "value", "limit", "rc_errno", "stream_errno", "words"),
    FAULTS,
    ids=[row[0].name for row in FAULTS],
)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_post_faults_are_worded(
    fctx: v.Context,
    fake: FakeEngine,
    wire: str,
    fault: PostFault,
    value: int,
    limit: int,
    rc_errno: int,
    stream_errno: int,
    words: str,
    index: int,
) -> None:
    """A refused WR raises PostError with the fault's errno and words, naming the WR at
    the failure's index; the WRs before it were posted."""
    qp, fq = make_qp(fctx, fake, wire)
    wrs = [v.SendWR(wr_id=100 + i) for i in range(3)]
    field = "wr_id" if fault is PostFault.BAD_FIELD else ""
    fq.refuse = PostFailure(index, fault, value, limit, field)
    with pytest.raises(v.PostError) as info:
        qp.post_send(chain(wrs))
    err = info.value
    assert err.errno == (rc_errno if wire == "rc" else stream_errno)
    assert words in str(err)
    assert f"work request #{index} of the posted list" in str(err)
    assert err.bad_wr is wrs[index]
    assert err.bad_wr_index == index
    assert fq.send_wrs == wrs[:index]
    assert fake.called("post_send") == [("post_send", qp.qp_num, 3)]


def test_a_refused_receive_names_the_receive_queue(fctx: v.Context, fake: FakeEngine) -> None:
    """QUEUE_FULL on post_recv is ENOMEM about the receive queue, naming the RecvWR."""
    qp, fq = make_qp(fctx, fake)
    wrs = [v.RecvWR(wr_id=i) for i in range(3)]
    fq.refuse = PostFailure(2, PostFault.QUEUE_FULL, 0, 8)
    with pytest.raises(v.PostError) as info:
        qp.post_recv(chain(wrs))
    assert info.value.errno == errno.ENOMEM
    assert "receive queue full (8 WRs outstanding" in str(info.value)
    assert info.value.bad_wr is wrs[2]
    assert info.value.bad_wr_index == 2
    assert fq.recv_wrs == wrs[:2]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_setup_failed_takes_the_setup_errors_errno(
    fctx: v.Context, fake: FakeEngine, index: int
) -> None:
    """SETUP_FAILED raises the errno of the error the connection set-up failed with."""
    qp, fq = make_qp(fctx, fake)
    fq.fail(v.TcpverbsError(errno.ECONNREFUSED, "the peer refused the hello"), setup=True)
    wrs = [v.SendWR(wr_id=i) for i in range(3)]
    fq.refuse = PostFailure(index, PostFault.SETUP_FAILED)
    with pytest.raises(v.PostError) as info:
        qp.post_send(chain(wrs))
    assert info.value.errno == errno.ECONNREFUSED
    assert "connection set-up failed: the peer refused the hello" in str(info.value)
    assert info.value.bad_wr is wrs[index]
    assert info.value.bad_wr_index == index


def test_setup_failed_without_an_error_is_eio(fctx: v.Context, fake: FakeEngine) -> None:
    """SETUP_FAILED from an engine that kept no error is EIO."""
    qp, fq = make_qp(fctx, fake)
    fq.refuse = PostFailure(0, PostFault.SETUP_FAILED)
    with pytest.raises(v.PostError) as info:
        qp.post_send(v.SendWR())
    assert info.value.errno == errno.EIO


def test_posted_work_completes_through_the_cq(
    fctx: v.Context, fake: FakeEngine, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """Signaled sends and every receive come back as WCs; unsignaled sends do not."""
    qp, _ = make_qp(fctx, fake, sq_sig_all=0)
    to_rts(qp, sockets[0])
    mr = v.MR(qp.pd, 64, LOCAL_WRITE)
    signaled = v.ibv_send_flags.IBV_SEND_SIGNALED
    wrs = [
        v.SendWR(wr_id=1, num_sge=1, sg=[v.SGE(mr.buf, 10, mr.lkey)], send_flags=signaled),
        v.SendWR(wr_id=2, send_flags=0),
        v.SendWR(wr_id=3, opcode=v.ibv_wr_opcode.IBV_WR_RDMA_WRITE, send_flags=signaled),
    ]
    qp.post_send(chain(wrs))
    qp.post_recv(chain([v.RecvWR(wr_id=7), v.RecvWR(wr_id=8)]))
    n, wcs = qp.scq.poll(10)
    assert n == 2
    assert [(wc.wr_id, wc.opcode, wc.byte_len, wc.qp_num) for wc in wcs] == [
        (1, v.ibv_wc_opcode.IBV_WC_SEND, 10, qp.qp_num),
        (3, v.ibv_wc_opcode.IBV_WC_RDMA_WRITE, 0, qp.qp_num),
    ]
    assert [wc.wr_id for wc in qp.rcq.wait(10, timeout=0)] == [7, 8]


def test_posting_on_a_closed_qp_is_ebadf(fctx: v.Context, fake: FakeEngine) -> None:
    """post_send / post_recv on a closed QP raise EBADF without calling the engine."""
    qp, _ = make_qp(fctx, fake)
    qp.close()
    for post in (lambda: qp.post_send(v.SendWR()), lambda: qp.post_recv(v.RecvWR())):
        with pytest.raises(v.ClosedResourceError) as info:
            post()
        assert info.value.errno == errno.EBADF
    assert fake.called("post_send") == fake.called("post_recv") == []


# -- completion queues ---------------------------------------------------------------------


def fake_cq(fake: FakeEngine, cq: v.CQ) -> FakeCQ:
    return fake.cqs[cq.handle]


def test_poll_builds_wcs_from_records(fctx: v.Context, fake: FakeEngine) -> None:
    """CQ.poll puts the nine fields of each record into the right WC attributes."""
    cq = v.CQ(fctx, 8)
    record = (11, 5, 129, 22, 33, 44, 55, 66, 2)
    fake_cq(fake, cq).push(record)
    fake_cq(fake, cq).push((12, 0, 0, 0, 0, 0, 0, 0, 0))
    fake_cq(fake, cq).push((13, 0, 0, 0, 0, 0, 0, 0, 0))
    assert len(cq) == 3
    n, wcs = cq.poll(2)
    assert n == 2
    wc = wcs[0]
    fields = (
        wc.wr_id,
        wc.status,
        wc.opcode,
        wc.vendor_err,
        wc.byte_len,
        wc.qp_num,
        wc.src_qp,
        wc.imm_data,
        wc.wc_flags,
    )
    assert fields == record
    assert wc.status == v.ibv_wc_status.IBV_WC_WR_FLUSH_ERR
    assert wc.opcode == v.ibv_wc_opcode.IBV_WC_RECV_RDMA_WITH_IMM
    assert wc.wc_flags == v.ibv_wc_flags.IBV_WC_WITH_IMM
    assert (wc.pkey_index, wc.slid, wc.sl, wc.dlid_path_bits) == (0, 0, 0, 0)
    assert wcs[1].wr_id == 12
    assert len(cq) == 1
    assert fake.called("poll") == [("poll", cq.handle, 2)]
    assert cq.poll(5)[0] == 1
    assert cq.poll() == (0, [])


def test_poll_refuses_a_bad_count(fctx: v.Context, fake: FakeEngine) -> None:
    """poll(0) and wait(0) raise EINVAL without asking the engine."""
    cq = v.CQ(fctx, 8)
    for call in (lambda: cq.poll(0), lambda: cq.wait(0)):
        with pytest.raises(v.TcpverbsError) as info:
            call()
        assert info.value.errno == errno.EINVAL
    assert fake.called("poll") == fake.called("wait") == []


def test_an_overrun_is_eoverflow_saying_how_many(fctx: v.Context, fake: FakeEngine) -> None:
    """An engine Overrun becomes EOVERFLOW saying how many completions were lost, once."""
    cq = v.CQ(fctx, 8)
    fake_cq(fake, cq).lost = 7
    with pytest.raises(v.TcpverbsError) as info:
        cq.poll()
    assert info.value.errno == errno.EOVERFLOW
    assert "7 completions did not fit in 8" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert cq.poll() == (0, [])
    fake_cq(fake, cq).lost = 2
    with pytest.raises(v.TcpverbsError) as info:
        cq.wait(timeout=0)
    assert info.value.errno == errno.EOVERFLOW
    assert "2 completions" in str(info.value)


def test_wait_with_nothing_is_etimedout(fctx: v.Context, fake: FakeEngine) -> None:
    """CQ.wait raises ETIMEDOUT when the engine's wait returns no completion."""
    cq = v.CQ(fctx, 8)
    with pytest.raises(v.TcpverbsError) as info:
        cq.wait(timeout=0.25)
    assert info.value.errno == errno.ETIMEDOUT
    assert "0.25 s" in str(info.value)
    fake_cq(fake, cq).push((9, 0, 0, 0, 0, 0, 0, 0, 0))
    assert [wc.wr_id for wc in cq.wait(4, timeout=0.25)] == [9]


def test_wait_passes_the_spin_budget(fake: FakeEngine) -> None:
    """CQ.wait hands the engine the call's spin_us, else the CQ's, else the context's."""
    with v.Context(name="tcpv_lo", engine=fake.factory, spin_us=7) as ctx:
        cq_default, cq_own = v.CQ(ctx, 4), v.CQ(ctx, 4, spin_us=3)
        for cq, spin in ((cq_default, None), (cq_own, None), (cq_default, 11)):
            with pytest.raises(v.TcpverbsError):
                cq.wait(2, timeout=0.5, spin_us=spin)
        assert fake.called("wait") == [
            ("wait", cq_default.handle, 2, 0.5, 7),
            ("wait", cq_own.handle, 2, 0.5, 3),
            ("wait", cq_default.handle, 2, 0.5, 11),
        ]
        with pytest.raises(v.TcpverbsError) as info:
            cq_default.wait(spin_us=-1)
        assert info.value.errno == errno.EINVAL


def test_completion_channel_events(fctx: v.Context, fake: FakeEngine) -> None:
    """req_notify arms the engine CQ; its next completion makes the channel's fd readable
    and get_cq_event return the CQ; nothing pending is ETIMEDOUT."""
    channel = v.CompChannel(fctx)
    fchannel = fake.channels[0]
    assert channel.fd == fchannel.fd >= 0
    cq = v.CQ(fctx, 8, channel=channel)
    other = v.CQ(fctx, 8, channel=channel)
    plain = v.CQ(fctx, 8)
    with pytest.raises(v.TcpverbsError) as info:
        plain.req_notify()
    assert info.value.errno == errno.EINVAL
    assert fake.called("req_notify") == []

    cq.req_notify()
    assert fake.called("req_notify") == [("req_notify", cq.handle, False)]
    assert select.select([channel.fd], [], [], 0)[0] == []
    fake_cq(fake, cq).push((1, 0, 0, 0, 0, 0, 0, 0, 0))
    assert select.select([channel.fd], [], [], 0)[0] == [channel.fd]
    assert channel.get_cq_event(timeout=0) is cq
    cq.ack_events(1)
    assert select.select([channel.fd], [], [], 0)[0] == []
    with pytest.raises(v.TcpverbsError) as info:
        channel.get_cq_event(timeout=0)
    assert info.value.errno == errno.ETIMEDOUT

    fchannel.signal(other.handle)
    with pytest.raises(v.TcpverbsError) as info:
        channel.get_cq_event(cq, timeout=0)  # for another CQ
    assert info.value.errno == errno.EINVAL
    other.ack_events(1)
    with pytest.raises(v.TcpverbsError) as info:
        other.ack_events(1)
    assert info.value.errno == errno.EINVAL

    channel.close()
    assert cq.closed and other.closed and not plain.closed  # a channel's CQs go with it
    assert fchannel.destroyed and fchannel.fd == -1


# -- async events --------------------------------------------------------------------------


def test_async_events_find_their_qp_and_cq(fctx: v.Context, fake: FakeEngine) -> None:
    """get_async_event maps a QP event to the QP object and CQ_ERR to the CQ, in order."""
    qp, fq = make_qp(fctx, fake)
    cq = v.CQ(fctx, 4)
    fq.fail(v.TcpverbsError(errno.ECONNRESET, "the peer reset the connection"))
    fake.queue_event(v.ibv_event_type.IBV_EVENT_CQ_ERR, cq.handle, "CQ overrun")
    event = fctx.get_async_event(timeout=0)
    assert event.element is qp
    assert event.event_type == v.ibv_event_type.IBV_EVENT_QP_FATAL
    assert event.reason == "the peer reset the connection"
    event.ack()
    event = fctx.get_async_event(timeout=0)
    assert event.element is cq
    assert event.event_type == v.ibv_event_type.IBV_EVENT_CQ_ERR
    assert event.reason == "CQ overrun"


def test_no_async_event_is_etimedout(fctx: v.Context, fake: FakeEngine) -> None:
    """get_async_event(timeout=0) with nothing queued raises ETIMEDOUT."""
    with pytest.raises(v.TcpverbsError) as info:
        fctx.get_async_event(timeout=0)
    assert info.value.errno == errno.ETIMEDOUT
    assert fake.called("next_event")[-1] == ("next_event", 0)


def test_events_of_a_closed_qp_still_find_it(fctx: v.Context, fake: FakeEngine) -> None:
    """Events name QPs and CQs by handles that are never reused: read after the QP and CQ
    were closed, they still find them (while the application holds them)."""
    qp, fq = make_qp(fctx, fake)
    cq = v.CQ(fctx, 4)
    fq.fail(v.TcpverbsError(errno.EPIPE, "broken pipe"))
    fake.queue_event(v.ibv_event_type.IBV_EVENT_CQ_ERR, cq.handle, "CQ overrun")
    qp.close()
    cq.close()
    assert fctx.get_async_event(timeout=0).element is qp
    assert fctx.get_async_event(timeout=0).element is cq


def test_an_event_for_an_unknown_handle_has_no_element(fctx: v.Context, fake: FakeEngine) -> None:
    """An event for a QP number the context does not know comes out with element None."""
    fake.queue_event(v.ibv_event_type.IBV_EVENT_QP_FATAL, 0xABCDEF, "stale")
    event = fctx.get_async_event(timeout=0)
    assert event.element is None
    assert event.reason == "stale"


# -- the object tree -----------------------------------------------------------------------


def test_closing_a_qp_destroys_the_engine_qp(
    fctx: v.Context, fake: FakeEngine, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """QP.close calls destroy on the engine QP once, which lets go of the connection."""
    qp, fq = make_qp(fctx, fake)
    to_rts(qp, sockets[0])
    sock = fq.sock
    assert sock is not None
    qp.close()
    qp.close()
    assert fake.called("destroy_qp") == [("destroy_qp", qp.qp_num)]
    assert fq.destroyed and sock.fileno() == -1
    assert not qp.pd.closed and not qp.scq.closed  # parents live on
    with pytest.raises(v.ClosedResourceError):
        qp.to_init(v.QPAttr())


def test_closing_a_cq_closes_its_qps_first(fctx: v.Context, fake: FakeEngine) -> None:
    """CQ.close destroys the QPs that use it before the CQ itself."""
    qp, _ = make_qp(fctx, fake)
    qp.rcq.close()
    assert qp.closed
    names = [call[0] for call in fake.calls if call[0] in ("destroy_qp", "destroy_cq")]
    assert names == ["destroy_qp", "destroy_cq"]
    assert fake.called("destroy_cq") == [("destroy_cq", qp.rcq.handle)]


def test_closing_the_context_closes_everything(fake: FakeEngine) -> None:
    """Context.close closes every object, newest first, then closes the engine."""
    ctx = v.Context(name="tcpv_lo", engine=fake.factory)
    channel = v.CompChannel(ctx)
    cq = v.CQ(ctx, 4, channel=channel)
    pd = v.PD(ctx)
    mr = v.MR(pd, 4096, LOCAL_WRITE)
    qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq))
    ctx.close()
    assert all(o.closed for o in (ctx, channel, cq, pd, mr, qp))
    assert fake.calls[-1] == ("close",)
    assert fake.closed
    order = [
        call
        for call in fake.calls
        if call[0] in ("destroy_qp", "dereg_mr", "destroy_cq", "destroy_channel", "close")
    ]
    assert order == [
        ("destroy_qp", qp.qp_num),
        ("dereg_mr", mr.lkey),
        ("destroy_cq", cq.handle),
        ("destroy_channel",),
        ("close",),
    ]
    assert fake.mrs == {}
    with pytest.raises(v.ClosedResourceError):
        ctx.get_async_event(timeout=0)
    with pytest.raises(v.ClosedResourceError):
        v.PD(ctx)
    ctx.close()
    assert fake.called("close") == [("close",)]


# -- an engine that refuses ----------------------------------------------------------------


@pytest.mark.parametrize("what", ["create_qp", "create_cq", "create_channel"])
def test_an_engine_that_refuses_to_create_leaves_nothing_behind(
    fctx: v.Context, fake: FakeEngine, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """The object joins the tree only once the engine made its half: a refusal leaves no
    half-made child that would break closing its parents."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise v.TcpverbsError(errno.EMFILE, "out of descriptors")

    pd = v.PD(fctx)
    cq = v.CQ(fctx, 4)
    monkeypatch.setattr(fake, what, refuse)
    with pytest.raises(v.TcpverbsError) as info:
        if what == "create_qp":
            v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq))
        elif what == "create_cq":
            v.CQ(fctx, 4)
        else:
            v.CompChannel(fctx)
    assert info.value.errno == errno.EMFILE
    assert len(pd._children) == 0 and len(cq._children) == 0
    monkeypatch.undo()
    fctx.close()  # every child closes cleanly, and the engine with them
    assert fake.called("close")
