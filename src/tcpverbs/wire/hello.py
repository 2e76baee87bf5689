"""The connection hello exchanged by ``rc`` QPs right after the socket handoff.

Both ends send their hello at once and then read the peer's, so neither waits for the
other (two QPs driven by one thread connect fine).  Layout (big-endian, 40 bytes)::

    magic "TCPVERBS" | version u16 | wire mode u8 | flags u8 | qp_num u32 |
    dest_qp_num u32 | max_send_wr u32 | max_recv_wr u32 | max_msg_sz u32 |
    max_rd_atomic u8 | max_dest_rd_atomic u8 | reserved u16 | psn u32

``dest_qp_num`` is the QP the sender wants to reach (0 after a socket handoff, where the
socket itself says who the peer is): a context's connection listener uses it to find the
QP an incoming connection belongs to.  ``psn`` is the sender's ``rq_psn`` — the PSN the
receiver chose for its send queue and told the sender out of band — so that a listener
can tell the expected peer from anyone else who knows the QP numbers (see
``tcpverbs.oob.service``).

The magic is checked byte by byte as it arrives, so a peer that is not tcpverbs (an HTTP
server, netcat) is rejected at its first wrong byte instead of after a timeout.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import RemoteProtocolError

__all__ = ["HELLO_SIZE", "MAGIC", "PROTOCOL_VERSION", "Hello", "HelloDecoder", "WireMode"]

MAGIC = b"TCPVERBS"
PROTOCOL_VERSION = 2
_HELLO = struct.Struct("!8sHBBIIIIIBBHI")
HELLO_SIZE = _HELLO.size


class WireMode(IntEnum):
    """What a QP speaks on its TCP connection (see docs/wire-protocol.md)."""

    STREAM = 0
    RC = 1


@dataclass(frozen=True, slots=True)
class Hello:
    qp_num: int
    max_send_wr: int
    max_recv_wr: int
    max_msg_sz: int
    max_rd_atomic: int = 0
    max_dest_rd_atomic: int = 0
    mode: WireMode = WireMode.RC
    version: int = PROTOCOL_VERSION
    dest_qp_num: int = 0
    psn: int = 0

    def encode(self) -> bytes:
        return _HELLO.pack(
            MAGIC,
            self.version,
            self.mode,
            0,
            self.qp_num,
            self.dest_qp_num,
            self.max_send_wr,
            self.max_recv_wr,
            self.max_msg_sz,
            self.max_rd_atomic,
            self.max_dest_rd_atomic,
            0,
            self.psn,
        )

    def check_peer(self, peer: Hello) -> None:
        """Raise :class:`RemoteProtocolError` if *peer* cannot talk to us."""
        if peer.version != self.version:
            raise RemoteProtocolError(
                f"peer speaks tcpverbs wire protocol version {peer.version}, "
                f"this side speaks version {self.version}",
                errno.EPROTONOSUPPORT,
            )
        if peer.mode != self.mode:
            raise RemoteProtocolError(
                f"peer QP uses wire mode {peer.mode.name.lower()!r}, "
                f"this QP uses {self.mode.name.lower()!r}",
                errno.EPROTONOSUPPORT,
            )


class HelloDecoder:
    """Collects exactly one hello; rejects a wrong magic at the first wrong byte."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive(self, data: memoryview) -> tuple[Hello | None, int]:
        take = min(HELLO_SIZE - len(self._buf), len(data))
        start = len(self._buf)
        self._buf += data[:take]
        seen = bytes(self._buf[: len(MAGIC)])
        if start < len(MAGIC) and not MAGIC.startswith(seen):
            raise RemoteProtocolError(
                f"peer is not a tcpverbs rc endpoint (it sent {seen!r} where the hello "
                f"magic {MAGIC!r} was expected)",
                errno.EPROTO,
            )
        if len(self._buf) < HELLO_SIZE:
            return None, take
        (_, version, mode, _flags, qpn, dqpn, sw, rw, msg, rd, drd, _, psn) = _HELLO.unpack(
            self._buf
        )
        try:
            wire_mode = WireMode(mode)
        except ValueError:
            raise RemoteProtocolError(f"peer hello names unknown wire mode {mode}") from None
        return Hello(qpn, sw, rw, msg, rd, drd, wire_mode, version, dqpn, psn), take
