"""The ``rc`` framing: one header per message, payload bytes follow unmodified.

Theory of operation
-------------------
Every frame starts with an 8-byte base header::

     0        1        2                 4                                 8
    +--------+--------+-----------------+---------------------------------+
    | opcode | flags  |  reserved (0)   |  length: bytes after this base  |
    +--------+--------+-----------------+---------------------------------+

followed by a fixed, opcode-specific extension (see ``_LAYOUTS``) and then
``length - extension`` bytes of payload.  All integers are big-endian.

The decoder parses *headers only*.  Payload bytes are never copied by this module: after
a header with ``payload_len > 0`` the decoder enters the payload state and the caller
(the engine) moves exactly that many bytes from the socket into registered memory, then
reports them with :meth:`FrameDecoder.payload_consumed`.  The one exception is the
TERMINATE frame, whose short reason text (at most ``MAX_REASON`` bytes) the decoder
collects itself so that it can hand over a complete event.

Nothing a peer sends makes this module allocate more than ``MAX_REASON`` + the largest
header: lengths are checked against the negotiated maximum before anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import RemoteProtocolError

__all__ = [
    "FLAG_SOLICITED",
    "MAX_REASON",
    "NO_MSN",
    "REQUESTS",
    "FrameDecoder",
    "Header",
    "Opcode",
    "encode_ack",
    "encode_header",
    "whole_send",
]


class Opcode(IntEnum):
    SEND = 1
    SEND_IMM = 2
    WRITE = 3
    WRITE_IMM = 4
    READ_REQ = 5
    READ_RESP = 6
    ATOMIC_CMP_SWP = 7
    ATOMIC_FETCH_ADD = 8
    ATOMIC_RESP = 9
    ACK = 16
    TERMINATE = 17
    RNR_NAK = 18
    RESYNC = 19
    AUTH = 20


# Frames that are requests: numbered implicitly, carried out in order by the responder.
REQUESTS = frozenset(
    {
        Opcode.SEND,
        Opcode.SEND_IMM,
        Opcode.WRITE,
        Opcode.WRITE_IMM,
        Opcode.READ_REQ,
        Opcode.ATOMIC_CMP_SWP,
        Opcode.ATOMIC_FETCH_ADD,
    }
)


FLAG_SOLICITED = 0x01
_KNOWN_FLAGS = FLAG_SOLICITED
MAX_REASON = 1024
NO_MSN = 0xFFFFFFFF

BASE = struct.Struct("!BBHI")

# opcode -> (extension fields in order, extension struct format, carries payload)
_LAYOUTS: dict[Opcode, tuple[tuple[str, ...], str, bool]] = {
    Opcode.SEND: ((), "", True),
    Opcode.SEND_IMM: (("imm",), "I", True),
    Opcode.WRITE: (("rkey", "addr"), "IQ", True),
    Opcode.WRITE_IMM: (("rkey", "addr", "imm"), "IQI", True),
    Opcode.READ_REQ: (("rkey", "addr", "length"), "IQI", False),
    Opcode.READ_RESP: (("msn",), "I", True),
    Opcode.ATOMIC_CMP_SWP: (("rkey", "addr", "compare_add", "swap"), "IQQQ", False),
    Opcode.ATOMIC_FETCH_ADD: (("rkey", "addr", "compare_add", "swap"), "IQQQ", False),
    Opcode.ATOMIC_RESP: (("msn", "compare_add"), "IQ", False),
    Opcode.ACK: (("msn",), "I", False),
    Opcode.TERMINATE: (("msn", "status"), "IB3x", True),
    Opcode.RNR_NAK: (("msn", "timer"), "IB3x", False),
    Opcode.RESYNC: (("msn",), "I", False),
    Opcode.AUTH: (("psn",), "I", False),
}


@dataclass(slots=True)
class _Layout:
    op: Opcode  # looked up once here: constructing an IntEnum member per frame is slow
    fields: tuple[str, ...]
    full: struct.Struct  # base + extension, for encoding and the one-shot decode path
    ext: struct.Struct  # extension alone, for the incremental path
    has_payload: bool


_TABLE: dict[int, _Layout] = {
    int(op): _Layout(op, fields, struct.Struct("!BBHI" + fmt), struct.Struct("!" + fmt), payload)
    for op, (fields, fmt, payload) in _LAYOUTS.items()
}
MAX_HEADER = max(layout.full.size for layout in _TABLE.values())


@dataclass(slots=True)
class Header:
    """One decoded (or to-be-encoded) frame header.  Unused fields stay 0."""

    opcode: Opcode
    flags: int = 0
    payload_len: int = 0
    imm: int = 0
    rkey: int = 0
    addr: int = 0
    length: int = 0
    compare_add: int = 0
    swap: int = 0
    msn: int = 0
    status: int = 0
    timer: int = 0
    reason: bytes = b""
    psn: int = 0


def header_size(opcode: Opcode) -> int:
    return _TABLE[int(opcode)].full.size


def encode_header(h: Header) -> bytes:
    """Bytes of the header (and, for TERMINATE, its reason); payload is sent separately."""
    layout = _TABLE[int(h.opcode)]
    ext_len = layout.ext.size
    if h.opcode is Opcode.TERMINATE:
        reason = h.reason[:MAX_REASON]
        return (
            layout.full.pack(h.opcode, h.flags, 0, ext_len + len(reason), h.msn, h.status) + reason
        )
    if h.payload_len and not layout.has_payload:
        raise ValueError(f"{h.opcode.name} frames carry no payload")
    values = [getattr(h, name) for name in layout.fields]
    return layout.full.pack(h.opcode, h.flags, 0, ext_len + h.payload_len, *values)


_ACK_LAYOUT = _TABLE[Opcode.ACK].full


def encode_ack(msn: int) -> bytes:
    """``encode_header(Header(Opcode.ACK, msn=msn))``, without building a Header: one is
    sent for nearly every batch received."""
    return _ACK_LAYOUT.pack(Opcode.ACK, 0, 0, _ACK_LAYOUT.size - BASE.size, msn)


_SEND_IMM_LAYOUT = _TABLE[Opcode.SEND_IMM].full
_IMM_SIZE = _SEND_IMM_LAYOUT.size - BASE.size
_SEND, _SEND_IMM = int(Opcode.SEND), int(Opcode.SEND_IMM)  # plain ints compare fastest


def whole_send(
    data: memoryview, pos: int, max_payload: int
) -> tuple[int, int, int, int | None] | None:
    """A complete, valid SEND or SEND_IMM frame at ``data[pos:]``, payload included:
    ``(header_size, payload_len, flags, imm)`` (imm is None for SEND); None otherwise.

    A shortcut for the receiver of many small SENDs, which looks here before handing
    bytes to :class:`FrameDecoder` one frame at a time: it changes no state, so a caller
    that uses the frame simply skips ``header_size + payload_len`` bytes, and one that
    does not (or gets None — a partial, another or a malformed frame) feeds the same
    bytes to the decoder, which parses them, or rejects them with the reason.
    """
    end = len(data)
    if end - pos < BASE.size:
        return None
    op, flags, reserved, length = BASE.unpack_from(data, pos)
    if flags & ~_KNOWN_FLAGS or reserved:
        return None
    if op == _SEND:
        header, imm = BASE.size, None
    elif op == _SEND_IMM and length >= _IMM_SIZE and end - pos >= _SEND_IMM_LAYOUT.size:
        header, imm, length = (
            _SEND_IMM_LAYOUT.size,
            _SEND_IMM_LAYOUT.unpack_from(data, pos)[4],
            length - _IMM_SIZE,
        )
    else:
        return None
    if length > max_payload or end - pos - header < length:
        return None
    return header, length, flags, imm


class FrameDecoder:
    """Incremental header decoder with a payload pass-through state.

    Use::

        header, used = dec.receive(view)      # consumes header bytes only
        if header and header.payload_len:     # decoder is now in the payload state
            ...place payload bytes...; dec.payload_consumed(n)

    :meth:`receive` raises :class:`RemoteProtocolError` for anything malformed; after
    that the decoder is unusable (the connection must be torn down).
    """

    __slots__ = ("_broken", "_buf", "_reason", "_reason_left", "max_payload", "payload_remaining")

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.payload_remaining = 0
        self._buf = bytearray()
        self._reason: Header | None = None  # TERMINATE whose reason is being collected
        self._reason_left = 0
        self._broken = False

    @property
    def in_payload(self) -> bool:
        return self.payload_remaining > 0

    @property
    def at_boundary(self) -> bool:
        """True between frames (a connection may end cleanly only here)."""
        return not self._buf and not self.payload_remaining and self._reason is None

    def payload_consumed(self, n: int) -> None:
        if n < 0 or n > self.payload_remaining:
            raise ValueError(f"consumed {n} payload bytes, {self.payload_remaining} expected")
        self.payload_remaining -= n

    def receive(self, data: memoryview) -> tuple[Header | None, int]:
        """Consume bytes of *data* up to the end of one header.

        Returns ``(header, consumed)``; ``header`` is None when *data* ended before a
        complete header (the partial header is kept internally).
        """
        if self._broken:
            raise RemoteProtocolError("decoder used after a protocol error")
        if self.payload_remaining:
            raise ValueError("decoder is in the payload state; call payload_consumed()")
        try:
            if self._reason is not None:
                return self._collect_reason(data)
            if not self._buf and len(data) >= BASE.size:
                layout = self._layout(data[0])
                size = layout.full.size
                if len(data) >= size:  # fast path: the whole header is in one piece
                    header = self._finish(layout, layout.full.unpack_from(data))
                    if header is None:  # a TERMINATE whose reason follows
                        more, n = self._collect_reason(data[size:])
                        return more, size + n
                    return header, size
            return self._receive_slow(data)
        except RemoteProtocolError:
            self._broken = True
            raise

    def _receive_slow(self, data: memoryview) -> tuple[Header | None, int]:
        used = 0
        if len(self._buf) < BASE.size:
            used = min(BASE.size - len(self._buf), len(data))
            self._buf += data[:used]
            if len(self._buf) < BASE.size:
                return None, used
        layout = self._layout(self._buf[0])
        need = layout.full.size - len(self._buf)
        take = min(need, len(data) - used)
        self._buf += data[used : used + take]
        used += take
        if len(self._buf) < layout.full.size:
            return None, used
        values = layout.full.unpack(self._buf)
        self._buf.clear()
        header = self._finish(layout, values)
        if header is None:  # a TERMINATE whose reason follows
            more, n = self._collect_reason(data[used:])
            return more, used + n
        return header, used

    def _layout(self, opcode: int) -> _Layout:
        layout = _TABLE.get(opcode)
        if layout is None:
            raise RemoteProtocolError(f"unknown frame opcode 0x{opcode:02x}")
        return layout

    def _finish(self, layout: _Layout, values: tuple[int, ...]) -> Header | None:
        _, flags, reserved, length = values[:4]  # the opcode chose *layout*
        if flags & ~_KNOWN_FLAGS or reserved:
            raise RemoteProtocolError(f"frame header has unknown flags 0x{flags:02x}/{reserved}")
        ext = layout.ext.size
        if length < ext:
            raise RemoteProtocolError(f"frame length {length} shorter than its header")
        payload = length - ext
        op = layout.op
        if payload and not layout.has_payload:
            raise RemoteProtocolError(f"{op.name} frame carries {payload} unexpected bytes")
        header = Header(op, flags, payload)
        if layout.fields:
            for name, value in zip(layout.fields, values[4:], strict=True):
                setattr(header, name, value)
        if op is Opcode.TERMINATE:
            if payload > MAX_REASON:
                raise RemoteProtocolError(f"TERMINATE reason of {payload} bytes is too long")
            header.payload_len = 0
            self._reason = header
            self._buf.clear()
            self.payload_remaining = 0
            self._reason_left = payload
            return None if payload else self._take_reason()
        if payload > self.max_payload:
            raise RemoteProtocolError(
                f"{op.name} frame of {payload} bytes exceeds the limit of {self.max_payload}"
            )
        self.payload_remaining = payload
        return header

    def _collect_reason(self, data: memoryview) -> tuple[Header | None, int]:
        take = min(self._reason_left, len(data))
        self._buf += data[:take]
        self._reason_left -= take
        if self._reason_left:
            return None, take
        return self._take_reason(), take

    def _take_reason(self) -> Header:
        header = self._reason
        assert header is not None
        header.reason = bytes(self._buf)
        self._buf.clear()
        self._reason = None
        return header
