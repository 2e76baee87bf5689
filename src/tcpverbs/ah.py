"""Address handles: ``ibv_create_ah`` for the address vectors RC QPs are connected with.

A tcpverbs device is RoCE-like (GIDs are IP addresses), so an address vector is a GID:
``AHAttr(is_global=1, gr=GlobalRoute(dgid=...))`` on port 1, its source GID index one of
the port's.  Without a GRH there is nothing to reach, and creation fails as it does on
a RoCE port.

``AH(pd, wc=wc, grh=buf)`` (``ibv_create_ah_from_wc``) answers a UD message: the
completion must say it carries a GRH (``IBV_WC_GRH``), and the 40 bytes at *buf* (the
start of the receive buffer: an address inside memory registered with *pd*, as pyverbs
passes ``mr.buf``, or a bytes-like object) are read as :mod:`tcpverbs.wire.ud` writes
them; the AH goes back to the message's source address, from the local GID it came to.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import TYPE_CHECKING

from ._base import VerbsObject
from .device import GID, device_gids
from .enums import ibv_wc_flags
from .errors import TcpverbsError
from .mr import MR
from .qp_attr import AHAttr, GlobalRoute
from .wire.ud import GRH_SIZE, parse_grh

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
        sgids = device_gids(pd.ctx.device)  # (read once: it asks the kernel)
        if attr is None:
            if wc is None:
                raise TcpverbsError(
                    errno.EINVAL, "Failed to create AH: give attr (an AHAttr), or wc and grh"
                )
            attr = _answer_to(pd, wc, grh, port_num, sgids)
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
        if not 0 <= route.sgid_index < len(sgids):
            raise TcpverbsError(
                errno.EINVAL,
                f"Failed to create AH: sgid_index {route.sgid_index}, the port has "
                f"{len(sgids)} GIDs",
            )
        super().__init__(pd)
        self.pd = pd
        self.attr = replace(attr, gr=replace(route, dgid=dgid))  # a copy: later edits stay out

    @property
    def dest(self) -> GID:
        """Where this AH leads: the destination GID (an IP address)."""
        route = self.attr.gr
        assert route is not None and isinstance(route.dgid, GID)  # checked at creation
        return route.dgid

    def __repr__(self) -> str:
        route = self.attr.gr
        where = route.dgid if route is not None else "?"
        return f"<AH to {where}{' (closed)' if self._closed else ''}>"


def _answer_to(pd: PD, wc: object, grh: object, port_num: int, sgids: list[GID]) -> AHAttr:
    """``ibv_init_ah_from_wc``: the address vector back to where *wc*'s message came from."""
    flags = getattr(wc, "wc_flags", None)
    if not isinstance(flags, int):
        raise TcpverbsError(errno.EINVAL, f"Failed to create AH: wc must be a WC, got {wc!r}")
    if not flags & ibv_wc_flags.IBV_WC_GRH:
        raise TcpverbsError(
            errno.EINVAL,
            "Failed to create AH: the completion has no GRH (IBV_WC_GRH), and a RoCE-like "
            "port cannot answer without the sender's address",
        )
    try:
        source, came_to = parse_grh(_grh_bytes(pd, grh))
    except ValueError as exc:
        raise TcpverbsError(errno.EINVAL, f"Failed to create AH: {exc}") from None
    local = GID.from_ip(came_to)
    sgid_index = sgids.index(local) if local in sgids else 0
    route = GlobalRoute(dgid=GID.from_ip(source), sgid_index=sgid_index, hop_limit=64)
    return AHAttr(gr=route, is_global=1, port_num=port_num)


def _grh_bytes(pd: PD, grh: object) -> bytes:
    """The 40 bytes of a GRH given as an address in *pd*'s registered memory, or as a
    bytes-like object; never a read of memory the library did not register."""
    if isinstance(grh, int):
        for child in list(pd._children.values()):
            if isinstance(child, MR) and child.buf <= grh <= child.buf + child.length - GRH_SIZE:
                return child.read(GRH_SIZE, grh - child.buf)
        raise TcpverbsError(
            errno.EINVAL,
            f"Failed to create AH: the GRH at 0x{grh:x} is not inside memory registered "
            "with this PD",
        )
    try:
        view = memoryview(grh)  # type: ignore[arg-type]
    except TypeError:
        raise TcpverbsError(
            errno.EINVAL,
            f"Failed to create AH: grh must be an address or a buffer, got {type(grh).__name__}",
        ) from None
    return view.cast("B")[:GRH_SIZE].tobytes()
