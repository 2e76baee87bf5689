"""The UD datagram codec and the GRH: golden vectors, round trips, hostile datagrams."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpverbs.errors import RemoteProtocolError
from tcpverbs.wire.frames import FLAG_SOLICITED, Opcode
from tcpverbs.wire.ud import (
    GRH_SIZE,
    UD_HEADER_SIZE,
    UDHeader,
    build_grh,
    decode_ud,
    encode_ud,
    parse_grh,
    ud_port,
    ud_qp_num,
)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "ud.json").read_text())
QPN = st.integers(0, 2**24 - 1)
U32 = st.integers(0, 2**32 - 1)


def header_of(fields: dict[str, object]) -> UDHeader:
    return UDHeader(
        Opcode[str(fields["opcode"])],
        int(str(fields["dest_qpn"])),
        int(str(fields["src_qpn"])),
        int(str(fields["qkey"])),
        int(str(fields["imm"])),
        int(str(fields["flags"])),
    )


@pytest.mark.parametrize("vector", GOLDEN["valid"], ids=lambda v: v["name"])
def test_golden_datagrams_decode_and_encode(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    expected = header_of(vector["header"])  # type: ignore[arg-type]
    assert decode_ud(data) == expected
    assert data[UD_HEADER_SIZE:].hex() == vector["payload"]
    assert encode_ud(expected) == data[:UD_HEADER_SIZE]


@pytest.mark.parametrize("vector", GOLDEN["invalid"], ids=lambda v: v["name"])
def test_golden_bad_datagrams_are_rejected(vector: dict[str, str]) -> None:
    with pytest.raises(RemoteProtocolError, match=vector["error"]):
        decode_ud(bytes.fromhex(vector["hex"]))


@pytest.mark.parametrize("vector", GOLDEN["grh"], ids=lambda v: v["name"])
def test_golden_grh(vector: dict[str, object]) -> None:
    src = ipaddress.ip_address(str(vector["src"]))
    dst = ipaddress.ip_address(str(vector["dst"]))
    grh = build_grh(src, dst, int(str(vector["datagram_len"])))
    assert grh.hex() == vector["hex"]
    assert parse_grh(grh) == (src, dst)


@given(
    op=st.sampled_from([Opcode.SEND, Opcode.SEND_IMM]),
    dest=QPN,
    src=QPN,
    qkey=U32,
    imm=U32,
    flags=st.sampled_from([0, FLAG_SOLICITED]),
    payload=st.binary(max_size=64),
)
def test_round_trip(
    op: Opcode, dest: int, src: int, qkey: int, imm: int, flags: int, payload: bytes
) -> None:
    header = UDHeader(op, dest, src, qkey, imm if op is Opcode.SEND_IMM else 0, flags)
    datagram = encode_ud(header) + payload
    assert decode_ud(datagram) == header
    assert decode_ud(memoryview(datagram)) == header
    assert datagram[UD_HEADER_SIZE:] == payload


@given(st.binary(max_size=40))
def test_any_bytes_decode_or_raise_the_protocol_error(data: bytes) -> None:
    """A peer's datagram never gets past the decoder as anything but a header or
    a RemoteProtocolError (never another exception)."""
    try:
        header = decode_ud(data)
    except RemoteProtocolError as exc:
        assert exc.errno is not None
    else:
        assert encode_ud(header) == data[:UD_HEADER_SIZE]


@given(st.binary(min_size=UD_HEADER_SIZE, max_size=UD_HEADER_SIZE), st.integers(0, 23))
def test_every_truncation_is_rejected(data: bytes, cut: int) -> None:
    with pytest.raises(RemoteProtocolError, match="shorter than"):
        decode_ud(data[:cut])


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (UDHeader(Opcode.WRITE, 256, 256, 0), "SEND or SEND_IMM"),
        (UDHeader(Opcode.SEND, 256, 256, 0, imm=1), "no immediate"),
        (UDHeader(Opcode.SEND, 256, 256, 0, flags=2), "unknown flags"),
        (UDHeader(Opcode.SEND, 1 << 24, 256, 0), "dest_qpn"),
        (UDHeader(Opcode.SEND, 256, -1, 0), "src_qpn"),
    ],
)
def test_the_encoder_refuses_what_the_decoder_would(header: UDHeader, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        encode_ud(header)


@given(
    st.ip_addresses(v=4),
    st.ip_addresses(v=4),
    st.integers(UD_HEADER_SIZE, 65507),
)
def test_an_ipv4_grh_holds_a_valid_ipv4_header(
    src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, length: int
) -> None:
    grh = build_grh(src, dst, length)
    assert len(grh) == GRH_SIZE and grh[:20] == bytes(20)
    header = grh[20:]
    words = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, 20, 2))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    assert words == 0xFFFF  # the checksum checks
    assert int.from_bytes(header[2:4], "big") == 20 + 8 + length
    assert parse_grh(grh) == (src, dst)


@given(st.ip_addresses(v=6), st.ip_addresses(v=6), st.integers(UD_HEADER_SIZE, 65507))
def test_an_ipv6_grh_round_trips(
    src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, length: int
) -> None:
    grh = build_grh(src, dst, length)
    assert len(grh) == GRH_SIZE
    assert [plain(a) for a in parse_grh(grh)] == [plain(src), plain(dst)]


def plain(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> object:
    """An IPv4-mapped IPv6 address and its IPv4 address are one address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def test_parse_grh_refuses_what_is_not_one() -> None:
    with pytest.raises(ValueError, match="40 bytes"):
        parse_grh(bytes(39))
    with pytest.raises(ValueError, match="no IPv6 header"):
        parse_grh(bytes(40))


def test_ud_qp_numbers_carry_the_port_and_never_look_like_rc_ones() -> None:
    assert ud_qp_num(4791) == 4791 << 8
    assert ud_port(ud_qp_num(65535)) == 65535
    assert ud_port(0x12345) is None  # an rc QP number: its low byte is an index, never 0
    assert ud_port(0) is None and ud_port(1 << 24) is None
    for bad in (0, 1 << 16):
        with pytest.raises(ValueError, match="out of range"):
            ud_qp_num(bad)
