"""rdma_cm's addressing: ``AddrInfo`` (rdma_getaddrinfo), ``ConnParam``
(rdma_conn_param), and the device -- the context -- an IP address belongs to.

The contexts rdma_cm opens are opened once per process and kept, as librdmacm does:
every CMID of a device shares one, and one PD on it.
"""

from __future__ import annotations

import errno
import socket
import threading

from ..context import Context
from ..device import GID, device_for_gid, device_gids
from ..errors import TcpverbsError, from_oserror
from ..pd import PD
from .enums import RAI_PASSIVE, rdma_port_space

__all__ = ["AddrInfo", "ConnParam", "context_for", "pd_for", "route_source"]


def _resolve(
    host: str | bytes | None, service: str | bytes | int | None, passive: bool
) -> tuple[str, int]:
    """(host, port) of *host* / *service*, numerically, as rdma_getaddrinfo gives it."""
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(service, bytes):
        service = service.decode()
    flags = socket.AI_PASSIVE if passive and host is None else 0
    try:
        infos = socket.getaddrinfo(host, service or 0, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror as exc:
        raise TcpverbsError(errno.EADDRNOTAVAIL, f"Failed to get Address Info: {exc}") from None
    _, _, _, _, sockaddr = infos[0]
    return str(sockaddr[0]), int(sockaddr[1])


class AddrInfo:
    """``rdma_getaddrinfo``: where to listen (``flags=RAI_PASSIVE``: *src*,
    *src_service*) or where to connect (*dst*, *dst_service*, from *src* if given).
    ``service`` is the older pyverbs name of the one port."""

    def __init__(
        self,
        src: str | bytes | None = None,
        dst: str | bytes | None = None,
        src_service: str | int | None = None,
        dst_service: str | int | None = None,
        port_space: int = rdma_port_space.RDMA_PS_TCP,
        flags: int = 0,
        service: str | int | None = None,
    ) -> None:
        self.port_space = port_space
        self.flags = flags
        self.passive = bool(flags & RAI_PASSIVE)
        if self.passive:
            self.src_addr: tuple[str, int] | None = _resolve(src, src_service or service, True)
            self.dst_addr: tuple[str, int] | None = None
        else:
            self.src_addr = _resolve(src, src_service, True) if src is not None else None
            self.dst_addr = (
                _resolve(dst, dst_service or service, False) if dst is not None else None
            )

    def close(self) -> None:
        """(rdma_freeaddrinfo: nothing to free here.)"""


class ConnParam:
    """``struct rdma_conn_param``: read/atomic depths, retry counts, the QP number of a
    QP the program made itself, and private data (``data``)."""

    def __init__(
        self,
        resources: int = 1,
        depth: int = 1,
        flow_control: int = 0,
        retry: int = 5,
        rnr_retry: int = 5,
        srq: int = 0,
        qp_num: int = 0,
        data: bytes | None = None,
    ) -> None:
        self.responder_resources = resources
        self.initiator_depth = depth
        self.flow_control = flow_control
        self.retry_count = retry
        self.rnr_retry_count = rnr_retry
        self.srq = srq
        self.qp_num = qp_num
        self.private_data = bytes(data or b"")

    @property
    def qpn(self) -> int:
        return self.qp_num

    @qpn.setter
    def qpn(self, value: int) -> None:
        self.qp_num = value


_contexts: dict[bytes, Context] = {}
_contexts_lock = threading.Lock()


_pds: dict[int, PD] = {}  # id(context) -> its PD


def pd_for(ctx: Context) -> PD:
    """The PD every CMID of *ctx* uses (librdmacm's per-device PD), made on first use:
    memory one CMID registers serves them all."""
    with _contexts_lock:
        pd = _pds.get(id(ctx))
        if pd is None or pd.closed:
            pd = _pds[id(ctx)] = PD(ctx)
        return pd


def context_for(address: str) -> tuple[Context, GID, int]:
    """The context of the device that has *address*, the GID it is and its index in the
    port's table.  Contexts are opened once per process and kept, as librdmacm does."""
    gid = GID.from_ip(address)
    device = device_for_gid(gid)
    with _contexts_lock:
        ctx = _contexts.get(device.name)
        if ctx is None or ctx.closed:
            ctx = _contexts[device.name] = Context(name=device.name)
    return ctx, gid, device_gids(device).index(gid)


def route_source(dst: tuple[str, int]) -> str:
    """The local address the kernel would use towards *dst* (no packet is sent)."""
    family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(dst)
        except OSError as exc:
            raise from_oserror(exc, f"Failed to Resolve Address {dst[0]}") from exc
        return str(probe.getsockname()[0])
