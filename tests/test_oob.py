"""Connecting by GID + QP number exchanged out of band (issue #3 §2)."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

import tcpverbs as v
from tcpverbs.oob import service as oob
from tcpverbs.testing import ALL_ACCESS, Endpoint, connect, make_endpoint, poll_until
from tcpverbs.wire import Hello
from tcpverbs.wire.frames import Header, Opcode, encode_header

W = v.ibv_wc_status
OP = v.ibv_wr_opcode


def av_attr(gid: v.GID, dest_qp_num: int, sgid_index: int = 0, rq_psn: int = 0) -> v.QPAttr:
    """What a verbs program for RoCE passes to to_rtr."""
    return v.QPAttr(
        ah_attr=v.AHAttr(
            is_global=1, gr=v.GlobalRoute(dgid=gid, sgid_index=sgid_index), port_num=1
        ),
        dest_qp_num=dest_qp_num,
        rq_psn=rq_psn,
        max_dest_rd_atomic=4,
    )


def write(end: Endpoint, src: v.MR, n: int, rkey: int, addr: int, wr_id: int = 1) -> None:
    wr = v.SendWR(wr_id, OP.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(src.buf, n, src.lkey)])
    wr.set_wr_rdma(rkey, addr)
    end.qp.post_send(wr)


def waiter_joins_and_dialer_writes(
    dialer: Endpoint, waiter: Endpoint, gid: v.GID, data: bytes
) -> None:
    """The waiting QP reaches RTS; a WRITE from the dialler then lands in its memory."""
    waiter.qp.to_rtr(av_attr(gid, dialer.qp.qp_num))
    waiter.qp.to_rts(v.QPAttr(max_rd_atomic=4))
    src, dst = v.MR(dialer.pd, len(data), ALL_ACCESS), v.MR(waiter.pd, len(data), ALL_ACCESS)
    src.write(data, len(data))
    write(dialer, src, len(data), dst.rkey, dst.buf)
    status = poll_until(dialer.scq)[0].status
    assert status == W.IBV_WC_SUCCESS, (status, dialer.qp.error, waiter.qp.error)
    assert dst.read(len(data), 0) == data


@pytest.mark.parametrize("order", ["a first", "b first"])
def test_two_qps_one_thread(ctx: v.Context, order: str) -> None:
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    gid = ctx.query_gid(1, 0)
    ends = [(a, b), (b, a)] if order == "a first" else [(b, a), (a, b)]
    for me, peer in ends:
        me.qp.to_rtr(av_attr(gid, peer.qp.qp_num))
        me.qp.to_rts(v.QPAttr(sq_psn=0, max_rd_atomic=4))
    src, dst = v.MR(a.pd, 16, ALL_ACCESS), v.MR(b.pd, 16, ALL_ACCESS)
    src.write(b"by gid and qpn!!", 16)
    write(a, src, 16, dst.rkey, dst.buf)
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert dst.read(16, 0) == b"by gid and qpn!!"
    b.qp.post_recv(v.RecvWR(5, 1, [v.SGE(dst.buf, 16, dst.lkey)]))
    a.qp.post_send(v.SendWR(6, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 3, src.lkey)]))
    assert poll_until(b.rcq)[0].byte_len == 3


ORACLE = pathlib.Path(__file__).with_name("oob_proc.py")


def run_pair(
    device: str,
    initiator_device: str | None = None,
    target_prefix: tuple[str, ...] = (),
    initiator_prefix: tuple[str, ...] = (),
) -> None:
    """A target and an initiator process exchange GID + QPN through this test, then the
    initiator WRITEs, READs and adds while the target application sleeps."""
    args = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    target = subprocess.Popen(
        [*target_prefix, sys.executable, str(ORACLE), "target", device], **args
    )  # type: ignore[call-overload]
    initiator = None
    try:
        gid, qpn, rkey, addr = target.stdout.readline().split()
        initiator = subprocess.Popen(
            [
                *initiator_prefix,
                sys.executable,
                str(ORACLE),
                "initiator",
                initiator_device or device,
                gid,
                qpn,
                rkey,
                addr,
            ],
            **args,
        )  # type: ignore[call-overload]
        target.stdin.write(initiator.stdout.readline())  # its GID and QP number
        target.stdin.flush()
        assert target.stdout.readline().strip() == "ready"
        assert initiator.stdout.readline().split() == ["ok", "child", "memory"]
        assert initiator.wait(30) == 0
        target.stdin.write("check\n")
        target.stdin.flush()
        assert target.stdout.readline().split() == ["parent!!", "5"]
        assert target.wait(30) == 0
    finally:
        for proc in (target, initiator):
            if proc is not None:
                proc.kill()
                proc.wait(10)
                proc.stdin.close()
                proc.stdout.close()


def test_two_processes_exchange_gid_and_qpn() -> None:
    run_pair("tcpv_lo")


def test_argument_errors(ctx: v.Context) -> None:
    end = make_endpoint(ctx)
    gid = ctx.query_gid(1, 0)
    cases = [
        (av_attr(gid, end.qp.qp_num), "to itself"),
        (av_attr(gid, 0), "not a QP number"),
        (av_attr(gid, 5, sgid_index=99), "index"),
        (v.QPAttr(ah_attr=v.AHAttr(is_global=1, gr=v.GlobalRoute()), dest_qp_num=7), "dgid"),
    ]
    for attr, message in cases:
        with pytest.raises(v.TcpverbsError, match=message) as info:
            end.qp.to_rtr(attr)
        assert info.value.errno == errno.EINVAL
        assert end.qp.qp_state == v.ibv_qp_state.IBV_QPS_INIT
    stream = make_endpoint(ctx, "stream")
    with pytest.raises(v.TcpverbsError, match="socket handoff only"):
        stream.qp.to_rtr(av_attr(gid, end.qp.qp_num))


def test_nobody_listening_fails_the_dialling_qp(
    ctx: v.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused dial is tried again (the peer's context may not listen yet) until the
    connect timeout; then the QP fails with the refusal."""
    monkeypatch.setattr(oob, "CONNECT_TIMEOUT", 0.5)
    end = make_endpoint(ctx)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 1)) == 0:
            pytest.skip("something listens on 127.0.0.1:1")
    # QP 257 lives on port 1 and sorts below ours (ports >= 1024): we are the one to dial
    end.qp.to_rtr(av_attr(ctx.query_gid(1, 0), 1 << 8 | 1))
    event = ctx.get_async_event(timeout=5)  # the refusal arrives in the background
    assert event.element is end.qp and end.qp.error is not None
    assert end.qp.error.errno == errno.ECONNREFUSED


