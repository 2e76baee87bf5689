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

What lives here — every decision that changes the protocol's state, so that a second
engine ports this module and no I/O code:

* :class:`RcProtocol` — the message numbers of both directions and the coalesced ACK.
* :class:`Requester` — the requester's in-flight window over the engine's work records:
  when a request may be issued (``max_rd_atomic``, ``IBV_SEND_FENCE``), what an ACK
  completes, which request a READ or atomic response answers (checked *before*
  anything changes, so a misbehaving peer cannot make a request vanish: it stays in
  the window and is flushed with the QP), what an RNR NAK does (retry count, go-back-N
  rewind, the RESYNC number and the wait), and what a TERMINATE means for the request
  it names (:func:`terminate_status`).
* :data:`RESPONDER_FAULTS` — why the responder refuses a peer's request, and the status
  the peer's requester reports, the errno of our QP's error and the async event of each.

None of this sees payload, memory or sockets: the engine owns those and asks.
"""

from __future__ import annotations

import enum
import errno
from collections import deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..enums import ibv_event_type, ibv_wc_status, ibv_wr_opcode
from ..errors import RemoteProtocolError
from .frames import encode_ack

__all__ = [
    "NEEDS_RECEIVE",
    "RESPONDER_FAULTS",
    "RNR_TIMER_MS",
    "RcProtocol",
    "Requester",
    "ResponderFault",
    "RnrRetry",
    "terminate_status",
]

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

    def acks(self, msn: int) -> int:
        """How many requests a cumulative ACK of *msn* would newly acknowledge (raises if
        it names one never sent); changes nothing."""
        outstanding = self.sent - self.acked
        delta = (msn - self.acked) % _MSN_MOD
        if delta > outstanding:
            raise RemoteProtocolError(
                f"peer acknowledged request {msn}, but only {self.sent} were sent "
                f"({self.acked} already acknowledged)"
            )
        return delta

    def on_ack(self, msn: int) -> int:
        """Apply a cumulative ACK; return how many requests it newly acknowledges."""
        delta = self.acks(msn)
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


# -- the requester's window -------------------------------------------------------------
WR = ibv_wr_opcode
W = ibv_wc_status

# the requests that consume a receive at the responder: the only ones an RNR NAK may name
NEEDS_RECEIVE = frozenset(
    {int(WR.IBV_WR_SEND), int(WR.IBV_WR_SEND_WITH_IMM), int(WR.IBV_WR_RDMA_WRITE_WITH_IMM)}
)
_ATOMICS = frozenset({int(WR.IBV_WR_ATOMIC_CMP_AND_SWP), int(WR.IBV_WR_ATOMIC_FETCH_AND_ADD)})


class Request(Protocol):
    """What the requester needs of an engine's work record."""

    opcode: int  # ibv_wr_opcode
    length: int
    seq: int  # set by Requester.issue: the request's MSN
    fence: bool
    needs_response: bool  # READ or atomic: completes on its response, not on an ACK
    rnr_tries: int


R = TypeVar("R", bound=Request)


@dataclass(frozen=True, slots=True)
class RnrRetry(Generic[R]):
    """An RNR NAK to act on: wait *delay* seconds, send ``RESYNC(resync_msn)`` and send
    *resend* again, in order."""

    resend: list[R]
    resync_msn: int
    delay: float


