"""Devices, ports and GIDs: discovered from the host's network interfaces.

Theory of operation
-------------------
tcpverbs has one *device* per network interface that is administratively up
(``IFF_UP``) and carries at least one IPv4 or IPv6 address, loopback included.  The
device of interface ``lo`` is called ``tcpv_lo`` (``name`` is ``bytes``, as in pyverbs).
Each device has exactly one port, port 1.

We present ourselves the way the kernel's soft-RoCE provider (rxe) does: node type
``IBV_NODE_CA``, transport ``IBV_TRANSPORT_IB`` and link layer Ethernet.  Verbs
applications and tools (perftest, pyverbs tests, ``ibv_devinfo`` habits) branch on these
values; CA + IB + Ethernet is the combination they already know how to drive over an IP
network (GIDs are IP addresses, LIDs are 0, connections are made by GID), which is exactly
how tcpverbs connects.

The GID table of the port is the interface's address list: IPv4 addresses first, as
IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``, as RoCEv2 does), then IPv6 addresses.

Nothing in this module opens a socket to a peer; it reads psutil and ``/sys/class/net``.
Device objects are cheap snapshots of identity (name, GUID); everything that can change
(port state, MTU, addresses) is read again on every query.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import mmap
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final, Protocol

import psutil

from .enums import (
    ibv_atomic_cap,
    ibv_link_layer,
    ibv_mtu,
    ibv_node_type,
    ibv_port_state,
    ibv_transport_type,
)
from .errors import TcpverbsError

__all__ = [
    "DEVICE_CAP_FLAGS",
    "DEVICE_PREFIX",
    "GID",
    "HW_VER",
    "LOCAL_CA_ACK_DELAY",
    "MAX_AH",
    "MAX_CQ",
    "MAX_CQE",
    "MAX_INLINE_DATA",
    "MAX_MR",
    "MAX_MR_SIZE",
    "MAX_MSG_SZ",
    "MAX_MW",
    "MAX_PD",
    "MAX_PKEYS",
    "MAX_QP",
    "MAX_QP_INIT_RD_ATOM",
    "MAX_QP_RD_ATOM",
    "MAX_QP_WR",
    "MAX_RES_RD_ATOM",
    "MAX_SGE",
    "MAX_SGE_RD",
    "MAX_SRQ",
    "MAX_SRQ_WR",
    "PORT_CAP_FLAGS",
    "VENDOR_ID",
    "VENDOR_PART_ID",
    "Device",
    "DeviceAttr",
    "PortAttr",
    "device_for_gid",
    "device_gids",
    "find_device",
    "get_device_list",
    "guid_from_mac",
    "guid_from_name",
    "ib_width_speed",
    "mtu_to_ibv_mtu",
    "port_state_from_operstate",
    "query_device_attr",
    "query_gid",
    "query_port_attr",
]

# --------------------------------------------------------------------------------------
# Limits.  The rest of the package validates against these; DeviceAttr reports them.
# --------------------------------------------------------------------------------------

MAX_QP: Final = 16384
MAX_QP_WR: Final = 16384
MAX_SGE: Final = 32
MAX_SGE_RD: Final = 32
MAX_CQ: Final = 16384
MAX_CQE: Final = 1 << 20
MAX_MR: Final = 1 << 20
MAX_MR_SIZE: Final = 1 << 40
MAX_PD: Final = 1 << 16
MAX_QP_RD_ATOM: Final = 16
MAX_QP_INIT_RD_ATOM: Final = 16
MAX_RES_RD_ATOM: Final = MAX_QP * MAX_QP_RD_ATOM
MAX_INLINE_DATA: Final = 1024
MAX_MSG_SZ: Final = 1 << 31
MAX_PKEYS: Final = 1  # one P_Key (the default, 0xffff); RoCE-style, no partitions
# Not supported: memory windows, address handles (UD), multicast, FMRs, EE.
MAX_MW: Final = 0
MAX_SRQ: Final = 1 << 16
MAX_SRQ_WR: Final = MAX_QP_WR
MAX_AH: Final = 0

#: ``vendor_id``: there is no IEEE OUI behind tcpverbs.  Like siw (0x626d74, ASCII
#: "bmt"), we use three ASCII letters, "tcv".  rxe's 0xffffff is avoided on purpose so
#: that applications matching on rxe's vendor id do not apply rxe quirks to us.
VENDOR_ID: Final = 0x746376
VENDOR_PART_ID: Final = 1
HW_VER: Final = 0
#: ``local_ca_ack_delay`` as rxe reports it (4.096 us * 2**15); meaningless over TCP.
LOCAL_CA_ACK_DELAY: Final = 15

# ibv_device_cap_flags bits we honour (values from <infiniband/verbs.h>).
_IBV_DEVICE_SYS_IMAGE_GUID: Final = 1 << 11
_IBV_DEVICE_RC_RNR_NAK_GEN: Final = 1 << 12
_IBV_DEVICE_SRQ_RESIZE: Final = 1 << 13
#: sys_image_guid is meaningful; the responder generates RNR NAKs (rnr_retry honoured);
#: an SRQ can be resized.
DEVICE_CAP_FLAGS: Final = (
    _IBV_DEVICE_SYS_IMAGE_GUID | _IBV_DEVICE_RC_RNR_NAK_GEN | _IBV_DEVICE_SRQ_RESIZE
)

# ibv_port_cap_flags: like rxe, advertise connection-manager support only.
_IBV_PORT_CM_SUP: Final = 1 << 16
PORT_CAP_FLAGS: Final = _IBV_PORT_CM_SUP

DEVICE_PREFIX: Final = "tcpv_"

# Interface flags (<linux/if.h>).
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8

# IB PortInfo encodings.
_PHYS_STATE_DISABLED: Final = 3
_PHYS_STATE_LINK_UP: Final = 5
_MAX_VL_NUM: Final = 1  # encoding 1 = VL0 only, as rxe

#: active_width encoding -> number of lanes.
_IB_WIDTH_LANES: Final[dict[int, int]] = {1: 1, 16: 2, 2: 4, 4: 8, 8: 12}
#: active_speed encoding -> Gb/s per lane, as ``ibv_devinfo`` prints them
#: (SDR, DDR, QDR, FDR10, FDR, EDR, HDR, NDR).  XDR (256) does not fit the 8-bit
#: ``active_speed`` and is never chosen.
_IB_SPEED_GBPS: Final[dict[int, float]] = {
    1: 2.5,
    2: 5.0,
    4: 10.0,
    8: 10.0,
    16: 14.0,
    32: 25.0,
    64: 50.0,
    128: 100.0,
}
#: When the link speed is unknown (loopback, veth, most virtual NICs): 4x EDR, 100 Gb/s.
#: (The kernel's ib_get_eth_speed() falls back to 1x SDR, but a virtual interface is not
#: slow, and applications that size things by port speed should not think it is.)
_DEFAULT_WIDTH_SPEED: Final = (2, 32)

SYSFS_NET = Path("/sys/class/net")


def _fw_ver() -> str:
    try:
        return metadata.version("tcpverbs")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


# --------------------------------------------------------------------------------------
# Pure helpers (tested without touching the host)
# --------------------------------------------------------------------------------------


def guid_from_mac(mac: str | bytes) -> int:
    """Modified EUI-64 of a 48-bit MAC, as RoCE/rxe build node GUIDs.

    ``ff:fe`` is inserted in the middle and the universal/local bit (0x02 of the first
    octet) is flipped: ``02:fc:00:00:00:01`` -> ``0x00fc00fffe000001``.
    """
    raw = bytes.fromhex(mac.replace(":", "").replace("-", "")) if isinstance(mac, str) else mac
    if len(raw) != 6:
        raise ValueError(f"a MAC address has 6 bytes, got {len(raw)}")
    eui = bytes([raw[0] ^ 0x02, raw[1], raw[2], 0xFF, 0xFE, raw[3], raw[4], raw[5]])
    return int.from_bytes(eui, "big")


def guid_from_name(ifname: str) -> int:
    """A stable, non-zero 64-bit GUID for an interface without a MAC (loopback, tun)."""
    digest = hashlib.blake2b(b"tcpverbs-node-guid:" + ifname.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") or 1


def mtu_to_ibv_mtu(mtu: int) -> ibv_mtu:
    """The largest ``IBV_MTU_x`` not above ``mtu`` bytes, capped at 4096, at least 256."""
    best = ibv_mtu.IBV_MTU_256
    for value in ibv_mtu:
        if 128 << value <= mtu:  # IBV_MTU_256 = 1 -> 256 bytes, ... IBV_MTU_4096 = 5
            best = max(best, value)
    return best


def ib_width_speed(mbps: int | None) -> tuple[int, int]:
    """``(active_width, active_speed)`` IB encodings for an Ethernet speed in Mb/s.

    Picks the pair whose lanes x per-lane rate is closest to ``mbps``; ties go to fewer
    lanes, then to the lower speed code (so 10 Gb/s is 1x QDR, 100 Gb/s is 1x NDR).
    Unknown (``None``, zero or negative) -> 4x EDR (see ``_DEFAULT_WIDTH_SPEED``).
    """
    if mbps is None or mbps <= 0:
        return _DEFAULT_WIDTH_SPEED
    candidates = (
        (abs(lanes * gbps * 1000 - mbps), lanes, speed, width)
        for width, lanes in _IB_WIDTH_LANES.items()
        for speed, gbps in _IB_SPEED_GBPS.items()
    )
    _, _, speed, width = min(candidates)
    return width, speed


def port_state_from_operstate(operstate: str, if_up: bool) -> ibv_port_state:
    """``ACTIVE`` for operstate ``up``, or ``unknown`` on an IFF_UP interface (loopback
    and many virtual interfaces report ``unknown``); ``DOWN`` otherwise."""
    state = operstate.strip().lower()
    if state == "up" or (state == "unknown" and if_up):
        return ibv_port_state.IBV_PORT_ACTIVE
    return ibv_port_state.IBV_PORT_DOWN


# --------------------------------------------------------------------------------------
# GID
# --------------------------------------------------------------------------------------

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GID:
    """A 16-byte GID (``union ibv_gid``); here always an IPv6 or IPv4-mapped address.

    ``GID(raw16)``, ``GID("0000:0000:0000:0000:0000:ffff:7f00:0001")`` (pyverbs format)
    or ``GID("127.0.0.1")`` / ``GID("::1")``; ``GID.from_ip(addr)``.
    """

    __slots__ = ("_raw",)

    def __init__(self, value: bytes | bytearray | memoryview | str | _IPAddress) -> None:
        if isinstance(value, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
            raw = GID.from_ip(value)._raw
        else:
            raw = bytes(value)
            if len(raw) != 16:
                raise TcpverbsError(errno.EINVAL, f"a GID has 16 bytes, got {len(raw)}")
        self._raw: bytes = raw

    @classmethod
    def from_ip(cls, addr: str | _IPAddress) -> GID:
        """The GID of an IP address: IPv4 becomes ``::ffff:a.b.c.d``; a ``%scope`` suffix
        is dropped."""
        if isinstance(addr, str):
            text = addr.split("%", 1)[0]
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                try:  # pyverbs' 8 x 4 hex digits also parses as IPv6
                    addr = ipaddress.IPv6Address(text)
                except ValueError:
                    raise TcpverbsError(
                        errno.EINVAL, f"{addr!r} is neither an IP address nor a GID"
                    ) from None
        if isinstance(addr, ipaddress.IPv4Address):
            return cls(b"\x00" * 10 + b"\xff\xff" + addr.packed)
        return cls(addr.packed)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def gid(self) -> str:
        """pyverbs' text form: eight groups of four hex digits."""
        hexed = self._raw.hex()
        return ":".join(hexed[i : i + 4] for i in range(0, 32, 4))

    @property
    def ip(self) -> _IPAddress:
        """The address: :class:`~ipaddress.IPv4Address` for an IPv4-mapped GID."""
        v6 = ipaddress.IPv6Address(self._raw)
        return v6.ipv4_mapped or v6

    def __str__(self) -> str:
        return self.gid

    def __repr__(self) -> str:
        return f"GID({socket.inet_ntop(socket.AF_INET6, self._raw)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GID):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------


