"""The measuring loops of ``tcpverbs perf``, client and server side.

One rc (or stream) QP carries everything.  Control messages are SEND_WITH_IMM (the
immediate says which message; a JSON body rides in the buffer); data messages are plain
SENDs, RDMA WRITEs, READs or atomics.  The client leads:

    client                                  server
    CONFIG {test, sizes, ...}  ---------->
                               <----------  INFO {rkey, addr}
    for each size:
                               <----------  READY       (receives posted)
    ... iterations ...         <--------->  (send_bw: receives; *_lat: replies)
    DONE {count}               ---------->              (server moves on)

Bandwidth is measured at the client, from the first post to the last completion; with
``rc`` a completion means the data is in the server's memory.  Latency is per iteration;
``send_lat`` and ``write_lat`` report half the round trip, as perftest does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .. import cm
from ..context import Context
from ..cq import CQ, WC, CompChannel
from ..enums import ibv_access_flags, ibv_send_flags, ibv_wc_flags, ibv_wc_status, ibv_wr_opcode
from ..errors import TcpverbsError
from ..mr import MR
from ..pd import PD
from ..qp import QP
from ..qp_attr import QPAttr, QPCap, QPInitAttr
from ..wr import SGE, RecvWR, SendWR
from .report import BwResult, LatResult, lat_result

__all__ = ["TESTS", "PerfConfig", "run_client", "run_server"]

TESTS = ("send_bw", "send_lat", "write_bw", "write_lat", "read_bw", "read_lat", "atomic_lat")
OP = ibv_wr_opcode
CONFIG, INFO, READY, DONE = 1, 2, 3, 4
CTRL_SIZE = 4096
POOL_BYTES = 64 << 20  # at most this much buffer per side for the bandwidth tests
ACCESS = (
    ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_READ
    | ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC
)


@dataclass
class PerfConfig:
    test: str
    sizes: list[int]
    iters: int = 1000
    duration: float = 0.0  # seconds; 0 = run `iters` iterations
    tx_depth: int = 128
    rx_depth: int = 512
    inline: int = 0
    events: bool = False
    wire: str = "rc"
    cq_mod: int = 100  # signal every cq_mod-th WR (bandwidth tests)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_bw(self) -> bool:
        return self.test.endswith("_bw")


class _Endpoint:
    """One side's verbs objects: QP, one CQ, a data MR and a control MR."""

    def __init__(self, ctx: Context, cfg: PerfConfig) -> None:
        self.ctx = ctx
        self.pd = PD(ctx)
        self.channel = CompChannel(ctx) if cfg.events else None
        depth = max(cfg.tx_depth, cfg.rx_depth) + 8
        self.cq = CQ(ctx, 4 * depth, channel=self.channel)
        self.init = QPInitAttr(
            scq=self.cq,
            rcq=self.cq,
            cap=QPCap(cfg.tx_depth + 4, cfg.rx_depth + 4, 1, 1, cfg.inline),
            sq_sig_all=0,
            wire=cfg.wire,  # type: ignore[arg-type]
        )
        self.attr = QPAttr(
            qp_access_flags=ACCESS, max_rd_atomic=16, max_dest_rd_atomic=16, min_rnr_timer=1
        )
        self.ctrl = MR(self.pd, CTRL_SIZE * 2, ACCESS)  # [0, 4K) receive, [4K, 8K) send
        self.data: MR | None = None
        self.qp: QP | None = None
        self.pending: list[WC] = []
        self.recv_count = self.recv_done = 0  # send_bw server: receives posted / completed

    def data_mr(self, size: int) -> MR:
        if self.data is None or self.data.length < size:
            if self.data is not None:
                self.data.close()
            self.data = MR(self.pd, size, ACCESS)
        return self.data

    # -- completions ---------------------------------------------------------------
    def wait(self, count: int = 1, timeout: float = 60.0) -> list[WC]:
        """The next *count* completions (busy polling, or sleeping with --events)."""
        got, self.pending = self.pending[:count], self.pending[count:]
        deadline = time.monotonic() + timeout
        while len(got) < count:
            n, wcs = self.cq.poll(count - len(got))
            if n:
                for wc in wcs:
                    if wc.status != ibv_wc_status.IBV_WC_SUCCESS:
                        raise TcpverbsError(wc.status or 5, f"work request failed: {wc}")
                got.extend(wcs)
                continue
            if self.channel is not None:
                self.cq.req_notify()
                n, wcs = self.cq.poll(count - len(got))  # the event may predate arming
                got.extend(wcs)
                if not n:
                    self.channel.get_cq_event(self.cq, timeout=timeout)
                    self.cq.ack_events(1)
            if time.monotonic() > deadline:
                raise TcpverbsError(110, f"no completion within {timeout} s")
        return got

    # -- control messages ------------------------------------------------------------
    def post_ctrl_recv(self) -> None:
        assert self.qp is not None
        self.qp.post_recv(RecvWR(0, 1, [SGE(self.ctrl.buf, CTRL_SIZE, self.ctrl.lkey)]))

    def send_ctrl(self, kind: int, body: dict[str, object] | None = None) -> None:
        assert self.qp is not None
        raw = json.dumps(body).encode() if body else b""  # empty fits any receive
        self.ctrl.write(raw, len(raw), CTRL_SIZE)
        wr = SendWR(
            kind,
            OP.IBV_WR_SEND_WITH_IMM,
            1,
            kind,
            [SGE(self.ctrl.buf + CTRL_SIZE, len(raw), self.ctrl.lkey)],
            ibv_send_flags.IBV_SEND_SIGNALED,
        )
        self.qp.post_send(wr)

    def expect_ctrl(self, kind: int) -> dict[str, object]:
        """Wait for control message *kind*; completions of other WRs are kept."""
        while True:
            (wc,) = self.wait(1)
            if wc.wc_flags & ibv_wc_flags.IBV_WC_WITH_IMM:
                if wc.imm_data != kind:
                    raise TcpverbsError(71, f"expected control message {kind}, got {wc.imm_data}")
                body = json.loads(self.ctrl.read(wc.byte_len, 0) or b"{}")
                assert isinstance(body, dict)
                return body
            if wc.wr_id in (CONFIG, INFO, READY, DONE):  # our own control send completing
                continue
            self.pending.append(wc)

    def close(self) -> None:
        self.pd.close()
        self.cq.close()
        if self.channel is not None:
            self.channel.close()


