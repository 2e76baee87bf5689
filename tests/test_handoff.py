"""Socket handoff, the connection hello, and the cm helper (issue #2 §4)."""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

import tcpverbs as v
from tcpverbs import cm
from tcpverbs.engine.api import LIMITS
from tcpverbs.testing import make_endpoint, poll_until, qp_pair, tcp_socket_pair
from tcpverbs.wire import Hello

W = v.ibv_wc_status
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


def connect_rc_to(ctx: v.Context, sock: socket.socket, wire: str = "rc") -> v.QP:
    end = make_endpoint(ctx, wire)  # type: ignore[arg-type]
    end.qp.to_rtr(v.QPAttr(sock=sock))
    end.qp.to_rts(v.QPAttr())
    return end.qp


def wait_for_err(qp: v.QP, timeout: float = 5.0) -> v.TcpverbsError:
    event = qp.ctx.get_async_event(timeout=timeout)
    assert event.event_type == v.ibv_event_type.IBV_EVENT_QP_FATAL and event.element is qp
    assert qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR and qp.error is not None
    assert event.reason == qp.error.strerror
    return qp.error


def test_handoff_example_from_the_readme(ctx: v.Context) -> None:
    """The application makes the TCP connection itself, then hands it over."""
    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname())
    server_sock, _ = listener.accept()
    listener.close()
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    for end, sock in ((a, client_sock), (b, server_sock)):
        end.qp.to_rtr(v.QPAttr(sock=sock))  # the library owns the socket from here
        end.qp.to_rts(v.QPAttr())
    mr = v.MR(a.pd, 16, LOCAL_WRITE)
    rmr = v.MR(b.pd, 16, LOCAL_WRITE)
    mr.write(b"handed over", 11)
    b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(rmr.buf, 16, rmr.lkey)]))
    a.qp.post_send(v.SendWR(2, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, 11, mr.lkey)]))
    assert poll_until(b.rcq)[0].byte_len == 11
    assert rmr.read(11, 0) == b"handed over"


def test_rc_against_a_non_tcpverbs_server_fails_fast(ctx: v.Context) -> None:
    mine, theirs = tcp_socket_pair()
    end = make_endpoint(ctx)
    mr = v.MR(end.pd, 64, LOCAL_WRITE)
    end.qp.post_recv(v.RecvWR(5, 1, [v.SGE(mr.buf, 64, mr.lkey)]))  # held, then flushed
    end.qp.to_rtr(v.QPAttr(sock=mine))
    end.qp.to_rts(v.QPAttr())
    theirs.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    err = wait_for_err(end.qp)
    assert isinstance(err, v.RemoteProtocolError) and err.errno == errno.EPROTO
    assert "not a tcpverbs rc endpoint" in str(err)
    assert [(w.wr_id, w.status) for w in poll_until(end.rcq)] == [(5, W.IBV_WC_WR_FLUSH_ERR)]
    with pytest.raises(v.PostError, match="connection set-up failed") as info:
        end.qp.post_send(v.SendWR(1, num_sge=1, sg=[v.SGE(mr.buf, 1, mr.lkey)]))
    assert info.value.errno == errno.EPROTO
    theirs.settimeout(5)
    received = b""
    while chunk := theirs.recv(100):  # the other side sees our hello, then the close
        received += chunk
    assert received.startswith(b"TCPVERBS")
    theirs.close()


def test_silent_peer_times_out(ctx: v.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LIMITS, "hello_timeout", 0.2)
    mine, theirs = tcp_socket_pair()
    qp = connect_rc_to(ctx, mine)
    err = wait_for_err(qp)
    assert err.errno == errno.ETIMEDOUT and "no tcpverbs hello" in str(err)
    theirs.close()


def test_version_mismatch_fails_with_a_clear_error(ctx: v.Context) -> None:
    mine, theirs = tcp_socket_pair()
    qp = connect_rc_to(ctx, mine)
    theirs.sendall(Hello(77, 16, 16, 1 << 20, version=99).encode())
    err = wait_for_err(qp)
    assert err.errno == errno.EPROTONOSUPPORT and "version 99" in str(err)
    theirs.settimeout(5)
    while theirs.recv(4096):  # we are disconnected, not left hanging
        pass
    theirs.close()


def test_peer_closing_during_hello(ctx: v.Context) -> None:
    mine, theirs = tcp_socket_pair()
    qp = connect_rc_to(ctx, mine)
    theirs.close()
    err = wait_for_err(qp)
    assert isinstance(err, v.ConnectionBrokenError) and "during the hello" in str(err)


