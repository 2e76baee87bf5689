"""The C sans-IO pieces (``tcpverbs._native``) against their Python references: the frame
codec and the rc protocol state.

The golden vectors run against both in tests/test_wire_rc.py.  Here hypothesis feeds the
two the same byte streams — well-formed frames, damaged ones and noise — cut into reads
at the same random points, and every event must be the same: each header, each payload
byte, the error (its message and the byte it came at) and whether the stream ended on a
frame boundary; the rc protocol state and the requester's window likewise.  The
coverage-guided fuzzers under ASan and UBSan are ``fuzz/*_fuzz.c`` (``scripts/fuzz.sh``;
a short run is a test here too).
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpverbs.enums import ibv_wr_opcode
from tcpverbs.errors import RemoteProtocolError
from tcpverbs.wire.frames import MAX_REASON, FrameDecoder, Header, Opcode, encode_header
from tcpverbs.wire.rc import RcProtocol, RnrRetry, terminate_status

from .test_native_c import own_runtime
from .test_wire_rc import _ALL_OPS, Window, Work, names

SEND, READ = ibv_wr_opcode.IBV_WR_SEND, ibv_wr_opcode.IBV_WR_RDMA_READ

try:
    from tcpverbs._native import FrameDecoder as NativeFrameDecoder
    from tcpverbs._native import RcProtocol as NativeRcProtocol
    from tcpverbs._native import encode_header as native_encode_header
    from tcpverbs._native import terminate_status as native_terminate_status
except ImportError:  # pragma: no cover - CI builds it (TCPVERBS_REQUIRE_NATIVE)
    if os.environ.get("TCPVERBS_REQUIRE_NATIVE"):
        raise
    pytest.skip("tcpverbs._native is not built (pip install -e .)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
U32, U64 = 2**32 - 1, 2**64 - 1


@st.composite
def good_header(draw: st.DrawFn) -> tuple[Header, bytes]:
    """A valid header of any opcode, every field drawn over its whole width, and its
    payload (a TERMINATE's reason is part of the header)."""
    op = draw(st.sampled_from(list(Opcode)))
    u32, u64 = st.integers(0, U32), st.integers(0, U64)
    h = Header(
        op,
        flags=draw(st.sampled_from([0, 1])),
        imm=draw(u32),
        rkey=draw(u32),
        addr=draw(u64),
        length=draw(u32),
        compare_add=draw(u64),
        swap=draw(u64),
        msn=draw(u32),
        status=draw(st.integers(0, 255)),
        timer=draw(st.integers(0, 255)),
        psn=draw(u32),
    )
    payload = b""
    if op is Opcode.TERMINATE:
        h.reason = draw(st.binary(max_size=MAX_REASON))
    elif op in (Opcode.SEND, Opcode.SEND_IMM, Opcode.WRITE, Opcode.WRITE_IMM, Opcode.READ_RESP):
        payload = draw(st.binary(max_size=300))
        h.payload_len = len(payload)
    return h, payload


@st.composite
def good_frame(draw: st.DrawFn) -> bytes:
    h, payload = draw(good_header())
    return encode_header(h) + payload


def damaged(frame: bytes, data: st.DataObject) -> bytes:
    """*frame* with one byte changed, or cut short."""
    if not frame:
        return frame
    i = data.draw(st.integers(0, len(frame) - 1))
    if data.draw(st.booleans()):
        return frame[:i]
    return frame[:i] + bytes([data.draw(st.integers(0, 255))]) + frame[i + 1 :]


def run(cls: Any, stream: bytes, cuts: list[int], max_payload: int) -> list[Any]:
    """Every event of decoding *stream* delivered in the reads *cuts* makes."""
    dec = cls(max_payload)
    events: list[Any] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    for a, b in itertools.pairwise(bounds):
        chunk = memoryview(stream)[a:b]
        while chunk:
            if dec.payload_remaining:
                k = min(dec.payload_remaining, len(chunk))
                events.append(("payload", bytes(chunk[:k])))
                dec.payload_consumed(k)
                chunk = chunk[k:]
                continue
            try:
                header, used = dec.receive(chunk)
            except RemoteProtocolError as exc:
                events.append(("error", b, exc.strerror, exc.errno))
                with pytest.raises(RemoteProtocolError):  # and it stays broken
                    dec.receive(memoryview(b"\x10"))
                return events
            events.append(("used", used))
            if header is not None:
                events.append(("header", header))
            chunk = chunk[used:]
    events.append(("end", dec.at_boundary, dec.payload_remaining))
    return events


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_c_decoder_does_what_the_python_one_does(data: st.DataObject) -> None:
    frames = data.draw(st.lists(good_frame(), max_size=8))
    if frames and data.draw(st.booleans()):  # damage one of them
        i = data.draw(st.integers(0, len(frames) - 1))
        frames[i] = damaged(frames[i], data)
    if data.draw(st.booleans()):
        frames.append(data.draw(st.binary(max_size=64)))  # and some noise after
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, max(0, len(stream))), max_size=12))
    max_payload = data.draw(st.sampled_from([0, 1, 64, 300, 4096, 2**31]))
    expected = run(FrameDecoder, stream, cuts, max_payload)
    assert run(NativeFrameDecoder, stream, cuts, max_payload) == expected