def test_waiting_qp_times_out_and_wrong_peer_is_refused(
    ctx: v.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oob, "CONNECT_TIMEOUT", 0.5)
    waiting, impostor = make_endpoint(ctx), make_endpoint(ctx)
    gid = ctx.query_gid(1, 0)
    expected_peer = (1 << 24) - 1  # sorts above us: we wait for it, it never comes
    waiting.qp.to_rtr(av_attr(gid, expected_peer))
    assert ctx._oob.waiting(waiting.qp.qp_num)
    # a QP that is not the expected peer dials the waiting QP: refused, not accepted
    sock = oob.connect_socket(gid, waiting.qp.qp_num, gid)
    sock.setblocking(True)
    sock.sendall(Hello(impostor.qp.qp_num, 1, 1, 1, dest_qp_num=waiting.qp.qp_num).encode())
    sock.settimeout(5)
    assert sock.recv(100) == b""  # closed without a hello back
    sock.close()
    event = ctx.get_async_event(timeout=5)
    assert event.element is waiting.qp
    assert waiting.qp.error is not None and waiting.qp.error.errno == errno.ETIMEDOUT
    with pytest.raises(v.PostError) as info:
        waiting.qp.post_recv(v.RecvWR(1, 0, []))
    assert info.value.errno == errno.ETIMEDOUT