class Device:
    """One network interface seen as an RDMA device (``struct ibv_device``)."""

    __slots__ = ("ifname", "is_loopback", "mac", "name", "node_guid")

    #: like rxe: a channel adapter speaking the IB transport over Ethernet (module doc).
    node_type: Final = ibv_node_type.IBV_NODE_CA
    transport_type: Final = ibv_transport_type.IBV_TRANSPORT_IB

    def __init__(self, ifname: str, mac: bytes = b"", is_loopback: bool = False) -> None:
        self.ifname: str = ifname
        self.name: bytes = (DEVICE_PREFIX + ifname).encode()
        self.mac: bytes = mac
        self.is_loopback: bool = is_loopback
        self.node_guid: int = (
            guid_from_mac(mac) if len(mac) == 6 and any(mac) else guid_from_name(ifname)
        )

    def __repr__(self) -> str:
        return (
            f"<Device {self.name.decode()} ifname={self.ifname!r} node_guid={self.node_guid:016x}>"
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Device):
            return (self.ifname, self.node_guid) == (other.ifname, other.node_guid)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.ifname, self.node_guid))


class _NicAddr(Protocol):  # psutil's snicaddr
    @property
    def family(self) -> int: ...
    @property
    def address(self) -> str: ...


class _NicStats(Protocol):  # psutil's snicstats
    @property
    def isup(self) -> bool: ...
    @property
    def mtu(self) -> int: ...
    @property
    def speed(self) -> int: ...
    @property
    def flags(self) -> str: ...


