"""``ibv_create_srq``: a shared receive queue -- receive WRs that any of its QPs takes
when a message comes for it.

``SRQ(pd, SrqInitAttr(SrqAttr(max_wr, max_sge)))`` or ``SRQ(ctx, SrqInitAttrEx(...,
pd=pd, comp_mask=IBV_SRQ_INIT_ATTR_PD))``; a QP uses it when its ``QPInitAttr.srq``
names it (rc wire only: a stream QP's receives are its byte stream).  A WR a QP took is
that QP's: its completion goes to the QP's receive CQ, and if the QP fails, the WR is
flushed there (a QP in ERR takes no more, and says so with
``IBV_EVENT_QP_LAST_WQE_REACHED``).  ``modify(SrqAttr(srq_limit=n), IBV_SRQ_LIMIT)`` arms
the limit: when fewer than *n* WRs are left, ``IBV_EVENT_SRQ_LIMIT_REACHED`` names the
SRQ once, and the limit goes back to 0.  ``IBV_SRQ_MAX_WR`` resizes it.  Closing an SRQ
closes its QPs first (as pyverbs does); WRs still in it go without completions, as
``ibv_destroy_srq`` drops them.  XRC and tag-matching SRQs are not offered.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ._base import VerbsObject
from .device import MAX_SGE, MAX_SRQ_WR
from .enums import ibv_srq_attr_mask, ibv_srq_init_attr_mask, ibv_srq_type
from .errors import TcpverbsError, check_int
from .pd import PD
from .post_errors import post_error
from .wr import RecvWR

if TYPE_CHECKING:
    from .context import Context
    from .engine.api import SRQEngine

__all__ = ["SRQ", "SrqAttr", "SrqInitAttr", "SrqInitAttrEx"]


class SrqAttr:
    """``struct ibv_srq_attr``."""

    def __init__(self, max_wr: int = 100, max_sge: int = 1, srq_limit: int = 0) -> None:
        self.max_wr = max_wr
        self.max_sge = max_sge
        self.srq_limit = srq_limit

    def __repr__(self) -> str:
        return f"SrqAttr(max_wr={self.max_wr}, max_sge={self.max_sge}, srq_limit={self.srq_limit})"


class SrqInitAttr:
    """``struct ibv_srq_init_attr``: an :class:`SrqAttr` (``srq_limit`` is not used at
    creation, as in verbs)."""

    def __init__(self, attr: SrqAttr | None = None) -> None:
        self.attr = attr if attr is not None else SrqAttr()

    @property
    def max_wr(self) -> int:
        return self.attr.max_wr

    @property
    def max_sge(self) -> int:
        return self.attr.max_sge

    @property
    def srq_limit(self) -> int:
        return self.attr.srq_limit


class SrqInitAttrEx(SrqInitAttr):
    """``struct ibv_srq_init_attr_ex`` (for ``SRQ(ctx, ...)``): ``pd`` with
    ``IBV_SRQ_INIT_ATTR_PD`` in ``comp_mask``; ``srq_type`` ``IBV_SRQT_BASIC``."""

    def __init__(self, max_wr: int = 100, max_sge: int = 1, srq_limit: int = 0) -> None:
        super().__init__(SrqAttr(max_wr, max_sge, srq_limit))
        self.comp_mask = 0
        self.srq_type = ibv_srq_type.IBV_SRQT_BASIC
        self.pd: PD | None = None
        self.xrcd: object = None
        self.cq: object = None
        self.max_num_tags = 0
        self.max_ops = 0


def _check_size(what: str, max_wr: object, max_sge: object) -> tuple[int, int]:
    return (
        check_int(f"{what}: max_wr", max_wr, 1, MAX_SRQ_WR),
        check_int(f"{what}: max_sge", max_sge, 1, MAX_SGE),
    )


def _pd_of(creator: PD | Context, attr: SrqInitAttr) -> PD:
    if isinstance(creator, PD):
        return creator
    if not isinstance(attr, SrqInitAttrEx):
        raise TcpverbsError(errno.EINVAL, "Failed to create SRQ: a context takes SrqInitAttrEx")
    if attr.srq_type != ibv_srq_type.IBV_SRQT_BASIC or attr.xrcd is not None:
        raise TcpverbsError(
            errno.EOPNOTSUPP,
            f"Failed to create SRQ: type {attr.srq_type} -- a tcpverbs device has basic "
            "SRQs only (no XRC, no tag matching)",
        )
    if not attr.comp_mask & ibv_srq_init_attr_mask.IBV_SRQ_INIT_ATTR_PD or attr.pd is None:
        raise TcpverbsError(
            errno.EINVAL, "Failed to create SRQ: it needs pd (IBV_SRQ_INIT_ATTR_PD)"
        )
    if attr.pd.ctx is not creator:
        raise TcpverbsError(errno.EINVAL, "Failed to create SRQ: the PD is another context's")
    return attr.pd


class SRQ(VerbsObject):
    """``ibv_create_srq`` / ``ibv_create_srq_ex`` (module doc)."""

    def __init__(self, creator: PD | Context, attr: SrqInitAttr) -> None:
        if not isinstance(attr, SrqInitAttr):
            raise TcpverbsError(errno.EINVAL, "Failed to create SRQ: attr must be SrqInitAttr")
        pd = _pd_of(creator, attr)
        pd._check_open()
        max_wr, max_sge = _check_size("Failed to create SRQ", attr.max_wr, attr.max_sge)
        self.pd = pd
        self.ctx = pd.ctx
        self.handle = self.ctx._new_handle(self)
        self._srq: SRQEngine = self.ctx._engine.create_srq(self.handle, pd.handle, max_wr, max_sge)
        try:
            super().__init__(pd)
        except BaseException:
            self._srq.destroy()
            raise

    def post_recv(self, wr: RecvWR, bad_wr: RecvWR | None = None) -> None:
        """``ibv_post_srq_recv``: WRs for whichever of its QPs a message comes to first."""
        self._check_open()
        failure = self._srq.post_recv(wr)
        if failure is not None:
            raise post_error(failure, wr, "post_recv", bad_wr, queue="SRQ receive")

    def query(self) -> SrqAttr:
        """``ibv_query_srq``: its capacity and armed limit (0: none)."""
        self._check_open()
        return SrqAttr(self._srq.max_wr, self._srq.max_sge, self._srq.limit)

    def modify(self, attr: SrqAttr, comp_mask: int) -> None:
        """``ibv_modify_srq``: ``IBV_SRQ_MAX_WR`` resizes it -- ``max_wr`` not below the
        WRs it holds; a larger ``max_sge`` grows the SGEs a WR may have, a smaller one
        changes nothing -- and ``IBV_SRQ_LIMIT`` arms the limit event (at most
        ``max_wr``)."""
        self._check_open()
        known = ibv_srq_attr_mask.IBV_SRQ_MAX_WR | ibv_srq_attr_mask.IBV_SRQ_LIMIT
        if not isinstance(comp_mask, int) or not comp_mask or comp_mask & ~known:
            raise TcpverbsError(errno.EINVAL, f"Failed to modify SRQ: comp_mask {comp_mask!r}")
        max_wr = max_sge = limit = None
        if comp_mask & ibv_srq_attr_mask.IBV_SRQ_MAX_WR:
            # more SGEs per WR when asked (rdma-core's test_resize_srq does), never fewer:
            # SrqAttr's default max_sge of 1 leaves them as they are
            wanted = max(attr.max_sge, self._srq.max_sge) if isinstance(attr.max_sge, int) else 0
            max_wr, max_sge = _check_size("Failed to modify SRQ", attr.max_wr, wanted)
        if comp_mask & ibv_srq_attr_mask.IBV_SRQ_LIMIT:
            limit = attr.srq_limit
            top = max_wr if max_wr is not None else self._srq.max_wr
            if not isinstance(limit, int) or not 0 <= limit <= top:
                raise TcpverbsError(
                    errno.EINVAL, f"Failed to modify SRQ: srq_limit={limit!r} is outside 0..{top}"
                )
        self._srq.modify(max_wr, max_sge, limit)

    def get_srq_num(self) -> int:
        raise TcpverbsError(
            errno.EOPNOTSUPP, "Failed to retrieve SRQ number: only XRC SRQs have one"
        )

    def _release(self) -> None:
        self._srq.destroy()

    def __repr__(self) -> str:
        return f"<SRQ max_wr={self._srq.max_wr} max_sge={self._srq.max_sge}>"
