"""``tcpverbs.WC``'s twins: the pure dataclass (``tcpverbs.cq.PyWC``) and the compiled one
(``tcpverbs._native.WC``, ``tcpverbs.WC`` where the extension is built).

The compiled twin must behave as the pure one does -- constructor, attributes, ``==``,
no hash, repr, str, ``__match_args__``, copy and pickle -- except where it is documented
to differ, as pyverbs' WC does: a field holds an int from 0 to 2**64 - 1.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tcpverbs as v
from tcpverbs.cq import PyWC
from tcpverbs.engine import available_engines
from tcpverbs.testing import poll_until, qp_pair

pytestmark = pytest.mark.skipif(
    "native" not in available_engines(), reason="the native extension is not built"
)
from tcpverbs import _native  # noqa: E402  (after the skip: absent without the extension)

CWC: Any = _native.WC
FIELDS = PyWC.__match_args__
U64 = st.integers(min_value=0, max_value=2**64 - 1)


def outcome(make: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        wc = make(*args, **kwargs)
    except Exception as exc:  # compared by kind
        return "raised", type(exc).__name__
    return "made", tuple(getattr(wc, f) for f in FIELDS)


def described(wc: Any) -> tuple[str, str]:
    try:
        return "str", str(wc)
    except ValueError:  # a status ibv_wc_status does not name: both refuse alike
        return "raised", "ValueError"


def test_tcpverbs_wc_is_the_compiled_twin() -> None:
    assert v.WC is CWC
    assert v.WC.__module__ == "tcpverbs" and v.WC.__name__ == "WC"


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),
        ((7,), {}),
        (tuple(range(1, 14)), {}),
        (tuple(range(14)), {}),  # one too many
        ((), {"byte_len": 64, "opcode": 128}),
        ((1,), {"wr_id": 2}),  # given twice
        ((), {"bogus": 1}),
    ],
)
def test_the_constructors_agree(args: tuple[int, ...], kwargs: dict[str, int]) -> None:
    assert outcome(CWC, *args, **kwargs) == outcome(PyWC, *args, **kwargs)


@given(st.tuples(*[U64] * 13))
def test_fields_repr_str_and_equality_agree(values: tuple[int, ...]) -> None:
    py, c = PyWC(*values), CWC(*values)
    assert tuple(getattr(c, f) for f in FIELDS) == values
    assert repr(c) == repr(py)
    assert described(c) == described(py)
    assert c == CWC(*values) and py == PyWC(*values)
    assert c != CWC(*values[:-1], values[-1] ^ 1)
    assert c != py and py != c  # each compares its own class only, as a dataclass does


@given(st.sampled_from(FIELDS), U64)
def test_setting_a_field(field: str, value: int) -> None:
    c, py = CWC(), PyWC()
    setattr(c, field, value)
    setattr(py, field, value)
    assert getattr(c, field) == getattr(py, field) == value
    assert repr(c) == repr(PyWC(**{f: getattr(c, f) for f in FIELDS}))


def test_neither_is_hashable_and_both_match() -> None:
    for twin in (CWC, PyWC):
        wc = twin(5, 0, 128, byte_len=8)
        with pytest.raises(TypeError):
            hash(wc)
        match wc:
            case twin(wr_id, status, opcode):  # type: ignore[misc]
                assert (wr_id, status, opcode) == (5, 0, 128)
            case _:
                pytest.fail("no match")
    assert CWC.__match_args__ == PyWC.__match_args__


def test_copy_and_pickle() -> None:
    wc = CWC(*range(1, 14))
    assert copy.copy(wc) == wc and copy.deepcopy(wc) == wc
    assert pickle.loads(pickle.dumps(wc)) == wc
    assert pickle.loads(pickle.dumps(wc)) is not wc


@pytest.mark.parametrize(
    "value, error",
    [(-1, OverflowError), (2**64, OverflowError), ("1", TypeError), (1.0, TypeError)],
)
def test_the_compiled_twin_holds_c_integers(value: object, error: type[Exception]) -> None:
    """Where the twins differ, as documented: pyverbs' WC is a struct ibv_wc too."""
    with pytest.raises(error):
        CWC(value)
    wc = CWC()
    with pytest.raises(error):
        wc.byte_len = value  # type: ignore[assignment]
    with pytest.raises((TypeError, AttributeError)):
        del wc.byte_len


@pytest.mark.parametrize("engine", available_engines())
def test_both_engines_complete_into_the_compiled_twin(engine: str) -> None:
    with v.Context(name="tcpv_lo", engine=engine) as ctx:
        a, b = qp_pair(ctx, "rc")
        mr = v.MR(a.pd, 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        rmr = v.MR(b.pd, 64, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        b.qp.post_recv(v.RecvWR(11, 1, [v.SGE(rmr.buf, 64, rmr.lkey)]))
        a.qp.post_send(v.SendWR(12, v.ibv_wr_opcode.IBV_WR_SEND, 1, 0, [v.SGE(mr.buf, 8, mr.lkey)]))
        (wc,) = poll_until(b.rcq)
        assert type(wc) is CWC
        assert (wc.wr_id, wc.status, wc.byte_len, wc.qp_num) == (11, 0, 8, b.qp.qp_num)
        assert "IBV_WC_RECV" in str(wc)
        (sent,) = a.scq.wait(1, timeout=10, spin_us=0)  # wait builds them as poll does
        assert type(sent) is CWC
        assert (sent.wr_id, sent.status, sent.opcode) == (12, 0, v.ibv_wc_opcode.IBV_WC_SEND)
