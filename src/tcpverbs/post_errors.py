"""Putting a refused WR into words: the ``PostError`` of ``post_send`` / ``post_recv`` on
a QP or an SRQ, from the engine's :class:`~tcpverbs.engine.api.PostFailure`."""

from __future__ import annotations

import errno
import re

from .engine.api import PostFailure, PostFault
from .enums import ibv_qp_state, ibv_wr_opcode
from .errors import PostError, TcpverbsError
from .wr import RecvWR, SendWR

__all__ = ["post_error"]

S = ibv_qp_state


def post_error(
    failure: PostFailure,
    first: SendWR | RecvWR,
    verb: str,
    bad_wr: SendWR | RecvWR | None = None,
    *,
    wire: str | None = None,
    setup_error: TcpverbsError | None = None,
    queue: str | None = None,
) -> PostError:
    """The one place where a refused WR is put into words (and copied to *bad_wr*): of a
    QP (its *wire* and the *setup_error* its engine reports), or of an SRQ (no wire;
    *queue* names it)."""
    index, fault, value, limit = failure.index, failure.fault, failure.value, failure.limit
    wr: SendWR | RecvWR = first
    for _ in range(index):
        assert wr.next_wr is not None
        wr = wr.next_wr
    queue = queue or ("send" if verb == "post_send" else "receive")
    err = errno.EINVAL
    if fault is PostFault.SETUP_FAILED:
        cause = setup_error
        err = cause.error_code if cause is not None else errno.EIO
        why = f"connection set-up failed: {cause.strerror if cause is not None else '?'}"
    elif fault is PostFault.BAD_STATE:
        why = f"{verb} on a QP in {S(value).name}"
    elif fault is PostFault.BAD_OPCODE:
        if wire != "stream":
            err = errno.EOPNOTSUPP
        why = f"opcode {_opname(value)} is not supported on a {wire} QP"
    elif fault is PostFault.TOO_MANY_SGE:
        why = f"num_sge {value} exceeds the {'QP' if wire else 'SRQ'}'s max SGE {limit}"
    elif fault is PostFault.SGE_COUNT:
        why = f"num_sge {value} but {limit} SGEs given"
    elif fault is PostFault.INLINE_TOO_LONG:
        why = f"inline send of {value} bytes exceeds max_inline_data {limit}"
    elif fault is PostFault.NOT_INLINABLE:
        why = f"{_opname(value)} cannot be inline"
    elif fault is PostFault.ATOMIC_SHAPE:
        why = f"atomics take one 8-byte local SGE, got {value} SGEs of {limit} bytes"
    elif fault is PostFault.BAD_FIELD:
        why = _bad_field_words(wr, failure.field, limit, verb)
    else:  # QUEUE_FULL
        err = errno.ENOMEM
        why = f"{queue} queue full ({limit} WRs outstanding; poll the CQ)"
    if bad_wr is not None and type(bad_wr) is type(wr):  # pyverbs' out-parameter
        for name in type(wr).__slots__:
            setattr(bad_wr, name, getattr(wr, name))
    return PostError(err, f"Failed to post {queue}: {why}", wr, index)


def _bad_field_words(wr: object, path: str, bits: int, verb: str) -> str:
    """Say what is wrong with the field at *path* (``"sg_list[1].length"``) of *wr*."""
    kind = "SendWR" if verb == "post_send" else "RecvWR"
    if not isinstance(wr, SendWR | RecvWR):
        return f"{verb} takes a {kind}, got {type(wr).__name__}"
    value: object = wr
    for part in re.findall(r"\w+|\[\d+\]", path):
        if part.startswith("["):
            value = value[int(part[1:-1])]  # type: ignore[index]
        else:
            value = getattr(value, "sg" if part == "sg_list" else part, None)
    if bits == 0:
        wanted = "a list of SGE" if path == "sg_list" else "an SGE"
        return f"{path} must be {wanted}, got {type(value).__name__} {value!r}"
    return f"{path} must be an int in 0..2^{bits}-1, got {type(value).__name__} {value!r}"


def _opname(opcode: int) -> str:
    try:
        return ibv_wr_opcode(opcode).name
    except ValueError:
        return str(opcode)