# -- client ---------------------------------------------------------------------------
def run_client(
    ctx: Context,
    host: str,
    port: int,
    cfg: PerfConfig,
    progress: Callable[[str], None] | None = None,
) -> list[BwResult] | list[LatResult]:
    end = _Endpoint(ctx, cfg)
    try:
        end.qp = cm.connect(host, port, end.pd, end.init, end.attr, timeout=30)
        mine = end.data_mr(_pool_size(cfg))  # write_lat: the server writes back into it
        end.post_ctrl_recv()
        end.send_ctrl(CONFIG, {**asdict(cfg), "rkey": mine.rkey, "addr": mine.buf})
        info = end.expect_ctrl(INFO)
        rkey, raddr = int(info["rkey"]), int(info["addr"])  # type: ignore[call-overload]
        results: list[BwResult] | list[LatResult] = []
        for size in cfg.sizes:
            end.post_ctrl_recv()
            end.expect_ctrl(READY)
            if progress is not None:
                progress(f"{cfg.test} {size} B")
            if cfg.is_bw:
                results.append(_client_bw(end, cfg, size, rkey, raddr))  # type: ignore[arg-type]
            else:
                results.append(_client_lat(end, cfg, size, rkey, raddr))  # type: ignore[arg-type]
            end.send_ctrl(DONE)
        end.post_ctrl_recv()
        end.expect_ctrl(DONE)  # the server is through as well
        return results
    finally:
        end.close()


def _pool_size(cfg: PerfConfig) -> int:
    """Bytes of data buffer a side needs for every size of the run."""
    largest = max(*cfg.sizes, 8)
    return max(largest * _bw_slots(cfg, largest), 2 * largest)