class Requester(Generic[R]):
    """The in-flight window: requests issued and not yet acknowledged or answered.

    Every method that may raise :class:`RemoteProtocolError` checks first and changes
    nothing when it raises: the requests stay in :attr:`inflight` for the engine to flush.
    """

    __slots__ = ("inflight", "proto", "rd_outstanding")

    def __init__(self, proto: RcProtocol) -> None:
        self.proto = proto
        self.inflight: deque[R] = deque()
        self.rd_outstanding = 0  # READs/atomics issued and not yet answered

    def may_issue(self, work: R, rd_limit: int) -> bool:
        """Whether *work* may go now: a fence waits for every earlier READ and atomic,
        and at most *rd_limit* of those are outstanding."""
        if work.fence and self.rd_outstanding:
            return False
        return not (work.needs_response and self.rd_outstanding >= rd_limit)

    def issue(self, work: R) -> None:
        work.seq = self.proto.next_request()
        self.inflight.append(work)
        if work.needs_response:
            self.rd_outstanding += 1

    def on_ack(self, msn: int) -> list[R]:
        """``ACK(msn)``: the requests it completes, oldest first."""
        done = self._through(msn)
        return [self.inflight.popleft() for _ in range(done)]

    def _through(self, msn: int) -> int:
        """How many requests up to *msn* an acknowledgement completes; raises, changing
        nothing, if one of them is a READ or atomic that must be answered, not ACKed."""
        count = self.proto.acks(msn)
        if count > len(self.inflight):  # a request left the window unacknowledged (an RNR
            # NAK's refused one, or a TERMINATE's): the connection is over, ACKs are wrong
            raise RemoteProtocolError(
                f"peer acknowledged request {msn}, but only {len(self.inflight)} "
                "requests are in flight"
            )
        for i in range(count):
            work = self.inflight[i]
            if work.needs_response:
                raise RemoteProtocolError(
                    f"peer acknowledged request {work.seq} ({_opname(work.opcode)}) "
                    "without answering it"
                )
        self.proto.on_ack(msn)
        return count

    def _answering(self, msn: int) -> tuple[list[R], R]:
        """A frame that answers request *msn* (so acknowledges every earlier one): the
        earlier requests it completes, and *msn*'s own, left at the head of the window."""
        before = (msn - 1) % _MSN_MOD
        count = self.proto.acks(before)
        inflight = self.inflight
        if count >= len(inflight) or inflight[count].seq != msn:
            raise _not_next(msn)
        done = self.on_ack(before)
        return done, inflight[0]

    def on_read_response(self, msn: int, payload_len: int) -> tuple[list[R], R]:
        """``READ_RESP(msn)`` of *payload_len* bytes: the requests it completes, and the
        READ whose memory the payload fills (finished by :meth:`response_done`)."""
        work = self._peek_answered(msn)
        if work.opcode != WR.IBV_WR_RDMA_READ or payload_len != work.length:
            raise RemoteProtocolError(
                f"peer sent {payload_len} READ bytes for request {msn}, "
                f"which is {_opname(work.opcode)} of {work.length} bytes"
            )
        return self._answering(msn)

    def on_atomic_response(self, msn: int) -> tuple[list[R], R]:
        work = self._peek_answered(msn)
        if work.opcode not in _ATOMICS:
            raise RemoteProtocolError(f"peer answered request {msn} as an atomic")
        return self._answering(msn)

    def _peek_answered(self, msn: int) -> R:
        for work in self.inflight:
            if work.seq == msn:
                return work
        raise _not_next(msn)

    def response_done(self, work: R) -> None:
        """The answer to *work* (the head of the window) is in place: it completes."""
        assert self.inflight and self.inflight[0] is work
        self.inflight.popleft()
        self.proto.on_ack(work.seq)
        self.rd_outstanding -= 1

    def on_rnr_nak(self, msn: int, timer: int, rnr_retry: int) -> tuple[list[R], R | RnrRetry[R]]:
        """``RNR_NAK(msn, timer)``: the requests before *msn* are done.  Then either the
        refused request has used up its *rnr_retry* tries (``IBV_WC_RNR_RETRY_EXC_ERR``;
        it is returned, out of the window) or everything from it on goes again."""
        work = self._peek_answered(msn)
        if work.opcode not in NEEDS_RECEIVE:
            raise RemoteProtocolError(f"RNR NAK for request {msn}, which needs no receive")
        done, work = self._answering(msn)
        work.rnr_tries += 1
        if rnr_retry != 7 and work.rnr_tries > rnr_retry:  # 7: retry for ever
            self.inflight.popleft()
            return done, work
        resend = list(self.inflight)
        self.inflight.clear()
        self.rd_outstanding = 0
        resync = self.proto.rewind()
        return done, RnrRetry(resend, resync, RNR_TIMER_MS[timer & 31] / 1000)

    def on_terminate(self, msn: int) -> R | None:
        """The peer's TERMINATE names request *msn* (or none): that request, taken out."""
        for work in self.inflight:
            if work.seq == msn:
                self.inflight.remove(work)
                return work
        return None


def terminate_status(status: int) -> ibv_wc_status:
    """The completion status of the request a TERMINATE names: the peer's status, but a
    TERMINATE is always an error (an unknown, SUCCESS or FLUSH status is REM_OP_ERR)."""
    try:
        mapped = W(status)
    except ValueError:
        return W.IBV_WC_REM_OP_ERR
    if mapped in (W.IBV_WC_SUCCESS, W.IBV_WC_WR_FLUSH_ERR):
        return W.IBV_WC_REM_OP_ERR
    return mapped


def _not_next(msn: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"peer answered request {msn}, which is not the next one")


def _opname(opcode: int) -> str:
    try:
        return WR(opcode).name
    except ValueError:
        return str(opcode)


# -- the responder's refusals -----------------------------------------------------------
class ResponderFault(enum.Enum):
    """Why the responder does not carry out a peer's request."""

    BAD_RKEY = "rkey names no valid MR of the target QP's PD"
    MR_ACCESS = "the target MR lacks the access right"
    QP_ACCESS = "the target QP's qp_access_flags lack the access right"
    OUT_OF_RANGE = "the range is outside the target MR"
    MR_GONE = "the target MR was deregistered while the payload landed"
    MISALIGNED = "the atomic's target is not 8-byte aligned"
    RECV_TOO_SMALL = "the message does not fit the posted receive"
    RECV_BROKEN = "the posted receive WR failed its own checks"


@dataclass(frozen=True, slots=True)
class FaultOutcome:
    peer_status: ibv_wc_status  # what the TERMINATE tells the requester
    errno: int  # of our QP's error
    event: ibv_event_type  # our async event


_ACCESS = FaultOutcome(
    W.IBV_WC_REM_ACCESS_ERR, errno.EACCES, ibv_event_type.IBV_EVENT_QP_ACCESS_ERR
)
# The table every engine follows: fault -> (peer's status, our errno, our event).
RESPONDER_FAULTS: dict[ResponderFault, FaultOutcome] = {
    ResponderFault.BAD_RKEY: _ACCESS,
    ResponderFault.MR_ACCESS: _ACCESS,
    ResponderFault.QP_ACCESS: _ACCESS,
    ResponderFault.OUT_OF_RANGE: _ACCESS,
    ResponderFault.MR_GONE: _ACCESS,
    ResponderFault.MISALIGNED: FaultOutcome(
        W.IBV_WC_REM_INV_REQ_ERR, errno.EACCES, ibv_event_type.IBV_EVENT_QP_REQ_ERR
    ),
    ResponderFault.RECV_TOO_SMALL: FaultOutcome(
        W.IBV_WC_REM_INV_REQ_ERR, errno.EMSGSIZE, ibv_event_type.IBV_EVENT_QP_FATAL
    ),
    ResponderFault.RECV_BROKEN: FaultOutcome(
        W.IBV_WC_REM_OP_ERR, errno.EFAULT, ibv_event_type.IBV_EVENT_QP_FATAL
    ),
}