def _read_sysfs(ifname: str, attr: str) -> str | None:
    try:
        return (SYSFS_NET / ifname / attr).read_text().strip()
    except (OSError, ValueError):
        return None


def _if_flags(ifname: str, stats: _NicStats | None) -> int:
    """IFF_* flags: from sysfs, else from psutil's flag names."""
    text = _read_sysfs(ifname, "flags")
    if text is not None:
        try:
            return int(text, 16)
        except ValueError:
            pass
    if stats is None:
        return 0
    names = set(stats.flags.split(","))
    flags = _IFF_UP if "up" in names else 0
    if "loopback" in names:
        flags |= _IFF_LOOPBACK
    return flags


def _mac(addrs: Sequence[_NicAddr]) -> bytes:
    for a in addrs:
        if a.family == psutil.AF_LINK and a.address:
            try:
                raw = bytes.fromhex(a.address.replace(":", "").replace("-", ""))
            except ValueError:
                continue
            if len(raw) == 6:
                return raw
    return b""


def _ip_addrs(addrs: Sequence[_NicAddr]) -> list[str]:
    v4 = [a.address for a in addrs if a.family == socket.AF_INET]
    v6 = [a.address.split("%", 1)[0] for a in addrs if a.family == socket.AF_INET6]
    return v4 + v6


