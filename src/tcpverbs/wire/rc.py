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

Receiver not ready (RNR): a SEND or WRITE_IMM that finds no posted receive is answered
with ``RNR_NAK(msn, timer)``.  From then on the responder *discards* every request until
the requester, after waiting ``timer``, sends ``RESYNC(msn)`` and re-sends the requests
from *msn* on (go-back-N, as RC hardware does).  Nothing after the refused request was
carried out, so re-sending a WRITE, READ or atomic is safe.  Reading never stops, so
ACKs, READ responses and the peer's own one-sided traffic keep flowing meanwhile.

This class holds only counters and checks them; it never sees payload or sockets.
"""

from __future__ import annotations

from ..errors import RemoteProtocolError
from .frames import encode_ack

__all__ = ["RNR_TIMER_MS", "RcProtocol"]

# ibv_modify_qp(3) min_rnr_timer codes -> milliseconds (IB spec table 45)
RNR_TIMER_MS = (
    655.36,
    0.01,
    0.02,
    0.03,
    0.04,
    0.06,
    0.08,
    0.12,
    0.16,
    0.24,
    0.32,
    0.48,
    0.64,
    0.96,
    1.28,
    1.92,
    2.56,
    3.84,
    5.12,
    7.68,
    10.24,
    15.36,
    20.48,
    30.72,
    40.96,
    61.44,
    81.92,
    122.88,
    163.84,
    245.76,
    327.68,
    491.52,
)

_MSN_MOD = 1 << 32


class RcProtocol:
    __slots__ = ("_ack_sent", "acked", "discarding", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0  # requests we have issued (requester side)
        self.acked = 0  # of those, acknowledged by the peer
        self.received = 0  # requests the peer issued that we carried out (responder side)
        self._ack_sent = 0  # highest `received` we told the peer about
        self.discarding = False  # responder: after an RNR NAK, until the RESYNC

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

    def rewind(self) -> int:
        """After an RNR NAK: every unacknowledged request will be sent again.

        Returns the MSN the RESYNC must name (the first request to be re-sent).
        """
        self.sent = self.acked
        return (self.acked + 1) % _MSN_MOD

    # responder side -------------------------------------------------------------
    @property
    def next_msn(self) -> int:
        """The MSN of the next request the peer sends."""
        return (self.received + 1) % _MSN_MOD

    def refuse(self) -> bytes:
        """The next request found no receive: start discarding; returns the ACK owed
        before the RNR NAK (or b"")."""
        self.discarding = True
        return self.take_ack() or b""

    def on_resync(self, msn: int) -> None:
        if msn != self.next_msn:
            raise RemoteProtocolError(
                f"peer resumed at request {msn}, but request {self.next_msn} is next"
            )
        self.discarding = False

    def request_done(self) -> int:
        """Record that one more peer request has been carried out; returns its MSN."""
        self.received += 1
        return self.received % _MSN_MOD

    @property
    def ack_owed(self) -> bool:
        """Requests were carried out since the last ACK frame was taken."""
        return self._ack_sent != self.received

    def take_ack(self) -> bytes | None:
        """The coalesced ACK frame owed to the peer, if any."""
        if self._ack_sent == self.received:
            return None
        self._ack_sent = self.received
        return encode_ack(self.received % _MSN_MOD)
