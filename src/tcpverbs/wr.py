"""Work requests and scatter/gather elements.

``struct ibv_send_wr``, ``ibv_recv_wr`` and ``ibv_sge``, as in pyverbs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .enums import ibv_send_flags, ibv_wr_opcode

__all__ = ["SGE", "RecvWR", "SendWR"]


@dataclass(slots=True)
class SGE:
    """One piece of registered memory: absolute ``addr`` inside the MR named by ``lkey``."""

    addr: int
    length: int
    lkey: int


@dataclass(slots=True)
class SendWR:
    """``ibv_send_wr``.  ``next_wr`` chains several WRs into one ``post_send`` call."""

    wr_id: int = 0
    opcode: int = ibv_wr_opcode.IBV_WR_SEND
    num_sge: int = 0
    imm_data: int = 0
    sg: list[SGE] | None = None
    send_flags: int = ibv_send_flags.IBV_SEND_SIGNALED
    next_wr: SendWR | None = None
    remote_addr: int = 0
    rkey: int = 0
    compare_add: int = 0
    swap: int = 0
    ah: object = None  # UD: the AH of the destination (wr.wr.ud)
    remote_qpn: int = 0
    remote_qkey: int = 0

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        """Target of an RDMA WRITE / READ (``wr.wr.rdma``)."""
        self.rkey, self.remote_addr = rkey, addr

    def set_wr_atomic(self, rkey: int, addr: int, compare_add: int, swap: int = 0) -> None:
        """Target and operands of an atomic (``wr.wr.atomic``)."""
        self.rkey, self.remote_addr = rkey, addr
        self.compare_add, self.swap = compare_add, swap

    def set_wr_ud(self, ah: object, rqpn: int, rqkey: int) -> None:
        """Destination of a SEND on a UD QP (``wr.wr.ud``): an :class:`~tcpverbs.AH`, the
        remote QP number and its Q_Key (one with bit 31 set means the sending QP's own)."""
        self.ah, self.remote_qpn, self.remote_qkey = ah, rqpn, rqkey

    @property
    def sg_list(self) -> list[SGE]:
        return self.sg or []

    def chain(self) -> Iterator[SendWR]:
        wr: SendWR | None = self
        while wr is not None:
            yield wr
            wr = wr.next_wr


@dataclass(slots=True)
class RecvWR:
    """``ibv_recv_wr``: where an incoming message may land."""

    wr_id: int = 0
    num_sge: int = 0
    sg: list[SGE] | None = field(default=None)
    next_wr: RecvWR | None = None

    @property
    def sg_list(self) -> list[SGE]:
        return self.sg or []

    def chain(self) -> Iterator[RecvWR]:
        wr: RecvWR | None = self
        while wr is not None:
            yield wr
            wr = wr.next_wr
