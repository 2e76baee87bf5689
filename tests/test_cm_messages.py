"""The connection manager's message codec: round trips, input split at every byte, golden
vectors written by hand from the documented layout, and a misbehaving peer."""

from __future__ import annotations

import errno
import struct
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpverbs.cm.messages import (
    HEADER_SIZE,
    MAX_BODY,
    PRIVATE_DATA_MAX,
    VERSION,
    CMDecoder,
    CMMessage,
    CMProtocolError,
    MessageType,
    encode,
)
from tcpverbs.errors import TcpverbsError

U8 = st.integers(0, 255)
U32 = st.integers(0, 2**32 - 1)
PSN = st.integers(0, 2**24 - 1)
ENDPOINT_SIZE = 12  # REQ / REP: qp_num (4), psn (4), four u8 fields
ENDPOINT_TYPES = (MessageType.REQ, MessageType.REP)


def body_limit(kind: MessageType) -> int:
    """The longest body a *kind* message may have."""
    return PRIVATE_DATA_MAX[kind] + (ENDPOINT_SIZE if kind in ENDPOINT_TYPES else 0)


@st.composite
def messages(draw: st.DrawFn, kinds: st.SearchStrategy[MessageType] | None = None) -> CMMessage:
    kind = draw(kinds if kinds is not None else st.sampled_from(list(MessageType)))
    private_data = draw(st.binary(max_size=PRIVATE_DATA_MAX[kind]))
    if kind not in ENDPOINT_TYPES:
        return CMMessage(kind, private_data)
    return CMMessage(
        kind,
        private_data,
        qp_num=draw(U32),
        psn=draw(PSN),
        responder_resources=draw(U8),
        initiator_depth=draw(U8),
        retry_count=draw(U8),
        rnr_retry_count=draw(U8),
    )


def assert_broken(decoder: CMDecoder) -> None:
    """A decoder that has seen a broken message refuses everything after it."""
    for more in (b"", b"\x00", encode(CMMessage(MessageType.RTU))):
        with pytest.raises(CMProtocolError) as info:
            decoder.feed(more)
        assert info.value.errno == errno.EPROTO
    assert decoder.pending == 0


# -- round trips -------------------------------------------------------------------------


def test_the_constants_match_the_documented_layout() -> None:
    assert HEADER_SIZE == 4
    assert VERSION == 1
    assert [int(k) for k in MessageType] == [1, 2, 3, 4, 5, 6]
    assert max(body_limit(kind) for kind in MessageType) == MAX_BODY
    assert all(body_limit(kind) <= MAX_BODY for kind in MessageType)


@pytest.mark.parametrize("kind", list(MessageType))
@given(data=st.data())
def test_round_trip_of_each_type(kind: MessageType, data: st.DataObject) -> None:
    message = data.draw(messages(st.just(kind)))
    wire = encode(message)
    assert wire[0] == kind and wire[1] == VERSION
    assert struct.unpack_from("!H", wire, 2)[0] == len(wire) - HEADER_SIZE
    decoder = CMDecoder()
    assert decoder.feed(wire) == [message]
    assert decoder.pending == 0


@pytest.mark.parametrize("kind", list(MessageType))
def test_round_trip_at_the_private_data_limit(kind: MessageType) -> None:
    message = CMMessage(kind, bytes(range(PRIVATE_DATA_MAX[kind])))
    wire = encode(message)
    assert len(wire) == HEADER_SIZE + body_limit(kind)
    assert CMDecoder().feed(wire) == [message]


@given(st.lists(messages(), max_size=10))
def test_round_trip_of_a_stream(items: list[CMMessage]) -> None:
    decoder = CMDecoder()
    assert decoder.feed(b"".join(encode(m) for m in items)) == items
    assert decoder.pending == 0


@given(st.lists(messages(), max_size=6))
def test_feed_takes_any_bytes_like(items: list[CMMessage]) -> None:
    wire = b"".join(encode(m) for m in items)
    assert CMDecoder().feed(bytearray(wire)) == items  # type: ignore[arg-type]
    assert CMDecoder().feed(memoryview(wire)) == items  # type: ignore[arg-type]


def test_many_messages_in_one_call_are_all_returned() -> None:
    kinds = list(MessageType)
    items: list[CMMessage] = []
    for i in range(3000):
        kind = kinds[i % len(kinds)]
        private_data = bytes([i % 256]) * (i % (PRIVATE_DATA_MAX[kind] + 1))
        if kind in ENDPOINT_TYPES:
            items.append(CMMessage(kind, private_data, qp_num=i, psn=i))
        else:
            items.append(CMMessage(kind, private_data))
    wire = b"".join(encode(m) for m in items)
    assert len(wire) > 100 * (HEADER_SIZE + MAX_BODY)
    decoder = CMDecoder()
    assert decoder.feed(wire) == items
    assert decoder.pending == 0
    # and a torn message after them stays, alone, pending
    tail = encode(CMMessage(MessageType.REP, b"x" * 100))
    assert decoder.feed(wire + tail[:50]) == items
    assert decoder.pending == 50
    assert decoder.feed(tail[50:]) == [CMMessage(MessageType.REP, b"x" * 100)]
    assert decoder.pending == 0


