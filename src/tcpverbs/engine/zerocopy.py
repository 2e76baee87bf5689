"""When to send with ``MSG_ZEROCOPY``: the policy both engines apply.

With ``MSG_ZEROCOPY`` the kernel sends straight from the registered memory instead of
copying it into socket buffers, and pins the pages until it is done with them.  It only
pays where the kernel really avoids the copy and the write is large: the kernel's
documentation (Documentation/networking/msg_zerocopy.rst) puts the break-even near 10 KB.
Over loopback (and veth between namespaces) the kernel copies anyway when it delivers the
data locally, so the pinning and notifications are pure cost (30-45 % of throughput
here): the automatic policy turns it on only for connections over a physical NIC.

How each engine tracks the calls and holds completions until the kernel lets go of the
memory: :mod:`tcpverbs.engine.py.zerocopy`, and ``zerocopy.c`` of the native engine.
"""

from __future__ import annotations

import ipaddress
import socket

from ..device import SYSFS_NET, device_for_gid
from ..errors import TcpverbsError

__all__ = ["ZEROCOPY_MIN", "zerocopy_threshold"]

ZEROCOPY_MIN = 64 * 1024  # automatic policy: segments at least this big go zerocopy


def zerocopy_threshold(setting: int | None, sock: socket.socket) -> int:
    """The smallest segment to send zerocopy on *sock*; 0 means never.

    *setting* is the Context's ``zerocopy_min``: None picks automatically, 0 turns it
    off, n > 0 forces it on.  Automatically it is on (``ZEROCOPY_MIN``) only when the
    connection's local address sits on a physical NIC (one with a ``device`` link in
    sysfs): loopback, veth, bridges and tunnels deliver locally or re-copy, so pinning
    would be pure cost there.
    """
    if setting is not None:
        return setting
    try:
        peer = _ip(sock.getpeername()[0])
        local = _ip(sock.getsockname()[0])
    except (OSError, ValueError):
        return 0
    if peer.is_loopback or local.is_loopback:
        return 0
    return ZEROCOPY_MIN if _on_physical_nic(local) else 0


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _on_physical_nic(local: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        dev = device_for_gid(local)
    except (TcpverbsError, ValueError):
        return False
    return (SYSFS_NET / dev.ifname / "device").exists()
