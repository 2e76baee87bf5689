"""The connection manager's messages: what two :class:`~tcpverbs.cm.rdmacm.CMID` say on
their control connection (sans-IO: bytes in, messages out; nothing here touches a socket).

An rdma_cm connection is set up the way InfiniBand's CM does it, over a TCP connection of
its own instead of management datagrams: the active side sends a ``REQ`` (its QP number,
PSN, read/atomic depths, retry counts and private data); the passive side answers
with a ``REP`` (the same about itself) or a ``REJ``; the active side confirms with an
``RTU``.  ``DREQ`` / ``DREP`` end the connection.  The QPs' own connection is made apart,
by GID and QP number (:mod:`tcpverbs.oob`; each side's GID is the address of its end of
the control connection), so the control connection carries nothing but these messages,
and stays up to tell each side when the other disconnects or goes away.

Layout (network byte order): a 4-byte header -- type (1), version (1), body length (2)
-- then the body.  ``REQ`` and ``REP`` bodies start with 12 fixed bytes -- QP number (4),
PSN (4), responder resources (1), initiator depth (1), retry count (1), RNR retry count
(1) -- and private data follows; the other bodies are private data
only.  Each type has InfiniBand's private-data limit (``PRIVATE_DATA_MAX``), so a peer
can never make the decoder hold more than ``HEADER_SIZE + MAX_BODY`` bytes.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import TcpverbsError

__all__ = [
    "HEADER_SIZE",
    "MAX_BODY",
    "PRIVATE_DATA_MAX",
    "VERSION",
    "CMDecoder",
    "CMMessage",
    "CMProtocolError",
    "MessageType",
    "encode",
]

VERSION = 1
_HEADER = struct.Struct("!BBH")
HEADER_SIZE = _HEADER.size
_ENDPOINT = struct.Struct("!IIBBBB")  # REQ / REP: qp_num ... rnr_retry_count


class MessageType(IntEnum):
    REQ = 1
    REP = 2
    REJ = 3
    RTU = 4
    DREQ = 5
    DREP = 6


#: the most private data each message carries (InfiniBand CM's limits, as librdmacm
#: documents them for rdma_connect, rdma_accept, rdma_reject and rdma_disconnect)
PRIVATE_DATA_MAX = {
    MessageType.REQ: 56,
    MessageType.REP: 196,
    MessageType.REJ: 148,
    MessageType.RTU: 224,
    MessageType.DREQ: 220,
    MessageType.DREP: 224,
}
_HAS_ENDPOINT = (MessageType.REQ, MessageType.REP)


def _body_limit(kind: MessageType) -> int:
    return PRIVATE_DATA_MAX[kind] + (_ENDPOINT.size if kind in _HAS_ENDPOINT else 0)


MAX_BODY = max(_body_limit(kind) for kind in MessageType)


class CMProtocolError(TcpverbsError):
    """The peer's control connection said something that is not a CM message."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


@dataclass(frozen=True, slots=True)
class CMMessage:
    type: MessageType
    private_data: bytes = b""
    # REQ and REP only: the sender's QP and what the receiver needs to connect to it
    qp_num: int = 0
    psn: int = 0
    responder_resources: int = 0
    initiator_depth: int = 0
    retry_count: int = 0
    rnr_retry_count: int = 0


def encode(message: CMMessage) -> bytes:
    """The bytes of *message*; ``EINVAL`` for what no peer could decode.  (The QP
    fields of a message other than REQ and REP are not sent.)"""
    try:
        kind = MessageType(message.type)
    except ValueError:
        raise TcpverbsError(errno.EINVAL, f"no CM message type {message.type!r}") from None
    if len(message.private_data) > PRIVATE_DATA_MAX[kind]:
        raise TcpverbsError(
            errno.EINVAL,
            f"{kind.name} carries at most {PRIVATE_DATA_MAX[kind]} bytes of private data, "
            f"got {len(message.private_data)}",
        )
    body = bytes(message.private_data)
    if kind in _HAS_ENDPOINT:
        try:
            fixed = _ENDPOINT.pack(
                message.qp_num,
                message.psn,
                message.responder_resources,
                message.initiator_depth,
                message.retry_count,
                message.rnr_retry_count,
            )
        except struct.error as exc:
            raise TcpverbsError(errno.EINVAL, f"{kind.name}: {exc}") from None
        if message.psn >> 24:
            raise TcpverbsError(errno.EINVAL, f"{kind.name}: a PSN has 24 bits")
        body = fixed + body
    return _HEADER.pack(kind, VERSION, len(body)) + body


def _decode_body(kind: MessageType, body: bytes) -> CMMessage:
    if kind not in _HAS_ENDPOINT:
        return CMMessage(kind, body)
    if len(body) < _ENDPOINT.size:
        raise CMProtocolError(f"{kind.name} of {len(body)} bytes is shorter than its fields")
    qp_num, psn, resources, depth, retry, rnr_retry = _ENDPOINT.unpack_from(body)
    if psn >> 24:
        raise CMProtocolError(f"{kind.name} names PSN 0x{psn:x}, wider than 24 bits")
    return CMMessage(kind, body[_ENDPOINT.size :], qp_num, psn, resources, depth, retry, rnr_retry)


class CMDecoder:
    """Bytes from the control connection in, whole messages out.  A broken message
    raises :class:`CMProtocolError` and the decoder stays broken (the connection is to
    be closed): nothing after it is trusted.  The whole messages before it in the same
    :meth:`feed` are returned first; the error comes with the next call."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: CMProtocolError | None = None

    def feed(self, data: bytes) -> list[CMMessage]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[CMMessage] = []
        try:
            while len(self._buffer) >= HEADER_SIZE:
                kind_byte, version, length = _HEADER.unpack_from(self._buffer)
                kind = self._check_header(kind_byte, version, length)
                if len(self._buffer) < HEADER_SIZE + length:
                    break
                body = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + length])
                del self._buffer[: HEADER_SIZE + length]
                messages.append(_decode_body(kind, body))
        except CMProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            if not messages:
                raise
        return messages

    @staticmethod
    def _check_header(kind_byte: int, version: int, length: int) -> MessageType:
        if version != VERSION:
            raise CMProtocolError(f"CM message version {version}, expected {VERSION}")
        try:
            kind = MessageType(kind_byte)
        except ValueError:
            raise CMProtocolError(f"unknown CM message type {kind_byte}") from None
        limit = _body_limit(kind)
        if length > limit:
            raise CMProtocolError(f"{kind.name} of {length} bytes, more than {limit}")
        return kind

    @property
    def broken(self) -> bool:
        """A broken message came: the connection is to be closed."""
        return self._error is not None

    @property
    def pending(self) -> int:
        """Bytes of a message not yet complete."""
        return len(self._buffer)
