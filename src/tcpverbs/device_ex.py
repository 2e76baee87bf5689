"""The extended device queries: ``ibv_query_device_ex``, GID table entries and types,
P_Keys -- what a tcpverbs device answers, with the names pyverbs gives the answers.

A tcpverbs device has no on-demand paging, TSO, RSS, tag matching, packet pacing, CQ
moderation, device memory or PCIe atomics: their capability fields are all zero, which is
how verbs says "not offered".  Its GIDs are the interface's IP addresses, so each GID's
type is RoCE v2's (``IBV_GID_TYPE_ROCE_V2``; sysfs: ``IBV_GID_TYPE_SYSFS_ROCE_V2``): an IP
address, which is what connects.  The one P_Key is the default, 0xffff.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from .device import (
    GID,
    Device,
    DeviceAttr,
    _check_port,
    _read_sysfs,
    device_gids,
    query_device_attr,
    query_gid,
)
from .enums import ibv_gid_type, ibv_gid_type_sysfs
from .errors import TcpverbsError

__all__ = [
    "DEFAULT_PKEY",
    "CQModerationCaps",
    "DeviceAttrEx",
    "GIDEntry",
    "ODPCaps",
    "PCIAtomicCaps",
    "PacketPacingCaps",
    "RSSCaps",
    "TMCaps",
    "TSOCaps",
    "get_pkey_index",
    "query_device_ex",
    "query_gid_ex",
    "query_gid_table",
    "query_gid_type",
    "query_pkey",
]

DEFAULT_PKEY = 0xFFFF


@dataclass(frozen=True, slots=True)
class ODPCaps:
    general_caps: int = 0
    rc_odp_caps: int = 0
    uc_odp_caps: int = 0
    ud_odp_caps: int = 0


@dataclass(frozen=True, slots=True)
class TSOCaps:
    max_tso: int = 0
    supported_qpts: int = 0


@dataclass(frozen=True, slots=True)
class RSSCaps:
    supported_qpts: int = 0
    max_rwq_indirection_tables: int = 0
    max_rwq_indirection_table_size: int = 0
    rx_hash_fields_mask: int = 0
    rx_hash_function: int = 0


@dataclass(frozen=True, slots=True)
class PacketPacingCaps:
    qp_rate_limit_min: int = 0
    qp_rate_limit_max: int = 0
    supported_qpts: int = 0


@dataclass(frozen=True, slots=True)
class TMCaps:
    max_rndv_hdr_size: int = 0
    max_num_tags: int = 0
    flags: int = 0
    max_ops: int = 0
    max_sge: int = 0


@dataclass(frozen=True, slots=True)
class CQModerationCaps:
    max_cq_count: int = 0
    max_cq_period: int = 0


@dataclass(frozen=True, slots=True)
class PCIAtomicCaps:
    fetch_add: int = 0
    swap: int = 0
    compare_swap: int = 0


@dataclass(frozen=True, slots=True)
class DeviceAttrEx:
    """``struct ibv_device_attr_ex``: the basic attributes plus the extended ones."""

    orig_attr: DeviceAttr
    device_cap_flags_ex: int
    phys_port_cnt_ex: int
    comp_mask: int = 0
    completion_timestamp_mask: int = 0
    hca_core_clock: int = 0
    odp_caps: ODPCaps = field(default_factory=ODPCaps)
    xrc_odp_caps: int = 0
    tso_caps: TSOCaps = field(default_factory=TSOCaps)
    rss_caps: RSSCaps = field(default_factory=RSSCaps)
    max_wq_type_rq: int = 0
    packet_pacing_caps: PacketPacingCaps = field(default_factory=PacketPacingCaps)
    raw_packet_caps: int = 0
    tm_caps: TMCaps = field(default_factory=TMCaps)
    cq_mod_caps: CQModerationCaps = field(default_factory=CQModerationCaps)
    max_dm_size: int = 0
    pci_atomic_caps: PCIAtomicCaps = field(default_factory=PCIAtomicCaps)


@dataclass(frozen=True, slots=True)
class GIDEntry:
    """``struct ibv_gid_entry``: one GID of a port, where it is and what it is."""

    gid: GID
    gid_index: int
    port_num: int
    gid_type: ibv_gid_type
    ndev_ifindex: int

    @property
    def gid_subnet_prefix(self) -> int:
        return int.from_bytes(self.gid.raw[:8], "big")

    @property
    def gid_interface_id(self) -> int:
        return int.from_bytes(self.gid.raw[8:], "big")

    def gid_str(self) -> str:
        return self.gid.gid


def query_device_ex(dev: Device) -> DeviceAttrEx:
    """``ibv_query_device_ex``."""
    attr = query_device_attr(dev)
    return DeviceAttrEx(
        orig_attr=attr,
        device_cap_flags_ex=attr.device_cap_flags,
        phys_port_cnt_ex=attr.phys_port_cnt,
    )


def query_gid_type(dev: Device, port_num: int, index: int) -> ibv_gid_type_sysfs:
    """``ibv_query_gid_type``: what GID ``index`` of the port is (an IP address)."""
    _gid_at(dev, port_num, index)
    return ibv_gid_type_sysfs.IBV_GID_TYPE_SYSFS_ROCE_V2


def _gid_at(dev: Device, port_num: int, index: int) -> GID:
    return query_gid(dev, port_num, index)  # its checks: the port, the index's range


def _entry(dev: Device, port_num: int, index: int, gid: GID) -> GIDEntry:
    text = _read_sysfs(dev.ifname, "ifindex")  # None: gone since the table was read
    ifindex = int(text) if text is not None and text.isdigit() else 0
    return GIDEntry(gid, index, port_num, ibv_gid_type.IBV_GID_TYPE_ROCE_V2, ifindex)


def query_gid_ex(dev: Device, port_num: int, gid_index: int, flags: int = 0) -> GIDEntry:
    """``ibv_query_gid_ex``: entry *gid_index* of the port's GID table."""
    if flags:
        raise TcpverbsError(errno.EINVAL, f"Failed to query gid: unknown flags {flags:#x}")
    return _entry(dev, port_num, gid_index, _gid_at(dev, port_num, gid_index))


def query_gid_table(dev: Device, max_entries: int, flags: int = 0) -> list[GIDEntry]:
    """``ibv_query_gid_table``: every valid GID of every port.  Too small a
    *max_entries* is an error, as in libibverbs, whose errno pyverbs reports negated."""
    if flags:
        raise TcpverbsError(errno.EINVAL, f"Failed to query gid table: unknown flags {flags:#x}")
    entries = [_entry(dev, 1, i, gid) for i, gid in enumerate(device_gids(dev))]
    if max_entries < len(entries):
        raise TcpverbsError(
            errno.EINVAL,
            f"Failed to query gid table: {len(entries)} entries, room for {max_entries}",
            error_code=-errno.EINVAL,
        )
    return entries


def query_pkey(dev: Device, port_num: int, index: int) -> int:
    """``ibv_query_pkey``: the port's one P_Key, at index 0."""
    _check_port(dev, port_num)
    if index != 0:
        raise TcpverbsError(
            errno.EINVAL, f"Failed to query pkey {index} of port {port_num}: only index 0"
        )
    return DEFAULT_PKEY


def get_pkey_index(dev: Device, port_num: int, pkey: int) -> int:
    """``ibv_get_pkey_index``: where *pkey* is in the port's P_Key table."""
    _check_port(dev, port_num)
    if pkey != DEFAULT_PKEY:
        raise TcpverbsError(
            errno.ENOENT, f"Failed to get pkey index: {pkey:#x} is not in the table (0xffff)"
        )
    return 0
