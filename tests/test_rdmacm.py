"""rdma_cm over TCP (issue #11, section 2): ``tcpverbs.cm.rdmacm``, which is pyverbs.cmid,
through its public API, on every engine.  The server side runs in a thread (its waits
do the CM's work for its channel), or in another process."""

from __future__ import annotations

import errno
import multiprocessing
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

import tcpverbs as v
from tcpverbs.cm import addresses, rdmacm
from tcpverbs.cm.enums import (
    RAI_PASSIVE,
    RDMA_OPTION_ID,
    RDMA_OPTION_ID_ACK_TIMEOUT,
    RDMA_OPTION_ID_TOS,
    RDMA_UDP_QKEY,
    rdma_cm_event_type,
    rdma_port_space,
)
from tcpverbs.cm.messages import CMMessage, MessageType, encode
from tcpverbs.cm.rdmacm import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam, UDParam
from tcpverbs.errors import TcpverbsError
from tcpverbs.wire.ud import GRH_SIZE

EV = rdma_cm_event_type
S = v.ibv_qp_state
OK = v.ibv_wc_status.IBV_WC_SUCCESS
HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def cm_contexts(engine: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The contexts rdma_cm opens use *engine*, and are closed after each test."""
    monkeypatch.setenv("TCPVERBS_ENGINE", engine)
    contexts: dict[bytes, v.Context] = {}
    monkeypatch.setattr(addresses, "_contexts", contexts)
    yield
    for ctx in contexts.values():
        ctx.close()


def next_event(channel: CMEventChannel, expected: rdma_cm_event_type) -> CMEvent:
    event = CMEvent(channel, timeout=10)
    event.ack_cm_event()
    assert event.event_type == expected, event
    return event


def bound(channel: CMEventChannel) -> CMID:
    lid = CMID(creator=channel)
    lid.bind_addr(AddrInfo(src=HOST, src_service="0", flags=RAI_PASSIVE))
    return lid


def listener(channel: CMEventChannel, backlog: int = 0) -> CMID:
    lid = bound(channel)
    lid.listen(backlog)
    return lid


def port_of(lid: CMID) -> int:
    assert lid.local_addr is not None
    return lid.local_addr[1]


def resolved(channel: CMEventChannel, port: int) -> CMID:
    cid = CMID(creator=channel)
    cid.resolve_addr(AddrInfo(src=HOST, dst=HOST, dst_service=str(port)))
    next_event(channel, EV.RDMA_CM_EVENT_ADDR_RESOLVED)
    cid.resolve_route()
    next_event(channel, EV.RDMA_CM_EVENT_ROUTE_RESOLVED)
    return cid


def accepted(channel: CMEventChannel, lid: CMID) -> CMID:
    """The next request on *channel*, accepted with a QP of its own, established."""
    child = CMID(creator=next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid)
    child.create_qp(v.QPInitAttr())
    child.accept()
    next_event(channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    return child


def in_thread(target: Callable[[], None]) -> Callable[[], None]:
    """Run *target* in a thread; the returned join re-raises what it raised."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> None:
        thread.join(30)
        assert not thread.is_alive()
        if failure:
            raise failure[0]

    return join


def exchange(me: CMID, send_first: bool, data: bytes) -> bytes:
    """SEND *data* and receive the peer's, in the order that keeps both sides posted."""
    inbox = me.reg_msgs(len(data))
    me.post_recv(inbox)
    outbox = me.reg_msgs(len(data))
    outbox.write(data, len(data))
    if send_first:
        me.post_send(outbox)
        assert me.get_send_comp().status == OK
        assert me.get_recv_comp().status == OK
    else:
        assert me.get_recv_comp().status == OK
        me.post_send(outbox)
        assert me.get_send_comp().status == OK
    return inbox.read(len(data), 0)


def test_an_async_connection_carries_sends_and_ends_with_both_sides_told() -> None:
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(server_channel)
    seen: dict[str, object] = {}

    def serve() -> None:
        request = next_event(server_channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST)
        seen["request_data"] = request.private_data
        child = CMID(creator=request, listen_id=lid)
        assert child is request.id and child.pd is not None
        child.create_qp(v.QPInitAttr(cap=v.QPCap(max_recv_wr=2)))
        assert child.qp is not None and child.qp.qp_state == S.IBV_QPS_INIT
        child.accept(ConnParam(data=b"welcome"))
        next_event(server_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
        seen["server_got"] = exchange(child, False, b"from the server.")
        next_event(server_channel, EV.RDMA_CM_EVENT_DISCONNECTED)
        assert child.qp.qp_state == S.IBV_QPS_ERR
        child.disconnect()  # once disconnected: nothing more to do, no error

    join = in_thread(serve)
    cid = resolved(client_channel, port_of(lid))
    cid.create_qp(v.QPInitAttr(cap=v.QPCap(max_recv_wr=2)))
    cid.connect(ConnParam(data=b"hello"))
    established = next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    assert established.private_data == b"welcome"
    assert exchange(cid, True, b"from the client.") == b"from the server."
    cid.disconnect()
    next_event(client_channel, EV.RDMA_CM_EVENT_DISCONNECTED)
    join()
    assert seen == {"request_data": b"hello", "server_got": b"from the client."}
    assert cid.qp is not None and cid.qp.qp_state == S.IBV_QPS_ERR
    for thing in (cid, lid, client_channel, server_channel):
        thing.close()


def test_one_sided_writes_and_reads_through_the_cmid_helpers() -> None:
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(server_channel)
    ready = threading.Event()
    target: dict[str, object] = {}

    def serve() -> None:
        child = accepted(server_channel, lid)
        readable, writable = child.reg_read(8), child.reg_write(8)
        readable.write(b"read me!", 8)
        target.update(readable=readable, writable=writable)
        ready.set()
        next_event(server_channel, EV.RDMA_CM_EVENT_DISCONNECTED)

    join = in_thread(serve)
    cid = resolved(client_channel, port_of(lid))
    cid.create_qp(v.QPInitAttr())
    cid.connect()
    next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    assert ready.wait(10)
    readable, writable = target["readable"], target["writable"]
    assert isinstance(readable, v.MR) and isinstance(writable, v.MR)
    mine = cid.reg_msgs(8)
    cid.post_read(mine, 8, readable.buf, readable.rkey, flags=v.ibv_send_flags.IBV_SEND_SIGNALED)
    assert cid.get_send_comp().status == OK and mine.read(8, 0) == b"read me!"
    mine.write(b"written.", 8)
    cid.post_write(mine, 8, writable.buf, writable.rkey, flags=v.ibv_send_flags.IBV_SEND_SIGNALED)
    assert cid.get_send_comp().status == OK and writable.read(8, 0) == b"written."
    cid.disconnect()
    next_event(client_channel, EV.RDMA_CM_EVENT_DISCONNECTED)
    join()


def test_a_synchronous_pair_connects_without_event_channels() -> None:
    """rdma_create_ep: the passive CMID waits in get_request and accept, the active one
    in connect; each has its QP from qp_init_attr."""
    init = v.QPInitAttr(cap=v.QPCap(max_recv_wr=2))
    server = CMID(creator=AddrInfo(src=HOST, src_service="0", flags=RAI_PASSIVE), qp_init_attr=init)
    assert server.event_channel is None
    server.listen()
    port = port_of(server)
    got: dict[str, bytes] = {}

    def serve() -> None:
        child = server.get_request(timeout=10)
        child.accept()
        got["server"] = exchange(child, False, b"sync server")
        child.disconnect()

    join = in_thread(serve)
    client = CMID(creator=AddrInfo(src=HOST, dst=HOST, dst_service=str(port)), qp_init_attr=init)
    assert client.qp is not None and client.qp.qp_state == S.IBV_QPS_INIT
    client.connect()
    assert client.qp.qp_state == S.IBV_QPS_RTS
    assert exchange(client, True, b"sync client") == b"sync server"
    join()
    assert got == {"server": b"sync client"}
    client.close()
    server.close()
    assert client.closed and client.qp.closed


def test_a_program_s_own_qp_connects_with_init_qp_attr_and_establish() -> None:
    """No QP on the CMIDs: CONNECT_RESPONSE, the QP moved by init_qp_attr, establish;
    the ack timeout set as an option reaches the QP."""
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(server_channel)

    def own_qp(cmid: CMID) -> v.QP:
        assert cmid.context is not None and cmid.pd is not None
        cq = v.CQ(cmid.context, 8)
        return v.QP(cmid.pd, v.QPInitAttr(scq=cq, rcq=cq), v.QPAttr())

    def to_rts(cmid: CMID, qp: v.QP) -> None:
        for state in (S.IBV_QPS_INIT, S.IBV_QPS_RTR, S.IBV_QPS_RTS):
            qp.modify(*cmid.init_qp_attr(state))

    def serve() -> None:
        child = CMID(
            creator=next_event(server_channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid
        )
        qp = own_qp(child)
        to_rts(child, qp)
        child.accept(ConnParam(qp_num=qp.qp_num))
        next_event(server_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
        dst = v.MR(child.pd, 8, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        qp.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, 8, dst.lkey)]))
        wc = qp.init_attr.rcq.wait(1, timeout=10)[0]  # type: ignore[union-attr]
        assert wc.status == OK and dst.read(8, 0) == b"own QPs!"

    join = in_thread(serve)
    cid = resolved(client_channel, port_of(lid))
    cid.set_option(RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, 21, 1)
    qp = own_qp(cid)
    with pytest.raises(TcpverbsError) as early:
        cid.init_qp_attr(S.IBV_QPS_RTR)  # the peer is not known before its answer
    assert early.value.errno == errno.EINVAL
    cid.connect(ConnParam(qp_num=qp.qp_num))
    next_event(client_channel, EV.RDMA_CM_EVENT_CONNECT_RESPONSE)
    to_rts(cid, qp)
    cid.establish()
    assert qp.query(v.ibv_qp_attr_mask.IBV_QP_TIMEOUT)[0].timeout == 21
    src = v.MR(cid.pd, 8, 0)  # type: ignore[arg-type]
    src.write(b"own QPs!", 8)
    qp.post_send(v.SendWR(2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]))
    join()
    for thing in (cid, lid, client_channel, server_channel):  # (`early` keeps a cycle)
        thing.close()


