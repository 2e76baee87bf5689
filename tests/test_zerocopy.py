"""MSG_ZEROCOPY, on every engine: forced on over loopback (where the kernel copies anyway,
but numbers and notifies every call just the same), off by the automatic policy there;
and the policy itself (:mod:`tcpverbs.engine.zerocopy`)."""

from __future__ import annotations

import errno
import ipaddress
import pathlib
from collections.abc import Iterator

import pytest

import tcpverbs as v
import tcpverbs.engine.zerocopy as zerocopy_mod
from tcpverbs.engine import available_engines
from tcpverbs.engine.zerocopy import ZEROCOPY_MIN, zerocopy_threshold
from tcpverbs.testing import ALL_ACCESS, Endpoint, poll_until, qp_pair

OP = v.ibv_wr_opcode
W = v.ibv_wc_status
SIZE = 1 << 20


@pytest.fixture(params=available_engines())
def zc_ctx(request: pytest.FixtureRequest) -> Iterator[v.Context]:
    with v.Context(name="tcpv_lo", zerocopy_min=64 * 1024, engine=request.param) as context:
        yield context


def filled_mr(end: Endpoint, seed: int) -> v.MR:
    mr = v.MR(end.pd, SIZE, ALL_ACCESS)
    mr.write(bytes((seed + i) % 251 for i in range(256)) * (SIZE // 256), SIZE)
    return mr


def zc_stats(end: Endpoint) -> dict[str, int]:
    return {k: n for k, n in end.qp.statistics().items() if k.startswith("zerocopy")}


def test_large_sends_and_writes_go_zerocopy_and_complete_after_release(
    zc_ctx: v.Context,
) -> None:
    a, b = qp_pair(zc_ctx, cap=v.QPCap(16, 16, 1, 1, 0))
    src, dst = filled_mr(a, 1), v.MR(b.pd, SIZE, ALL_ACCESS)
    for i in range(4):
        b.qp.post_recv(v.RecvWR(i, 1, [v.SGE(dst.buf, SIZE, dst.lkey)]))
        a.qp.post_send(v.SendWR(i, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, SIZE, src.lkey)]))
        assert poll_until(b.rcq)[0].byte_len == SIZE
        (wc,) = poll_until(a.scq)
        assert wc.status == W.IBV_WC_SUCCESS
        stats = zc_stats(a)
        # the completion came only once the kernel let go of every zerocopy call
        assert stats["zerocopy_released"] == stats["zerocopy_sends"] >= i + 1
    write = v.SendWR(9, OP.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(src.buf, SIZE, src.lkey)])
    write.set_wr_rdma(dst.rkey, dst.buf)
    dst.write(bytes(SIZE), SIZE)
    a.qp.post_send(write)
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert dst.read(SIZE, 0) == src.read(SIZE, 0)
    stats = zc_stats(a)
    assert stats["zerocopy_copied"] == stats["zerocopy_released"]  # loopback copies
    assert stats["zerocopy_disabled"] == 0


def test_small_messages_are_copied(zc_ctx: v.Context) -> None:
    a, b = qp_pair(zc_ctx)
    src, dst = filled_mr(a, 2), v.MR(b.pd, SIZE, ALL_ACCESS)
    b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, 4096, dst.lkey)]))
    a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, 4096, src.lkey)]))
    poll_until(b.rcq)
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert zc_stats(a)["zerocopy_sends"] == 0


def test_the_automatic_policy_leaves_loopback_alone(ctx: v.Context) -> None:
    a, b = qp_pair(ctx)
    src, dst = filled_mr(a, 3), v.MR(b.pd, SIZE, ALL_ACCESS)
    b.qp.post_recv(v.RecvWR(1, 1, [v.SGE(dst.buf, SIZE, dst.lkey)]))
    a.qp.post_send(v.SendWR(1, OP.IBV_WR_SEND, 1, 0, [v.SGE(src.buf, SIZE, src.lkey)]))
    poll_until(b.rcq)
    assert poll_until(a.scq)[0].status == W.IBV_WC_SUCCESS
    assert zc_stats(a)["zerocopy_sends"] == 0


