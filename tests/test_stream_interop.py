"""Stream-mode QPs against plain programs: a Python socket, ``socat`` and ``nc``.

In stream mode the TCP payload is the application's data, so any program with a socket is
a peer.  Receives complete with ``byte_len`` = the bytes that landed (possibly fewer than
posted); a signaled SEND completes once TCP has acknowledged its last byte.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpverbs as v
from tcpverbs.cm import Listener
from tcpverbs.testing import Endpoint, make_endpoint, poll_until

from .peer_proc import post_recv, post_send

W = v.ibv_wc_status
LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
KIB, MIB = 1024, 1024 * 1024


def to_plain_peer(
    end: Endpoint, rcvbuf: int | None = None, attr: v.QPAttr | None = None
) -> socket.socket:
    """Connect *end*'s stream QP (to RTS, with *attr*) to a plain socket over loopback;
    return that socket.  *rcvbuf* fixes its receive buffer (no autotuning), so that
    what it has not read holds back the acknowledgements."""
    with socket.socket() as listener:
        if rcvbuf is not None:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        mine = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    end.qp.to_rtr(v.QPAttr(sock=mine))
    end.qp.to_rts(attr or v.QPAttr())
    return theirs


@pytest.fixture
def plain(ctx: v.Context) -> Iterator[tuple[Endpoint, socket.socket]]:
    """A stream QP in RTS and the plain socket at the other end of its connection."""
    end = make_endpoint(ctx, "stream", v.QPCap(256, 256, 1, 1, 0))
    with to_plain_peer(end) as theirs:
        yield end, theirs


def receive_exactly(end: Endpoint, mr: v.MR, total: int, timeout: float = 10.0) -> list[int]:
    """Post receives over ``mr[0:total]`` until *total* bytes landed; the ``byte_len``s."""
    got, lens = 0, []
    post_recv(end.qp, mr, 0, 0, total)
    while got < total:
        (wc,) = poll_until(end.rcq, 1, timeout)
        assert wc.status == W.IBV_WC_SUCCESS, (wc, end.qp.error)
        assert wc.opcode == v.ibv_wc_opcode.IBV_WC_RECV and 0 < wc.byte_len <= total - got
        got += wc.byte_len
        lens.append(wc.byte_len)
        if got < total:
            post_recv(end.qp, mr, 0, got, total - got)
    return lens


def recv_all(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        assert n, f"EOF after {got} of {size} bytes"
        got += n
    return bytes(buf)


def test_send_to_plain_socket_and_back(plain: tuple[Endpoint, socket.socket]) -> None:
    end, theirs = plain
    data = os.urandom(1 * MIB)
    smr, rmr = v.MR(end.pd, len(data), LOCAL_WRITE), v.MR(end.pd, len(data), LOCAL_WRITE)
    smr.write(data, len(data))
    for i in range(4):  # four SENDs: one contiguous byte stream at the peer
        post_send(end.qp, smr, i, i * (len(data) // 4), len(data) // 4)
    assert recv_all(theirs, len(data)) == data
    sends = poll_until(end.scq, 4)
    assert [(wc.wr_id, wc.status, wc.byte_len) for wc in sends] == [
        (i, W.IBV_WC_SUCCESS, len(data) // 4) for i in range(4)
    ]
    echo = threading.Thread(target=theirs.sendall, args=(data,))
    echo.start()
    lens = receive_exactly(end, rmr, len(data))
    echo.join()
    assert sum(lens) == len(data) and rmr.read(len(data), 0) == data


def test_receive_completes_with_what_landed(plain: tuple[Endpoint, socket.socket]) -> None:
    end, theirs = plain
    mr = v.MR(end.pd, 64 * KIB, LOCAL_WRITE)
    post_recv(end.qp, mr, 1, 0, 64 * KIB)
    theirs.sendall(b"hello, verbs")
    (wc,) = poll_until(end.rcq)
    assert (wc.wr_id, wc.status, wc.byte_len) == (1, W.IBV_WC_SUCCESS, 12)
    assert mr.read(12, 0) == b"hello, verbs"
    # 15 bytes into two receives of 10: the first fills up, the second takes the rest.
    post_recv(end.qp, mr, 2, 0, 10)
    post_recv(end.qp, mr, 3, 10, 10)
    theirs.sendall(b"0123456789abcde")
    first, second = poll_until(end.rcq, 2)
    assert (first.wr_id, first.byte_len, second.wr_id, second.byte_len) == (2, 10, 3, 5)
    assert mr.read(15, 0) == b"0123456789abcde"


def test_half_close_ends_only_the_receive_side(plain: tuple[Endpoint, socket.socket]) -> None:
    end, theirs = plain
    mr = v.MR(end.pd, MIB, LOCAL_WRITE)
    theirs.sendall(b"last words")
    theirs.shutdown(socket.SHUT_WR)
    post_recv(end.qp, mr, 1, 0, 4096)
    post_recv(end.qp, mr, 2, 0, 4096)
    first, second = poll_until(end.rcq, 2)
    assert (first.wr_id, first.status, first.byte_len) == (1, W.IBV_WC_SUCCESS, 10)
    assert (second.wr_id, second.status) == (2, W.IBV_WC_WR_FLUSH_ERR)
    assert end.qp.qp_state == v.ibv_qp_state.IBV_QPS_RTS and end.qp.error is None
    post_recv(end.qp, mr, 3, 0, 4096)  # a receive posted after the end flushes at once
    (third,) = poll_until(end.rcq)
    assert (third.wr_id, third.status) == (3, W.IBV_WC_WR_FLUSH_ERR)
    data = os.urandom(MIB)  # the other direction goes on
    mr.write(data, len(data))
    post_send(end.qp, mr, 4, 0, len(data))
    assert recv_all(theirs, len(data)) == data
    (sent,) = poll_until(end.scq)
    assert (sent.wr_id, sent.status, sent.byte_len) == (4, W.IBV_WC_SUCCESS, len(data))
    end.qp.close()
    assert theirs.recv(1) == b""  # and ends when the application closes the QP


@pytest.mark.parametrize("late", [False, True], ids=["reads-at-once", "reads-late"])
def test_peer_that_read_everything_and_closed_never_flushes_a_send(
    ctx: v.Context, late: bool
) -> None:
    """Every byte reached the peer: every SEND completes SUCCESS, even though the peer's
    EOF arrives right behind the acknowledgement of the last bytes."""
    count, size = 16, 64 * KIB
    end = make_endpoint(ctx, "stream", v.QPCap(count, 4, 1, 1, 0))
    theirs = to_plain_peer(end, rcvbuf=64 * KIB)  # the last SENDs wait for its reads
    mr = v.MR(end.pd, count * size, LOCAL_WRITE)
    data = os.urandom(count * size)
    mr.write(data, len(data))

    def peer() -> None:
        with theirs:
            if late:
                time.sleep(0.3)
            assert recv_all(theirs, len(data)) == data

    rmr = v.MR(end.pd, 16, LOCAL_WRITE)
    post_recv(end.qp, rmr, 99, 0, 16)  # watching for the peer's data: it sees the EOF
    reader = threading.Thread(target=peer)
    reader.start()
    for i in range(count):
        post_send(end.qp, mr, i, i * size, size)
    got: list[v.WC] = []
    while len(got) < count:  # sleep in wait(), as the application that saw the loss did
        got += end.scq.wait(count - len(got), timeout=10)
    reader.join()
    assert [(wc.wr_id, wc.status) for wc in got] == [(i, W.IBV_WC_SUCCESS) for i in range(count)]
    (wc,) = poll_until(end.rcq)  # the receive ends with the stream
    assert (wc.wr_id, wc.status) == (99, W.IBV_WC_WR_FLUSH_ERR)


def test_reset_delivers_what_the_kernel_already_holds(
    plain: tuple[Endpoint, socket.socket],
) -> None:
    end, theirs = plain
    data = os.urandom(64 * KIB)
    theirs.sendall(data)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # linger 0: RST
    time.sleep(0.2)  # the reset has arrived; the data waits in our kernel
    assert end.qp.qp_state == v.ibv_qp_state.IBV_QPS_RTS  # held: nothing of ours is lost
    mr = v.MR(end.pd, len(data), LOCAL_WRITE)
    lens = receive_exactly(end, mr, len(data))
    assert sum(lens) == len(data) and mr.read(len(data), 0) == data
    event = end.qp.ctx.get_async_event(timeout=5)  # then the reset is reported
    assert (event.event_type, event.element) == (v.ibv_event_type.IBV_EVENT_QP_FATAL, end.qp)
    assert isinstance(end.qp.error, v.ConnectionBrokenError)
    assert end.qp.error.errno == errno.ECONNRESET
    post_recv(end.qp, mr, 7, 0, 16)
    (wc,) = poll_until(end.rcq)
    assert (wc.wr_id, wc.status) == (7, W.IBV_WC_WR_FLUSH_ERR)


def test_reset_with_receives_posted_fills_them_first(
    plain: tuple[Endpoint, socket.socket],
) -> None:
    end, theirs = plain
    mr = v.MR(end.pd, 64 * KIB, LOCAL_WRITE)
    for i in range(4):
        post_recv(end.qp, mr, i, i * 16 * KIB, 16 * KIB)
    theirs.sendall(b"x" * 1000)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    got = poll_until(end.rcq, 4)
    assert (got[0].wr_id, got[0].status, got[0].byte_len) == (0, W.IBV_WC_SUCCESS, 1000)
    assert [wc.status for wc in got[1:]] == [W.IBV_WC_WR_FLUSH_ERR] * 3
    assert end.qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR


def test_send_completes_only_when_the_peer_has_read(ctx: v.Context) -> None:
    """A 32 MiB SEND cannot fit in the kernel's buffers: no completion until the peer reads."""
    size = 32 * MIB
    end = make_endpoint(ctx, "stream", v.QPCap(4, 4, 1, 1, 0))
    with to_plain_peer(end, rcvbuf=256 * KIB) as theirs:
        data = os.urandom(size)
        mr = v.MR(end.pd, size, LOCAL_WRITE)
        mr.write(data, size)
        post_send(end.qp, mr, 9, 0, size)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the peer reads nothing: no completion
            assert end.scq.poll()[0] == 0
        assert recv_all(theirs, size) == data
        (wc,) = poll_until(end.scq, 1, 10)
        assert (wc.wr_id, wc.status, wc.byte_len) == (9, W.IBV_WC_SUCCESS, size)