def test_a_rejected_request_carries_the_rejecter_s_private_data() -> None:
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(server_channel)

    def serve() -> None:
        request = next_event(server_channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST)
        CMID(creator=request, listen_id=lid).reject(b"connection rejected")

    join = in_thread(serve)
    cid = resolved(client_channel, port_of(lid))
    cid.create_qp(v.QPInitAttr())
    cid.connect()
    rejected = next_event(client_channel, EV.RDMA_CM_EVENT_REJECTED)
    assert rejected.private_data == b"connection rejected" and rejected.status < 0
    join()


def test_nobody_listening_is_a_rejection_and_a_sync_connect_raises() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    channel = CMEventChannel()
    cid = resolved(channel, port)
    cid.connect()
    assert next_event(channel, EV.RDMA_CM_EVENT_REJECTED).status == -errno.ECONNREFUSED
    sync = CMID(creator=AddrInfo(src=HOST, dst=HOST, dst_service=str(port)))
    with pytest.raises(TcpverbsError) as info:
        sync.connect()
    assert info.value.errno == errno.ECONNREFUSED


def test_a_peer_that_goes_away_is_a_disconnection() -> None:
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(server_channel)

    def serve() -> None:
        child = accepted(server_channel, lid)
        child.close()  # no DREQ: the process might as well have died

    join = in_thread(serve)
    cid = resolved(client_channel, port_of(lid))
    cid.create_qp(v.QPInitAttr())
    cid.connect()
    next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    join()
    next_event(client_channel, EV.RDMA_CM_EVENT_DISCONNECTED)
    assert cid.qp is not None and cid.qp.qp_state == S.IBV_QPS_ERR