def _bw_slots(cfg: PerfConfig, size: int) -> int:
    return max(1, min(max(cfg.tx_depth, cfg.rx_depth), POOL_BYTES // max(size, 1)))


def _client_bw(end: _Endpoint, cfg: PerfConfig, size: int, rkey: int, raddr: int) -> BwResult:
    assert end.qp is not None
    slots = _bw_slots(cfg, size)
    mr = end.data_mr(size * slots)
    opcode = {
        "send_bw": OP.IBV_WR_SEND,
        "write_bw": OP.IBV_WR_RDMA_WRITE,
        "read_bw": OP.IBV_WR_RDMA_READ,
    }[cfg.test]
    inline = (
        ibv_send_flags.IBV_SEND_INLINE
        if 0 < size <= cfg.inline and opcode != OP.IBV_WR_RDMA_READ
        else 0
    )
    cq_mod = max(1, min(cfg.cq_mod, cfg.tx_depth // 2 or 1))
    wrs: list[SendWR] = []
    for i in range(cq_mod):  # one chain of cq_mod WRs, the last one signaled
        slot = i % slots
        wr = SendWR(
            i,
            opcode,
            1,
            0,
            [SGE(mr.buf + slot * size, size, mr.lkey)],
            inline | (ibv_send_flags.IBV_SEND_SIGNALED if i == cq_mod - 1 else 0),
        )
        wr.set_wr_rdma(rkey, raddr + slot * size)
        if wrs:
            wrs[-1].next_wr = wr
        wrs.append(wr)
    head = wrs[0]
    posted = completed = 0
    outstanding_chains = 0
    max_chains = max(1, cfg.tx_depth // cq_mod)
    deadline = time.perf_counter() + cfg.duration if cfg.duration else None
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    while True:
        more = posted < cfg.iters if deadline is None else time.perf_counter() < deadline
        if more and outstanding_chains < max_chains:
            end.qp.post_send(head)
            posted += cq_mod
            outstanding_chains += 1
            continue
        if not outstanding_chains:
            break
        end.wait(1)
        outstanding_chains -= 1
        completed += cq_mod
        marks.append((time.perf_counter(), completed))
    elapsed = time.perf_counter() - start
    return _bw_result(size, completed, elapsed, marks, start, cfg)


def _bw_result(
    size: int,
    count: int,
    elapsed: float,
    marks: list[tuple[float, int]],
    start: float,
    cfg: PerfConfig,
) -> BwResult:
    scale = 1e9 / 8 if cfg.extra.get("report_gbits") else 1 << 20  # Gb/s or MB/s
    avg = count * size / elapsed / scale if elapsed > 0 else 0.0
    peak = avg
    if len(marks) < 8:  # too few samples for a meaningful peak
        return BwResult(size, count, peak, avg, count / elapsed / 1e6 if elapsed else 0.0, elapsed)
    window = len(marks) // 8
    prev_t, prev_n = start, 0
    for i in range(window - 1, len(marks), window):
        t, n = marks[i]
        if t > prev_t:
            peak = max(peak, (n - prev_n) * size / (t - prev_t) / scale)
        prev_t, prev_n = t, n
    return BwResult(size, count, peak, avg, count / elapsed / 1e6 if elapsed else 0.0, elapsed)


def _spin_until(end: _Endpoint, view: memoryview, index: int, value: int) -> None:
    """perftest's write-latency wait: watch our own memory; polling the CQ drives the
    progress that lands the peer's WRITE."""
    cq = end.cq
    while view[index] != value:
        cq.poll()


def _client_lat(end: _Endpoint, cfg: PerfConfig, size: int, rkey: int, raddr: int) -> LatResult:
    assert end.qp is not None
    qp = end.qp
    n = max(1, size)
    mr = end.data_mr(2 * n)  # [0, n) what we send, [n, 2n) what arrives
    samples: list[float] = []
    test = cfg.test
    iters = cfg.iters
    inline = ibv_send_flags.IBV_SEND_INLINE if 0 < size <= cfg.inline else 0
    signaled = ibv_send_flags.IBV_SEND_SIGNALED
    deadline = time.perf_counter() + cfg.duration if cfg.duration else None
    i = 0
    while (i < iters) if deadline is None else (time.perf_counter() < deadline):
        stamp = (i % 255) + 1
        if test == "send_lat":
            qp.post_recv(RecvWR(1, 1, [SGE(mr.buf + n, n, mr.lkey)]))
            t0 = time.perf_counter_ns()
            qp.post_send(
                SendWR(2, OP.IBV_WR_SEND, 1, 0, [SGE(mr.buf, size, mr.lkey)], signaled | inline)
            )
            end.wait(2)  # our send and the reply, in either order
            samples.append((time.perf_counter_ns() - t0) / 2000)
        elif test == "write_lat":
            if size:
                mr.view[n - 1] = stamp
            wr = SendWR(2, OP.IBV_WR_RDMA_WRITE, 1, 0, [SGE(mr.buf, size, mr.lkey)], inline)
            wr.set_wr_rdma(rkey, raddr + n)
            t0 = time.perf_counter_ns()
            qp.post_send(wr)
            _spin_until(end, mr.view, 2 * n - 1, stamp)
            samples.append((time.perf_counter_ns() - t0) / 2000)
        else:
            if test == "read_lat":
                wr = SendWR(
                    2, OP.IBV_WR_RDMA_READ, 1, 0, [SGE(mr.buf + n, size, mr.lkey)], signaled
                )
                wr.set_wr_rdma(rkey, raddr)
            else:
                wr = SendWR(
                    2, OP.IBV_WR_ATOMIC_FETCH_AND_ADD, 1, 0, [SGE(mr.buf, 8, mr.lkey)], signaled
                )
                wr.set_wr_atomic(rkey, raddr, 1)
            t0 = time.perf_counter_ns()
            qp.post_send(wr)
            end.wait(1)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        i += 1
    return lat_result(size, samples)


# -- server ---------------------------------------------------------------------------
def run_server(
    ctx: Context,
    host: str,
    port: int,
    ready: Callable[[int], None] | None = None,
    accept_timeout: float | None = None,
) -> PerfConfig:
    """Serve one client: follow its CONFIG, answer every size, return the config."""
    with cm.Listener(host, port) as listener:
        if ready is not None:
            ready(listener.address[1])
        end = _Endpoint(ctx, PerfConfig("send_bw", [0], tx_depth=4096, rx_depth=4096))
        try:
            end.qp = listener.accept(end.pd, end.init, end.attr, timeout=accept_timeout)
            end.post_ctrl_recv()
            body = end.expect_ctrl(CONFIG)
            peer_target = (int(body.pop("rkey")), int(body.pop("addr")))  # type: ignore[call-overload]
            cfg = PerfConfig(**body)  # type: ignore[arg-type]
            mr = end.data_mr(_pool_size(cfg))
            end.send_ctrl(INFO, {"rkey": mr.rkey, "addr": mr.buf})
            for size in cfg.sizes:
                _server_size(end, cfg, size, peer_target)
            end.send_ctrl(DONE)
            end.wait(1)  # our DONE went out
            return cfg
        finally:
            end.close()


def _server_size(end: _Endpoint, cfg: PerfConfig, size: int, peer_target: tuple[int, int]) -> None:
    assert end.qp is not None and end.data is not None
    qp, mr = end.qp, end.data
    n = max(1, size)
    if cfg.test == "send_bw":
        # receives fit the largest size of the run: they outlive the size they were posted in
        stride = max(*cfg.sizes, 1)
        slots = _bw_slots(cfg, stride)

        def repost() -> None:
            slot = end.recv_count % slots
            qp.post_recv(RecvWR(100, 1, [SGE(mr.buf + slot * stride, stride, mr.lkey)]))
            end.recv_count += 1

        while end.recv_count - end.recv_done < cfg.rx_depth:
            repost()
        end.send_ctrl(READY)
        while True:  # repost receives until the client's DONE (it arrives after the data)
            (wc,) = end.wait(1)
            if wc.wr_id == 100:
                end.recv_done += 1
                repost()
            if wc.wc_flags & ibv_wc_flags.IBV_WC_WITH_IMM and wc.imm_data == DONE:
                return
    elif cfg.test == "send_lat":
        qp.post_recv(RecvWR(100, 1, [SGE(mr.buf, n, mr.lkey)]))
        end.send_ctrl(READY)
        while True:
            (wc,) = end.wait(1)
            if wc.wc_flags & ibv_wc_flags.IBV_WC_WITH_IMM and wc.imm_data == DONE:
                return
            if wc.wr_id == 100:
                qp.post_recv(RecvWR(100, 1, [SGE(mr.buf, n, mr.lkey)]))
                qp.post_send(SendWR(101, OP.IBV_WR_SEND, 1, 0, [SGE(mr.buf + n, size, mr.lkey)], 0))
    elif cfg.test == "write_lat":
        end.post_ctrl_recv()  # for DONE
        end.send_ctrl(READY)
        view = mr.view
        stamp = 1
        while True:
            # wait for the client's write to land (or its DONE)
            while view[n - 1 + n] != stamp and not end.pending:
                n_polled, wcs = end.cq.poll()
                if n_polled:
                    end.pending.extend(wcs)
            if end.pending:
                wc = end.pending.pop(0)
                if wc.wc_flags & ibv_wc_flags.IBV_WC_WITH_IMM and wc.imm_data == DONE:
                    return
                continue
            view[n - 1] = stamp
            wr = SendWR(102, OP.IBV_WR_RDMA_WRITE, 1, 0, [SGE(mr.buf, size, mr.lkey)])
            wr.set_wr_rdma(peer_target[0], peer_target[1] + n)
            qp.post_send(wr)
            stamp = stamp % 255 + 1
    else:  # write_bw, read_bw, read_lat, atomic_lat: one-sided, the server just waits
        end.post_ctrl_recv()
        end.send_ctrl(READY)
        end.expect_ctrl(DONE)


def loopback_server(test: str, port: int = 0) -> tuple[subprocess.Popen[str], int]:
    """Start ``tcpverbs perf TEST --server-only`` as another process; return it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcpverbs.cli", "perf", test, "--print-port", "-p", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise TcpverbsError(5, f"the loopback server did not start: {line!r}")
    return proc, int(line)