def get_device_list() -> list[Device]:
    """``ibv_get_device_list``: loopback first, then by interface name."""
    all_addrs = psutil.net_if_addrs()
    all_stats = psutil.net_if_stats()
    devices: list[Device] = []
    for ifname, addrs in all_addrs.items():
        stats = all_stats.get(ifname)
        flags = _if_flags(ifname, stats)
        if not flags & _IFF_UP or not _ip_addrs(addrs):
            continue
        devices.append(Device(ifname, _mac(addrs), bool(flags & _IFF_LOOPBACK)))
    devices.sort(key=lambda d: (not d.is_loopback, d.ifname))
    return devices


def find_device(name: str | bytes | None = None) -> Device:
    """The device called ``name`` (``"tcpv_lo"`` or ``b"tcpv_lo"``); ``None``: the first."""
    devices = get_device_list()
    if name is None:
        if not devices:
            raise TcpverbsError(
                errno.ENODEV,
                "no tcpverbs devices: no network interface is up with an IP address",
            )
        return devices[0]
    if not isinstance(name, str | bytes):
        raise TcpverbsError(
            errno.EINVAL, f"a device name is a str or bytes, got {type(name).__name__}"
        )
    wanted = name.encode() if isinstance(name, str) else name
    for dev in devices:
        if dev.name == wanted:
            return dev
    available = ", ".join(d.name.decode() for d in devices) or "none"
    raise TcpverbsError(
        errno.ENODEV,
        f"no tcpverbs device named {wanted.decode(errors='replace')!r}; available: {available}",
    )