def test_every_wr_gets_one_outcome_when_the_peer_goes_away(zc_ctx: v.Context) -> None:
    a, b = qp_pair(zc_ctx, cap=v.QPCap(32, 32, 1, 1, 0))
    src, dst = filled_mr(a, 4), v.MR(b.pd, SIZE, ALL_ACCESS)
    for i in range(8):
        write = v.SendWR(i, OP.IBV_WR_RDMA_WRITE, 1, 0, [v.SGE(src.buf, SIZE, src.lkey)])
        write.set_wr_rdma(dst.rkey, dst.buf)
        a.qp.post_send(write)
    b.qp.close()
    wcs = poll_until(a.scq, 8)
    assert sorted(wc.wr_id for wc in wcs) == list(range(8))
    assert {wc.status for wc in wcs} <= {W.IBV_WC_SUCCESS, W.IBV_WC_WR_FLUSH_ERR}
    # the last WRs may have completed before the peer's end of stream is read: wait for it
    event = zc_ctx.get_async_event(timeout=5)
    assert event.element is a.qp
    assert a.qp.query()[0].qp_state == v.ibv_qp_state.IBV_QPS_ERR


@pytest.mark.parametrize("bad", [-1, 1.5, "64k"])
def test_bad_thresholds_are_refused(bad: object) -> None:
    with pytest.raises(v.TcpverbsError) as info:
        v.Context(name="tcpv_lo", zerocopy_min=bad)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


class _Sock:
    def __init__(self, peer: str, local: str) -> None:
        self.peer, self.local = peer, local

    def getpeername(self) -> tuple[str, int]:
        return (self.peer, 4791)

    def getsockname(self) -> tuple[str, int]:
        return (self.local, 50000)


@pytest.mark.parametrize(
    ("peer", "local", "physical", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", True, 0),
        ("::1", "::1", True, 0),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", True, 0),
        ("198.18.0.2", "198.18.0.1", False, 0),  # veth, bridge, tunnel: no device link
        ("198.18.0.2", "198.18.0.1", True, ZEROCOPY_MIN),
        ("fd00::2", "fe80::1%eth0", True, ZEROCOPY_MIN),
    ],
)
def test_the_automatic_policy(
    monkeypatch: pytest.MonkeyPatch, peer: str, local: str, physical: bool, expected: int
) -> None:
    monkeypatch.setattr(zerocopy_mod, "_on_physical_nic", lambda _addr: physical)
    sock = _Sock(peer, local)
    assert zerocopy_threshold(None, sock) == expected  # type: ignore[arg-type]
    assert zerocopy_threshold(0, sock) == 0  # type: ignore[arg-type]
    assert zerocopy_threshold(4096, sock) == 4096  # type: ignore[arg-type]


def test_a_physical_nic_is_one_with_a_device_link(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "tcpv0" / "device").mkdir(parents=True)
    (tmp_path / "veth9").mkdir()
    monkeypatch.setattr(zerocopy_mod, "SYSFS_NET", tmp_path)
    devices = {"10.0.0.1": v.Device("tcpv0"), "10.0.0.2": v.Device("veth9")}

    def lookup(address: object) -> v.Device:
        if str(address) in devices:
            return devices[str(address)]
        raise v.TcpverbsError(errno.ENODEV, "no such device")

    monkeypatch.setattr(zerocopy_mod, "device_for_gid", lookup)
    on_nic = zerocopy_mod._on_physical_nic
    assert on_nic(ipaddress.ip_address("10.0.0.1"))
    assert not on_nic(ipaddress.ip_address("10.0.0.2"))
    assert not on_nic(ipaddress.ip_address("10.0.0.3"))