def test_connection_arriving_before_rtr_is_parked(ctx: v.Context) -> None:
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    gid = ctx.query_gid(1, 0)
    dialer, waiter = (a, b) if a.qp.qp_num > b.qp.qp_num else (b, a)
    dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num))
    dialer.qp.to_rts(v.QPAttr(max_rd_atomic=4))
    deadline = time.monotonic() + 5
    while waiter.qp.qp_num not in ctx._oob.parked:  # the waiter is still in INIT
        assert time.monotonic() < deadline, "the connection was not parked"
        time.sleep(0.005)
    waiter_joins_and_dialer_writes(dialer, waiter, gid, b"parked!!")


def test_rd_atomic_limits_are_checked_before_anything_changes(ctx: v.Context) -> None:
    end = make_endpoint(ctx)
    attr = av_attr(ctx.query_gid(1, 0), end.qp.qp_num ^ 1)
    attr.max_dest_rd_atomic = 256  # does not fit the hello's byte: must be EINVAL here
    with pytest.raises(v.TcpverbsError, match="max_dest_rd_atomic") as info:
        end.qp.to_rtr(attr)
    assert info.value.errno == errno.EINVAL and end.qp.qp_state == v.ibv_qp_state.IBV_QPS_INIT


def test_mixed_address_families_are_refused(ctx: v.Context) -> None:
    end = make_endpoint(ctx)
    gids = [ctx.query_gid(1, i) for i in range(ctx.query_port(1).gid_tbl_len)]
    v6 = [g for g in gids if g.ip.version == 6]
    if not v6:
        pytest.skip("loopback has no IPv6 address here")
    # we are ::ffff:127.0.0.1 (sgid 0), the peer is ::1: one socket cannot join them
    attr = av_attr(v6[0], 1 << 8 | 1)
    with pytest.raises(v.TcpverbsError, match="same address family") as info:
        end.qp.to_rtr(attr)
    assert info.value.errno == errno.EINVAL and end.qp.qp_state == v.ibv_qp_state.IBV_QPS_INIT


def test_a_context_connected_by_handoff_exposes_nothing(ctx: v.Context) -> None:
    """QP numbers reserve a port, but only a GID + QP-number connection makes the context
    listen: a socket-handoff user accepts no connection and runs no service thread."""
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    connect(a.qp, b.qp)
    assert not ctx._oob.listening
    assert not [t for t in threading.enumerate() if t.name.startswith("tcpverbs-oob")]
    with socket.socket() as probe:  # the reserved port refuses
        assert probe.connect_ex(("127.0.0.1", a.qp.qp_num >> 8)) == errno.ECONNREFUSED


def test_a_dial_before_the_peer_listens_is_tried_again(ctx: v.Context) -> None:
    """Two contexts: the dialling QP reaches RTR while the peer's context listens on
    nothing yet; once the peer's QP reaches RTR (and its context listens), the retried
    dial connects."""
    with v.Context(name="tcpv_lo") as other:
        a, b = make_endpoint(ctx), make_endpoint(other)
        gid = ctx.query_gid(1, 0)
        dialer, waiter = (a, b) if a.qp.qp_num > b.qp.qp_num else (b, a)
        dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num))
        dialer.qp.to_rts(v.QPAttr(max_rd_atomic=4))
        time.sleep(0.2)  # refused at least once: the waiter's context does not listen
        assert not waiter.qp.ctx._oob.listening
        assert dialer.qp.qp_state == v.ibv_qp_state.IBV_QPS_RTS
        waiter_joins_and_dialer_writes(dialer, waiter, gid, b"redialed")


def test_of_the_parked_connections_only_the_expected_peer_is_taken(ctx: v.Context) -> None:
    """Connections that arrive before their QP reaches RTR wait; at RTR the one from the
    expected QP number is taken and the impostor before it is closed."""
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    impostor = make_endpoint(ctx)
    gid = ctx.query_gid(1, 0)
    dialer, waiter = (a, b) if a.qp.qp_num > b.qp.qp_num else (b, a)
    dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num))  # the context listens from here
    dialer.qp.to_rts(v.QPAttr(max_rd_atomic=4))
    fake = oob.connect_socket(gid, waiter.qp.qp_num, gid)
    fake.setblocking(True)
    fake.sendall(Hello(impostor.qp.qp_num, 1, 1, 1, dest_qp_num=waiter.qp.qp_num).encode())
    deadline = time.monotonic() + 5
    while ctx._oob.parked.get(waiter.qp.qp_num, 0) < 2:  # the impostor and the real one
        assert time.monotonic() < deadline, f"not parked: {ctx._oob.parked}"
        time.sleep(0.005)
    waiter_joins_and_dialer_writes(dialer, waiter, gid, b"the real")
    fake.settimeout(5)
    assert fake.recv(100) == b""  # closed without a hello back
    fake.close()


