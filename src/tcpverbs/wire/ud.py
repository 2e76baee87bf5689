"""The ``ud`` datagram, and the GRH a UD receive reports in front of the payload.

Theory of operation
-------------------
A UD (unreliable datagram) QP sends each message as one UDP datagram: a 24-byte header,
then the payload, unmodified::

     0            4       5        6       7        8           12          16      20    24
    +-------------+-------+--------+-------+--------+-----------+-----------+-------+-----+
    | magic TVUD  |  ver  | opcode | flags | rsvd 0 | dest_qpn  |  src_qpn  | qkey  | imm |
    +-------------+-------+--------+-------+--------+-----------+-----------+-------+-----+

All integers are big-endian; QP numbers are 24-bit; ``opcode`` is ``SEND`` or
``SEND_IMM`` of :class:`tcpverbs.wire.frames.Opcode`, and ``imm`` is 0 for ``SEND``;
``flags`` bit 0 is SOLICITED.  The UDP port a datagram goes to is the destination QP
number's upper 16 bits (:func:`ud_port`): a UD QP's number is its UDP port shifted left
8, which no rc QP number is (their low byte is never 0), so an address vector (the
peer's GID, an IP address) and ``remote_qpn`` are all a sender needs.

Like a UD receive on RoCE, a receive completes with the message's network header in the
first 40 bytes of its buffer (``IBV_WC_GRH``): for IPv4, 20 undefined bytes (written as
zeros) then the IPv4 header; for IPv6, the IPv6 header, which has the layout of an
InfiniBand GRH.  :func:`build_grh` writes it, :func:`parse_grh` reads back the source
and destination addresses (what ``AH(pd, wc=..., grh=...)`` answers with).

Decoding is one call per datagram (a datagram is whole or absent).  Nothing a peer
sends makes this module allocate: it reads the fixed header and returns its fields.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError
from .frames import FLAG_SOLICITED, Opcode

__all__ = [
    "GRH_SIZE",
    "UD_HEADER_SIZE",
    "UD_VERSION",
    "IPAddress",
    "UDHeader",
    "build_grh",
    "decode_ud",
    "encode_ud",
    "parse_grh",
    "ud_port",
    "ud_qp_num",
]

MAGIC = b"TVUD"
UD_VERSION = 1
UD_HEADER_SIZE = 24
GRH_SIZE = 40
_HEADER = struct.Struct(">4sBBBBIIII")
_OPCODES = (Opcode.SEND, Opcode.SEND_IMM)
_QPN_LIMIT = 1 << 24
_UDP_HEADER = 8
_HOP_LIMIT = 64
_IPPROTO_UDP = 17

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class UDHeader:
    opcode: Opcode
    dest_qpn: int
    src_qpn: int
    qkey: int
    imm: int = 0
    flags: int = 0

    @property
    def solicited(self) -> bool:
        return bool(self.flags & FLAG_SOLICITED)


def ud_qp_num(port: int) -> int:
    """The QP number of a UD QP whose datagram socket has UDP *port*."""
    if not 0 < port < 1 << 16:
        raise ValueError(f"UDP port {port} is out of range")
    return port << 8


def ud_port(qp_num: int) -> int | None:
    """The UDP port of UD QP *qp_num*; None when *qp_num* cannot be a UD QP's."""
    if not 0 < qp_num < _QPN_LIMIT or qp_num & 0xFF:
        return None
    return qp_num >> 8


def encode_ud(header: UDHeader) -> bytes:
    """The 24 header bytes of a datagram (the payload follows them)."""
    if header.opcode not in _OPCODES:
        raise ValueError(f"a UD datagram carries SEND or SEND_IMM, not {header.opcode!r}")
    if header.opcode is Opcode.SEND and header.imm:
        raise ValueError("a SEND carries no immediate data")
    if header.flags & ~FLAG_SOLICITED:
        raise ValueError(f"unknown flags 0x{header.flags:02x}")
    for name in ("dest_qpn", "src_qpn"):
        if not 0 <= getattr(header, name) < _QPN_LIMIT:
            raise ValueError(f"{name} {getattr(header, name)} is not a 24-bit QP number")
    return _HEADER.pack(
        MAGIC,
        UD_VERSION,
        header.opcode,
        header.flags,
        0,
        header.dest_qpn,
        header.src_qpn,
        header.qkey,
        header.imm,
    )


