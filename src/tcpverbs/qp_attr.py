"""Queue pair attribute holders.

``ibv_qp_cap``, ``ibv_qp_init_attr`` (and ``_ex``), ``ibv_qp_attr`` and ``ibv_ah_attr``, as in
pyverbs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .enums import ibv_mtu, ibv_qp_state, ibv_qp_type

if TYPE_CHECKING:
    import socket

    from .cq import CQ
    from .device import GID
    from .pd import PD
    from .srq import SRQ

__all__ = ["AHAttr", "GlobalRoute", "QPAttr", "QPCap", "QPInitAttr", "QPInitAttrEx", "WireName"]

WireName = Literal["rc", "stream"]


@dataclass(slots=True)
class QPCap:
    max_send_wr: int = 1
    max_recv_wr: int = 10
    max_send_sge: int = 1
    max_recv_sge: int = 1
    max_inline_data: int = 0


class _CapField:
    """An attribute of the init attributes that is their ``cap``'s, by the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, attr: _CapsByName, owner: type | None = None) -> int:
        return int(getattr(attr.cap, self.name))

    def __set__(self, attr: _CapsByName, value: int) -> None:
        setattr(attr.cap, self.name, value)


class _CapsByName:
    """pyverbs reads and sets the capabilities on the init attributes themselves."""

    __slots__ = ()
    cap: QPCap
    max_send_wr = _CapField()
    max_recv_wr = _CapField()
    max_send_sge = _CapField()
    max_recv_sge = _CapField()
    max_inline_data = _CapField()


@dataclass(slots=True)
class QPInitAttr(_CapsByName):
    """``ibv_qp_init_attr`` plus ``wire``: ``"rc"`` (framed, default) or ``"stream"``."""

    qp_type: int = ibv_qp_type.IBV_QPT_RC
    qp_context: object = None
    scq: CQ | None = None
    rcq: CQ | None = None
    srq: SRQ | None = None
    cap: QPCap = field(default_factory=QPCap)
    sq_sig_all: int = 1
    wire: WireName = "rc"


@dataclass(slots=True)
class QPInitAttrEx(_CapsByName):
    """``ibv_qp_init_attr_ex``, for ``QP(ctx, QPInitAttrEx(...))`` (``ibv_create_qp_ex``).

    ``comp_mask`` says which of the extended fields count; a tcpverbs QP needs
    ``IBV_QP_INIT_ATTR_PD`` and *pd* (the context creates the QP, the PD owns it).
    ``scq`` / ``rcq`` are also spelled ``send_cq`` / ``recv_cq``, as pyverbs does.
    """

    qp_type: int = ibv_qp_type.IBV_QPT_RC
    qp_context: object = None
    pd: PD | None = None
    xrcd: object = None
    scq: CQ | None = None
    rcq: CQ | None = None
    srq: SRQ | None = None
    cap: QPCap = field(default_factory=QPCap)
    sq_sig_all: int = 0
    comp_mask: int = 0
    create_flags: int = 0
    max_tso_header: int = 0
    source_qpn: int = 0
    hash_conf: object = None
    ind_table: object = None
    send_ops_flags: int = 0
    wire: WireName = "rc"

    @property
    def send_cq(self) -> CQ | None:
        return self.scq

    @send_cq.setter
    def send_cq(self, cq: CQ | None) -> None:
        self.scq = cq

    @property
    def recv_cq(self) -> CQ | None:
        return self.rcq

    @recv_cq.setter
    def recv_cq(self, cq: CQ | None) -> None:
        self.rcq = cq


@dataclass(slots=True)
class GlobalRoute:
    dgid: GID | None = None
    flow_label: int = 0
    sgid_index: int = 0
    hop_limit: int = 1
    traffic_class: int = 0


@dataclass(slots=True)
class AHAttr:
    gr: GlobalRoute | None = None
    is_global: int = 0
    dlid: int = 0
    sl: int = 0
    src_path_bits: int = 0
    static_rate: int = 0
    port_num: int = 1


@dataclass(slots=True)
class QPAttr:
    """``ibv_qp_attr`` plus ``sock``: the connected TCP socket handed over in INIT→RTR."""

    qp_state: int = ibv_qp_state.IBV_QPS_INIT
    cur_qp_state: int = ibv_qp_state.IBV_QPS_RESET
    path_mtu: int = ibv_mtu.IBV_MTU_1024
    path_mig_state: int = 0
    qkey: int = 0
    rq_psn: int = 0
    sq_psn: int = 0
    dest_qp_num: int = 0
    qp_access_flags: int = 0
    cap: QPCap = field(default_factory=QPCap)
    ah_attr: AHAttr = field(default_factory=AHAttr)
    alt_ah_attr: AHAttr = field(default_factory=AHAttr)
    pkey_index: int = 0
    alt_pkey_index: int = 0
    en_sqd_async_notify: int = 0
    sq_draining: int = 0
    max_rd_atomic: int = 1
    max_dest_rd_atomic: int = 1
    min_rnr_timer: int = 12
    port_num: int = 1
    timeout: int = 14
    retry_cnt: int = 7
    rnr_retry: int = 7
    alt_port_num: int = 0
    alt_timeout: int = 0
    rate_limit: int = 0
    sock: socket.socket | int | None = None
