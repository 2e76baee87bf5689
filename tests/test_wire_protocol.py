"""Hello negotiation and the rc request/ACK counters (sans-IO)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpverbs.errors import RemoteProtocolError
from tcpverbs.wire import HELLO_SIZE, Hello, HelloDecoder, Opcode, RcProtocol, WireMode
from tcpverbs.wire.frames import FrameDecoder


def feed(dec: HelloDecoder, data: bytes, step: int) -> Hello | None:
    hello = None
    for i in range(0, len(data), step):
        hello, used = dec.receive(memoryview(data[i : i + step]))
        assert used == len(data[i : i + step])
    return hello


@given(
    st.integers(0, 2**24),
    st.integers(1, 2**16),
    st.integers(1, 2**16),
    st.integers(1, 2**31),
    st.integers(1, HELLO_SIZE),
)
def test_hello_round_trip_in_any_split(qpn: int, sw: int, rw: int, msg: int, step: int) -> None:
    hello = Hello(qpn, sw, rw, msg, 4, 8, dest_qp_num=qpn ^ 0xABCDEF)
    assert feed(HelloDecoder(), hello.encode(), step) == hello


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n", b"T", b"TCPVERBX", b"\x00"])
def test_non_tcpverbs_peer_is_rejected_at_first_wrong_byte(junk: bytes) -> None:
    dec = HelloDecoder()
    if junk == b"T":
        assert dec.receive(memoryview(junk)) == (None, 1)  # still a valid prefix
        return
    with pytest.raises(RemoteProtocolError, match="not a tcpverbs rc endpoint") as info:
        dec.receive(memoryview(junk))
    assert info.value.errno == errno.EPROTO


def test_version_and_mode_mismatch() -> None:
    mine = Hello(1, 1, 1, 1)
    with pytest.raises(RemoteProtocolError, match="version 9") as info:
        mine.check_peer(Hello(2, 1, 1, 1, version=9))
    assert info.value.errno == errno.EPROTONOSUPPORT
    with pytest.raises(RemoteProtocolError, match="wire mode 'stream'"):
        mine.check_peer(Hello(2, 1, 1, 1, mode=WireMode.STREAM))
    mine.check_peer(Hello(2, 5, 5, 5))


def test_unknown_wire_mode_in_hello() -> None:
    raw = bytearray(Hello(1, 1, 1, 1).encode())
    raw[10] = 77  # the mode byte
    with pytest.raises(RemoteProtocolError, match="unknown wire mode"):
        HelloDecoder().receive(memoryview(bytes(raw)))


def test_cumulative_acks() -> None:
    proto = RcProtocol()
    assert [proto.next_request() for _ in range(3)] == [1, 2, 3]
    assert proto.on_ack(2) == 2
    assert proto.on_ack(2) == 0
    assert proto.on_ack(3) == 1
    with pytest.raises(RemoteProtocolError, match="only 3 were sent"):
        proto.on_ack(4)


def test_ack_is_coalesced_and_decodes() -> None:
    proto = RcProtocol()
    assert proto.take_ack() is None
    for _ in range(5):
        proto.request_done()
    ack = proto.take_ack()
    assert ack is not None and proto.take_ack() is None
    header, used = FrameDecoder(0).receive(memoryview(ack))
    assert header is not None and header.opcode is Opcode.ACK and header.msn == 5
    assert used == len(ack)


def test_msn_wraps() -> None:
    proto = RcProtocol()
    proto.sent = proto.acked = 2**32 - 1
    assert proto.next_request() == 0
    assert proto.on_ack(0) == 1


def test_wire_layer_never_imports_socket() -> None:
    import ast
    import pathlib

    from tcpverbs import wire

    for path in pathlib.Path(wire.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        names |= {
            (n.module or "").split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 0
        }
        assert not names & {"socket", "select", "selectors", "asyncio"}, path
