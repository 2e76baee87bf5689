"""Extended QPs: ``ibv_create_qp_ex`` with ``send_ops_flags`` and the ``ibv_wr_*`` post API,
as pyverbs has them.

``QPEx(ctx, QPInitAttrEx(..., comp_mask=PD | SEND_OPS_FLAGS, send_ops_flags=...))`` is a
:class:`~tcpverbs.qp.QP` (it connects, receives and posts as any) that also builds send
work requests one call at a time::

    qp.wr_start()
    qp.wr_id, qp.wr_flags = 7, IBV_SEND_SIGNALED
    qp.wr_rdma_write(rkey, remote_addr)        # a new WR, with wr_id and wr_flags
    qp.wr_set_sge(SGE(mr.buf, 64, mr.lkey))    # ... its data
    qp.wr_complete()                           # post the batch (wr_abort: drop it)

``send_ops_flags`` names the operations the QP will build; a tcpverbs QP builds SEND (with
immediate), RDMA WRITE (with immediate), RDMA READ and the two atomics.  Memory windows,
invalidation, TSO, FLUSH and ATOMIC_WRITE are ``EOPNOTSUPP``, and so are the UD and XRC
addressing calls.  Immediate data is given in host order and sent in network order, as
pyverbs does.  ``wr_complete`` posts like ``post_send``: a refused WR raises
:class:`~tcpverbs.errors.PostError` naming it, and the WRs before it are posted.
"""

from __future__ import annotations

import errno
import itertools
import sys
from typing import TYPE_CHECKING, NoReturn

from .enums import ibv_qp_create_send_ops_flags, ibv_qp_init_attr_mask, ibv_wr_opcode
from .errors import TcpverbsError
from .qp import QP, SUPPORTED_SEND_OPS, check_send_ops
from .wr import SGE, SendWR

if TYPE_CHECKING:
    from .context import Context
    from .qp_attr import QPAttr, QPInitAttrEx

__all__ = ["SUPPORTED_SEND_OPS", "QPEx"]

F = ibv_qp_create_send_ops_flags
OP = ibv_wr_opcode


def _htonl(value: int) -> int:
    """A 32-bit immediate in network byte order (as ``htonl``)."""
    try:
        return int.from_bytes(value.to_bytes(4, "big"), sys.byteorder)
    except (OverflowError, AttributeError):
        raise TcpverbsError(errno.EINVAL, f"imm_data must be a 32-bit int, got {value!r}") from None


def _not_offered(what: str) -> NoReturn:
    raise TcpverbsError(errno.EOPNOTSUPP, f"{what}: a tcpverbs QP does not offer it")