# -- real programs -------------------------------------------------------------------------


def need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"`{program}` is not installed (Debian package {package})")
    return path


def stream_qp_from(listener: Listener, ctx: v.Context) -> Endpoint:
    pd, scq, rcq = v.PD(ctx), v.CQ(ctx, 256), v.CQ(ctx, 256)
    init = v.QPInitAttr(scq=scq, rcq=rcq, cap=v.QPCap(64, 64, 1, 1, 0), wire="stream")
    return Endpoint(pd, scq, rcq, listener.accept(pd, init, timeout=10))


def test_socat_echo(ctx: v.Context) -> None:
    socat = need("socat", "socat")
    data = os.urandom(2 * MIB)
    with Listener("127.0.0.1", 0) as listener:
        port = listener.address[1]
        proc = subprocess.Popen(
            [socat, f"TCP:127.0.0.1:{port}", "EXEC:cat"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            end = stream_qp_from(listener, ctx)
            smr, rmr = v.MR(end.pd, len(data), LOCAL_WRITE), v.MR(end.pd, len(data), LOCAL_WRITE)
            smr.write(data, len(data))
            half = len(data) // 2
            post_send(end.qp, smr, 1, 0, half)
            post_send(end.qp, smr, 2, half, len(data) - half)
            lens = receive_exactly(end, rmr, len(data))
            assert [wc.status for wc in poll_until(end.scq, 2)] == [W.IBV_WC_SUCCESS] * 2
            assert sum(lens) == len(data) and rmr.read(len(data), 0) == data
            end.qp.close()  # socat sees EOF, cat ends, socat exits
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_nc_receives_a_file(ctx: v.Context, tmp_path: Path) -> None:
    nc = need("nc", "netcat-openbsd")
    data = os.urandom(3 * MIB + 17)
    out = tmp_path / "received"
    with Listener("127.0.0.1", 0) as listener, out.open("wb") as sink:
        port = listener.address[1]
        proc = subprocess.Popen(
            [nc, "-d", "127.0.0.1", str(port)], stdout=sink, stderr=subprocess.PIPE, text=True
        )
        try:
            end = stream_qp_from(listener, ctx)
            mr = v.MR(end.pd, len(data), LOCAL_WRITE)
            mr.write(data, len(data))
            post_send(end.qp, mr, 1, 0, len(data))
            (wc,) = poll_until(end.scq, 1)
            assert (wc.status, wc.byte_len) == (W.IBV_WC_SUCCESS, len(data))
            end.qp.close()  # EOF: nc exits
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
    assert out.read_bytes() == data


def test_nc_sends_a_file(ctx: v.Context, tmp_path: Path) -> None:
    nc = need("nc", "netcat-openbsd")
    data = os.urandom(3 * MIB + 17)
    src = tmp_path / "sent"
    src.write_bytes(data)
    with Listener("127.0.0.1", 0) as listener, src.open("rb") as source:
        port = listener.address[1]
        proc = subprocess.Popen(
            [nc, "-N", "127.0.0.1", str(port)],  # -N: shutdown(SHUT_WR) after the file
            stdin=source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            end = stream_qp_from(listener, ctx)
            mr = v.MR(end.pd, len(data) + 1, LOCAL_WRITE)
            lens = receive_exactly(end, mr, len(data))
            assert sum(lens) == len(data) and mr.read(len(data), 0) == data
            post_recv(end.qp, mr, 99, 0, 1)  # then the end of the stream flushes it
            (wc,) = poll_until(end.rcq, 1)
            assert (wc.wr_id, wc.status) == (99, W.IBV_WC_WR_FLUSH_ERR)
            end.qp.close()
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
