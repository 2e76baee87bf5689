"""The C UD datagram codec (``tcpverbs._native``) against its Python reference
(:mod:`tcpverbs.wire.ud`): the golden vectors, and hypothesis feeding both the same bytes
-- datagrams, damaged ones and noise -- which must give the same header or the same
error.  The coverage-guided fuzzer under ASan and UBSan is ``fuzz/ud_fuzz.c``
(``scripts/fuzz.sh``, run for a while by ``tests/test_native_frames.py``)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpverbs.errors import RemoteProtocolError
from tcpverbs.wire.frames import Opcode
from tcpverbs.wire.ud import UDHeader, build_grh, decode_ud, encode_ud

native = pytest.importorskip("tcpverbs._native", reason="the native extension is not built")

GOLDEN = json.loads((Path(__file__).parent / "golden" / "ud.json").read_text())


def c_decode(data: bytes) -> UDHeader | str:
    """The C decoder's answer: the header, or its error message."""
    try:
        opcode, dest, src, qkey, imm, flags = native.decode_ud(data)
    except RemoteProtocolError as exc:
        return str(exc.strerror)
    return UDHeader(Opcode(opcode), dest, src, qkey, imm, flags)


def py_decode(data: bytes) -> UDHeader | str:
    try:
        return decode_ud(data)
    except RemoteProtocolError as exc:
        return str(exc.strerror)


@pytest.mark.parametrize("vector", GOLDEN["valid"] + GOLDEN["invalid"], ids=lambda v: v["name"])
def test_golden_datagrams_in_c(vector: dict[str, str]) -> None:
    data = bytes.fromhex(vector["hex"])
    got = c_decode(data)
    if "error" in vector:
        assert isinstance(got, str) and vector["error"] in got
    else:
        assert got == py_decode(data)
        h = decode_ud(data)
        assert (
            native.encode_ud(h.opcode, h.dest_qpn, h.src_qpn, h.qkey, h.imm, h.flags) == data[:24]
        )


@pytest.mark.parametrize("vector", GOLDEN["grh"], ids=lambda v: v["name"])
def test_golden_grh_in_c(vector: dict[str, object]) -> None:
    def raw(text: object) -> bytes:
        addr = ipaddress.ip_address(str(text))
        if isinstance(addr, ipaddress.IPv4Address):
            return bytes(10) + b"\xff\xff" + addr.packed
        return addr.packed

    grh = native.ud_grh(raw(vector["src"]), raw(vector["dst"]), int(str(vector["datagram_len"])))
    assert grh.hex() == vector["hex"]


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """Well-formed headers, then maybe damaged: a byte changed, cut short, or noise."""
    op = draw(st.sampled_from([Opcode.SEND, Opcode.SEND_IMM]))
    header = UDHeader(
        op,
        draw(st.integers(0, 2**24 - 1)),
        draw(st.integers(0, 2**24 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)) if op is Opcode.SEND_IMM else 0,
        draw(st.sampled_from([0, 1])),
    )
    data = bytearray(encode_ud(header) + draw(st.binary(max_size=16)))
    damage = draw(st.sampled_from(["none", "byte", "cut", "noise"]))
    if damage == "byte":
        data[draw(st.integers(0, 23))] = draw(st.integers(0, 255))
    elif damage == "cut":
        del data[draw(st.integers(0, 23)) :]
    elif damage == "noise":
        return draw(st.binary(max_size=40))
    return bytes(data)


@given(datagrams())
def test_the_c_decoder_agrees_with_python(data: bytes) -> None:
    assert c_decode(data) == py_decode(data)


@given(
    st.ip_addresses().map(
        lambda a: a.packed if a.version == 6 else b"\0" * 10 + b"\xff\xff" + a.packed
    ),
    st.ip_addresses().map(
        lambda a: a.packed if a.version == 6 else b"\0" * 10 + b"\xff\xff" + a.packed
    ),
    st.integers(0, 2**32 - 1),
)
def test_the_c_grh_agrees_with_python(src: bytes, dst: bytes, length: int) -> None:
    expected = build_grh(ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst), length)
    assert native.ud_grh(src, dst, length) == expected


def test_the_c_encoder_refuses_what_python_refuses() -> None:
    for args in ((3, 256, 256, 0, 0, 0), (1, 256, 256, 0, 1, 0), (1, 1 << 24, 0, 0, 0, 0)):
        with pytest.raises(ValueError, match="not a header"):
            native.encode_ud(*args)
