"""Per-connection ``rc`` protocol state: request numbering and acknowledgements.

Theory of operation
-------------------
Every *request* frame (SEND, SEND_IMM, WRITE, WRITE_IMM, READ_REQ, ATOMIC_*) gets the
next message sequence number (MSN) implicitly: both ends count requests in stream order,
so the number never travels with the request.  The responder acknowledges cumulatively:
``ACK(msn)`` says "every request up to and including number *msn* has been carried out"
(payload placed in the target's memory).  ACKs are coalesced: the engine asks
:meth:`RcProtocol.take_ack` once per batch of received frames, so a burst of small SENDs
costs one ACK.  A TERMINATE frame carries an ``ibv_wc_status`` and a reason; its ``msn``
names the request that failed (or ``NO_MSN``).

READ responses and atomic responses double as acknowledgements for their own request
(and, since requests execute in order, for every earlier one).

This class holds only counters and checks them; it never sees payload or sockets.
"""

from __future__ import annotations

from ..errors import RemoteProtocolError
from .frames import Header, Opcode, encode_header

__all__ = ["RcProtocol"]

_MSN_MOD = 1 << 32


class RcProtocol:
    __slots__ = ("_ack_sent", "acked", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0  # requests we have issued (requester side)
        self.acked = 0  # of those, acknowledged by the peer
        self.received = 0  # requests the peer issued that we carried out (responder side)
        self._ack_sent = 0  # highest `received` we told the peer about

    # requester side -------------------------------------------------------------
    def next_request(self) -> int:
        """Number the next request we send (1-based, wraps at 2**32)."""
        self.sent += 1
        return self.sent % _MSN_MOD

    def on_ack(self, msn: int) -> int:
        """Apply a cumulative ACK; return how many requests it newly acknowledges."""
        outstanding = self.sent - self.acked
        delta = (msn - self.acked) % _MSN_MOD
        if delta > outstanding:
            raise RemoteProtocolError(
                f"peer acknowledged request {msn}, but only {self.sent} were sent "
                f"({self.acked} already acknowledged)"
            )
        self.acked += delta
        return delta

    # responder side -------------------------------------------------------------
    def request_done(self) -> int:
        """Record that one more peer request has been carried out; returns its MSN."""
        self.received += 1
        return self.received % _MSN_MOD

    def take_ack(self) -> bytes | None:
        """The coalesced ACK frame owed to the peer, if any."""
        if self._ack_sent == self.received:
            return None
        self._ack_sent = self.received
        return encode_header(Header(Opcode.ACK, msn=self.received % _MSN_MOD))