@settings(max_examples=300, deadline=None)
@given(item=good_header())
def test_the_c_encoder_writes_what_the_python_one_writes(item: tuple[Header, bytes]) -> None:
    header, _ = item
    assert native_encode_header(header) == encode_header(header)


def test_the_c_encoder_refuses_what_the_python_one_refuses() -> None:
    for bad in (Header(Opcode.ACK, payload_len=3), Header(Opcode.READ_REQ, payload_len=1)):
        with pytest.raises(ValueError, match="frames carry no payload"):
            native_encode_header(bad)
        with pytest.raises(ValueError, match="frames carry no payload"):
            encode_header(bad)


RC_CALLS = ("next_request", "rewind", "refuse", "request_done", "take_ack")
RC_MSN_CALLS = ("acks", "on_ack", "on_resync")


def rc_state(p: Any) -> tuple[Any, ...]:
    return (p.sent, p.acked, p.received, p._ack_sent, p.discarding, p.next_msn, p.ack_owed)


def rc_call(p: Any, name: str, *args: int) -> Any:
    try:
        return ("ok", getattr(p, name)(*args))
    except RemoteProtocolError as exc:
        return ("error", exc.strerror, exc.errno)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_c_rc_protocol_does_what_the_python_one_does(data: st.DataObject) -> None:
    """Random calls, with message numbers near the counters (and across 2^32), give the
    same results, errors and state in both."""
    ref, twin = RcProtocol(), NativeRcProtocol()
    start = data.draw(st.sampled_from([0, 5, 2**32 - 3]))
    for p in (ref, twin):
        p.sent = p.acked = p.received = p._ack_sent = start
    for _ in range(data.draw(st.integers(1, 40))):
        name = data.draw(st.sampled_from(RC_CALLS + RC_MSN_CALLS))
        args: tuple[int, ...] = ()
        if name in RC_MSN_CALLS:
            near = data.draw(st.sampled_from([ref.acked, ref.sent, ref.received]))
            offset = data.draw(st.integers(-2, 3))
            args = (data.draw(st.sampled_from([(near + offset) % 2**32, 0, 2**32 - 1])),)
        assert rc_call(twin, name, *args) == rc_call(ref, name, *args), (name, args)
        assert rc_state(twin) == rc_state(ref)


def window_state(win: Window) -> tuple[Any, ...]:
    """What a window holds, by the works' names (the two windows hold distinct objects)."""
    p = win.proto
    return (
        names(win.req.inflight),
        win.req.rd_outstanding,
        (p.sent, p.acked, p.received, p.discarding, p._ack_sent),
        names(win.queue),
        {n: (w.seq, w.rnr_tries) for n, w in win.works.items()},
    )


def window_call(win: Window, step: str, args: tuple[Any, ...]) -> Any:
    """Apply one input to *win*; its outcome in names (or the error)."""
    req = win.req
    try:
        if step == "issue":
            return names([win.issue(*args)])
        if step == "pump":
            return names(win.pump())
        if step == "ack":
            return names(req.on_ack(*args))
        if step in ("read", "atomic"):  # and its payload placed, as the engine does
            if step == "read":
                done, work = req.on_read_response(*args)
            else:
                done, work = req.on_atomic_response(*args)
            req.response_done(work)
            return names(done), work.name
        if step == "rnr":
            done, outcome = win.rnr_nak(*args)
            if isinstance(outcome, RnrRetry):
                return names(done), names(outcome.resend), outcome.resync_msn, outcome.delay
            return names(done), outcome.name
        taken = req.on_terminate(*args)
        return None if taken is None else taken.name
    except RemoteProtocolError as exc:
        return ("error", exc.strerror)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_c_requester_does_what_the_python_one_does(data: st.DataObject) -> None:
    """Two windows, the reference's and the C one, fed the same inputs in lockstep —
    correct ones and wrong ones, message numbers near the window and anywhere: every
    outcome, error and state is the same."""
    start = data.draw(st.sampled_from([0, 2**32 - 2]))
    rd_limit = data.draw(st.integers(1, 3))
    ref, twin = (
        Window(rd_limit, {"sent": start, "acked": start}, impl) for impl in ("python", "native")
    )
    for n in range(data.draw(st.integers(1, 40))):
        step = data.draw(
            st.sampled_from(
                ["issue", "issue", "pump", "ack", "read", "atomic", "done", "rnr", "terminate"]
            )
        )
        p = ref.proto
        near = [w.seq for w in ref.req.inflight] + [(p.acked + d) % 2**32 for d in (-1, 0, 1, 2)]
        msn = data.draw(st.sampled_from(near) | st.integers(0, 2**32 - 1))
        args: tuple[Any, ...] = (msn,)
        if step == "issue":
            op = data.draw(st.sampled_from(_ALL_OPS))
            args = (f"w{n}", op, data.draw(st.integers(0, 16)), data.draw(st.booleans()))
        elif step == "pump":
            args = ()
        elif step == "read":
            args = (msn, data.draw(st.integers(0, 16)))
        elif step == "rnr":
            args = (msn, data.draw(st.integers(0, 31)), data.draw(st.sampled_from([0, 1, 7])))
        assert window_call(twin, step, args) == window_call(ref, step, args), (step, args)
        assert window_state(twin) == window_state(ref), (step, args)
        if step == "terminate":
            break


