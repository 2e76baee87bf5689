"""A fuzzer that speaks the rc wire to a live QP over a real socket (issue: failure
semantics, "Every WR one outcome, whatever the peer sends").

Hypothesis builds a peer's byte stream from frames of every opcode (and unknown ones),
with flags, keys, addresses, message numbers and lengths at their extremes, payloads
truncated or missing, the whole repeated into a flood and dribbled in small writes.  The
QP has a receive, a SEND, a WRITE and a READ outstanding.  Whatever arrives, once the
peer hangs up: every one of those WRs has exactly one completion, the QP is in ERR, the
process is up, and memory stays bounded.  The run is bounded (``max_examples``) so it
fits CI; raise ``TCPVERBS_FUZZ_EXAMPLES`` for a longer one (with ``--timeout 0``: the
whole run is one test).
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tcpverbs as v
from tcpverbs.testing import ALL_ACCESS
from tcpverbs.wire.frames import BASE, NO_MSN, Opcode

from .test_hostile import RawPeer

OP = v.ibv_wr_opcode
EXAMPLES = int(os.environ.get("TCPVERBS_FUZZ_EXAMPLES", "60"))
U32, U64 = 2**32 - 1, 2**64 - 1
EXT_FIELDS = {  # the extension of each opcode: (field kind, struct code)
    Opcode.SEND: (),
    Opcode.SEND_IMM: (("imm", "I"),),
    Opcode.WRITE: (("rkey", "I"), ("addr", "Q")),
    Opcode.WRITE_IMM: (("rkey", "I"), ("addr", "Q"), ("imm", "I")),
    Opcode.READ_REQ: (("rkey", "I"), ("addr", "Q"), ("length", "I")),
    Opcode.READ_RESP: (("msn", "I"),),
    Opcode.ATOMIC_CMP_SWP: (("rkey", "I"), ("addr", "Q"), ("u64", "Q"), ("u64", "Q")),
    Opcode.ATOMIC_FETCH_ADD: (("rkey", "I"), ("addr", "Q"), ("u64", "Q"), ("u64", "Q")),
    Opcode.ATOMIC_RESP: (("msn", "I"), ("u64", "Q")),
    Opcode.ACK: (("msn", "I"),),
    Opcode.TERMINATE: (("msn", "I"), ("status", "B"), ("pad", "3s")),
    Opcode.RNR_NAK: (("msn", "I"), ("timer", "B"), ("pad", "3s")),
    Opcode.RESYNC: (("msn", "I"),),
}
MR_SIZE = 4096


def field_value(draw: st.DrawFn, kind: str, mr: v.MR) -> object:
    if kind == "rkey":
        return draw(st.sampled_from([mr.rkey, 0, U32]) | st.integers(0, U32))
    if kind == "addr":
        edges = [mr.buf, mr.buf + MR_SIZE - 8, mr.buf + MR_SIZE, mr.buf + 3, 0, U64]
        return draw(st.sampled_from(edges) | st.integers(0, U64))
    if kind == "length":
        return draw(st.sampled_from([0, 1, 8, MR_SIZE, MR_SIZE + 1, 2**31, U32]))
    if kind == "msn":
        return draw(st.sampled_from([0, 1, 2, 3, 4, NO_MSN]) | st.integers(0, U32))
    if kind in ("status", "timer"):
        return draw(st.integers(0, 255))
    if kind == "pad":
        return draw(st.sampled_from([b"\0\0\0", b"\xff\xff\xff"]))
    top = U64 if kind == "u64" else U32
    return draw(st.sampled_from([0, 1, top]) | st.integers(0, top))


@st.composite
def frame(draw: st.DrawFn, mr: v.MR) -> bytes:
    op = draw(st.sampled_from(list(Opcode)) | st.integers(0, 255))
    flags = draw(st.sampled_from([0, 0, 1, 0x80, 0xFF]))
    declared = draw(st.sampled_from([0, 0, 1, 8, 64, MR_SIZE, MR_SIZE + 1, 2**31, U32]))
    fields = EXT_FIELDS.get(op)  # type: ignore[call-overload]
    if fields is None:  # an unknown opcode: whatever bytes
        ext = draw(st.binary(max_size=40))
    else:
        codes = "".join(code for _, code in fields)
        ext = struct.pack("!" + codes, *(field_value(draw, kind, mr) for kind, _ in fields))
    payload = draw(st.binary(max_size=64)) if declared else b""
    if declared and draw(st.booleans()):  # the payload it declares, as far as it goes
        payload = bytes(min(declared, 2 * MR_SIZE))
    raw = BASE.pack(int(op) & 0xFF, flags, 0, declared) + ext + payload
    cut = draw(st.sampled_from([None, None, None, 1, 3, 7]))  # sometimes truncated
    return raw if cut is None else raw[: max(1, len(raw) - cut)]


def post_outstanding(peer: RawPeer) -> tuple[set[int], v.MR]:
    """A receive, a SEND, a WRITE and a READ, outstanding at the QP; their wr_ids."""
    end = peer.end
    mr = v.MR(end.pd, MR_SIZE, ALL_ACCESS)
    end.qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf, 64, mr.lkey)]))
    end.qp.post_send(v.SendWR(2, OP.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, 8, mr.lkey)]))
    write = v.SendWR(3, OP.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(mr.buf + 8, 8, mr.lkey)])
    write.set_wr_rdma(0x1234, 0x1000)
    end.qp.post_send(write)
    read = v.SendWR(4, OP.IBV_WR_RDMA_READ, 1, 0, [v.SGE(mr.buf + 16, 8, mr.lkey)])
    read.set_wr_rdma(0x1234, 0x1000)
    end.qp.post_send(read)
    return {1, 2, 3, 4}, mr


def send_for_a_while(sock: socket.socket, data: bytes, chunk: int, limit: float) -> None:
    """Send *data* in *chunk*-byte writes for at most *limit* seconds (the QP may stop
    reading: then we give up, as a peer would have to)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + limit
    view = memoryview(data)
    while view and time.monotonic() < deadline:
        try:
            view = view[sock.send(view[:chunk]) :]
        except (TimeoutError, BlockingIOError):
            continue
        except OSError:  # the QP gave up on us first
            return