def test_what_is_not_a_cm_peer_is_dropped_and_the_listener_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Garbage, a REP out of turn, or silence past the REQ deadline: the connection is
    closed, no event; a real request after them is served."""
    monkeypatch.setattr(rdmacm, "REQ_DEADLINE", 0.3)
    channel = CMEventChannel()
    lid = listener(channel)
    port = port_of(lid)
    intruders = [socket.create_connection((HOST, port)) for _ in range(3)]
    intruders[0].sendall(b"GET / HTTP/1.0\r\n\r\n")
    intruders[1].sendall(encode(CMMessage(MessageType.REP, qp_num=1)))
    with pytest.raises(TcpverbsError) as quiet:
        CMEvent(channel, timeout=0.6)
    assert quiet.value.errno == errno.ETIMEDOUT
    for intruder in intruders:
        intruder.settimeout(5)
        assert intruder.recv(16) == b""  # closed by the listener
        intruder.close()
    client_channel = CMEventChannel()
    cid = resolved(client_channel, port)
    cid.create_qp(v.QPInitAttr())
    cid.connect(ConnParam(data=b"real"))
    assert next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST).private_data == b"real"


@pytest.mark.parametrize(
    ("call", "err"),
    [
        (
            lambda: CMID(creator=CMEventChannel(), port_space=rdma_port_space.RDMA_PS_IPOIB),
            errno.EOPNOTSUPP,
        ),
        (lambda: CMID(creator=object()), errno.EINVAL),
        (lambda: CMID(creator=CMEventChannel()).accept(), errno.EINVAL),
        (lambda: CMID(creator=CMEventChannel()).connect(), errno.EINVAL),
        (lambda: CMID(creator=CMEventChannel()).listen(), errno.EINVAL),
        (lambda: bound(CMEventChannel()).listen(-1), errno.EINVAL),
        (lambda: CMID(creator=CMEventChannel()).resolve_route(), errno.EINVAL),
        (lambda: CMID(creator=CMEventChannel()).create_qp(v.QPInitAttr()), errno.EINVAL),
        (lambda: CMID(creator=CMEventChannel()).post_recv(None), errno.EINVAL),  # type: ignore[arg-type]
        (
            lambda: CMID(creator=CMEventChannel()).set_option(
                RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, 0
            ),
            errno.EOPNOTSUPP,
        ),
        (
            lambda: CMID(creator=CMEventChannel()).set_option(
                RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, 32
            ),
            errno.EINVAL,
        ),
        (lambda: CMID(creator=CMEventChannel()).get_remote_ece(), errno.EOPNOTSUPP),
        (lambda: AddrInfo(dst="no-such-host.invalid", dst_service="1"), errno.EADDRNOTAVAIL),
    ],
)
def test_bad_calls_raise_with_an_errno(call: Callable[[], object], err: int) -> None:
    with pytest.raises(TcpverbsError) as info:
        call()
    assert info.value.errno == err


def test_too_much_private_data_and_a_ud_qp_on_a_tcp_id_are_refused() -> None:
    channel = CMEventChannel()
    lid = listener(channel)
    cid = resolved(CMEventChannel(), port_of(lid))
    with pytest.raises(TcpverbsError, match="RDMA_PS_TCP CM ID") as info:
        cid.create_qp(v.QPInitAttr(qp_type=v.ibv_qp_type.IBV_QPT_UD))
    assert info.value.errno == errno.EINVAL
    cid.create_qp(v.QPInitAttr())
    with pytest.raises(TcpverbsError) as big:
        cid.connect(ConnParam(data=bytes(57)))
    assert big.value.errno == errno.EINVAL
    for thing in (cid, lid, channel):  # (`big` keeps a cycle that holds them)
        thing.close()


def _process_server(port_out: multiprocessing.Queue[int]) -> None:
    channel = CMEventChannel()
    lid = listener(channel)
    port_out.put(port_of(lid))
    child = accepted(channel, lid)
    exchange(child, False, b"other process")
    next_event(channel, EV.RDMA_CM_EVENT_DISCONNECTED)


def test_two_processes_connect_through_the_cm() -> None:
    context = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = context.Queue()
    server = context.Process(target=_process_server, args=(ports,))
    server.start()
    try:
        channel = CMEventChannel()
        cid = resolved(channel, ports.get(timeout=30))
        cid.create_qp(v.QPInitAttr())
        cid.connect()
        next_event(channel, EV.RDMA_CM_EVENT_ESTABLISHED)
        assert exchange(cid, True, b"this process!") == b"other process"
        cid.disconnect()
        next_event(channel, EV.RDMA_CM_EVENT_DISCONNECTED)
        server.join(30)
        assert server.exitcode == 0
    finally:
        if server.is_alive():
            server.kill()


def test_idle_connections_cannot_fill_the_listener_nor_hold_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for one connection owing its REQ, idle ones are pushed out by newcomers
    (the deadline is far away here); a REQ followed by a reset is dropped quietly."""
    monkeypatch.setattr(rdmacm, "REQ_DEADLINE", 60.0)
    channel = CMEventChannel()
    lid = listener(channel, backlog=1)
    port = port_of(lid)
    idle = [socket.create_connection((HOST, port)) for _ in range(3)]
    rude = socket.create_connection((HOST, port))
    rude.sendall(encode(CMMessage(MessageType.REQ, qp_num=1)))
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    rude.close()  # RST
    client_channel = CMEventChannel()
    cid = resolved(client_channel, port)
    cid.create_qp(v.QPInitAttr())
    cid.connect(ConnParam(data=b"served"))
    assert next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST).private_data == b"served"
    for sock in idle:
        sock.close()
    for thing in (cid, lid, channel, client_channel):
        thing.close()