# -- strangers on the connection port (docs/semantics.md, "Connecting") ---------------------

STRANGER = "127.0.0.2"  # loopback too, but another address than the peers' 127.0.0.1


def stranger_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind((STRANGER, 0))
    return sock


def dialer_and_waiter(ctx: v.Context) -> tuple[Endpoint, Endpoint]:
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    return (a, b) if a.qp.qp_num > b.qp.qp_num else (b, a)


def listen_without_connecting(ctx: v.Context) -> None:
    """Make the context listen: a third QP waits for a peer that never comes."""
    lurker = make_endpoint(ctx)
    lurker.qp.to_rtr(av_attr(ctx.query_gid(1, 0), (1 << 24) - 1))
    assert ctx._oob.listening


SQUAT_PAUSE = 0.05  # seconds between two rounds of re-opening...
SQUAT_BATCH = 20  # ... this many at most: 400 a second, below oob.ACCEPT_RATE


def test_idle_connections_cannot_lock_the_expected_peer_out(ctx: v.Context) -> None:
    """A stranger keeps re-opening more connections than the hello table holds and sends
    nothing; the real pair still connects, at once."""
    dialer, waiter = dialer_and_waiter(ctx)
    gid = ctx.query_gid(1, 0)
    waiter.qp.to_rtr(av_attr(gid, dialer.qp.qp_num))  # listening, waiting for the dialer
    port = waiter.qp.qp_num >> 8
    stop = threading.Event()
    held: list[socket.socket] = []

    def squat() -> None:
        while not stop.is_set():
            for sock in list(held):  # replace the ones the service dropped
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        held.remove(sock)
                        sock.close()
                except BlockingIOError:
                    pass
                except OSError:
                    held.remove(sock)
                    sock.close()
            # re-open what was dropped, but within the accept budget: a connect flood
            # beyond it is another attack (test_a_connection_flood_...), where the
            # kernel's backlog may drop the real peer's SYN too (docs/semantics.md)
            for _ in range(SQUAT_BATCH):
                if len(held) >= oob.MAX_INCOMING + 16:
                    break
                sock = stranger_socket()
                if sock.connect_ex(("127.0.0.1", port)):
                    sock.close()
                    break
                held.append(sock)
            time.sleep(SQUAT_PAUSE)

    squatter = threading.Thread(target=squat)
    squatter.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num))
        dialer.qp.to_rts(v.QPAttr(max_rd_atomic=4))
        waiter.qp.to_rts(v.QPAttr(max_rd_atomic=4))
        src, dst = v.MR(dialer.pd, 8, ALL_ACCESS), v.MR(waiter.pd, 8, ALL_ACCESS)
        src.write(b"came in!", 8)
        write(dialer, src, 8, dst.rkey, dst.buf)
        assert poll_until(dialer.scq, timeout=10)[0].status == W.IBV_WC_SUCCESS
        took = time.monotonic() - started
        assert dst.read(8, 0) == b"came in!"
        assert took < oob.HELLO_DEADLINE, f"the real peer waited {took:.2f} s"
        strangers = sum(i.host == STRANGER for i in ctx._oob._incoming)
        assert strangers <= oob.MAX_INCOMING_PER_HOST
    finally:
        stop.set()
        squatter.join()
        for sock in held:
            sock.close()