@pytest.fixture(scope="module")
def rss_at_start() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_whatever_the_peer_sends_every_wr_gets_one_outcome(
    ctx: v.Context, rss_at_start: int, data: st.DataObject
) -> None:
    peer = RawPeer(ctx)
    try:  # (hypothesis may end an example inside a draw: nothing may leak then)
        check_one_outcome_each(peer, data, rss_at_start)
    finally:
        peer.sock.close()
        peer.end.qp.close()


def check_one_outcome_each(peer: RawPeer, data: st.DataObject, rss_at_start: int) -> None:
    wr_ids, mr = post_outstanding(peer)
    frames = data.draw(st.lists(frame(mr), max_size=12), label="frames")
    flood = data.draw(st.sampled_from([1, 1, 1, 300]), label="repeat")
    chunk = data.draw(st.sampled_from([1, 3, 64, 65536]), label="write size")
    send_for_a_while(peer.sock, b"".join(frames) * flood, chunk, limit=1.0)
    peer.sock.close()  # whatever state it left, the peer is gone now
    outcomes: Counter[int] = Counter()
    deadline = time.monotonic() + 10
    while sum(outcomes.values()) < len(wr_ids):
        assert time.monotonic() < deadline, f"no outcome for {wr_ids - set(outcomes)}"
        for cq in (peer.end.scq, peer.end.rcq):
            outcomes.update(wc.wr_id for wc in cq.poll(16)[1])
    time.sleep(0.01)  # nothing more may come
    for cq in (peer.end.scq, peer.end.rcq):
        outcomes.update(wc.wr_id for wc in cq.poll(16)[1])
    assert outcomes == Counter(wr_ids), outcomes
    assert peer.end.qp.qp_state == v.ibv_qp_state.IBV_QPS_ERR
    assert peer.end.qp.statistics()["sq_outstanding"] == 0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_at_start
    assert grown_kib < 256 * 1024, f"memory grew by {grown_kib} KiB"
