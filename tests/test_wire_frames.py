"""The rc frame codec: round trips, input split at every byte, and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpverbs.errors import RemoteProtocolError
from tcpverbs.wire.frames import (
    FLAG_SOLICITED,
    MAX_REASON,
    FrameDecoder,
    Header,
    Opcode,
    encode_ack,
    encode_header,
    whole_send,
)

from .test_wire_rc import DECODERS

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
MAX_PAYLOAD = 1 << 20


@st.composite
def frames(draw: st.DrawFn) -> tuple[Header, bytes]:
    op = draw(st.sampled_from(list(Opcode)))
    h = Header(op, flags=draw(st.sampled_from([0, FLAG_SOLICITED])))
    payload = b""
    if op in (Opcode.SEND, Opcode.SEND_IMM, Opcode.WRITE, Opcode.WRITE_IMM, Opcode.READ_RESP):
        payload = draw(st.binary(max_size=300))
        h.payload_len = len(payload)
    if op in (Opcode.SEND_IMM, Opcode.WRITE_IMM):
        h.imm = draw(U32)
    if op in (
        Opcode.WRITE,
        Opcode.WRITE_IMM,
        Opcode.READ_REQ,
        Opcode.ATOMIC_CMP_SWP,
        Opcode.ATOMIC_FETCH_ADD,
    ):
        h.rkey, h.addr = draw(U32), draw(U64)
    if op is Opcode.READ_REQ:
        h.length = draw(U32)
    if op in (Opcode.ATOMIC_CMP_SWP, Opcode.ATOMIC_FETCH_ADD, Opcode.ATOMIC_RESP):
        h.compare_add = draw(U64)
    if op in (Opcode.ATOMIC_CMP_SWP, Opcode.ATOMIC_FETCH_ADD):
        h.swap = draw(U64)
    if op in (
        Opcode.ACK,
        Opcode.TERMINATE,
        Opcode.RNR_NAK,
        Opcode.RESYNC,
        Opcode.READ_RESP,
        Opcode.ATOMIC_RESP,
    ):
        h.msn = draw(U32)
    if op is Opcode.RNR_NAK:
        h.timer = draw(st.integers(0, 255))
    if op is Opcode.TERMINATE:
        h.status = draw(st.integers(0, 255))
        h.reason = draw(st.binary(max_size=64))
    return h, payload


def decode_all(data: bytes, chunk_sizes: list[int] | None = None) -> list[tuple[Header, bytes]]:
    """Drive a decoder over *data* delivered in chunks; collect (header, payload)."""
    dec = FrameDecoder(MAX_PAYLOAD)
    out: list[tuple[Header, bytes]] = []
    payload = bytearray()
    pos = 0
    sizes = iter(chunk_sizes or [])
    while pos < len(data):
        n = next(sizes, len(data) - pos) or 1
        chunk = memoryview(data)[pos : pos + n]
        pos += len(chunk)
        while chunk:
            if dec.payload_remaining:
                k = min(dec.payload_remaining, len(chunk))
                payload += chunk[:k]
                dec.payload_consumed(k)
                chunk = chunk[k:]
                if not dec.payload_remaining:
                    out[-1] = (out[-1][0], bytes(payload))
                continue
            header, used = dec.receive(chunk)
            chunk = chunk[used:]
            if header is not None:
                payload.clear()
                out.append((header, b""))
            elif used == 0:
                break
    assert dec.at_boundary
    return out


@given(st.lists(frames(), max_size=8))
def test_round_trip(items: list[tuple[Header, bytes]]) -> None:
    wire = b"".join(encode_header(h) + p for h, p in items)
    assert decode_all(wire) == items


@settings(max_examples=60)
@given(st.lists(frames(), min_size=1, max_size=4))
def test_split_at_every_byte(items: list[tuple[Header, bytes]]) -> None:
    wire = b"".join(encode_header(h) + p for h, p in items)
    for cut in range(len(wire) + 1):
        assert decode_all(wire, [cut, len(wire)]) == items
    assert decode_all(wire, [1] * len(wire)) == items


@given(st.binary(max_size=200))
def test_fuzz_never_crashes_or_overallocates(junk: bytes) -> None:
    dec = FrameDecoder(4096)
    view = memoryview(junk)
    try:
        while view:
            if dec.payload_remaining:
                k = min(dec.payload_remaining, len(view))
                dec.payload_consumed(k)
                view = view[k:]
                continue
            header, used = dec.receive(view)
            view = view[used:]
            if header is None and used == 0:
                break
            if header is not None:
                assert header.payload_len <= 4096
                assert len(header.reason) <= MAX_REASON
    except RemoteProtocolError:
        pass
    assert len(dec._buf) <= 64 + MAX_REASON


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes([0x7F, 0, 0, 0, 0, 0, 0, 0]), "unknown frame opcode"),
        (struct.pack("!BBHI", Opcode.SEND, 0x80, 0, 0), "unknown flags"),
        (struct.pack("!BBHI", Opcode.SEND, 0, 7, 0), "unknown flags"),
        (struct.pack("!BBHII", Opcode.ACK, 0, 0, 8, 1) + b"\0" * 4, "unexpected bytes"),
        (struct.pack("!BBHI", Opcode.SEND_IMM, 0, 0, 2) + b"\0" * 4, "shorter than its header"),
        (struct.pack("!BBHI", Opcode.SEND, 0, 0, 4097), "exceeds the limit"),
        (struct.pack("!BBHIIB3x", Opcode.TERMINATE, 0, 0, 8 + MAX_REASON + 1, 0, 0), "too long"),
    ],
)
def test_malformed_headers_are_rejected(raw: bytes, message: str) -> None:
    dec = FrameDecoder(4096)
    with pytest.raises(RemoteProtocolError, match=message) as info:
        dec.receive(memoryview(raw))
    assert info.value.errno == 71  # EPROTO
    with pytest.raises(RemoteProtocolError):
        dec.receive(memoryview(b"\x01"))  # unusable after an error


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_payload_state_is_enforced(name: str) -> None:
    dec = DECODERS[name](100)  # the reference and its C twin alike
    header, _ = dec.receive(memoryview(encode_header(Header(Opcode.SEND, payload_len=5))))
    assert header is not None and header.payload_len == 5 and dec.in_payload
    with pytest.raises(ValueError, match="payload state"):
        dec.receive(memoryview(b"abc"))
    with pytest.raises(ValueError, match="consumed 6 payload bytes, 5 expected"):
        dec.payload_consumed(6)
    dec.payload_consumed(5)
    assert dec.at_boundary and dec.max_payload == 100


def test_encode_refuses_payload_on_control_frames() -> None:
    with pytest.raises(ValueError, match="carry no payload"):
        encode_header(Header(Opcode.ACK, payload_len=3))


@given(st.integers(0, 2**32 - 1))
def test_the_ack_shortcut_encodes_what_encode_header_does(msn: int) -> None:
    assert encode_ack(msn) == encode_header(Header(Opcode.ACK, msn=msn))


@settings(max_examples=300)
@given(frames(), st.binary(max_size=20), st.data())
def test_whole_send_agrees_with_the_decoder(
    item: tuple[Header, bytes], prefix: bytes, data: st.DataObject
) -> None:
    """The one-step SEND shortcut finds exactly the complete SEND / SEND_IMM frames, with
    the decoder's reading of them, and nothing at all in a frame cut short."""
    h, payload = item
    wire = encode_header(h) + payload
    buf = memoryview(prefix + wire + b"\x10")  # something follows the frame
    pos = len(prefix)
    got = whole_send(buf, pos, MAX_PAYLOAD)
    if h.opcode not in (Opcode.SEND, Opcode.SEND_IMM):
        assert got is None
        return
    assert got is not None
    size, n, flags, imm = got
    assert size + n == len(wire) and n == len(payload) and flags == h.flags
    assert imm == (h.imm if h.opcode is Opcode.SEND_IMM else None)
    decoded, used = FrameDecoder(MAX_PAYLOAD).receive(buf[pos:])
    assert decoded is not None and used == size and decoded.payload_len == n
    assert bytes(buf[pos + size : pos + size + n]) == payload
    cut = data.draw(st.integers(0, len(wire) - 1))  # any frame cut short: not whole
    assert whole_send(memoryview(prefix + wire[:cut]), pos, MAX_PAYLOAD) is None


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("!BBHI", 1, 0x80, 0, 0),  # unknown flag
        struct.pack("!BBHI", 1, 0, 7, 0),  # reserved bits
        struct.pack("!BBHI", 2, 0, 0, 3) + b"abcd",  # SEND_IMM shorter than its immediate
        struct.pack("!BBHI", 1, 0, 0, MAX_PAYLOAD + 1) + bytes(MAX_PAYLOAD + 1),  # too long
    ],
)
def test_whole_send_leaves_malformed_frames_to_the_decoder(raw: bytes) -> None:
    """None, so the bytes go to the decoder, which rejects them with the reason."""
    assert whole_send(memoryview(raw), 0, MAX_PAYLOAD) is None
    with pytest.raises(RemoteProtocolError):
        FrameDecoder(MAX_PAYLOAD).receive(memoryview(raw))
