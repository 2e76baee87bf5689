"""Extended completion queues: ``ibv_create_cq_ex`` and its poll API, as pyverbs has them.

``CQEX(ctx, CqInitAttrEx(cqe, wc_flags=...))`` is a :class:`~tcpverbs.cq.CQ` (QPs take
it as their send or receive CQ; ``req_notify`` and channels work as for any CQ) that is
polled one completion at a time, without a WC object per completion handed out::

    if cq.start_poll(PollCqAttr()) == 0:        # ENOENT (2) when there is none
        try:
            while True:
                handle(cq.wr_id, cq.status, cq.read_opcode(), cq.read_byte_len())
                if cq.poll_next() != 0:         # ENOENT: that was the last
                    break
        finally:
            cq.end_poll()

The fields a tcpverbs completion has are the standard ones (``IBV_WC_STANDARD_FLAGS``:
byte length, immediate, QP number, source QP, SLID, SL, DLID path bits); completion
timestamps, CVLAN, flow tags and tag-matching info are refused (``EOPNOTSUPP``), as is
``IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN`` (an overrun is never silent here) and a parent
domain.  ``IBV_CREATE_CQ_ATTR_SINGLE_THREADED`` is a hint tcpverbs may ignore.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cq import CQ, WC, CompChannel
from .enums import ibv_cq_init_attr_mask, ibv_create_cq_attr_flags, ibv_create_cq_wc_flags
from .errors import TcpverbsError, check_flags

if TYPE_CHECKING:
    from .context import Context

__all__ = ["CQEX", "STANDARD_WC_FLAGS", "CqInitAttrEx", "PollCqAttr"]

_W = ibv_create_cq_wc_flags
STANDARD_WC_FLAGS = (
    _W.IBV_WC_EX_WITH_BYTE_LEN
    | _W.IBV_WC_EX_WITH_IMM
    | _W.IBV_WC_EX_WITH_QP_NUM
    | _W.IBV_WC_EX_WITH_SRC_QP
    | _W.IBV_WC_EX_WITH_SLID
    | _W.IBV_WC_EX_WITH_SL
    | _W.IBV_WC_EX_WITH_DLID_PATH_BITS
)
_ENOENT = errno.ENOENT


@dataclass(slots=True)
class CqInitAttrEx:
    """``struct ibv_cq_init_attr_ex``."""

    cqe: int = 100
    cq_context: object = None
    channel: CompChannel | None = None
    comp_vector: int = 0
    wc_flags: int = 0
    comp_mask: int = 0
    flags: int = 0
    parent_domain: object = None


@dataclass(slots=True)
class PollCqAttr:
    """``struct ibv_poll_cq_attr`` (its ``comp_mask`` must be 0)."""

    comp_mask: int = 0


def _check(attr: CqInitAttrEx) -> None:
    """Refuse what tcpverbs' completions cannot carry or promise."""
    if not isinstance(attr, CqInitAttrEx):
        raise TcpverbsError(errno.EINVAL, f"CQEX takes a CqInitAttrEx, got {attr!r}")
    check_flags(
        attr.wc_flags,
        ibv_create_cq_wc_flags,
        STANDARD_WC_FLAGS,
        "Failed to create extended CQ: wc_flags {value!r}",
        "Failed to create extended CQ: a tcpverbs completion has no {names}",
    )
    mask = attr.comp_mask
    known = int(ibv_cq_init_attr_mask.IBV_CQ_INIT_ATTR_MASK_FLAGS) | int(
        ibv_cq_init_attr_mask.IBV_CQ_INIT_ATTR_MASK_PD
    )
    if not isinstance(mask, int) or mask & ~known:
        raise TcpverbsError(errno.EINVAL, f"Failed to create extended CQ: comp_mask {mask!r}")
    if mask & ibv_cq_init_attr_mask.IBV_CQ_INIT_ATTR_MASK_PD:
        raise TcpverbsError(
            errno.EOPNOTSUPP,
            "Failed to create extended CQ: a tcpverbs device has no parent domains",
        )
    if mask & ibv_cq_init_attr_mask.IBV_CQ_INIT_ATTR_MASK_FLAGS:
        cq_flags = attr.flags
        single = int(ibv_create_cq_attr_flags.IBV_CREATE_CQ_ATTR_SINGLE_THREADED)
        overrun = int(ibv_create_cq_attr_flags.IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN)
        if not isinstance(cq_flags, int) or cq_flags & ~(single | overrun):
            raise TcpverbsError(errno.EINVAL, f"Failed to create extended CQ: flags {cq_flags!r}")
        if cq_flags & overrun:
            raise TcpverbsError(
                errno.EOPNOTSUPP,
                "Failed to create extended CQ: a tcpverbs CQ reports every overrun "
                "(IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN)",
            )


class CQEX(CQ):
    """``ibv_create_cq_ex``: ``CQEX(ctx, CqInitAttrEx(...))``, polled with
    :meth:`start_poll` / :meth:`poll_next` / :meth:`end_poll` (the module says how)."""

    def __init__(self, ctx: Context, init_attr: CqInitAttrEx) -> None:
        _check(init_attr)
        super().__init__(
            ctx,
            init_attr.cqe,
            init_attr.cq_context,
            init_attr.channel,
            init_attr.comp_vector,
        )
        self.wc_flags = int(init_attr.wc_flags)
        self._current: WC | None = None

    # -- the poll session ------------------------------------------------------------
    def start_poll(self, attr: PollCqAttr | None = None) -> int:
        """``ibv_start_poll``: 0 with the oldest completion made current, ``ENOENT`` (2)
        when there is none (then no session is open)."""
        if attr is not None and attr.comp_mask:
            raise TcpverbsError(errno.EINVAL, f"start_poll: comp_mask {attr.comp_mask!r}")
        return self._next()

    def poll_next(self) -> int:
        """``ibv_next_poll``: 0 with the next completion made current, ``ENOENT`` (2)."""
        return self._next()

    def end_poll(self) -> None:
        """``ibv_end_poll``: the session is over (harmless without one)."""
        self._current = None

    def _next(self) -> int:
        n, wcs = self.poll(1)
        self._current = wcs[0] if n else None
        return 0 if n else _ENOENT

    def _wc(self) -> WC:
        if self._current is None:
            raise TcpverbsError(errno.EINVAL, "no current completion (start_poll first)")
        return self._current

    # -- the current completion ------------------------------------------------------
    @property
    def wr_id(self) -> int:
        return self._wc().wr_id

    @property
    def status(self) -> int:
        return self._wc().status

    def read_opcode(self) -> int:
        return self._wc().opcode

    def read_vendor_err(self) -> int:
        return self._wc().vendor_err

    def read_byte_len(self) -> int:
        return self._wc().byte_len

    def read_imm_data(self) -> int:
        return self._wc().imm_data

    def read_qp_num(self) -> int:
        return self._wc().qp_num

    def read_src_qp(self) -> int:
        return self._wc().src_qp

    def read_wc_flags(self) -> int:
        return self._wc().wc_flags

    def read_slid(self) -> int:
        return self._wc().slid

    def read_sl(self) -> int:
        return self._wc().sl

    def read_dlid_path_bits(self) -> int:
        return self._wc().dlid_path_bits
