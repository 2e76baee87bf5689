"""Address handles: ``ibv_create_ah`` for the address vectors RC QPs are connected with.

A tcpverbs device is RoCE-like (GIDs are IP addresses), so an address vector is a GID:
``AHAttr(is_global=1, gr=GlobalRoute(dgid=...))`` on port 1, its source GID index one of
the port's.  Without a GRH there is nothing to reach, and creation fails as it does on
a RoCE port.  An AH made from a received work completion (``AH(pd, wc=..., grh=...)``)
answers UD traffic, which a tcpverbs device does not carry: ``EOPNOTSUPP``.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import TYPE_CHECKING

from ._base import VerbsObject
from .device import GID, device_gids
from .errors import TcpverbsError
from .qp_attr import AHAttr

if TYPE_CHECKING:
    from .pd import PD

__all__ = ["AH"]


class AH(VerbsObject):
    """``ibv_create_ah``: ``AH(pd, attr=AHAttr(is_global=1, gr=GlobalRoute(dgid=gid)))``."""

    def __init__(
        self,
        pd: PD,
        *,
        attr: AHAttr | None = None,
        wc: object = None,
        grh: object = None,
        port_num: int = 1,
    ) -> None:
        if attr is None:
            if wc is not None:
                raise TcpverbsError(
                    errno.EOPNOTSUPP,
                    "Failed to create AH from a work completion: that answers UD traffic, "
                    "which a tcpverbs device does not carry",
                )
            raise TcpverbsError(errno.EINVAL, "Failed to create AH: give attr (an AHAttr)")
        if not isinstance(attr, AHAttr):
            raise TcpverbsError(
                errno.EINVAL, f"Failed to create AH: attr must be an AHAttr, got {attr!r}"
            )
        if attr.port_num != 1:
            raise TcpverbsError(
                errno.EINVAL, f"Failed to create AH: port {attr.port_num}, the device has port 1"
            )
        route = attr.gr
        if not attr.is_global or route is None or route.dgid is None:
            raise TcpverbsError(
                errno.EINVAL,
                "Failed to create AH: a RoCE-like port needs a GRH (is_global=1, gr.dgid)",
            )
        dgid = route.dgid if isinstance(route.dgid, GID) else GID(route.dgid)
        sgids = device_gids(pd.ctx.device)
        if not 0 <= route.sgid_index < len(sgids):
            raise TcpverbsError(
                errno.EINVAL,
                f"Failed to create AH: sgid_index {route.sgid_index}, the port has "
                f"{len(sgids)} GIDs",
            )
        super().__init__(pd)
        self.pd = pd
        self.attr = replace(attr, gr=replace(route, dgid=dgid))  # a copy: later edits stay out

    def __repr__(self) -> str:
        route = self.attr.gr
        where = route.dgid if route is not None else "?"
        return f"<AH to {where}{' (closed)' if self._closed else ''}>"