def test_a_synchronous_request_outlives_its_listener() -> None:
    """get_request moves the new CMID to a channel of its own (rdma_migrate_id)."""
    server = CMID(
        creator=AddrInfo(src=HOST, src_service="0", flags=RAI_PASSIVE),
        qp_init_attr=v.QPInitAttr(cap=v.QPCap(max_recv_wr=2)),
    )
    server.listen()
    client_channel = CMEventChannel()
    cid = resolved(client_channel, port_of(server))
    cid.create_qp(v.QPInitAttr(cap=v.QPCap(max_recv_wr=2)))
    cid.connect()
    child = server.get_request(timeout=10)
    server.close()
    join = in_thread(child.accept)
    next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    join()
    got: dict[str, bytes] = {}
    join = in_thread(lambda: got.update(child=exchange(child, False, b"after close")))
    assert exchange(cid, True, b"still there") == b"after close"
    join()
    assert got == {"child": b"still there"} and not child.closed


def test_accept_refuses_too_much_private_data_before_anything_changes() -> None:
    channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(channel)
    cid = resolved(client_channel, port_of(lid))
    cid.create_qp(v.QPInitAttr())
    cid.connect()
    child = CMID(creator=next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid)
    child.create_qp(v.QPInitAttr())
    with pytest.raises(TcpverbsError) as info:
        child.accept(ConnParam(data=bytes(197)))
    assert info.value.errno == errno.EINVAL
    assert child.qp is not None and child.qp.qp_state == S.IBV_QPS_INIT
    child.accept(ConnParam(data=bytes(196)))  # the limit itself is fine
    assert next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED).private_data == bytes(196)
    for thing in (child, cid, lid, channel, client_channel):  # (`info` keeps a cycle)
        thing.close()