def test_empty_input_yields_nothing() -> None:
    decoder = CMDecoder()
    assert decoder.feed(b"") == []
    assert decoder.pending == 0


# -- input split at every byte ------------------------------------------------------------


@settings(max_examples=60)
@given(st.lists(messages(), min_size=1, max_size=3))
def test_split_at_every_byte(items: list[CMMessage]) -> None:
    encoded = [encode(m) for m in items]
    wire = b"".join(encoded)
    ends = list(accumulate(len(e) for e in encoded))
    for cut in range(len(wire) + 1):
        decoder = CMDecoder()
        first = decoder.feed(wire[:cut])
        whole = sum(1 for end in ends if end <= cut)
        assert first == items[:whole]
        assert decoder.pending == cut - (ends[whole - 1] if whole else 0)
        assert first + decoder.feed(wire[cut:]) == items
        assert decoder.pending == 0


@settings(max_examples=60)
@given(st.lists(messages(), min_size=1, max_size=3))
def test_byte_by_byte(items: list[CMMessage]) -> None:
    encoded = [encode(m) for m in items]
    wire = b"".join(encoded)
    ends = set(accumulate(len(e) for e in encoded))
    decoder = CMDecoder()
    got: list[CMMessage] = []
    start = 0  # where the message being received starts
    for i in range(len(wire)):
        out = decoder.feed(wire[i : i + 1])
        if i + 1 in ends:
            assert out == [items[len(got)]]
            start = i + 1
        else:
            assert out == []
        got += out
        assert decoder.pending == i + 1 - start
    assert got == items
    assert decoder.pending == 0


@given(st.lists(messages(), min_size=1, max_size=4), st.data())
def test_random_chunking(items: list[CMMessage], data: st.DataObject) -> None:
    wire = b"".join(encode(m) for m in items)
    decoder = CMDecoder()
    got: list[CMMessage] = []
    pos = 0
    while pos < len(wire):
        n = data.draw(st.integers(1, len(wire) - pos))
        got += decoder.feed(wire[pos : pos + n])
        pos += n
        assert decoder.feed(b"") == []  # an empty read changes nothing
        assert decoder.pending < HEADER_SIZE + MAX_BODY
    assert got == items
    assert decoder.pending == 0


# -- golden vectors, by hand from the layout in the module docstring ---------------------

GOLDEN = [
    pytest.param(
        # REQ, qp 0x00012345, psn 0xabcdef, resources 4, depth 3, retry 7, rnr retry 6,
        # private data "hi!": body 12 + 3 = 15 bytes
        "01 01 000f  00012345 00abcdef 04 03 07 06  686921",
        CMMessage(
            MessageType.REQ,
            b"hi!",
            qp_num=0x00012345,
            psn=0xABCDEF,
            responder_resources=4,
            initiator_depth=3,
            retry_count=7,
            rnr_retry_count=6,
        ),
        id="REQ",
    ),
    pytest.param(
        # REQ at its limit: 12 + 56 = 68 = 0x44 bytes of body
        "01 01 0044  80000001 00000000 00 01 02 03" + " aa" * 56,
        CMMessage(
            MessageType.REQ,
            b"\xaa" * 56,
            qp_num=0x80000001,
            psn=0,
            responder_resources=0,
            initiator_depth=1,
            retry_count=2,
            rnr_retry_count=3,
        ),
        id="REQ-max",
    ),
    pytest.param(
        # REP, every field at its widest, no private data: body 12 bytes
        "02 01 000c  deadbeef 00ffffff ff ff ff ff",
        CMMessage(
            MessageType.REP,
            qp_num=0xDEADBEEF,
            psn=0xFFFFFF,
            responder_resources=255,
            initiator_depth=255,
            retry_count=255,
            rnr_retry_count=255,
        ),
        id="REP",
    ),
    pytest.param("03 01 0002  1c00", CMMessage(MessageType.REJ, b"\x1c\x00"), id="REJ"),
    pytest.param("03 01 0094" + " 00" * 148, CMMessage(MessageType.REJ, bytes(148)), id="REJ-max"),
    pytest.param("04 01 0000", CMMessage(MessageType.RTU), id="RTU"),
    pytest.param("04 01 0003  010203", CMMessage(MessageType.RTU, b"\x01\x02\x03"), id="RTU-data"),
    pytest.param("05 01 0001  78", CMMessage(MessageType.DREQ, b"x"), id="DREQ"),
    pytest.param("06 01 0000", CMMessage(MessageType.DREP), id="DREP"),
]


