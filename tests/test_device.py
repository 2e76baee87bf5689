"""Device discovery, attributes and GIDs (tcpverbs.device)."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

from tcpverbs import device as device_mod
from tcpverbs.device import (
    GID,
    MAX_CQE,
    MAX_QP,
    MAX_QP_WR,
    MAX_SGE,
    Device,
    device_for_gid,
    device_gids,
    find_device,
    get_device_list,
    guid_from_mac,
    guid_from_name,
    ib_width_speed,
    mtu_to_ibv_mtu,
    port_state_from_operstate,
    query_device_attr,
    query_gid,
    query_port_attr,
)
from tcpverbs.enums import (
    ibv_atomic_cap,
    ibv_link_layer,
    ibv_mtu,
    ibv_node_type,
    ibv_port_state,
    ibv_transport_type,
)
from tcpverbs.errors import TcpverbsError

SRC = Path(__file__).resolve().parent.parent / "src"


def _lo() -> Device:
    return find_device("tcpv_lo")


# ---------------------------------------------------------------- discovery (real host)


def test_device_list_has_loopback_first_with_nonzero_guid() -> None:
    devices = get_device_list()
    names = [d.name for d in devices]
    assert b"tcpv_lo" in names
    assert devices[0].name == b"tcpv_lo"
    for dev in devices:
        assert isinstance(dev.name, bytes)
        assert dev.name == b"tcpv_" + dev.ifname.encode()
        assert 0 < dev.node_guid < 1 << 64
        assert dev.node_type == ibv_node_type.IBV_NODE_CA
        assert dev.transport_type == ibv_transport_type.IBV_TRANSPORT_IB
        assert dev.name.decode() in repr(dev)
    assert [d.ifname for d in devices[1:]] == sorted(d.ifname for d in devices[1:])


def test_find_device_by_str_bytes_and_default() -> None:
    assert find_device("tcpv_lo") == find_device(b"tcpv_lo")
    assert find_device(None) == get_device_list()[0]
    assert hash(find_device("tcpv_lo")) == hash(_lo())


def test_find_device_unknown_name_is_enodev() -> None:
    with pytest.raises(TcpverbsError) as info:
        find_device("tcpv_no_such_if")
    assert info.value.errno == errno.ENODEV
    assert "tcpv_no_such_if" in str(info.value)
    assert "tcpv_lo" in str(info.value)  # lists what is available


def test_query_device_attr_reports_limits() -> None:
    dev = _lo()
    attr = query_device_attr(dev)
    assert attr.node_guid == dev.node_guid == attr.sys_image_guid
    assert attr.max_qp == MAX_QP
    assert attr.max_qp_wr == MAX_QP_WR
    assert attr.max_sge == MAX_SGE
    assert attr.max_cqe == MAX_CQE
    assert attr.vendor_id != 0
    assert attr.atomic_caps == attr.atomic_cap == ibv_atomic_cap.IBV_ATOMIC_HCA
    assert attr.phys_port_cnt == 1
    assert isinstance(attr.fw_ver, str) and attr.fw_ver
    assert attr.max_srq > 0 and attr.max_srq_wr == MAX_QP_WR and attr.max_mw == 0


def test_query_port_loopback_is_active_ethernet() -> None:
    dev = _lo()
    port = query_port_attr(dev, 1)
    assert port.state == ibv_port_state.IBV_PORT_ACTIVE
    assert port.phys_state == 5
    assert port.link_layer == ibv_link_layer.IBV_LINK_LAYER_ETHERNET
    assert port.active_mtu == mtu_to_ibv_mtu(psutil.net_if_stats()["lo"].mtu)
    assert port.max_mtu == port.active_mtu
    assert port.gid_tbl_len == len(device_gids(dev)) >= 1
    assert port.pkey_tbl_len == 1
    assert port.lid == port.sm_lid == 0
    assert (port.active_width, port.active_speed) == (2, 32)  # lo has no speed: 4x EDR


def _lo_has_ipv6() -> bool:
    return any(a.address.split("%")[0] == "::1" for a in psutil.net_if_addrs().get("lo", []))


def test_loopback_gids() -> None:
    dev = _lo()
    gid0 = query_gid(dev, 1, 0)
    assert gid0 == GID.from_ip("127.0.0.1")
    assert gid0.gid == "0000:0000:0000:0000:0000:ffff:7f00:0001"
    assert gid0.ip == ipaddress.IPv4Address("127.0.0.1")
    gids = device_gids(dev)
    if not _lo_has_ipv6():
        pytest.skip("IPv6 is disabled on lo here")
    assert GID.from_ip("::1") in gids
    # IPv4 first, then IPv6
    kinds = [isinstance(g.ip, ipaddress.IPv4Address) for g in gids]
    assert kinds == sorted(kinds, reverse=True)


@pytest.mark.parametrize("port_num", [0, 2, -1, 255])
def test_bad_port_is_einval(port_num: int) -> None:
    dev = _lo()
    for call in (lambda: query_port_attr(dev, port_num), lambda: query_gid(dev, port_num, 0)):
        with pytest.raises(TcpverbsError) as info:
            call()
        assert info.value.errno == errno.EINVAL
        assert "port" in str(info.value)


def test_bad_gid_index_is_einval() -> None:
    dev = _lo()
    n = len(device_gids(dev))
    for index in (-1, n, n + 100):
        with pytest.raises(TcpverbsError) as info:
            query_gid(dev, 1, index)
        assert info.value.errno == errno.EINVAL
        assert f"GID index {index}" in str(info.value)


def test_device_for_gid() -> None:
    assert device_for_gid(GID.from_ip("127.0.0.1")).name == b"tcpv_lo"
    assert device_for_gid("127.0.0.1").name == b"tcpv_lo"
    local = {
        a.address.split("%")[0]
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6)
    }
    unused = next(f"203.0.113.{i}" for i in range(1, 255) if f"203.0.113.{i}" not in local)
    with pytest.raises(TcpverbsError) as info:
        device_for_gid(GID.from_ip(unused))
    assert info.value.errno == errno.ENODEV


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("mtu", "expected"),
    [
        (68, ibv_mtu.IBV_MTU_256),
        (255, ibv_mtu.IBV_MTU_256),
        (256, ibv_mtu.IBV_MTU_256),
        (511, ibv_mtu.IBV_MTU_256),
        (512, ibv_mtu.IBV_MTU_512),
        (1023, ibv_mtu.IBV_MTU_512),
        (1024, ibv_mtu.IBV_MTU_1024),
        (1400, ibv_mtu.IBV_MTU_1024),
        (1500, ibv_mtu.IBV_MTU_1024),
        (2048, ibv_mtu.IBV_MTU_2048),
        (4095, ibv_mtu.IBV_MTU_2048),
        (4096, ibv_mtu.IBV_MTU_4096),
        (9000, ibv_mtu.IBV_MTU_4096),
        (65536, ibv_mtu.IBV_MTU_4096),
    ],
)
def test_mtu_to_ibv_mtu(mtu: int, expected: ibv_mtu) -> None:
    assert mtu_to_ibv_mtu(mtu) is expected


def test_guid_from_mac_is_modified_eui64() -> None:
    # ff:fe inserted in the middle, universal/local bit (0x02) of the first octet flipped
    assert guid_from_mac("00:1b:21:0a:0b:0c") == 0x021B21FFFE0A0B0C
    assert guid_from_mac("02:fc:00:00:00:01") == 0x00FC00FFFE000001
    assert guid_from_mac(bytes.fromhex("001b210a0b0c")) == 0x021B21FFFE0A0B0C
    with pytest.raises(ValueError):
        guid_from_mac("00:11:22:33:44")


def test_guid_from_name_is_stable_and_nonzero() -> None:
    assert guid_from_name("lo") == guid_from_name("lo") != 0
    assert guid_from_name("lo") != guid_from_name("tun0")
    assert Device("lo", b"\x00" * 6, is_loopback=True).node_guid == guid_from_name("lo")
    assert Device("eth9", bytes.fromhex("001b210a0b0c")).node_guid == 0x021B21FFFE0A0B0C


@pytest.mark.parametrize(
    ("mbps", "expected"),
    [
        (None, (2, 32)),
        (0, (2, 32)),
        (-1, (2, 32)),
        (100, (1, 1)),  # 1x SDR is the slowest there is
        (1000, (1, 1)),
        (10000, (1, 4)),  # 1x QDR
        (25000, (1, 32)),  # 1x EDR
        (40000, (2, 4)),  # 4x QDR
        (50000, (1, 64)),  # 1x HDR
        (100000, (1, 128)),  # 1x NDR (fewest lanes wins ties)
        (400000, (2, 128)),  # 4x NDR
    ],
)
def test_ib_width_speed(mbps: int | None, expected: tuple[int, int]) -> None:
    assert ib_width_speed(mbps) == expected


@pytest.mark.parametrize(
    ("operstate", "if_up", "expected"),
    [
        ("up", True, ibv_port_state.IBV_PORT_ACTIVE),
        ("unknown", True, ibv_port_state.IBV_PORT_ACTIVE),
        ("unknown", False, ibv_port_state.IBV_PORT_DOWN),
        ("down", True, ibv_port_state.IBV_PORT_DOWN),
        ("dormant", True, ibv_port_state.IBV_PORT_DOWN),
        ("lowerlayerdown", True, ibv_port_state.IBV_PORT_DOWN),
    ],
)
def test_port_state_from_operstate(operstate: str, if_up: bool, expected: ibv_port_state) -> None:
    assert port_state_from_operstate(operstate, if_up) is expected


def test_gid_formats_and_equality() -> None:
    gid = GID.from_ip("127.0.0.1")
    assert str(gid) == gid.gid == "0000:0000:0000:0000:0000:ffff:7f00:0001"
    assert gid.raw == bytes(10) + b"\xff\xff\x7f\x00\x00\x01"
    assert GID(gid.raw) == gid and hash(GID(gid.raw)) == hash(gid)
    assert GID(gid.gid) == gid  # pyverbs text form parses back
    assert GID("127.0.0.1") == GID(ipaddress.IPv4Address("127.0.0.1")) == gid
    assert GID("::ffff:127.0.0.1") == gid
    v6 = GID.from_ip("fe80::1%eth0")  # psutil's scope suffix is dropped
    assert v6.ip == ipaddress.IPv6Address("fe80::1")
    assert v6.gid == "fe80:0000:0000:0000:0000:0000:0000:0001"
    assert v6 != gid
    assert gid != "127.0.0.1"  # type: ignore[comparison-overlap]
    assert "::ffff:127.0.0.1" in repr(gid)
    assert len({gid, GID(gid.raw), v6}) == 2


def test_gid_rejects_bad_input() -> None:
    with pytest.raises(TcpverbsError) as info:
        GID(b"\x00" * 15)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(TcpverbsError) as info:
        GID("not-an-address")
    assert info.value.errno == errno.EINVAL


# ---------------------------------------------------------------- discovery (fake psutil)


class _Addr(NamedTuple):
    family: int
    address: str
    netmask: str | None = None
    broadcast: str | None = None
    ptp: str | None = None


class _Stats(NamedTuple):
    isup: bool
    duplex: int
    speed: int
    mtu: int
    flags: str


def test_discovery_filters_and_sorts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    addrs = {
        "zz0": [_Addr(socket.AF_INET, "10.9.9.9"), _Addr(psutil.AF_LINK, "00:1b:21:0a:0b:0c")],
        "down0": [_Addr(socket.AF_INET, "10.8.8.8")],
        "noip0": [_Addr(psutil.AF_LINK, "00:1b:21:0a:0b:0d")],
        "aa0": [
            _Addr(socket.AF_INET6, "fe80::2%aa0"),
            _Addr(socket.AF_INET, "10.7.7.7"),
            _Addr(socket.AF_INET, "10.7.7.8"),
        ],
        "lo": [_Addr(socket.AF_INET, "127.0.0.1"), _Addr(psutil.AF_LINK, "00:00:00:00:00:00")],
        "gone0": [_Addr(socket.AF_INET, "10.6.6.6")],  # vanished between the two calls
    }
    stats = {
        "zz0": _Stats(True, 0, 10000, 9000, "up,broadcast,running,multicast"),
        "down0": _Stats(False, 0, 0, 1500, "broadcast,multicast"),
        "noip0": _Stats(True, 0, 0, 1500, "up,broadcast,running,multicast"),
        "aa0": _Stats(False, 0, 0, 1400, "up,broadcast,multicast"),  # up, no carrier
        "lo": _Stats(True, 0, 0, 65536, "up,loopback,running"),
    }
    monkeypatch.setattr(device_mod.psutil, "net_if_addrs", lambda: addrs)
    monkeypatch.setattr(device_mod.psutil, "net_if_stats", lambda: stats)
    monkeypatch.setattr(device_mod, "SYSFS_NET", tmp_path)  # no sysfs: psutil's flags

    devices = get_device_list()
    assert [d.name for d in devices] == [b"tcpv_lo", b"tcpv_aa0", b"tcpv_zz0"]
    lo, aa0, zz0 = devices
    assert lo.node_guid == guid_from_name("lo")
    assert zz0.node_guid == 0x021B21FFFE0A0B0C
    assert [str(g.ip) for g in device_gids(aa0)] == ["10.7.7.7", "10.7.7.8", "fe80::2"]
    assert query_port_attr(zz0).active_mtu == ibv_mtu.IBV_MTU_4096
    assert (query_port_attr(zz0).active_width, query_port_attr(zz0).active_speed) == (1, 4)
    assert query_port_attr(aa0).state == ibv_port_state.IBV_PORT_DOWN  # isup False
    assert query_port_attr(aa0).phys_state == 3
    assert query_port_attr(lo).state == ibv_port_state.IBV_PORT_ACTIVE
    assert device_for_gid("10.7.7.8") == aa0

    # sysfs, when present, is what decides the port state
    (tmp_path / "aa0").mkdir()
    (tmp_path / "aa0" / "operstate").write_text("up\n")
    (tmp_path / "aa0" / "flags").write_text("0x1003\n")
    (tmp_path / "aa0" / "speed").write_text("25000\n")
    port = query_port_attr(aa0)
    assert port.state == ibv_port_state.IBV_PORT_ACTIVE
    assert (port.active_width, port.active_speed) == (1, 32)
    (tmp_path / "aa0" / "flags").write_text("0x1002\n")  # IFF_UP cleared
    assert [d.ifname for d in get_device_list()] == ["lo", "zz0"]

    with pytest.raises(TcpverbsError) as info:
        query_port_attr(Device("gone0"))
    assert info.value.errno == errno.ENODEV

    monkeypatch.setattr(device_mod.psutil, "net_if_addrs", dict)
    with pytest.raises(TcpverbsError) as info:
        find_device(None)
    assert info.value.errno == errno.ENODEV


# ---------------------------------------------------------------- network namespace

_NETNS_PROBE = """
import json
from tcpverbs.device import get_device_list, device_gids, query_port_attr
print(json.dumps([
    {"name": d.name.decode(), "guid": d.node_guid, "mac": d.mac.hex(),
     "ips": [str(g.ip) for g in device_gids(d)], "gids": [g.gid for g in device_gids(d)]}
    for d in get_device_list()
]))
"""


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


class _Netns(NamedTuple):
    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str


@pytest.fixture
def veth_netns() -> Iterator[_Netns]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`)")
    pid = os.getpid()
    base = (pid & 0x3F) * 4  # a /30 inside 198.18.0.0/15 (benchmarking range, RFC 2544)
    env = _Netns(
        ns=f"tcpv-test-{pid}",
        host_if=f"tcvh{pid}",
        ns_if=f"tcvn{pid}",
        host_ip=f"198.18.{(pid >> 6) & 0xFF}.{base + 1}",
        ns_ip=f"198.18.{(pid >> 6) & 0xFF}.{base + 2}",
    )
    try:
        _run("ip", "netns", "add", env.ns)
        _run("ip", "link", "add", env.host_if, "type", "veth", "peer", "name", env.ns_if)
        _run("ip", "link", "set", env.ns_if, "netns", env.ns)
        _run("ip", "addr", "add", f"{env.host_ip}/30", "dev", env.host_if)
        _run("ip", "-n", env.ns, "addr", "add", f"{env.ns_ip}/30", "dev", env.ns_if)
        _run("ip", "link", "set", env.host_if, "up")
        _run("ip", "-n", env.ns, "link", "set", env.ns_if, "up")
        yield env
    finally:
        subprocess.run(["ip", "netns", "del", env.ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", env.host_if], capture_output=True, check=False)


@pytest.mark.netns
def test_device_in_network_namespace(veth_netns: _Netns) -> None:
    env = veth_netns
    environ = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run(
        ["ip", "netns", "exec", env.ns, sys.executable, "-c", _NETNS_PROBE],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    ).stdout
    devices = {d["name"]: d for d in json.loads(out)}
    dev = devices[f"tcpv_{env.ns_if}"]
    a, b, c, d = (int(o) for o in env.ns_ip.split("."))
    assert dev["ips"][0] == env.ns_ip
    assert dev["gids"][0] == f"0000:0000:0000:0000:0000:ffff:{a:02x}{b:02x}:{c:02x}{d:02x}"
    assert dev["guid"] == guid_from_mac(bytes.fromhex(dev["mac"]))
    assert f"tcpv_{env.host_if}" not in devices  # the host end stays outside

    # and the host sees its own end, not the namespace's
    host_dev = find_device(f"tcpv_{env.host_if}")
    assert query_gid(host_dev, 1, 0) == GID.from_ip(env.host_ip)
    assert device_for_gid(env.host_ip) == host_dev
    with pytest.raises(TcpverbsError):
        device_for_gid(env.ns_ip)