def test_hellos_from_elsewhere_cannot_take_the_expected_peers_place(ctx: v.Context) -> None:
    """Before the waiting QP reaches RTR, a stranger parks many hellos naming it (each
    claiming another QP number); the real dialler still gets its place and is taken."""
    listen_without_connecting(ctx)
    dialer, waiter = dialer_and_waiter(ctx)
    gid = ctx.query_gid(1, 0)
    squatters = []
    for n in range(oob.MAX_PARKED + 4):
        sock = stranger_socket()
        sock.connect(("127.0.0.1", waiter.qp.qp_num >> 8))
        sock.sendall(Hello(1 << 8 | n + 1, 1, 1, 1, dest_qp_num=waiter.qp.qp_num).encode())
        squatters.append(sock)
    dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num))
    dialer.qp.to_rts(v.QPAttr(max_rd_atomic=4))
    deadline = time.monotonic() + 5
    while dialer.qp.qp_num not in {e.hello.qp_num for e in parked_entries(ctx, waiter)}:
        assert time.monotonic() < deadline, f"the real peer was not parked: {ctx._oob.parked}"
        time.sleep(0.005)
    assert ctx._oob.parked[waiter.qp.qp_num] <= oob.MAX_PARKED
    strangers = [e for e in parked_entries(ctx, waiter) if e.host == STRANGER]
    assert len(strangers) <= oob.MAX_PARKED_PER_HOST
    waiter_joins_and_dialer_writes(dialer, waiter, gid, b"my place")
    for sock in squatters:
        sock.close()


def parked_entries(ctx: v.Context, end: Endpoint) -> list[oob._Parked]:
    with ctx._oob._lock:
        return list(ctx._oob._parked.get(end.qp.qp_num, []))


def thread_cpu_seconds(name_prefix: str) -> float:
    """CPU time (user + system) of this process's thread whose name starts so."""
    (thread,) = [t for t in threading.enumerate() if t.name.startswith(name_prefix)]
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_connection_flood_costs_the_service_bounded_cpu(ctx: v.Context) -> None:
    """Another process connects and closes as fast as it can for 2 s: the service's
    thread accepts at most ACCEPT_RATE per second and so stays mostly idle."""
    listen_without_connecting(ctx)
    port = ctx._oob._ports[0].port
    flood = (
        "import socket, time\n"
        "end = time.monotonic() + 2\n"
        "while time.monotonic() < end:\n"
        "    s = socket.socket(); s.setblocking(False); s.bind(('127.0.0.2', 0))\n"
        f"    s.connect_ex(('127.0.0.1', {port})); s.close()\n"
    )
    before = thread_cpu_seconds("tcpverbs-oob")
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", flood], check=True, timeout=30)
    spent = thread_cpu_seconds("tcpverbs-oob") - before
    wall = time.monotonic() - started
    assert spent < 0.25 * wall, f"the service thread used {spent:.2f} s of CPU in {wall:.2f} s"


# -- the peer proves who it is with the PSNs exchanged out of band ---------------------------

WAITER_PSN, DIALLER_PSN = 0x5EED01, 0x5EED02  # each side's sq_psn, told to the other


def auth_frame(psn: int) -> bytes:
    return encode_header(Header(Opcode.AUTH, psn=psn))


