"""Real multi-host: two network namespaces joined by a veth pair (design.md §7).

Namespace A holds ``tva<pid>`` with 198.18.0.1/30 (and fd00:7c70::1/64), namespace B holds
``tvb<pid>`` with 198.18.0.2/30 (fd00:7c70::2/64).  Peers run as ``ip netns exec``
subprocesses (``tests/peer_proc.py``); no traffic leaves the two namespaces.  Everything
is deleted in teardown.  Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tcpverbs.engine.api import requester_timeout

from .peer_proc import finish, read_line, spawn

pytestmark = pytest.mark.netns

PID = os.getpid()
NS_A, NS_B = f"tcpv-a-{PID}", f"tcpv-b-{PID}"
VETH_A, VETH_B = f"tva{PID}", f"tvb{PID}"
ADDR_A, ADDR_B = "198.18.0.1", "198.18.0.2"
ADDR6_A, ADDR6_B = "fd00:7c70::1", "fd00:7c70::2"
KIB, MIB = 1024, 1024 * 1024
Netem = Callable[..., None]


@dataclass
class Net:
    ipv6: bool


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def must(*cmd: str) -> None:
    result = run(*cmd)
    assert result.returncode == 0, f"{' '.join(cmd)}: {result.stderr.strip()}"


def in_ns(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns)


def wait_link_up(ns: str, dev: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while "state UP" not in run("ip", "-n", ns, "-o", "link", "show", "dev", dev).stdout:
        assert time.monotonic() < deadline, f"{dev} in {ns} did not come up"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    created: list[str] = []
    try:
        for ns in (NS_A, NS_B):
            result = run("ip", "netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` does not work here: {result.stderr.strip()}")
            created.append(ns)
        must(
            "ip",
            "-n",
            NS_A,
            "link",
            "add",
            VETH_A,
            "type",
            "veth",
            "peer",
            "name",
            VETH_B,
            "netns",
            NS_B,
        )
        ipv6 = True
        for ns, dev, addr, addr6 in (
            (NS_A, VETH_A, ADDR_A, ADDR6_A),
            (NS_B, VETH_B, ADDR_B, ADDR6_B),
        ):
            must("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            if run("ip", "-n", ns, "addr", "add", f"{addr6}/64", "dev", dev, "nodad").returncode:
                ipv6 = False
            must("ip", "-n", ns, "link", "set", "lo", "up")
            must("ip", "-n", ns, "link", "set", dev, "up")
        wait_link_up(NS_A, VETH_A)
        wait_link_up(NS_B, VETH_B)
        yield Net(ipv6)
    finally:
        for ns in created:
            run("ip", "netns", "del", ns)


@pytest.fixture
def netem(net: Net) -> Iterator[Netem]:
    """``netem(spec)`` adds a netem qdisc with *spec* on both veth ends (removed after)."""
    if shutil.which("tc") is None:
        pytest.skip("`tc` is not installed")
    added: list[tuple[str, str]] = []

    def add(*spec: str) -> None:
        for ns, dev in ((NS_A, VETH_A), (NS_B, VETH_B)):
            result = run(*in_ns(ns), "tc", "qdisc", "add", "dev", dev, "root", "netem", *spec)
            if result.returncode != 0:
                pytest.skip(f"the netem qdisc is unavailable: {result.stderr.strip()}")
            added.append((ns, dev))

    yield add
    for ns, dev in added:
        run(*in_ns(ns), "tc", "qdisc", "del", "dev", dev, "root")


@pytest.fixture
def black_hole(net: Net) -> Iterator[Callable[[bool], None]]:
    """``black_hole(True)`` drops every packet between A and B (nftables in B, both
    directions); ``black_hole(False)`` lifts it.  Lifted after the test."""
    if shutil.which("nft") is None:
        pytest.skip("`nft` is not installed (Debian package nftables)")
    table = ("inet", "tcpv_black_hole")

    def switch(on: bool) -> None:
        if on:
            rules = (
                f"table {table[0]} {table[1]} {{\n"
                f"  chain in {{ type filter hook input priority 0; ip saddr {ADDR_A} drop; }}\n"
                f"  chain out {{ type filter hook output priority 0; ip daddr {ADDR_A} drop; }}\n"
                "}\n"
            )
            result = subprocess.run(
                [*in_ns(NS_B), "nft", "-f", "-"],
                input=rules,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                pytest.skip(f"nftables does not work here: {result.stderr.strip()}")
        else:
            must(*in_ns(NS_B), "nft", "delete", "table", *table)

    yield switch
    run(*in_ns(NS_B), "nft", "delete", "table", *table)


def probe_through(
    wire: str, black_hole: Callable[[bool], None], hole: float | None, *qp_attr: str
) -> dict[str, Any]:
    """An echo server in A, a ``{wire}-probe`` in B: once both are up, a black hole opens
    (lifted after *hole* seconds, or never), the probe posts 8 SENDs of 64 KiB; its report."""
    count, size = 8, 64 * KIB
    sizes = ("--count", str(count + 1), "--size", str(size))
    with spawn(f"{wire}-echo", "--host", ADDR_A, *sizes, prefix=in_ns(NS_A)) as server:
        port = read_line(server)
        probe_args = ("--count", str(count), "--size", str(size), *qp_attr)
        with spawn(f"{wire}-probe", ADDR_A, port, *probe_args, prefix=in_ns(NS_B)) as probe:
            assert read_line(probe) == "ready"
            black_hole(True)
            assert probe.stdin is not None
            probe.stdin.write("go\n")
            probe.stdin.flush()
            if hole is not None:
                time.sleep(hole)
                black_hole(False)
            report: dict[str, Any] = json.loads(read_line(probe))
    return report


def test_black_hole_times_out_as_verbs_say(wire: str, black_hole: Callable[[bool], None]) -> None:
    """timeout 16, retry_cnt 3: 4.096 µs * 2^16 * 4 = 1.07 s.  Then the oldest WR
    completes IBV_WC_RETRY_EXC_ERR, the rest flush, the QP is in ERR with an event."""
    limit = requester_timeout(16, 3)
    assert limit is not None and 1.0 < limit < 1.1
    report = probe_through(wire, black_hole, None, "--qp-timeout", "16", "--retry-cnt", "3")
    assert report["sends"] == ["IBV_WC_RETRY_EXC_ERR"] + ["IBV_WC_WR_FLUSH_ERR"] * 7, report
    assert limit <= report["first_error"] < 2 * limit, report
    assert report["error"][0] == errno.ETIMEDOUT and "timeout 16" in report["error"][1]
    assert report["event"] == "IBV_EVENT_QP_FATAL" and report["state"] == "IBV_QPS_ERR"


def test_black_hole_that_lifts_in_time_loses_nothing(
    wire: str, black_hole: Callable[[bool], None]
) -> None:
    """timeout 18, retry_cnt 3 (4.3 s) and a 1 s black hole: TCP retransmits, all is well."""
    report = probe_through(wire, black_hole, 1.0, "--qp-timeout", "18", "--retry-cnt", "3")
    assert report["sends"] == ["IBV_WC_SUCCESS"] * 8, report
    assert report["echo_intact"] and report["error"] is None, report
    assert report["state"] == "IBV_QPS_RTS"


def echo_between_namespaces(wire: str, host: str, count: int, size: int, *extra: str) -> None:
    """A ``{wire}-echo`` server in A, a ``{wire}-client`` in B; the client verifies."""
    sizes = ("--count", str(count), "--size", str(size), *extra)
    with spawn(f"{wire}-echo", "--host", host, *sizes, prefix=in_ns(NS_A)) as server:
        port = read_line(server)
        with spawn(f"{wire}-client", host, port, *sizes, prefix=in_ns(NS_B)) as client:
            finish(client, timeout=60)
        finish(server)


def test_device_in_namespace(net: Net) -> None:
    code = (
        "import tcpverbs as v\n"
        f"ctx = v.Context(name='tcpv_{VETH_A}')\n"
        "print(ctx.query_gid(1, 0).ip)\n"
        "print(sorted(d.name.decode() for d in v.get_device_list()))\n"
    )
    result = run(*in_ns(NS_A), sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    gid_ip, devices = result.stdout.splitlines()
    assert gid_ip == ADDR_A
    assert devices == repr(sorted(["tcpv_lo", f"tcpv_{VETH_A}"]))


@pytest.mark.parametrize(("size", "count"), [(64, 16), (64 * KIB, 8), (4 * MIB, 2)])
def test_echo_between_namespaces(net: Net, wire: str, size: int, count: int) -> None:
    echo_between_namespaces(wire, ADDR_A, count, size)


def test_echo_between_namespaces_ipv6(net: Net, wire: str) -> None:
    if not net.ipv6:
        pytest.skip("IPv6 is not available in the namespaces")
    echo_between_namespaces(wire, ADDR6_A, 8, 64 * KIB)


def test_ud_datagrams_between_namespaces(net: Net) -> None:
    """UD across a veth pair, IPv4 and IPv6: each echo goes back by the AH made from its
    completion's GRH (the answering side never learns the client's address otherwise).
    1000 bytes a message: one veth frame each."""
    for host in (ADDR_A, ADDR6_A) if net.ipv6 else (ADDR_A,):
        echo_between_namespaces("ud", host, 16, 1000)


def test_echo_with_zerocopy_forced_on(net: Net) -> None:
    """veth delivers later than loopback, so a zerocopy write's buffers (its small frame
    headers included) must stay alive until the kernel's notification: data intact."""
    echo_between_namespaces("rc", ADDR_A, 8, 1 * MIB, "--zerocopy-min", "4096")


def test_echo_with_delay(netem: Netem, wire: str) -> None:
    netem("delay", "20ms")
    echo_between_namespaces(wire, ADDR_A, 4, 256 * KIB)


def test_rc_4mib_with_loss(netem: Netem) -> None:
    netem("loss", "5%")
    echo_between_namespaces("rc", ADDR_A, 1, 4 * MIB)


def test_connect_by_gid_and_qpn_across_namespaces(net: Net) -> None:
    """The classic out-of-band exchange between two hosts: B dials A (its GID is larger),
    and the connection waits at A's listener until A's QP reaches RTR."""
    from .test_oob import run_pair

    run_pair(
        f"tcpv_{VETH_A}", f"tcpv_{VETH_B}", target_prefix=in_ns(NS_A), initiator_prefix=in_ns(NS_B)
    )