@pytest.mark.parametrize(("golden_hex", "message"), GOLDEN)
def test_golden_vectors(golden_hex: str, message: CMMessage) -> None:
    golden = bytes.fromhex(golden_hex)
    assert encode(message) == golden
    decoder = CMDecoder()
    assert decoder.feed(golden) == [message]
    assert decoder.pending == 0


def test_golden_vectors_back_to_back() -> None:
    golden = [bytes.fromhex(g.values[0]) for g in GOLDEN]  # type: ignore[arg-type]
    expected = [g.values[1] for g in GOLDEN]
    assert CMDecoder().feed(b"".join(golden)) == expected


# -- a misbehaving peer --------------------------------------------------------------------


def feed_and_expect_error(chunks: list[bytes], match: str) -> CMDecoder:
    """Feed all but the last chunk without error, then the last one raises EPROTO."""
    decoder = CMDecoder()
    for chunk in chunks[:-1]:
        assert decoder.feed(chunk) == []
    with pytest.raises(CMProtocolError, match=match) as info:
        decoder.feed(chunks[-1])
    assert isinstance(info.value, TcpverbsError)
    assert info.value.errno == errno.EPROTO
    assert_broken(decoder)
    return decoder


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    header = bytes([MessageType.RTU, version, 0, 0])
    # the first three bytes say nothing yet; the fourth completes a bad header
    feed_and_expect_error([header[:3], header[3:]], f"version {version}")


def test_wrong_version_in_an_otherwise_valid_req() -> None:
    wire = bytearray(encode(CMMessage(MessageType.REQ, b"abc", qp_num=7, psn=9)))
    wire[1] = 2
    feed_and_expect_error([bytes(wire)], "version 2")


@pytest.mark.parametrize("type_byte", [0, 7, 8, 128, 255])
def test_unknown_type(type_byte: int) -> None:
    feed_and_expect_error(
        [bytes([type_byte, VERSION, 0, 0])], f"unknown CM message type {type_byte}"
    )


@pytest.mark.parametrize("kind", list(MessageType))
def test_a_length_above_the_limit_is_refused_from_the_header_alone(kind: MessageType) -> None:
    limit = body_limit(kind)
    header = struct.pack("!BBH", kind, VERSION, limit + 1)
    feed_and_expect_error([header], f"{kind.name} of {limit + 1} bytes")
    # byte by byte, likewise: it raises on the header's last byte, with no body in sight
    feed_and_expect_error([header[i : i + 1] for i in range(HEADER_SIZE)], kind.name)
    # and with the body following in the same call, still a protocol error
    feed_and_expect_error([header + bytes(limit + 1)], kind.name)
    # the limit itself is fine: the decoder waits for the body
    decoder = CMDecoder()
    assert decoder.feed(struct.pack("!BBH", kind, VERSION, limit)) == []
    assert decoder.pending == HEADER_SIZE


def test_req_of_12_plus_57_bytes() -> None:
    feed_and_expect_error([bytes.fromhex("01 01 0045")], "REQ of 69 bytes, more than 68")


@pytest.mark.parametrize("length", [0xFFFF, 0x8000, MAX_BODY + 1])
def test_huge_lengths_are_refused_at_once(length: int) -> None:
    for kind in MessageType:
        feed_and_expect_error([struct.pack("!BBH", kind, VERSION, length)], kind.name)


@pytest.mark.parametrize("kind", ENDPOINT_TYPES)
@pytest.mark.parametrize("length", [0, 1, 8, 11])
def test_endpoint_body_shorter_than_its_fields(kind: MessageType, length: int) -> None:
    wire = struct.pack("!BBH", kind, VERSION, length) + bytes(range(length))
    feed_and_expect_error([wire], f"{kind.name} of {length} bytes is shorter")


@pytest.mark.parametrize("kind", ENDPOINT_TYPES)
@pytest.mark.parametrize("psn", [0x01000000, 0x80ABCDEF, 0xFFFFFFFF])
def test_psn_wider_than_24_bits(kind: MessageType, psn: int) -> None:
    wire = struct.pack("!BBHIIBBBB", kind, VERSION, 12, 5, psn, 1, 2, 3, 4)
    feed_and_expect_error([wire], "wider than 24 bits")


def test_psn_wider_than_24_bits_by_hand() -> None:
    feed_and_expect_error(
        [bytes.fromhex("01 01 000c  00000001 01000000 00000000")], "REQ names PSN 0x1000000"
    )