class QPEx(QP):
    """``ibv_create_qp_ex`` with the ``ibv_wr_*`` post API (the module says how)."""

    def __init__(
        self, ctx: Context, init_attr: QPInitAttrEx, qp_attr: QPAttr | None = None
    ) -> None:
        if not init_attr.comp_mask & ibv_qp_init_attr_mask.IBV_QP_INIT_ATTR_SEND_OPS_FLAGS:
            raise TcpverbsError(
                errno.EINVAL,
                "Failed to create QPEx: comp_mask lacks IBV_QP_INIT_ATTR_SEND_OPS_FLAGS",
            )
        ops = check_send_ops(init_attr.send_ops_flags)
        super().__init__(ctx, init_attr, qp_attr)
        self.send_ops_flags = ops
        self.ind_table = None  # pyverbs: the RSS indirection table (RSS QPs are refused)
        self.wr_id = 0
        self.wr_flags = 0
        self._batch: list[SendWR] | None = None

    # -- the batch ---------------------------------------------------------------------
    def wr_start(self) -> None:
        """``ibv_wr_start``: begin a batch (one left open is dropped)."""
        self._check_open()
        self._batch = []

    def wr_complete(self) -> None:
        """``ibv_wr_complete``: post the batch's WRs, in order, in one call."""
        batch = self._open_batch()
        self._batch = None
        if not batch:
            return
        for wr, after in itertools.pairwise(batch):
            wr.next_wr = after
        self.post_send(batch[0])

    def wr_abort(self) -> None:
        """``ibv_wr_abort``: drop the batch; nothing of it was posted."""
        self._batch = None

    def _open_batch(self) -> list[SendWR]:
        self._check_open()
        if self._batch is None:
            raise TcpverbsError(errno.EINVAL, "no batch of work requests: call wr_start first")
        return self._batch

    def _new(
        self,
        op: OP,
        needs: F,
        *,
        rkey: int = 0,
        remote_addr: int = 0,
        imm_data: int = 0,
        compare_add: int = 0,
        swap: int = 0,
    ) -> None:
        batch = self._open_batch()
        if not self.send_ops_flags & needs:
            raise TcpverbsError(
                errno.EINVAL, f"{op.name}: the QP was not created with {needs.name}"
            )
        wr = SendWR(self.wr_id, op, 0, imm_data, [], self.wr_flags, None, remote_addr, rkey)
        wr.compare_add, wr.swap = compare_add, swap
        batch.append(wr)

    def _last(self) -> SendWR:
        batch = self._open_batch()
        if not batch:
            raise TcpverbsError(errno.EINVAL, "no work request to attach data to")
        return batch[-1]

    # -- operations: each starts a new WR ----------------------------------------------
    def wr_send(self) -> None:
        self._new(OP.IBV_WR_SEND, F.IBV_QP_EX_WITH_SEND)

    def wr_send_imm(self, imm_data: int) -> None:
        self._new(
            OP.IBV_WR_SEND_WITH_IMM, F.IBV_QP_EX_WITH_SEND_WITH_IMM, imm_data=_htonl(imm_data)
        )

    def wr_rdma_write(self, rkey: int, remote_addr: int) -> None:
        self._new(
            OP.IBV_WR_RDMA_WRITE, F.IBV_QP_EX_WITH_RDMA_WRITE, rkey=rkey, remote_addr=remote_addr
        )

    def wr_rdma_write_imm(self, rkey: int, remote_addr: int, imm_data: int) -> None:
        self._new(
            OP.IBV_WR_RDMA_WRITE_WITH_IMM,
            F.IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM,
            rkey=rkey,
            remote_addr=remote_addr,
            imm_data=_htonl(imm_data),
        )

    def wr_rdma_read(self, rkey: int, remote_addr: int) -> None:
        self._new(
            OP.IBV_WR_RDMA_READ, F.IBV_QP_EX_WITH_RDMA_READ, rkey=rkey, remote_addr=remote_addr
        )

    def wr_atomic_cmp_swp(self, rkey: int, remote_addr: int, compare: int, swap: int) -> None:
        self._new(
            OP.IBV_WR_ATOMIC_CMP_AND_SWP,
            F.IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP,
            rkey=rkey,
            remote_addr=remote_addr,
            compare_add=compare,
            swap=swap,
        )

    def wr_atomic_fetch_add(self, rkey: int, remote_addr: int, add: int) -> None:
        self._new(
            OP.IBV_WR_ATOMIC_FETCH_AND_ADD,
            F.IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD,
            rkey=rkey,
            remote_addr=remote_addr,
            compare_add=add,
        )

    def wr_bind_mw(self, mw: object, rkey: int, bind_info: object) -> None:
        _not_offered("wr_bind_mw (memory windows)")

    def wr_local_inv(self, invalidate_rkey: int) -> None:
        _not_offered("wr_local_inv (memory windows)")

    def wr_send_inv(self, invalidate_rkey: int) -> None:
        _not_offered("wr_send_inv (memory windows)")

    def wr_send_tso(self, hdr: object, hdr_sz: int, mss: int) -> None:
        _not_offered("wr_send_tso (segmentation offload)")

    def wr_atomic_write(self, rkey: int, remote_addr: int, atomic_wr: object) -> None:
        _not_offered("wr_atomic_write")

    def wr_flush(self, *args: object) -> None:
        _not_offered("wr_flush")

    # -- the last WR's data and addressing ------------------------------------------------
    def wr_set_sge(self, sge: SGE) -> None:
        """``ibv_wr_set_sge``: the last WR's data is *sge*."""
        self.wr_set_sge_list([sge])

    def wr_set_sge_list(self, sg_list: list[SGE]) -> None:
        """``ibv_wr_set_sge_list``: the last WR's data is *sg_list*."""
        wr = self._last()
        wr.sg = list(sg_list)
        wr.num_sge = len(wr.sg)

    def wr_set_ud_addr(self, ah: object, remote_qpn: int, remote_qkey: int) -> None:
        """``ibv_wr_set_ud_addr``: the last WR goes to UD QP *remote_qpn* by *ah*."""
        self._last().set_wr_ud(ah, remote_qpn, remote_qkey)

    def wr_set_xrc_srqn(self, remote_srqn: int) -> None:
        _not_offered("wr_set_xrc_srqn (XRC)")
