"""Golden vectors for the ``rc`` wire protocol, and properties of the sans-IO requester.

``tests/golden/*.json`` hold byte streams with the frames, hellos and errors they must
produce, and scenarios for :class:`tcpverbs.wire.rc.Requester` (schema:
``tests/golden/README.md``).  They are plain JSON so that another engine's tests can read
them too; here every vector is replayed against the Python implementation, and the frame
and hello bytes are also taken apart by hand, following the tables of
``docs/wire-protocol.md``, so that the vectors pin the documented format and not only
what the encoder happens to write.
"""

from __future__ import annotations

import errno
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tcpverbs.enums import ibv_event_type, ibv_wc_status, ibv_wr_opcode
from tcpverbs.errors import RemoteProtocolError
from tcpverbs.wire.frames import (
    MAX_REASON,
    FrameDecoder,
    Header,
    Opcode,
    encode_header,
    whole_send,
)
from tcpverbs.wire.hello import HELLO_SIZE, MAGIC, Hello, HelloDecoder, WireMode
from tcpverbs.wire.rc import (
    NEEDS_RECEIVE,
    RESPONDER_FAULTS,
    RNR_TIMER_MS,
    RcProtocol,
    Requester,
    ResponderFault,
    RnrRetry,
    terminate_status,
)

GOLDEN = Path(__file__).parent / "golden"
DOC = Path(__file__).parent.parent / "docs" / "wire-protocol.md"
FRAMES = json.loads((GOLDEN / "frames.json").read_text())
HELLOS = json.loads((GOLDEN / "hello.json").read_text())
SCENARIOS = json.loads((GOLDEN / "requester.json").read_text())["scenarios"]

WR = ibv_wr_opcode
W = ibv_wc_status
MSN_MOD = 1 << 32
U64_FIELDS = {"addr", "compare_add", "swap"}


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


# -- the documented frame layout, read from docs/wire-protocol.md ---------------------------
_ROW = re.compile(r"^\| (\d+)(?: / (\d+))? \| ([A-Z_]+)(?: / ([A-Z_]+))? \| (.+?) \| (.+?) \|$")
_DOC_FIELD_ALIASES = {"original": "compare_add"}  # ATOMIC_RESP's "original" value