def test_the_c_terminate_status_is_the_reference() -> None:
    for status in [*range(40), 255, 2**31, 2**32 - 1]:
        assert native_terminate_status(status) == terminate_status(status), status


# -- the binding is safe against what Python code can do (found by review) ---------------
def test_a_setter_that_calls_back_into_the_requester_breaks_nothing() -> None:
    """Setting rnr_tries runs Python code, which may use the requester again: the
    references handed out stay right (this crashed before)."""
    from tcpverbs._native import Requester

    req = Requester(NativeRcProtocol(), 8)

    class Reentrant(Work):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "rnr_tries" and value == 1:
                extra = Work.make("x", SEND)
                req.issue(extra)
                req.on_ack(extra.seq)
            object.__setattr__(self, name, value)

    a, b = Reentrant.make("a", SEND), Work.make("b", SEND)
    req.issue(a)
    req.issue(b)
    done, outcome = req.on_rnr_nak(a.seq, 0, 3)
    assert done == [] and isinstance(outcome, RnrRetry) and outcome.resend == [a, b]
    assert a.rnr_tries == 1 and sys.getrefcount(b) == sys.getrefcount(Work.make("t", SEND)) + 1


def test_a_work_that_refuses_its_number_leaves_the_window_as_it_was() -> None:
    from tcpverbs._native import Requester

    class NoSeq:
        __slots__ = ("fence", "length", "needs_response", "opcode", "rnr_tries")

        def __init__(self) -> None:
            self.opcode, self.length, self.fence = 2, 0, False
            self.needs_response, self.rnr_tries = False, 0

    proto = NativeRcProtocol()
    req = Requester(proto, 4)
    with pytest.raises(AttributeError):
        req.issue(NoSeq())
    assert req.inflight == [] and proto.sent == 0


def test_misuse_and_bad_numbers_are_refused_not_wrapped() -> None:
    from tcpverbs._native import Requester

    req = Requester(NativeRcProtocol(), 4)
    send = Work.make("s", SEND)
    req.issue(send)
    with pytest.raises(ValueError, match="awaits no answer"):
        req.response_done(send)  # a SEND has no answer to place
    assert req.rd_outstanding == 0 and req.inflight == [send]
    with pytest.raises(ValueError, match="rd_limit"):
        req.may_issue(Work.make("r", READ), -1)
    with pytest.raises(ValueError, match="rnr_retry"):
        req.on_rnr_nak(send.seq, 0, -1)
    with pytest.raises(ValueError, match="payload_len"):
        req.on_read_response(send.seq, -1)
    with pytest.raises(ValueError, match="max_payload"):
        NativeFrameDecoder(-1)  # a negative limit must not become "no limit"


def test_a_requester_in_a_reference_cycle_is_collected() -> None:
    from tcpverbs._native import Requester

    req = Requester(NativeRcProtocol(), 4)
    work = Work.make("w", SEND)
    work.owner = req  # type: ignore[attr-defined]
    req.issue(work)
    gone = weakref.ref(work)
    del work, req
    gc.collect()
    assert gone() is None


def test_the_fuzzer_runs_clean_for_a_while() -> None:
    """``scripts/fuzz.sh`` for a few seconds per harness: libFuzzer, ASan and UBSan on the
    C code a peer's bytes reach (any crash, leak, broken invariant or undefined
    behaviour fails it)."""
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed (the Debian package clang brings libFuzzer)")
    result = subprocess.run(
        [str(ROOT / "scripts" / "fuzz.sh"), "6"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=own_runtime(),  # the fuzzers carry their own ASan
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