def dial_as(port: int, qp_num: int, dest: int, psn: int, auth: int) -> socket.socket:
    """A hand-made dialler on this host claiming *qp_num*, with the proofs it guessed."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(Hello(qp_num, 1, 1, 1, dest_qp_num=dest, psn=psn).encode() + auth_frame(auth))
    return sock


def closed_without_answer(sock: socket.socket) -> bool:
    """Closed (or reset: what we sent was left unread) before a byte came back."""
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


@pytest.mark.parametrize("waiter_in", ["RTR", "RTS"])
def test_an_impostor_on_the_peers_own_host_is_turned_away(ctx: v.Context, waiter_in: str) -> None:
    """Same address, the expected QP number, wrong PSNs: closed, and the real peer, which
    comes after it, is taken.  In RTR the waiting QP checks the AUTH frame, in RTS the
    hello."""
    dialer, waiter = dialer_and_waiter(ctx)
    gid = ctx.query_gid(1, 0)
    waiter.qp.to_rtr(av_attr(gid, dialer.qp.qp_num, rq_psn=DIALLER_PSN))
    if waiter_in == "RTS":
        waiter.qp.to_rts(v.QPAttr(sq_psn=WAITER_PSN, max_rd_atomic=4))
    port = waiter.qp.qp_num >> 8
    impostor = dial_as(port, dialer.qp.qp_num, waiter.qp.qp_num, psn=0, auth=0x123)
    assert closed_without_answer(impostor)
    assert ctx._oob.waiting(waiter.qp.qp_num)  # still waiting for the real one
    dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num, rq_psn=WAITER_PSN))
    dialer.qp.to_rts(v.QPAttr(sq_psn=DIALLER_PSN, max_rd_atomic=4))
    if waiter_in == "RTR":
        waiter.qp.to_rts(v.QPAttr(sq_psn=WAITER_PSN, max_rd_atomic=4))
    src, dst = v.MR(dialer.pd, 8, ALL_ACCESS), v.MR(waiter.pd, 8, ALL_ACCESS)
    src.write(b"the real", 8)
    write(dialer, src, 8, dst.rkey, dst.buf)
    assert poll_until(dialer.scq)[0].status == W.IBV_WC_SUCCESS
    assert dst.read(8, 0) == b"the real"


@pytest.mark.parametrize("stays", ["waiter", "dialer"])
def test_a_qp_that_stays_in_rtr_is_reached(ctx: v.Context, stays: str) -> None:
    """A receive-only QP never reaches RTS.  If it is the waiting one, the dialler's AUTH
    proves the dialler; if it is the dialler (no AUTH), its hello does, once the waiting
    QP is in RTS.  Either way the other QP's SEND arrives."""
    dialer, waiter = dialer_and_waiter(ctx)
    gid = ctx.query_gid(1, 0)
    psn = {dialer.qp.qp_num: DIALLER_PSN, waiter.qp.qp_num: WAITER_PSN}
    receiver, sender = (waiter, dialer) if stays == "waiter" else (dialer, waiter)
    dst = v.MR(receiver.pd, 8, ALL_ACCESS)
    receiver.qp.post_recv(v.RecvWR(7, 1, [v.SGE(dst.buf, 8, dst.lkey)]))
    for me, peer in ((receiver, sender), (sender, receiver)):
        me.qp.to_rtr(av_attr(gid, peer.qp.qp_num, rq_psn=psn[peer.qp.qp_num]))
    sender.qp.to_rts(v.QPAttr(sq_psn=psn[sender.qp.qp_num], max_rd_atomic=4))
    src = v.MR(sender.pd, 8, ALL_ACCESS)
    src.write(b"rtr only", 8)
    sender.qp.post_send(v.SendWR(8, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 8, src.lkey)]))
    assert poll_until(receiver.rcq)[0].wr_id == 7 and dst.read(8, 0) == b"rtr only"
    assert receiver.qp.qp_state == v.ibv_qp_state.IBV_QPS_RTR


def test_psns_that_do_not_pair_up_never_connect(
    ctx: v.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application's own mistake looks like an impostor: refused; the waiting QP
    times out, the dialler learns its connection was closed during the hello."""
    monkeypatch.setattr(oob, "CONNECT_TIMEOUT", 1.0)
    dialer, waiter = dialer_and_waiter(ctx)
    gid = ctx.query_gid(1, 0)
    waiter.qp.to_rtr(av_attr(gid, dialer.qp.qp_num, rq_psn=DIALLER_PSN))
    waiter.qp.to_rts(v.QPAttr(sq_psn=WAITER_PSN, max_rd_atomic=4))
    dialer.qp.to_rtr(av_attr(gid, waiter.qp.qp_num, rq_psn=WAITER_PSN ^ 1))
    try:
        dialer.qp.to_rts(v.QPAttr(sq_psn=DIALLER_PSN ^ 1, max_rd_atomic=4))
    except v.TcpverbsError as exc:
        # The refusal may beat this call: the QP is in ERR already, as a verbs QP that
        # failed in RTR would be, and the modify says why.
        assert exc.errno == errno.EINVAL and "hello" in str(exc)
    errors = {}
    for _ in range(2):
        event = ctx.get_async_event(timeout=10)
        errors[event.element] = event.element.error
    assert errors[waiter.qp].errno == errno.ETIMEDOUT
    assert "hello" in errors[dialer.qp].strerror