def documented_frames() -> dict[str, tuple[int, list[tuple[str, int]], bool]]:
    """name -> (opcode number, [(extension field, size in bytes)], carries payload), from
    the opcode table of the protocol document (padding appears as ``("", size)``)."""
    table: dict[str, tuple[int, list[tuple[str, int]], bool]] = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line.strip())
        if m is None:
            continue
        num1, num2, name1, name2, ext, payload = m.groups()
        fields: list[tuple[str, int]] = []
        if ext != "—":
            for part in ext.split(", "):
                if pad := re.fullmatch(r"(\d+) bytes 0", part):
                    fields.append(("", int(pad.group(1))))
                    continue
                field, kind = part.split(" ")
                bits = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}[kind]
                fields.append((_DOC_FIELD_ALIASES.get(field, field), bits // 8))
        carries = payload != "—"
        table[name1] = (int(num1), fields, carries)
        if name2 is not None:  # "ATOMIC_CMP_SWP / FETCH_ADD"
            prefix = name1.split("_")[0] + "_"
            table[prefix + name2] = (int(num2), fields, carries)
    return table


DOC_FRAMES = documented_frames()


def test_the_document_lists_every_opcode() -> None:
    assert set(DOC_FRAMES) == {op.name for op in Opcode}
    for op in Opcode:  # and the numbers the code uses are the documented ones
        assert DOC_FRAMES[op.name][0] == op


def parse_by_the_document(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """Take a valid stream apart with the documented layout alone (no tcpverbs code):
    the 8-byte base header (opcode, flags, two reserved zero bytes, big-endian length of
    extension + payload), the opcode's extension, then the payload."""
    by_number = {
        num: (name, fields, carries) for name, (num, fields, carries) in DOC_FRAMES.items()
    }
    out: list[tuple[dict[str, Any], bytes]] = []
    pos = 0
    while pos < len(data):
        opcode, flags = data[pos], data[pos + 1]
        assert data[pos + 2 : pos + 4] == b"\0\0", "reserved bytes must be 0"
        length = int.from_bytes(data[pos + 4 : pos + 8], "big")
        name, fields, carries = by_number[opcode]
        frame: dict[str, Any] = {"opcode": name, "flags": flags}
        at = pos + 8
        for field, size in fields:
            raw = data[at : at + size]
            if field:
                frame[field] = int.from_bytes(raw, "big")
            else:
                assert raw == bytes(size), "padding must be 0"
            at += size
        ext = sum(size for _, size in fields)
        assert length >= ext
        rest = data[at : pos + 8 + length]
        assert len(rest) == length - ext, "stream ends inside a frame"
        if name == "TERMINATE":
            frame["reason"] = rest
            frame["payload_len"], payload = 0, b""
        else:
            assert carries or not rest
            frame["payload_len"], payload = len(rest), rest
        out.append((frame, payload))
        pos += 8 + length
    return out


def frame_fields(d: dict[str, Any]) -> dict[str, Any]:
    """A vector's frame with its integers as ints and the reason as bytes."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key == "reason":
            out[key] = bytes.fromhex(value)
        elif key in U64_FIELDS:
            assert isinstance(value, str) and value.startswith("0x")
            out[key] = int(value, 16)
        else:
            out[key] = value
    return out


def expected_header(d: dict[str, Any]) -> Header:
    fields = frame_fields(d)
    return Header(Opcode[fields.pop("opcode")], **fields)


# -- driving the decoder as an engine does ----------------------------------------------
def pieces(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    """The (start, end) of the reads that *n* bytes cut at *cuts* arrive in."""
    return list(itertools.pairwise([0, *sorted(c for c in cuts if 0 < c < n), n]))


def feed(
    dec: FrameDecoder, data: bytes, cuts: list[int], out: list[tuple[Header, bytearray]]
) -> None:
    """Deliver *data* in the chunks *cuts* makes; payload bytes are taken as an engine
    takes them (``payload_remaining`` / ``payload_consumed``), headers from ``receive``."""
    for a, b in pieces(len(data), cuts):
        chunk = memoryview(data)[a:b]
        while chunk:
            if dec.payload_remaining:
                k = min(dec.payload_remaining, len(chunk))
                out[-1][1].extend(chunk[:k])
                dec.payload_consumed(k)
                chunk = chunk[k:]
                continue
            header, used = dec.receive(chunk)
            assert 0 < used <= len(chunk)
            if header is None:
                assert used == len(chunk)  # a partial header is kept, all of it
            else:
                out.append((header, bytearray()))
            chunk = chunk[used:]


# the frame decoders held to the vectors: the Python reference and, when it is built,
# its C twin (tcpverbs._native)
DECODERS: dict[str, Any] = {"python": FrameDecoder}
NATIVE_ENCODE: Any = None
# the requester's window likewise: (protocol state, window) classes
REQUESTERS: dict[str, tuple[Any, Any]] = {"python": (RcProtocol, Requester)}
try:
    from tcpverbs._native import FrameDecoder as NativeFrameDecoder
    from tcpverbs._native import RcProtocol as NativeRcProtocol
    from tcpverbs._native import Requester as NativeRequester
    from tcpverbs._native import encode_header as NATIVE_ENCODE

    DECODERS["native"] = NativeFrameDecoder
    REQUESTERS["native"] = (NativeRcProtocol, NativeRequester)
except ImportError:  # not built: the native tests say so (tests/test_native_frames.py)
    pass


@pytest.fixture(params=sorted(DECODERS))
def decoder(request: pytest.FixtureRequest) -> Any:
    return DECODERS[request.param]


def decode(
    data: bytes, max_payload: int, cuts: list[int], cls: Any = FrameDecoder
) -> tuple[list[Any], FrameDecoder]:
    dec = cls(max_payload)
    out: list[tuple[Header, bytearray]] = []
    feed(dec, data, cuts, out)
    return [(h, bytes(p)) for h, p in out], dec


def splits(n: int) -> list[list[int]]:
    """Whole, cut once at every byte, and byte by byte."""
    return [[], *([cut] for cut in range(1, n)), list(range(1, n))]


# -- frames.json -------------------------------------------------------------------------
@pytest.mark.parametrize("vec", FRAMES["vectors"], ids=_ids(FRAMES["vectors"]))
def test_frame_vector(vec: dict[str, Any], decoder: Any) -> None:
    data = bytes.fromhex(vec["hex"])
    expected = [
        (expected_header(f), bytes.fromhex(p))
        for f, p in zip(vec["frames"], vec["payloads"], strict=True)
    ]
    for cuts in splits(len(data)):
        got, dec = decode(data, vec["max_payload"], cuts, decoder)
        assert got == expected, cuts
        assert dec.at_boundary
        # the encoder (and its C twin) writes exactly these bytes back from what was decoded
        assert b"".join(encode_header(h) + p for h, p in got) == data
        if NATIVE_ENCODE is not None:
            assert b"".join(NATIVE_ENCODE(h) + p for h, p in got) == data
    # and the document's layout reads the same frames out of them
    by_hand = parse_by_the_document(data)
    assert len(by_hand) == len(expected)
    for (fields, payload), d, p in zip(by_hand, vec["frames"], vec["payloads"], strict=True):
        assert fields == frame_fields(d)
        assert payload == bytes.fromhex(p)


@pytest.mark.parametrize("vec", FRAMES["vectors"], ids=_ids(FRAMES["vectors"]))
def test_whole_send_finds_exactly_the_sends_of_a_vector(vec: dict[str, Any]) -> None:
    data = memoryview(bytes.fromhex(vec["hex"]))
    pos = 0
    for d, p in zip(vec["frames"], vec["payloads"], strict=True):
        h = expected_header(d)
        size = len(encode_header(h))
        got = whole_send(data, pos, vec["max_payload"])
        if h.opcode in (Opcode.SEND, Opcode.SEND_IMM):
            imm = h.imm if h.opcode is Opcode.SEND_IMM else None
            assert got == (size, len(p) // 2, h.flags, imm)
        else:
            assert got is None
        pos += size + len(p) // 2
    assert pos == len(data)


def test_frame_vectors_cover_every_opcode_and_the_edges() -> None:
    frames = [f for v in FRAMES["vectors"] for f in v["frames"]]
    assert {f["opcode"] for f in frames} == {op.name for op in Opcode}
    assert any(f["opcode"] == "SEND_IMM" and f["imm"] for f in frames)
    assert any(f["opcode"] == "RNR_NAK" and f["timer"] for f in frames)
    assert any(f["opcode"] == "TERMINATE" and f["status"] and f["reason"] for f in frames)
    assert any(f.get("msn") == 0xFFFFFFFF for f in frames)
    for field in U64_FIELDS:
        assert any(int(f.get(field, "0x0"), 16) >= 2**64 - 8 for f in frames), field
    assert any(len(v["frames"]) > 5 for v in FRAMES["vectors"])
    assert any(f["opcode"] == "TERMINATE" and len(f["reason"]) == 2 * MAX_REASON for f in frames)
    # zero-length payloads of every opcode that carries one
    empty = {f["opcode"] for f in frames if f["payload_len"] == 0}
    assert {"SEND", "SEND_IMM", "WRITE", "WRITE_IMM", "READ_RESP"} <= empty


def test_documented_header_layout_by_hand() -> None:
    """A few vectors spelled out byte by byte from the document's tables."""
    named = {v["name"]: bytes.fromhex(v["hex"]) for v in FRAMES["vectors"]}
    # opcode | flags | reserved 0 0 | length (big-endian) | extension | payload
    assert named["send_payload"] == bytes([1, 0, 0, 0, 0, 0, 0, 5]) + b"hello"
    assert named["send_solicited"][:8] == bytes([1, 1, 0, 0, 0, 0, 0, 8])
    assert named["send_imm"] == bytes([2, 0, 0, 0, 0, 0, 0, 7, 0xDE, 0xAD, 0xBE, 0xEF]) + b"abc"
    assert named["ack_msn_max"] == bytes([16, 0, 0, 0, 0, 0, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF])
    assert named["rnr_nak"] == bytes([18, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 5, 14, 0, 0, 0])
    assert named["write"][:20] == (
        bytes([3, 0, 0, 0, 0, 0, 0, 12 + 16])
        + bytes([0, 0, 0x12, 0x34])
        + bytes([0, 0, 0x7F, 0, 0, 0, 0x10, 0])
    )
    term = named["terminate"]
    reason = b"rkey 0x1234 names no MR"
    assert term == bytes([17, 0, 0, 0, 0, 0, 0, 8 + len(reason), 0, 0, 0, 3, 10, 0, 0, 0]) + reason
    cas = named["atomic_cmp_swp_edge"]
    assert cas[:8] == bytes([7, 0, 0, 0, 0, 0, 0, 28]) and len(cas) == 36
    assert cas[12:20] == b"\xff" * 7 + b"\xf8"  # addr, big-endian
    assert cas[20:28] == b"\xff" * 8 and cas[28:36] == b"\xff" * 7 + b"\xfe"


def raising_point(
    data: bytes, max_payload: int, cuts: list[int], cls: Any = FrameDecoder
) -> tuple[int, str]:
    """Feed *data* cut at *cuts*; return how many bytes had been delivered when the
    decoder raised (the end of the chunk it raised in) and the message."""
    dec = cls(max_payload)
    out: list[tuple[Header, bytearray]] = []
    for a, b in pieces(len(data), cuts):
        try:
            feed(dec, data[a:b], [], out)
        except RemoteProtocolError as exc:
            assert exc.errno == errno.EPROTO
            with pytest.raises(RemoteProtocolError):  # and the decoder stays broken
                dec.receive(memoryview(b"\x10"))
            return b, str(exc.strerror)
    pytest.fail(f"no error after {len(data)} bytes cut at {cuts}")


@pytest.mark.parametrize("vec", FRAMES["malformed"], ids=_ids(FRAMES["malformed"]))
def test_malformed_vector(vec: dict[str, Any], decoder: Any) -> None:
    data = bytes.fromhex(vec["hex"])
    at, decidable = vec["at"], vec["decidable"]
    assert 1 <= decidable <= at <= len(data)
    # byte by byte: the error comes with byte number `at`, not before
    where, message = raising_point(data, vec["max_payload"], list(range(1, len(data))), decoder)
    assert where == at
    assert vec["error"] in message
    # at every single cut, in the chunk that holds byte `at`
    for cut in range(len(data) + 1):
        where, message = raising_point(data, vec["max_payload"], [cut], decoder)
        assert where == (cut if cut >= at else len(data)), cut
        assert vec["error"] in message


@pytest.mark.parametrize("vec", FRAMES["truncated"], ids=_ids(FRAMES["truncated"]))
def test_truncated_vector(vec: dict[str, Any], decoder: Any) -> None:
    data = bytes.fromhex(vec["hex"])
    for cuts in splits(len(data)):
        got, dec = decode(data, vec["max_payload"], cuts, decoder)
        assert len(got) == vec["frames"]
        assert not dec.at_boundary  # the engine calls the end of the stream an error


# -- hello.json --------------------------------------------------------------------------
def hello_of(fields: dict[str, Any]) -> Hello:
    f = dict(fields)
    f["mode"] = WireMode(f["mode"])
    return Hello(**f)


def feed_hello(data: bytes, cuts: list[int]) -> Hello | None:
    dec = HelloDecoder()
    hello = None
    for a, b in pieces(len(data), cuts):
        assert hello is None
        hello, used = dec.receive(memoryview(data)[a:b])
        assert used == min(b - a, HELLO_SIZE - a)
    return hello


@pytest.mark.parametrize("vec", HELLOS["valid"], ids=_ids(HELLOS["valid"]))
def test_hello_vector(vec: dict[str, Any]) -> None:
    data = bytes.fromhex(vec["hex"])
    fields = vec["fields"]
    expected = hello_of(fields)
    assert expected.encode() == data
    for cuts in splits(len(data)):
        assert feed_hello(data, cuts) == expected
    # the hello takes exactly its 40 bytes: a first frame may follow in the same read
    hello, used = HelloDecoder().receive(memoryview(data + bytes.fromhex("1000000000000004")))
    assert hello == expected and used == HELLO_SIZE
    # the layout of the document's diagram, by hand
    assert len(data) == 40 and data[:8] == b"TCPVERBS"

    def be(a: int, b: int) -> int:
        return int.from_bytes(data[a:b], "big")

    assert (be(8, 10), data[10], data[11]) == (fields["version"], fields["mode"], 0)
    assert (be(12, 16), be(16, 20)) == (fields["qp_num"], fields["dest_qp_num"])
    assert (be(20, 24), be(24, 28), be(28, 32)) == (
        fields["max_send_wr"],
        fields["max_recv_wr"],
        fields["max_msg_sz"],
    )
    assert (data[32], data[33]) == (fields["max_rd_atomic"], fields["max_dest_rd_atomic"])
    assert data[34:36] == b"\0\0" and be(36, 40) == fields["psn"]


@pytest.mark.parametrize("vec", HELLOS["invalid"], ids=_ids(HELLOS["invalid"]))
def test_invalid_hello_vector(vec: dict[str, Any]) -> None:
    data = bytes.fromhex(vec["hex"])
    assert 1 <= vec["decidable"] <= vec["at"] <= len(data)
    for cuts in splits(len(data)):
        dec = HelloDecoder()
        for a, b in pieces(len(data), cuts):
            if b < vec["at"]:
                assert dec.receive(memoryview(data)[a:b]) == (None, b - a)
                continue
            with pytest.raises(RemoteProtocolError) as info:
                dec.receive(memoryview(data)[a:b])
            assert vec["error"] in str(info.value.strerror)
            assert info.value.errno == getattr(errno, vec["errno"])
            break
        else:
            pytest.fail(f"no error for cuts {cuts}")


def test_the_magic_is_rejected_where_it_first_differs() -> None:
    for vec in HELLOS["invalid"]:
        data = bytes.fromhex(vec["hex"])
        if vec["error"] == "not a tcpverbs rc endpoint":
            assert data[: vec["at"] - 1] == MAGIC[: vec["at"] - 1]
            assert data[vec["at"] - 1] != MAGIC[vec["at"] - 1]
            assert vec["decidable"] == vec["at"]


@pytest.mark.parametrize("vec", HELLOS["check_peer"], ids=_ids(HELLOS["check_peer"]))
def test_hello_check_peer_vector(vec: dict[str, Any]) -> None:
    local = hello_of(vec["local"])
    peer = feed_hello(bytes.fromhex(vec["peer_hex"]), [])
    assert peer is not None
    if vec["error"] is None:
        local.check_peer(peer)
        return
    with pytest.raises(RemoteProtocolError) as info:
        local.check_peer(peer)
    assert vec["error"] in str(info.value.strerror)
    assert info.value.errno == getattr(errno, vec["errno"])


# -- requester.json ----------------------------------------------------------------------
_RESPONSE_OPS = frozenset(
    {
        int(WR.IBV_WR_RDMA_READ),
        int(WR.IBV_WR_ATOMIC_CMP_AND_SWP),
        int(WR.IBV_WR_ATOMIC_FETCH_AND_ADD),
    }
)


@dataclass(eq=False)
class Work:
    """The smallest work record the requester accepts (identity matters, not value)."""

    name: str
    opcode: int
    length: int
    fence: bool = False
    seq: int = -1
    needs_response: bool = False
    rnr_tries: int = 0

    @classmethod
    def make(cls, name: str, opcode: int, length: int = 8, fence: bool = False) -> Work:
        return cls(name, int(opcode), length, fence, needs_response=int(opcode) in _RESPONSE_OPS)


def names(works: Any) -> list[str]:
    return [w.name for w in works]


class Window:
    """A Requester, its RcProtocol and the send queue in front of it, as an engine holds
    them: WRs wait in order in the queue until ``may_issue``; an RNR retry puts the
    requests to send again back at its head."""

    def __init__(
        self, rd_limit: int = 16, start: dict[str, int] | None = None, impl: str = "python"
    ) -> None:
        proto_class, requester_class = REQUESTERS[impl]
        self.proto = proto_class()
        if start:
            self.proto.sent, self.proto.acked = start["sent"], start["acked"]
        self.req: Requester[Work] = requester_class(self.proto)
        self.queue: deque[Work] = deque()
        self.works: dict[str, Work] = {}
        self.rd_limit = rd_limit

    def snapshot(self) -> tuple[Any, ...]:
        p = self.proto
        return (
            [id(w) for w in self.req.inflight],
            self.req.rd_outstanding,
            (p.sent, p.acked, p.received, p.discarding, p._ack_sent),
            [id(w) for w in self.queue],
            {n: (w.seq, w.rnr_tries) for n, w in self.works.items()},
        )

    # the inputs -----------------------------------------------------------------
    def issue(self, name: str, opcode: int, length: int = 8, fence: bool = False) -> Work:
        """Issued at once if nothing waits in the queue and ``may_issue`` allows it;
        queued otherwise (queued WRs go on a :meth:`pump`)."""
        work = Work.make(name, opcode, length, fence)
        assert name not in self.works
        self.works[name] = work
        if not self.queue and self.req.may_issue(work, self.rd_limit):
            self.req.issue(work)
        else:
            self.queue.append(work)
        return work

    def pump(self) -> list[Work]:
        issued = []
        while self.queue and self.req.may_issue(self.queue[0], self.rd_limit):
            work = self.queue.popleft()
            self.req.issue(work)
            issued.append(work)
        return issued

    def rnr_nak(self, msn: int, timer: int, rnr_retry: int) -> tuple[list[Work], Any]:
        done, outcome = self.req.on_rnr_nak(msn, timer, rnr_retry)
        if isinstance(outcome, RnrRetry):
            self.queue.extendleft(reversed(outcome.resend))
        return done, outcome


_STATE_KEYS = {"inflight", "rd_outstanding", "queued"}
_RESULT_KEYS = {"issued", "msn", "completed", "answering", "retry", "exhausted", "taken", "status"}


def run_step(win: Window, step: dict[str, Any]) -> dict[str, Any]:
    (kind,) = set(step) - {"expect"}
    arg = step[kind]
    req = win.req
    if kind == "issue":
        work = win.issue(arg["id"], WR[arg["opcode"]], arg["length"], arg["fence"])
        issued = work.seq >= 0
        return {"issued": issued, **({"msn": work.seq} if issued else {})}
    if kind == "pump":
        return {"issued": [{"id": w.name, "msn": w.seq} for w in win.pump()]}
    if kind == "ack":
        return {"completed": names(req.on_ack(arg))}
    if kind in ("read_response", "atomic_response"):
        if kind == "read_response":
            done, work = req.on_read_response(arg["msn"], arg["payload_len"])
        else:
            done, work = req.on_atomic_response(arg)
        assert req.inflight[0] is work  # left at the head until response_done
        return {"completed": names(done), "answering": work.name}
    if kind == "response_done":
        work = win.works[arg]
        req.response_done(work)
        return {"completed": [work.name]}
    if kind == "rnr_nak":
        done, outcome = win.rnr_nak(arg["msn"], arg["timer"], arg["rnr_retry"])
        if isinstance(outcome, RnrRetry):
            retry = {
                "resend": names(outcome.resend),
                "resync_msn": outcome.resync_msn,
                "delay_ms": outcome.delay * 1000,
            }
            return {"completed": names(done), "retry": retry}
        return {"completed": names(done), "exhausted": outcome.name}
    if kind == "terminate":
        work = req.on_terminate(arg["msn"])
        return {
            "taken": None if work is None else work.name,
            "status": terminate_status(arg["status"]).name,
        }
    raise AssertionError(f"unknown step {kind}")


@pytest.mark.parametrize("impl", sorted(REQUESTERS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids(SCENARIOS))
def test_requester_scenario(scenario: dict[str, Any], impl: str) -> None:
    win = Window(scenario.get("rd_limit", 16), scenario.get("start"), impl)
    for i, step in enumerate(scenario["steps"]):
        expect = step["expect"]
        where = f"step {i}: {step}"
        assert set(expect) <= _STATE_KEYS | _RESULT_KEYS | {"error"}, where
        if "error" in expect:
            before = win.snapshot()
            with pytest.raises(RemoteProtocolError) as info:
                run_step(win, step)
            assert expect["error"] in str(info.value.strerror), where
            assert info.value.errno == errno.EPROTO
            assert win.snapshot() == before, f"{where} changed the window before raising"
        else:
            got = run_step(win, step)
            for key in _RESULT_KEYS & set(expect):
                if key == "retry":
                    want = dict(expect["retry"])
                    assert got["retry"]["delay_ms"] == pytest.approx(want.pop("delay_ms")), where
                    assert {k: got["retry"][k] for k in want} == want, where
                else:
                    assert got.get(key) == expect[key], f"{where}: {key} is {got.get(key)}"
            assert set(got) <= set(expect) | {"msn"}, f"{where}: unchecked result {got}"
        if "inflight" in expect:
            assert names(win.req.inflight) == expect["inflight"], where
        if "rd_outstanding" in expect:
            assert win.req.rd_outstanding == expect["rd_outstanding"], where
        if "queued" in expect:
            assert names(win.queue) == expect["queued"], where


@pytest.mark.parametrize("impl", sorted(REQUESTERS))
def test_an_ack_past_a_request_that_left_the_window_is_refused(impl: str) -> None:
    """A SEND refused beyond rnr_retry leaves the window unacknowledged: an ACK that
    covers it is the peer's error (it was a crash of the reference, found by the C
    twin's differential test)."""
    win = Window(impl=impl)
    first = win.issue("w1", WR.IBV_WR_SEND)
    win.issue("w2", WR.IBV_WR_SEND)
    done, outcome = win.rnr_nak(first.seq, 14, 0)
    assert done == [] and outcome is first
    before = win.snapshot()
    with pytest.raises(RemoteProtocolError, match="but only 1 requests are in flight"):
        win.req.on_ack(2)
    assert win.snapshot() == before


def test_scenarios_cover_the_brief() -> None:
    """Every kind of input appears, with errors, retries, exhaustion and a wrap."""
    kinds = {k for s in SCENARIOS for step in s["steps"] for k in step if k != "expect"}
    assert kinds == {
        "issue",
        "pump",
        "ack",
        "read_response",
        "atomic_response",
        "response_done",
        "rnr_nak",
        "terminate",
    }
    expects = [step["expect"] for s in SCENARIOS for step in s["steps"]]
    for key in ("error", "retry", "exhausted", "taken"):
        assert any(key in e for e in expects), key
    assert any(e.get("taken") is None for e in expects if "taken" in e)
    assert any(s.get("start", {}).get("sent", 0) > 2**32 - 4 for s in SCENARIOS)
    assert any(
        step.get("rnr_nak", {}).get("rnr_retry") == 7 for s in SCENARIOS for step in s["steps"]
    )


# -- properties of the requester ---------------------------------------------------------
_ALL_OPS = [
    WR.IBV_WR_SEND,
    WR.IBV_WR_SEND_WITH_IMM,
    WR.IBV_WR_RDMA_WRITE,
    WR.IBV_WR_RDMA_WRITE_WITH_IMM,
    WR.IBV_WR_RDMA_READ,
    WR.IBV_WR_ATOMIC_CMP_AND_SWP,
    WR.IBV_WR_ATOMIC_FETCH_AND_ADD,
]
_ATOMIC_OPS = {int(WR.IBV_WR_ATOMIC_CMP_AND_SWP), int(WR.IBV_WR_ATOMIC_FETCH_AND_ADD)}
_STEPS = [
    "issue",
    "issue",
    "issue",
    "pump",
    "pump",
    "ack",
    "ack",
    "respond",
    "respond",
    "rnr",
    "bad_ack",
    "bad_response",
    "bad_rnr",
]


class Ledger:
    """Where every work request is: queued, in flight, or returned (exactly once)."""

    def __init__(self, win: Window) -> None:
        self.win = win
        self.created: list[Work] = []
        self.returned: dict[int, str] = {}  # id -> how
        self.completed: list[Work] = []  # successful completions, in order

    def give_back(self, works: list[Work], how: str) -> None:
        for work in works:
            assert id(work) not in self.returned, f"{work.name} returned twice"
            self.returned[id(work)] = how
            if how == "completed":
                self.completed.append(work)

    def check(self, live: bool) -> None:
        win, req = self.win, self.win.req
        inflight = [id(w) for w in req.inflight]
        queued = [id(w) for w in win.queue]
        assert len(set(inflight)) == len(inflight) and len(set(queued)) == len(queued)
        for work in self.created:
            where = (id(work) in inflight) + (id(work) in queued) + (id(work) in self.returned)
            assert where == 1, f"{work.name} is in {where} places"
        # successful completions come in posting order
        assert self.completed == self.created[: len(self.completed)]
        if not live:  # after a TERMINATE or RNR exhaustion the engine flushes the rest
            return
        p = win.proto
        assert len(req.inflight) == p.sent - p.acked
        for i, work in enumerate(req.inflight):
            assert work.seq == (p.acked + 1 + i) % MSN_MOD
        assert req.rd_outstanding == sum(w.needs_response for w in req.inflight)
        assert req.rd_outstanding <= win.rd_limit
        for i, work in enumerate(req.inflight):  # a fence never passes a READ/atomic
            if work.fence:
                assert not any(w.needs_response for w in list(req.inflight)[:i])


def _answerable(req: Requester[Work]) -> int:
    """How many requests at the head of the window a plain ACK may complete."""
    for i, work in enumerate(req.inflight):
        if work.needs_response:
            return i
    return len(req.inflight)


@pytest.mark.parametrize("impl", sorted(REQUESTERS))
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_requester_never_loses_or_duplicates_a_request(data: st.DataObject, impl: str) -> None:
    """Random inputs drawn from the current state (mostly what a correct peer would send,
    some that it would not): every request is queued, in flight or returned exactly once;
    a protocol error changes nothing."""
    start = data.draw(st.sampled_from([0, 2**32 - 3, 2**32 - 1]) | st.integers(0, 2**32 - 1))
    win = Window(data.draw(st.integers(1, 3)), {"sent": start, "acked": start}, impl)
    req, proto = win.req, win.proto
    ledger = Ledger(win)
    live = True
    steps = data.draw(st.lists(st.sampled_from(_STEPS), min_size=10, max_size=80))
    if data.draw(st.booleans()):
        steps.append("terminate")  # ends the connection: only ever the last input
    for n, step in enumerate(steps):
        head = _answerable(req)
        # numbers near the window, and anything at all
        near = [w.seq for w in req.inflight] + [(proto.acked + d) % MSN_MOD for d in (-1, 0, 1)]
        any_msn = st.sampled_from(near) | st.integers(0, MSN_MOD - 1)
        before = win.snapshot()
        try:
            if step == "issue":
                op = data.draw(st.sampled_from(_ALL_OPS))
                work = win.issue(
                    f"w{n}", op, data.draw(st.integers(0, 64)), data.draw(st.booleans())
                )
                ledger.created.append(work)
            elif step == "pump":
                win.pump()
            elif step == "ack":  # a correct cumulative ACK: no READ/atomic in its range
                k = data.draw(st.integers(0, head))
                ledger.give_back(req.on_ack((proto.acked + k) % MSN_MOD), "completed")
            elif step == "bad_ack":
                ledger.give_back(req.on_ack(data.draw(any_msn)), "completed")
            elif step in ("respond", "bad_response"):
                if step == "respond":
                    if head == len(req.inflight):
                        continue
                    target = req.inflight[head]
                    msn, length = target.seq, target.length
                    atomic = target.opcode in _ATOMIC_OPS
                else:
                    msn = data.draw(any_msn)
                    length = data.draw(st.integers(0, 64))
                    atomic = data.draw(st.booleans())
                if atomic:
                    done, work = req.on_atomic_response(msn)
                else:
                    done, work = req.on_read_response(msn, length)
                ledger.give_back(done, "completed")
                assert req.inflight[0] is work
                req.response_done(work)  # the payload is in place
                ledger.give_back([work], "completed")
            elif step in ("rnr", "bad_rnr"):
                if step == "rnr":
                    refusable = [w for w in list(req.inflight)[:head] if w.opcode in NEEDS_RECEIVE]
                    if not refusable:
                        continue
                    msn = data.draw(st.sampled_from(refusable)).seq
                else:
                    msn = data.draw(any_msn)
                timer = data.draw(st.integers(0, 31))
                retries = data.draw(st.sampled_from([0, 1, 2, 7, 7, 7]))
                done, outcome = win.rnr_nak(msn, timer, retries)
                ledger.give_back(done, "completed")
                event("rnr: retry" if isinstance(outcome, RnrRetry) else "rnr: exhausted")
                if isinstance(outcome, RnrRetry):
                    assert outcome.resync_msn == msn
                    assert outcome.delay == RNR_TIMER_MS[timer] / 1000
                    assert outcome.resend and outcome.resend[0].seq == msn
                else:
                    assert outcome.seq == msn
                    ledger.give_back([outcome], "exhausted")
                    live = False
            else:  # terminate
                msn = data.draw(any_msn)
                taken = req.on_terminate(msn)
                if taken is not None:
                    assert taken.seq == msn
                    ledger.give_back([taken], "terminated")
                live = False
        except RemoteProtocolError:
            event(f"{step}: protocol error")
            assert step.startswith("bad_"), f"a correct peer's {step} was refused"
            assert win.snapshot() == before, f"{step} changed the window before raising"
        else:
            event(f"{step}: accepted")
        ledger.check(live)
        if not live:
            break
    ledger.check(live)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12), st.integers(0, 6), st.data())
def test_rnr_retry_counts_refusals(
    refusals: list[bool], rnr_retry: int, data: st.DataObject
) -> None:
    """A SEND refused r times goes again while r <= rnr_retry (for ever with 7) and is
    returned on the refusal after that; acceptance ends the story with a completion."""
    win = Window()
    work = win.issue("w", WR.IBV_WR_SEND)
    retry = data.draw(st.sampled_from([rnr_retry, 7]))
    for count, refused in enumerate(refusals, start=1):
        if not refused:
            assert win.req.on_ack(work.seq) == [work]
            return
        done, outcome = win.rnr_nak(work.seq, 14, retry)
        assert done == []
        if retry != 7 and count > retry:
            assert outcome is work and not win.req.inflight and not win.queue
            return
        assert isinstance(outcome, RnrRetry) and outcome.resend == [work]
        assert win.pump() == [work] and work.rnr_tries == count


# -- the tables --------------------------------------------------------------------------
_ACCESS_FAULTS = {
    ResponderFault.BAD_RKEY,
    ResponderFault.MR_ACCESS,
    ResponderFault.QP_ACCESS,
    ResponderFault.OUT_OF_RANGE,
    ResponderFault.MR_GONE,
}


def test_every_responder_fault_has_an_outcome() -> None:
    assert set(RESPONDER_FAULTS) == set(ResponderFault)
    for fault in _ACCESS_FAULTS:
        outcome = RESPONDER_FAULTS[fault]
        assert outcome.peer_status is W.IBV_WC_REM_ACCESS_ERR, fault
        assert outcome.errno == errno.EACCES
        assert outcome.event is ibv_event_type.IBV_EVENT_QP_ACCESS_ERR
    # docs/wire-protocol.md: a misaligned atomic and a SEND larger than the receive ->
    # REM_INV_REQ_ERR; a receive WR that failed its own checks -> REM_OP_ERR
    assert RESPONDER_FAULTS[ResponderFault.MISALIGNED].peer_status is W.IBV_WC_REM_INV_REQ_ERR
    assert RESPONDER_FAULTS[ResponderFault.RECV_TOO_SMALL].peer_status is W.IBV_WC_REM_INV_REQ_ERR
    assert RESPONDER_FAULTS[ResponderFault.RECV_BROKEN].peer_status is W.IBV_WC_REM_OP_ERR
    for fault, outcome in RESPONDER_FAULTS.items():
        # the status survives the TERMINATE's status byte and the requester's reading of it
        assert 0 < outcome.peer_status < 256
        assert terminate_status(int(outcome.peer_status)) is outcome.peer_status, fault


@pytest.mark.parametrize("status", range(256))
def test_terminate_status_is_always_an_error(status: int) -> None:
    got = terminate_status(status)
    assert got not in (W.IBV_WC_SUCCESS, W.IBV_WC_WR_FLUSH_ERR)
    if status in {int(s) for s in W} - {W.IBV_WC_SUCCESS, W.IBV_WC_WR_FLUSH_ERR}:
        assert got == status
    else:
        assert got is W.IBV_WC_REM_OP_ERR


def test_only_requests_consuming_a_receive_may_be_rnr_naked() -> None:
    # docs/wire-protocol.md: "A SEND or WRITE_IMM that finds no receive posted ..."
    assert {
        int(WR.IBV_WR_SEND),
        int(WR.IBV_WR_SEND_WITH_IMM),
        int(WR.IBV_WR_RDMA_WRITE_WITH_IMM),
    } == NEEDS_RECEIVE