def test_a_peer_that_leaves_before_confirming_is_a_connect_error() -> None:
    """REQ, then the REP is read, then the peer closes without an RTU."""
    channel = CMEventChannel()
    lid = listener(channel)
    peer = socket.create_connection((HOST, port_of(lid)))
    peer.sendall(encode(CMMessage(MessageType.REQ, qp_num=5, psn=7)))
    child = CMID(creator=next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid)
    child.accept(ConnParam(qp_num=9))  # (no QP of its own: nothing to connect)
    peer.settimeout(10)
    assert peer.recv(4)[0] == MessageType.REP
    peer.close()
    assert next_event(channel, EV.RDMA_CM_EVENT_CONNECT_ERROR).status == -errno.ECONNRESET


def established_pair() -> tuple[CMEventChannel, CMEventChannel, CMID, CMID, CMID]:
    """(server channel, client channel, listener, server's CMID, client's CMID)."""
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid = listener(server_channel)
    cid = resolved(client_channel, port_of(lid))
    cid.create_qp(v.QPInitAttr())
    cid.connect()
    child = CMID(
        creator=next_event(server_channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid
    )
    child.create_qp(v.QPInitAttr())
    child.accept()
    next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    next_event(server_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    return server_channel, client_channel, lid, child, cid


def test_both_sides_disconnecting_at_once_each_hear_it_once() -> None:
    server_channel, client_channel, lid, child, cid = established_pair()
    child.disconnect()
    cid.disconnect()
    next_event(server_channel, EV.RDMA_CM_EVENT_DISCONNECTED)
    next_event(client_channel, EV.RDMA_CM_EVENT_DISCONNECTED)
    for channel in (server_channel, client_channel):
        with pytest.raises(TcpverbsError) as none:
            CMEvent(channel, timeout=0.3)
        assert none.value.errno == errno.ETIMEDOUT
    for thing in (child, cid, lid, server_channel, client_channel):
        thing.close()


def test_a_peer_that_never_answers_is_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RTU after the REP: UNREACHABLE; no DREP after a DREQ: disconnected anyway."""
    monkeypatch.setattr(rdmacm, "RESPONSE_TIMEOUT", 0.3)
    channel = CMEventChannel()
    lid = listener(channel)
    silent = socket.create_connection((HOST, port_of(lid)))
    silent.sendall(encode(CMMessage(MessageType.REQ, qp_num=5, psn=7)))
    child = CMID(creator=next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid)
    child.accept(ConnParam(qp_num=9))
    assert next_event(channel, EV.RDMA_CM_EVENT_UNREACHABLE).status == -errno.ETIMEDOUT
    mute = socket.create_connection((HOST, port_of(lid)))
    mute.sendall(encode(CMMessage(MessageType.REQ, qp_num=6, psn=8)))
    other = CMID(creator=next_event(channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid)
    other.accept(ConnParam(qp_num=10))
    mute.sendall(encode(CMMessage(MessageType.RTU)))
    next_event(channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    other.disconnect()  # the peer reads the DREQ and says nothing
    next_event(channel, EV.RDMA_CM_EVENT_DISCONNECTED)
    for thing in (silent, mute, child, other, lid, channel):
        thing.close()


# -- RDMA_PS_UDP: SIDR over the control connection ------------------------------------------
UDP = rdma_port_space.RDMA_PS_UDP
UD_QP = v.ibv_qp_type.IBV_QPT_UD


def udp_ids(server_channel: CMEventChannel, client_channel: CMEventChannel) -> tuple[CMID, CMID]:
    """A listening RDMA_PS_UDP CM ID, and one whose route to it is resolved."""
    lid = CMID(creator=server_channel, port_space=UDP)
    lid.bind_addr(AddrInfo(src=HOST, src_service="0", flags=RAI_PASSIVE))
    lid.listen()
    cid = CMID(creator=client_channel, port_space=UDP)
    cid.resolve_addr(AddrInfo(src=HOST, dst=HOST, dst_service=str(port_of(lid))))
    next_event(client_channel, EV.RDMA_CM_EVENT_ADDR_RESOLVED)
    cid.resolve_route()
    next_event(client_channel, EV.RDMA_CM_EVENT_ROUTE_RESOLVED)
    return lid, cid


def test_a_udp_id_resolves_the_peer_s_ud_qp_and_datagrams_flow_both_ways() -> None:
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid, cid = udp_ids(server_channel, client_channel)
    cid.create_qp(v.QPInitAttr(qp_type=UD_QP, cap=v.QPCap(max_recv_wr=2)))
    assert cid.qp is not None and cid.qp.qp_state is S.IBV_QPS_RTS  # ready at once
    cid.connect(ConnParam(data=b"sidr"))
    request = next_event(server_channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST)
    assert request.private_data == b"sidr" and UDParam(request).qp_num == cid.qpn
    child = CMID(creator=request, listen_id=lid)
    child.create_qp(v.QPInitAttr(qp_type=UD_QP, cap=v.QPCap(max_recv_wr=2)))
    child.accept(ConnParam(data=b"here"))
    established = next_event(client_channel, EV.RDMA_CM_EVENT_ESTABLISHED)
    ud = UDParam(established)
    assert established.private_data == b"here" and ud.qp_num == child.qpn
    assert ud.qkey == RDMA_UDP_QKEY and ud.ah_attr.is_global == 1
    attr, _ = child.query_qp(v.ibv_qp_attr_mask.IBV_QP_QKEY)
    assert attr.qkey == RDMA_UDP_QKEY
    with pytest.raises(TcpverbsError) as info:  # nothing to disconnect
        cid.disconnect()
    assert info.value.errno == errno.EINVAL

    size = 16 + GRH_SIZE
    inbox, outbox = child.reg_msgs(size), cid.reg_msgs(size)
    child.post_recv(inbox)
    outbox.write(b"to the server...", 16)
    assert cid.pd is not None
    cid.post_ud_send(outbox, v.AH(cid.pd, attr=ud.ah_attr), rqpn=ud.qp_num, length=16)
    assert cid.get_send_comp().status == OK
    got = child.get_recv_comp()
    assert got.status == OK and got.src_qp == cid.qpn
    assert inbox.read(16, GRH_SIZE) == b"to the server..."
    assert child.pd is not None
    back = v.AH(child.pd, wc=got, grh=inbox.buf)  # the answer goes where it came from
    reply = cid.reg_msgs(size)
    cid.post_recv(reply)
    outbox2 = child.reg_msgs(16)
    outbox2.write(b"...and back, ok!", 16)
    child.post_ud_send(outbox2, back, rqpn=got.src_qp, length=16)
    assert child.get_send_comp().status == OK
    assert cid.get_recv_comp().status == OK
    assert reply.read(16, GRH_SIZE) == b"...and back, ok!"
    for thing in (cid, child, lid, server_channel, client_channel):
        thing.close()


def test_a_udp_request_can_be_rejected_and_an_rc_qp_is_refused() -> None:
    server_channel, client_channel = CMEventChannel(), CMEventChannel()
    lid, cid = udp_ids(server_channel, client_channel)
    with pytest.raises(TcpverbsError, match="RDMA_PS_UDP CM ID") as info:
        cid.create_qp(v.QPInitAttr())  # RC on a UDP id
    assert info.value.errno == errno.EINVAL
    cid.create_qp(v.QPInitAttr(qp_type=UD_QP))
    cid.connect()
    child = CMID(
        creator=next_event(server_channel, EV.RDMA_CM_EVENT_CONNECT_REQUEST), listen_id=lid
    )
    child.reject(b"not you")
    assert next_event(client_channel, EV.RDMA_CM_EVENT_REJECTED).private_data == b"not you"
    for thing in (cid, child, lid, server_channel, client_channel):
        thing.close()