def test_rc_and_stream_do_not_mix(ctx: v.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LIMITS, "hello_timeout", 0.3)
    sa, sb = tcp_socket_pair()
    rc_qp = connect_rc_to(ctx, sa, "rc")
    stream_end = make_endpoint(ctx, "stream")
    mr = v.MR(stream_end.pd, 64, LOCAL_WRITE)
    for wr_id in (1, 2):
        stream_end.qp.post_recv(v.RecvWR(wr_id, 1, [v.SGE(mr.buf, 64, mr.lkey)]))
    stream_end.qp.to_rtr(v.QPAttr(sock=sb))
    stream_end.qp.to_rts(v.QPAttr())
    event = ctx.get_async_event(timeout=5)
    assert event.element is rc_qp and "no tcpverbs hello" in event.reason
    # to a stream QP the rc hello is just bytes; then the peer's stream ends (EOF), which
    # ends its receive side only
    first, second = poll_until(stream_end.rcq, 2)
    assert first.status == W.IBV_WC_SUCCESS and mr.read(8, 0) == b"TCPVERBS"
    assert second.status == W.IBV_WC_WR_FLUSH_ERR
    assert stream_end.qp.qp_state == v.ibv_qp_state.IBV_QPS_RTS


def test_posts_before_the_hello_completes_are_held(ctx: v.Context) -> None:
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    sa, sb = tcp_socket_pair()
    a.qp.to_rtr(v.QPAttr(sock=sa))
    a.qp.to_rts(v.QPAttr())
    mr = v.MR(a.pd, 8, LOCAL_WRITE)
    a.qp.post_send(v.SendWR(1, num_sge=1, sg=[v.SGE(mr.buf, 8, mr.lkey)]))  # peer not there yet
    rmr = v.MR(b.pd, 8, LOCAL_WRITE)
    b.qp.post_recv(v.RecvWR(2, 1, [v.SGE(rmr.buf, 8, rmr.lkey)]))
    b.qp.to_rtr(v.QPAttr(sock=sb))
    b.qp.to_rts(v.QPAttr())
    assert poll_until(b.rcq)[0].byte_len == 8
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS


@pytest.mark.parametrize("wire", ["rc", "stream"])
def test_cm_listen_and_connect(ctx: v.Context, wire: str) -> None:
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 64)
    init = v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(8, 8, 1, 1, 0), wire=wire)  # type: ignore[arg-type]
    accepted: list[v.QP] = []
    with cm.Listener("127.0.0.1", 0) as listener:
        host, port = listener.address
        server = threading.Thread(target=lambda: accepted.append(listener.accept(pd, init)))
        server.start()
        client = cm.connect(host, port, pd, init)
        server.join(10)
    (served,) = accepted
    assert client.qp_state == served.qp_state == v.ibv_qp_state.IBV_QPS_RTS
    mr = v.MR(pd, 64, LOCAL_WRITE)
    served.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf + 32, 32, mr.lkey)]))
    mr.write(b"via cm", 6)
    client.post_send(v.SendWR(2, num_sge=1, sg=[v.SGE(mr.buf, 6, mr.lkey)]))
    statuses = {w.wr_id: (w.status, w.byte_len) for w in poll_until(cq, 2)}
    assert statuses == {1: (W.IBV_WC_SUCCESS, 6), 2: (W.IBV_WC_SUCCESS, 6)}
    assert mr.read(6, 32) == b"via cm"


def test_cm_errors(ctx: v.Context) -> None:
    pd = v.PD(ctx)
    cq = v.CQ(ctx, 8)
    init = v.QPInitAttr(scq=cq, rcq=cq)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free_port = probe.getsockname()[1]
    with pytest.raises(v.TcpverbsError) as info:
        cm.connect("127.0.0.1", free_port, pd, init, timeout=2)
    assert info.value.errno == errno.ECONNREFUSED
    with cm.Listener("127.0.0.1", 0) as listener:
        with pytest.raises(v.TcpverbsError) as info:
            listener.accept(pd, init, timeout=0.05)
        assert info.value.errno == errno.ETIMEDOUT


def test_established_says_when_the_connection_is_up(ctx: v.Context) -> None:
    """rc: once both hellos are exchanged; stream: from the handoff (no hello)."""
    a, b = make_endpoint(ctx), make_endpoint(ctx)
    assert not a.qp.established
    sa, sb = tcp_socket_pair()
    a.qp.to_rtr(v.QPAttr(sock=sa))
    assert not a.qp.established  # the peer's hello has not come: it has not even started
    b.qp.to_rtr(v.QPAttr(sock=sb))
    deadline = time.monotonic() + 5
    while not (a.qp.established and b.qp.established):
        assert time.monotonic() < deadline, "the hellos were not exchanged"
        a.rcq.poll()
        b.rcq.poll()
    c, d = qp_pair(ctx, "stream")
    assert c.qp.established and d.qp.established