def decode_ud(datagram: bytes | bytearray | memoryview) -> UDHeader:
    """The header of one received datagram (its payload is ``datagram[UD_HEADER_SIZE:]``).

    Raises :class:`~tcpverbs.errors.RemoteProtocolError` for anything this format does not
    allow; a UD QP drops such a datagram and counts it."""
    if len(datagram) < UD_HEADER_SIZE:
        raise RemoteProtocolError(
            f"a UD datagram of {len(datagram)} bytes is shorter than its "
            f"{UD_HEADER_SIZE}-byte header"
        )
    magic, version, opcode, flags, reserved, dest, src, qkey, imm = _HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise RemoteProtocolError(f"not a tcpverbs UD datagram (magic {magic.hex()})")
    if version != UD_VERSION:
        raise RemoteProtocolError(f"UD datagram version {version}, this side speaks {UD_VERSION}")
    if opcode not in _OPCODES:
        raise RemoteProtocolError(f"unknown UD opcode 0x{opcode:02x}")
    if flags & ~FLAG_SOLICITED:
        raise RemoteProtocolError(f"unknown UD flags 0x{flags:02x}")
    if reserved:
        raise RemoteProtocolError(f"reserved UD header byte is 0x{reserved:02x}, not 0")
    if dest >= _QPN_LIMIT or src >= _QPN_LIMIT:
        raise RemoteProtocolError("a UD QP number wider than 24 bits")
    if opcode == Opcode.SEND and imm:
        raise RemoteProtocolError("immediate data in a UD SEND")
    return UDHeader(Opcode(opcode), dest, src, qkey, imm, flags)


def _plain(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def build_grh(src: IPAddress, dst: IPAddress, datagram_len: int) -> bytes:
    """The 40 bytes a UD receive gets in front of the payload, for a datagram of
    *datagram_len* bytes (header included) from *src* to *dst*."""
    src, dst = _plain(src), _plain(dst)
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        total = 20 + _UDP_HEADER + datagram_len
        header = bytearray(
            struct.pack(
                ">BBHHHBBH4s4s",
                0x45,
                0,
                min(total, 0xFFFF),
                0,
                0x4000,  # don't fragment
                _HOP_LIMIT,
                _IPPROTO_UDP,
                0,
                src.packed,
                dst.packed,
            )
        )
        header[10:12] = _ipv4_checksum(header).to_bytes(2, "big")
        return bytes(20) + bytes(header)
    src6 = src if isinstance(src, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{src}")
    dst6 = dst if isinstance(dst, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{dst}")
    return struct.pack(
        ">IHBB16s16s",
        6 << 28,
        min(_UDP_HEADER + datagram_len, 0xFFFF),
        _IPPROTO_UDP,
        _HOP_LIMIT,
        src6.packed,
        dst6.packed,
    )


def parse_grh(grh: bytes | bytearray | memoryview) -> tuple[IPAddress, IPAddress]:
    """``(source, destination)`` of a GRH as :func:`build_grh` writes it (or a RoCE v2
    NIC does); ``ValueError`` when the 40 bytes hold neither an IPv6 nor an IPv4 header."""
    if len(grh) < GRH_SIZE:
        raise ValueError(f"a GRH is {GRH_SIZE} bytes, got {len(grh)}")
    data = bytes(grh[:GRH_SIZE])
    if data[0] >> 4 == 6:
        return ipaddress.IPv6Address(data[8:24]), ipaddress.IPv6Address(data[24:40])
    if data[20] == 0x45:
        return ipaddress.IPv4Address(data[32:36]), ipaddress.IPv4Address(data[36:40])
    raise ValueError("the 40 bytes hold no IPv6 header and no IPv4 header at byte 20")


def _ipv4_checksum(header: bytes | bytearray) -> int:
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