def test_an_error_after_good_messages_in_earlier_calls() -> None:
    decoder = CMDecoder()
    good = CMMessage(MessageType.DREQ, b"bye")
    assert decoder.feed(encode(good)) == [good]
    with pytest.raises(CMProtocolError):
        decoder.feed(bytes([9, VERSION, 0, 0]) + encode(good))
    assert_broken(decoder)


def test_the_error_raised_again_is_the_same() -> None:
    decoder = CMDecoder()
    with pytest.raises(CMProtocolError) as first:
        decoder.feed(bytes([0, VERSION, 0, 0]))
    with pytest.raises(CMProtocolError) as again:
        decoder.feed(encode(CMMessage(MessageType.RTU)))
    assert str(again.value) == str(first.value)
    assert again.value.errno == errno.EPROTO


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """Valid-looking and broken messages mixed: plausible types, versions and lengths."""
    type_byte = draw(st.integers(0, 8))
    version = draw(st.sampled_from([VERSION, VERSION, VERSION, 0, 2]))
    length = draw(st.integers(0, MAX_BODY + 2))
    body = draw(st.binary(min_size=length, max_size=length))
    return struct.pack("!BBH", type_byte, version, length) + body


@settings(max_examples=300)
@given(st.lists(headers(), max_size=6), st.data())
def test_fuzz_never_crashes_or_overbuffers(parts: list[bytes], data: st.DataObject) -> None:
    """Only CMProtocolError ever comes out; what decodes re-encodes to the same bytes; the
    decoder never keeps more than one message's worth of bytes between calls."""
    wire = b"".join(parts)
    decoder = CMDecoder()
    got: list[CMMessage] = []
    pos = 0
    try:
        while pos < len(wire):
            n = data.draw(st.integers(1, len(wire) - pos))
            got += decoder.feed(wire[pos : pos + n])
            pos += n
            assert decoder.pending < HEADER_SIZE + MAX_BODY
        got += decoder.feed(b"")  # an error found after whole messages comes now
    except CMProtocolError as exc:
        assert exc.errno == errno.EPROTO
        assert_broken(decoder)
        return
    assert b"".join(encode(m) for m in got) == wire[: len(wire) - decoder.pending]


@given(st.binary(max_size=600))
def test_junk_never_crashes(junk: bytes) -> None:
    decoder = CMDecoder()
    try:
        decoder.feed(junk)
    except CMProtocolError as exc:
        assert exc.errno == errno.EPROTO
        return
    assert decoder.pending < HEADER_SIZE + MAX_BODY


# -- encode refuses what no peer could decode ---------------------------------------------


def assert_einval(message: CMMessage) -> None:
    with pytest.raises(TcpverbsError) as info:
        encode(message)
    assert info.value.errno == errno.EINVAL
    assert not isinstance(info.value, CMProtocolError)


@pytest.mark.parametrize("kind", list(MessageType))
def test_encode_refuses_private_data_above_the_limit(kind: MessageType) -> None:
    limit = PRIVATE_DATA_MAX[kind]
    assert_einval(CMMessage(kind, bytes(limit + 1)))
    assert_einval(CMMessage(kind, bytes(limit + 100)))
    assert len(encode(CMMessage(kind, bytes(limit)))) == HEADER_SIZE + body_limit(kind)


@pytest.mark.parametrize("kind", ENDPOINT_TYPES)
def test_encode_refuses_out_of_range_endpoint_fields(kind: MessageType) -> None:
    assert_einval(CMMessage(kind, psn=2**24))
    assert_einval(CMMessage(kind, psn=2**32 - 1))
    assert_einval(CMMessage(kind, psn=-1))
    assert_einval(CMMessage(kind, qp_num=2**32))
    assert_einval(CMMessage(kind, qp_num=-1))
    assert_einval(CMMessage(kind, responder_resources=256))
    assert_einval(CMMessage(kind, initiator_depth=256))
    assert_einval(CMMessage(kind, retry_count=256))
    assert_einval(CMMessage(kind, rnr_retry_count=-1))
    # the widest values that fit are fine
    widest = CMMessage(kind, qp_num=2**32 - 1, psn=2**24 - 1, retry_count=255)
    assert CMDecoder().feed(encode(widest)) == [widest]


def test_whole_messages_before_a_broken_one_are_delivered_then_the_error() -> None:
    """A DREQ read together with garbage still counts; the garbage ends the decoder."""
    decoder = CMDecoder()
    dreq = CMMessage(MessageType.DREQ, b"bye")
    assert decoder.feed(encode(dreq) + bytes([9, VERSION, 0, 0])) == [dreq]
    with pytest.raises(CMProtocolError) as info:
        decoder.feed(b"")
    assert info.value.errno == errno.EPROTO
    assert_broken(decoder)


def test_encode_refuses_a_type_that_is_not_one() -> None:
    with pytest.raises(TcpverbsError) as info:
        encode(CMMessage(9))  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