def device_gids(dev: Device) -> list[GID]:
    """The port's GID table: IPv4 addresses (IPv4-mapped) first, then IPv6."""
    addrs = psutil.net_if_addrs().get(dev.ifname, [])
    gids: list[GID] = []
    for text in _ip_addrs(addrs):
        gid = GID.from_ip(text)
        if gid not in gids:
            gids.append(gid)
    return gids


def device_for_gid(gid: GID | str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Device:
    """The local device whose port has ``gid`` in its GID table."""
    wanted = gid if isinstance(gid, GID) else GID(gid)
    for dev in get_device_list():
        if wanted in device_gids(dev):
            return dev
    raise TcpverbsError(
        errno.ENODEV, f"no local tcpverbs device has GID {wanted.ip} ({wanted.gid})"
    )


# --------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceAttr:
    """``struct ibv_device_attr`` with pyverbs' attribute names."""

    fw_ver: str
    node_guid: int
    sys_image_guid: int
    max_mr_size: int
    page_size_cap: int
    vendor_id: int
    vendor_part_id: int
    hw_ver: int
    max_qp: int
    max_qp_wr: int
    device_cap_flags: int
    max_sge: int
    max_sge_rd: int
    max_cq: int
    max_cqe: int
    max_mr: int
    max_pd: int
    max_qp_rd_atom: int
    max_ee_rd_atom: int
    max_res_rd_atom: int
    max_qp_init_rd_atom: int
    max_ee_init_rd_atom: int
    atomic_caps: ibv_atomic_cap
    max_ee: int
    max_rdd: int
    max_mw: int
    max_raw_ipv6_qp: int
    max_raw_ethy_qp: int
    max_mcast_grp: int
    max_mcast_qp_attach: int
    max_total_mcast_qp_attach: int
    max_ah: int
    max_fmr: int
    max_map_per_fmr: int
    max_srq: int
    max_srq_wr: int
    max_srq_sge: int
    max_pkeys: int
    local_ca_ack_delay: int
    phys_port_cnt: int

    @property
    def atomic_cap(self) -> ibv_atomic_cap:
        """The C field name (pyverbs calls it ``atomic_caps``)."""
        return self.atomic_caps

    @property
    def fw_version(self) -> str:
        """pyverbs' name for ``fw_ver``."""
        return self.fw_ver

    @property
    def max_raw_ipv6_qps(self) -> int:
        """pyverbs' name for ``max_raw_ipv6_qp``."""
        return self.max_raw_ipv6_qp


@dataclass(frozen=True, slots=True)
class PortAttr:
    """``struct ibv_port_attr`` with pyverbs' attribute names."""

    state: ibv_port_state
    max_mtu: ibv_mtu
    active_mtu: ibv_mtu
    gid_tbl_len: int
    port_cap_flags: int
    max_msg_sz: int
    bad_pkey_cntr: int
    qkey_viol_cntr: int
    pkey_tbl_len: int
    lid: int
    sm_lid: int
    lmc: int
    max_vl_num: int
    sm_sl: int
    subnet_timeout: int
    init_type_reply: int
    active_width: int
    active_speed: int
    phys_state: int
    link_layer: ibv_link_layer
    flags: int
    port_cap_flags2: int
    active_speed_ex: int


def query_device_attr(dev: Device) -> DeviceAttr:
    """``ibv_query_device``."""
    return DeviceAttr(
        fw_ver=_fw_ver(),
        node_guid=dev.node_guid,
        sys_image_guid=dev.node_guid,
        max_mr_size=MAX_MR_SIZE,
        page_size_cap=~(mmap.PAGESIZE - 1) & 0xFFFF_FFFF_FFFF_FFFF,  # any multiple of a page
        vendor_id=VENDOR_ID,
        vendor_part_id=VENDOR_PART_ID,
        hw_ver=HW_VER,
        max_qp=MAX_QP,
        max_qp_wr=MAX_QP_WR,
        device_cap_flags=DEVICE_CAP_FLAGS,
        max_sge=MAX_SGE,
        max_sge_rd=MAX_SGE_RD,
        max_cq=MAX_CQ,
        max_cqe=MAX_CQE,
        max_mr=MAX_MR,
        max_pd=MAX_PD,
        max_qp_rd_atom=MAX_QP_RD_ATOM,
        max_ee_rd_atom=0,
        max_res_rd_atom=MAX_RES_RD_ATOM,
        max_qp_init_rd_atom=MAX_QP_INIT_RD_ATOM,
        max_ee_init_rd_atom=0,
        atomic_caps=ibv_atomic_cap.IBV_ATOMIC_HCA,
        max_ee=0,
        max_rdd=0,
        max_mw=MAX_MW,
        max_raw_ipv6_qp=0,
        max_raw_ethy_qp=0,
        max_mcast_grp=0,
        max_mcast_qp_attach=0,
        max_total_mcast_qp_attach=0,
        max_ah=MAX_AH,
        max_fmr=0,
        max_map_per_fmr=0,
        max_srq=MAX_SRQ,
        max_srq_wr=MAX_SRQ_WR,
        max_srq_sge=MAX_SGE,
        max_pkeys=MAX_PKEYS,
        local_ca_ack_delay=LOCAL_CA_ACK_DELAY,
        phys_port_cnt=1,
    )


def _check_port(dev: Device, port_num: int) -> None:
    if port_num != 1:
        raise TcpverbsError(
            errno.EINVAL, f"port_num {port_num}: {dev.name.decode()} has only port 1"
        )


def query_port_attr(dev: Device, port_num: int = 1) -> PortAttr:
    """``ibv_query_port``: live state, MTU, speed and GID count of the interface."""
    if port_num != 1:  # worded as pyverbs words it
        raise TcpverbsError(
            errno.EINVAL, f"Failed to query port {port_num}: {dev.name.decode()} has only port 1"
        )
    stats = psutil.net_if_stats().get(dev.ifname)
    if stats is None:
        raise TcpverbsError(
            errno.ENODEV, f"{dev.name.decode()}: interface {dev.ifname!r} no longer exists"
        )
    if_up = bool(_if_flags(dev.ifname, stats) & _IFF_UP)
    operstate = _read_sysfs(dev.ifname, "operstate")
    if operstate is None:  # no sysfs: trust psutil
        operstate = "up" if stats.isup else "down"
    state = port_state_from_operstate(operstate, if_up)
    mtu = mtu_to_ibv_mtu(stats.mtu)
    speed_text = _read_sysfs(dev.ifname, "speed")  # Mb/s; -1 or EINVAL when unknown
    try:
        mbps = int(speed_text) if speed_text is not None else stats.speed
    except ValueError:
        mbps = stats.speed
    width, speed = ib_width_speed(mbps)
    active = state == ibv_port_state.IBV_PORT_ACTIVE
    return PortAttr(
        state=state,
        max_mtu=mtu,
        active_mtu=mtu,
        gid_tbl_len=len(device_gids(dev)),
        port_cap_flags=PORT_CAP_FLAGS,
        max_msg_sz=MAX_MSG_SZ,
        bad_pkey_cntr=0,
        qkey_viol_cntr=0,
        pkey_tbl_len=1,
        lid=0,
        sm_lid=0,
        lmc=0,
        max_vl_num=_MAX_VL_NUM,
        sm_sl=0,
        subnet_timeout=0,
        init_type_reply=0,
        active_width=width,
        active_speed=speed,
        phys_state=_PHYS_STATE_LINK_UP if active else _PHYS_STATE_DISABLED,
        link_layer=ibv_link_layer.IBV_LINK_LAYER_ETHERNET,
        flags=0,
        port_cap_flags2=0,
        active_speed_ex=speed,
    )


def query_gid(dev: Device, port_num: int, index: int) -> GID:
    """``ibv_query_gid``: entry ``index`` of port ``port_num``'s GID table."""
    _check_port(dev, port_num)
    gids = device_gids(dev)
    if not 0 <= index < len(gids):
        valid = f"0..{len(gids) - 1}" if gids else "none"
        raise TcpverbsError(
            errno.EINVAL,
            f"GID index {index} out of range: {dev.name.decode()} port {port_num} has "
            f"{len(gids)} GIDs (valid indexes: {valid})",
        )
    return gids[index]
