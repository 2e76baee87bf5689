"""tcpverbs — the RDMA verbs programming model over the kernel's TCP stack.

The names mirror pyverbs (``pyverbs.device.Context``, ``pyverbs.pd.PD``, ...) and the
enumerations mirror libibverbs, so verbs programs port by changing their imports::

    import tcpverbs as v
    with v.Context(name="tcpv_lo") as ctx:
        pd = v.PD(ctx)
        mr = v.MR(pd, 4096, v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE)
        ...

See README.md for the socket handoff and docs/ for the semantics.
"""

from __future__ import annotations

from .ah import AH
from .context import AsyncEvent, Context
from .cq import CQ, WC, CompChannel
from .cq_ex import CQEX, CqInitAttrEx, PollCqAttr
from .device import GID, Device, DeviceAttr, PortAttr, get_device_list
from .enums import (
    ibv_access_flags,
    ibv_atomic_cap,
    ibv_event_type,
    ibv_link_layer,
    ibv_mtu,
    ibv_node_type,
    ibv_port_state,
    ibv_qp_attr_mask,
    ibv_qp_state,
    ibv_qp_type,
    ibv_send_flags,
    ibv_srq_attr_mask,
    ibv_transport_type,
    ibv_wc_flags,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from .errors import (
    ClosedResourceError,
    ConnectionBrokenError,
    PostError,
    RemoteProtocolError,
    TcpverbsError,
)
from .mr import MR
from .pd import PD
from .qp import QP
from .qp_attr import AHAttr, GlobalRoute, QPAttr, QPCap, QPInitAttr, QPInitAttrEx
from .qp_ex import QPEx
from .srq import SRQ, SrqAttr, SrqInitAttr, SrqInitAttrEx
from .wr import SGE, RecvWR, SendWR

__version__ = "0.1.0"

__all__ = [
    "AH",
    "CQ",
    "CQEX",
    "GID",
    "MR",
    "PD",
    "QP",
    "SGE",
    "SRQ",
    "WC",
    "AHAttr",
    "AsyncEvent",
    "ClosedResourceError",
    "CompChannel",
    "ConnectionBrokenError",
    "Context",
    "CqInitAttrEx",
    "Device",
    "DeviceAttr",
    "GlobalRoute",
    "PollCqAttr",
    "PortAttr",
    "PostError",
    "QPAttr",
    "QPCap",
    "QPEx",
    "QPInitAttr",
    "QPInitAttrEx",
    "RecvWR",
    "RemoteProtocolError",
    "SendWR",
    "SrqAttr",
    "SrqInitAttr",
    "SrqInitAttrEx",
    "TcpverbsError",
    "__version__",
    "get_device_list",
    "ibv_access_flags",
    "ibv_atomic_cap",
    "ibv_event_type",
    "ibv_link_layer",
    "ibv_mtu",
    "ibv_node_type",
    "ibv_port_state",
    "ibv_qp_attr_mask",
    "ibv_qp_state",
    "ibv_qp_type",
    "ibv_send_flags",
    "ibv_srq_attr_mask",
    "ibv_transport_type",
    "ibv_wc_flags",
    "ibv_wc_opcode",
    "ibv_wc_status",
    "ibv_wr_opcode",
]
