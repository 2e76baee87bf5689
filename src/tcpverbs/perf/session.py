"""The measuring loops of ``tcpverbs perf``, client and server side.

Connections.  The first TCP connection carries a *control QP*: always ``rc``, with a
small CQ of its own.  Then come ``-q`` *data QPs* (their own connections, accepted in
the order the client connected them), all on one shared CQ per side as in perftest, in
the wire mode the user chose.  Why a separate control QP even for ``rc``:

- ``--wire stream`` has SEND only (no SEND_WITH_IMM, no message boundaries), so control
  messages cannot share a stream with data; both ends here are tcpverbs, so the control
  QP can always be ``rc``.
- On a shared QP a control message would land in whatever receive comes next, a data
  buffer that may be smaller than the message (``-b`` sends results back in DONE).
- On its own CQ the control QP costs the measuring loops nothing: an empty ``CQ.poll``
  reads every QP of that CQ, so a control QP on the data CQ would add a system call to
  every empty poll.  Its messages are read by the progress thread; the loops only look
  at ``len(ctrl.cq)``.

Control messages are SEND_WITH_IMM (the immediate says which message; a JSON body rides
in the buffer).  The client leads:

    client                                  server
    CONFIG {test, sizes, qps, ...}  ----->
    connect -q data QPs             ----->  (accepted in order)
                               <----------  INFO {rkey, addr}
    for each size:
                               <----------  READY       (receives posted)
    READY (only with -b)       ---------->
    ... iterations ...         <--------->  (send_bw: receives; *_lat: replies)
    DONE {sent, result}        ---------->
                               <----------  DONE {sent, result}   (only with -b)
    after the last size:       <----------  FIN

``sent`` holds ``[messages, bytes]`` per data QP, so the receiving side knows when it has
everything, whatever the order of the connections (``stream``: a receive takes whatever
bytes have arrived, several messages or part of one, so only bytes count there).

Bandwidth is measured by the side that posts the data, from the first post to the last
completion; with ``rc`` a completion means the data is in the peer's memory, with
``stream`` that the peer's kernel acknowledged it.  ``-q N`` spreads chains of WRs
round-robin over the QPs and reports the aggregate; ``-n`` counts per QP, as in perftest.
With ``-b`` both sides send at once, the server reports its own measurement in its
DONE, and the client prints the sum of both directions (as perftest does).  Latency is
per iteration; ``send_lat`` and ``write_lat`` report half the round trip, as perftest does.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from .. import cm
from ..context import Context
from ..cq import CQ, WC, CompChannel
from ..enums import (
    ibv_access_flags,
    ibv_send_flags,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from ..errors import TcpverbsError
from ..mr import MR
from ..pd import PD
from ..qp import QP
from ..qp_attr import QPAttr, QPCap, QPInitAttr
from ..wr import SGE, RecvWR, SendWR
from .report import BwResult, LatResult, bw_sum, lat_result

__all__ = ["TESTS", "PerfConfig", "run_client", "run_server"]

TESTS = ("send_bw", "send_lat", "write_bw", "write_lat", "read_bw", "read_lat", "atomic_lat")
OP = ibv_wr_opcode
RECV = ibv_wc_opcode.IBV_WC_RECV  # bit set in the opcode of every receive completion
CONFIG, INFO, READY, DONE, FIN = 1, 2, 3, 4, 5
CTRL_SIZE = 4096
CTRL_SLOTS = 4  # control receives kept posted, and control sends in flight at most
CYCLE_BUFFER = 4096  # bandwidth tests: a QP's WRs cycle through this much buffer (perftest)
TIMEOUT = 60.0  # seconds without progress before a side gives up
DATA_RECV = 100  # wr_id of send_bw's receives
REPOST_BATCH = 16  # send_bw's receives are posted again in lists of up to this many
POLL_BATCH = 64  # completions a bandwidth test takes per poll
CTRL_EVERY = 64  # empty polls of a latency loop between two looks at the control QP
CLOCK_EVERY = 4096  # ... and at the clock (a multiple of CTRL_EVERY)
ACCESS = (
    ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_READ
    | ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC
)
Body = dict[str, object]


@dataclass
class PerfConfig:
    test: str
    sizes: list[int]
    iters: int = 1000  # per QP
    duration: float = 0.0  # seconds; 0 = run `iters` iterations
    tx_depth: int = 128
    rx_depth: int = 512
    inline: int = 0
    events: bool = False
    wire: str = "rc"
    cq_mod: int = 100  # signal every cq_mod-th WR (bandwidth tests)
    extra: dict[str, str] = field(default_factory=dict)
    qps: int = 1
    bidirectional: bool = False

    @property
    def is_bw(self) -> bool:
        return self.test.endswith("_bw")


def _qp_attr() -> QPAttr:
    # a fresh one per QP: the handoff stores the QP's socket in it
    return QPAttr(qp_access_flags=ACCESS, max_rd_atomic=16, max_dest_rd_atomic=16, min_rnr_timer=1)


def _check_wc(wc: WC) -> WC:
    if wc.status != ibv_wc_status.IBV_WC_SUCCESS:
        raise TcpverbsError(wc.status or errno.EIO, f"work request failed: {wc}")
    return wc


class _Control:
    """The control QP (always rc) with its own CQ, receives always posted, JSON bodies."""

    def __init__(self, ctx: Context, pd: PD, channel: CompChannel) -> None:
        self.channel = channel
        self.cq = CQ(ctx, 4 * CTRL_SLOTS, channel=channel)
        self.init = QPInitAttr(
            scq=self.cq, rcq=self.cq, cap=QPCap(CTRL_SLOTS, CTRL_SLOTS, 1, 1, 0), sq_sig_all=0
        )
        # CTRL_SLOTS receive buffers, then CTRL_SLOTS send buffers
        self.mr = MR(pd, 2 * CTRL_SLOTS * CTRL_SIZE, ACCESS)
        self.qp: QP | None = None
        self.inbox: deque[tuple[int, Body]] = deque()
        self.sent = self.sends_done = 0
        self.broken: TcpverbsError | None = None

    def start(self, qp: QP) -> None:
        self.qp = qp
        for slot in range(CTRL_SLOTS):
            self._post_recv(slot)

    def _post_recv(self, slot: int) -> None:
        assert self.qp is not None
        sge = SGE(self.mr.buf + slot * CTRL_SIZE, CTRL_SIZE, self.mr.lkey)
        self.qp.post_recv(RecvWR(slot, 1, [sge]))

    def send(self, kind: int, body: Body | None = None) -> None:
        assert self.qp is not None
        deadline = time.monotonic() + TIMEOUT
        while self.sent - self.sends_done >= CTRL_SLOTS:  # its buffer may still be in use
            self._sleep(deadline)
        raw = json.dumps(body).encode() if body else b""  # empty fits any receive
        offset = (CTRL_SLOTS + self.sent % CTRL_SLOTS) * CTRL_SIZE
        self.mr.write(raw, len(raw), offset)
        sge = SGE(self.mr.buf + offset, len(raw), self.mr.lkey)
        flags = ibv_send_flags.IBV_SEND_SIGNALED
        self.qp.post_send(SendWR(kind, OP.IBV_WR_SEND_WITH_IMM, 1, kind, [sge], flags))
        self.sent += 1

    def pump(self) -> None:
        """Take the completions that are there, without waiting."""
        n, wcs = self.cq.poll(4 * CTRL_SLOTS)
        for wc in wcs[:n]:
            if wc.status != ibv_wc_status.IBV_WC_SUCCESS:
                # Not raised yet: the peer closes right after our last message (FIN, or
                # its acknowledgement), which flushes our spare receives behind it, and
                # what arrived before the flush still counts.
                self.broken = self.broken or TcpverbsError(
                    wc.status or errno.EIO, f"control QP failed: {wc}"
                )
                continue
            if not wc.opcode & RECV:
                self.sends_done += 1
                continue
            raw = self.mr.read(wc.byte_len, wc.wr_id * CTRL_SIZE)
            self.inbox.append((wc.imm_data, json.loads(raw or b"{}")))
            self._post_recv(wc.wr_id)

    def has_message(self) -> bool:
        """Cheap enough for a measuring loop: ``len`` makes no progress (no system call)."""
        if len(self.cq):
            self.pump()
        if not self.inbox and self.broken is not None:
            raise self.broken  # nothing more will come
        return bool(self.inbox)

    def expect(self, kind: int) -> Body:
        """Wait for control message *kind* (they come in order: another one is an error)."""
        deadline = time.monotonic() + TIMEOUT
        while not self.has_message():
            self._sleep(deadline)
        got, body = self.inbox.popleft()
        if got != kind:
            raise TcpverbsError(errno.EPROTO, f"expected control message {kind}, got {got}")
        return body

    def flush(self) -> None:
        """Wait until the peer has every control message we sent."""
        deadline = time.monotonic() + TIMEOUT
        while self.sends_done < self.sent:
            self._sleep(deadline)

    def _sleep(self, deadline: float) -> None:
        # control messages are rare: block on the channel instead of spinning a core
        if self.broken is not None:
            raise self.broken
        self.cq.req_notify()
        if len(self.cq):
            self.pump()
            return
        _sleep_on(self.channel, deadline)


def _sleep_on(channel: CompChannel, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TcpverbsError(errno.ETIMEDOUT, f"no completion within {TIMEOUT} s")
    channel.get_cq_event(timeout=remaining).ack_events(1)  # the channel serves two CQs


class _Endpoint:
    """One side's verbs objects: the control QP, the data QPs on one CQ, the data MR."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pd = PD(ctx)
        self.channel = CompChannel(ctx)
        self.ctrl = _Control(ctx, self.pd, self.channel)
        self.events = False
        self._cq: CQ | None = None
        self.data_init = QPInitAttr()
        self.qps: list[QP] = []
        self.index: dict[int, int] = {}  # qp_num -> position in qps
        self.data: MR | None = None
        self.pending: deque[WC] = deque()
        self.receiver: _Receiver | None = None

    @property
    def cq(self) -> CQ:
        assert self._cq is not None, "open_data() first"
        return self._cq

    def open_data(self, cfg: PerfConfig) -> None:
        """The shared data CQ, large enough for every queue of every data QP."""
        self.events = cfg.events
        depth = cfg.tx_depth + cfg.rx_depth + 8
        self._cq = CQ(self.ctx, cfg.qps * depth, channel=self.channel if cfg.events else None)
        self.data_init = QPInitAttr(
            scq=self._cq,
            rcq=self._cq,
            cap=QPCap(cfg.tx_depth + 4, cfg.rx_depth + 4, 1, 1, cfg.inline),
            sq_sig_all=0,
            wire=cfg.wire,  # type: ignore[arg-type]
        )

    def add_qp(self, qp: QP) -> None:
        self.index[qp.qp_num] = len(self.qps)
        self.qps.append(qp)

    def data_mr(self, size: int) -> MR:
        if self.data is None or self.data.length < size:
            if self.data is not None:
                self.data.close()
            self.data = MR(self.pd, size, ACCESS)
        return self.data

    # -- completions ---------------------------------------------------------------
    def next_wc(
        self, watch_ctrl: bool = False, spare: Callable[[WC], bool] | None = None
    ) -> WC | None:
        """The next data completion (busy polling, or sleeping with --events); with
        *watch_ctrl*, None as soon as a control message is waiting instead.  Failed
        completions raise, except those *spare* says are expected."""
        cq = self.cq
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.pending:
                wc = self.pending[0]
                if wc.status == ibv_wc_status.IBV_WC_SUCCESS or (spare and spare(wc)):
                    self.pending.popleft()
                    if wc.status == ibv_wc_status.IBV_WC_SUCCESS:
                        return wc
                elif watch_ctrl and self.ctrl.has_message():
                    return None  # the peer's DONE may be what excuses this failure
                else:
                    _check_wc(wc)
                continue
            n, wcs = cq.poll(POLL_BATCH)
            if n:
                # taken one at a time above: a batch may hold the successes that still
                # count followed by flushes that *spare* may excuse
                self.pending.extend(wcs)
                continue
            if watch_ctrl and self.ctrl.has_message():
                return None
            if self.events:
                cq.req_notify()
                if watch_ctrl:
                    self.ctrl.cq.req_notify()
                if not len(cq) and not (watch_ctrl and len(self.ctrl.cq)):
                    _sleep_on(self.channel, deadline)
            else:
                _check_deadline(deadline)

    def next_wcs(
        self, watch_ctrl: bool = False, spare: Callable[[WC], bool] | None = None
    ) -> list[WC] | None:
        """The data completions that are ready, at least one, all of them successful (a
        failure comes first from :meth:`next_wc`); None as :meth:`next_wc` says it.  The
        bandwidth tests' loop takes completions in batches, as perftest's does: a call per
        completion would cost more than the message."""
        if not self.pending:
            n, wcs = self.cq.poll(POLL_BATCH)
            if n and not any(wc.status for wc in wcs):  # the common case: all succeeded
                return wcs
            self.pending.extend(wcs)
        wc = self.next_wc(watch_ctrl, spare)
        if wc is None:
            return None
        got, pending = [wc], self.pending
        while pending and pending[0].status == ibv_wc_status.IBV_WC_SUCCESS:
            got.append(pending.popleft())
        return got

    def wait(self, count: int = 1) -> list[WC]:
        """The next *count* data completions."""
        got: list[WC] = []
        while len(got) < count:
            wc = self.next_wc()
            assert wc is not None
            got.append(wc)
        return got

    def close(self) -> None:
        self.pd.close()
        for cq in (self._cq, self.ctrl.cq):
            if cq is not None:
                cq.close()
        self.channel.close()


# -- client ---------------------------------------------------------------------------
def run_client(
    ctx: Context,
    host: str,
    port: int,
    cfg: PerfConfig,
    progress: Callable[[str], None] | None = None,
) -> list[BwResult] | list[LatResult]:
    end = _Endpoint(ctx)
    try:
        end.ctrl.start(cm.connect(host, port, end.pd, end.ctrl.init, _qp_attr(), timeout=30))
        end.open_data(cfg)
        mine = end.data_mr(_pool_size(cfg))  # write_lat: the server writes back into it
        end.ctrl.send(CONFIG, {**asdict(cfg), "rkey": mine.rkey, "addr": mine.buf})
        for _ in range(cfg.qps):
            end.add_qp(cm.connect(host, port, end.pd, end.data_init, _qp_attr(), timeout=30))
        info = end.ctrl.expect(INFO)
        target = (int(info["rkey"]), int(info["addr"]))  # type: ignore[call-overload]
        results: list[BwResult] | list[LatResult] = []
        for size in cfg.sizes:
            if progress is not None:
                progress(f"{cfg.test} {size} B")
            if cfg.is_bw:
                results.append(_client_bw(end, cfg, size, target))  # type: ignore[arg-type]
            else:
                end.ctrl.expect(READY)
                results.append(_client_lat(end, cfg, size, target))  # type: ignore[arg-type]
                end.ctrl.send(DONE)
        end.ctrl.expect(FIN)  # the server is through as well
        return results
    finally:
        end.close()


def _pool_size(cfg: PerfConfig) -> int:
    """Bytes of data buffer a side needs for every size of the run: registered once, so
    the rkey the peer was given stays valid from the first size to the last."""
    sizes = [*cfg.sizes, 8]
    largest = max(sizes)
    return max(*(size * _bw_slots(cfg, size) for size in sizes), 2 * largest)


def _bw_slots(cfg: PerfConfig, size: int) -> int:
    """Buffers a bandwidth test cycles through, as perftest does: messages of up to half a
    page take successive places in one page, larger ones all use one buffer.  The memory
    stays in cache, as the plain-socket peer's single buffer does: what is compared is the
    cost of moving messages, not of touching new memory (which both would pay alike)."""
    return max(1, min(max(cfg.tx_depth, cfg.rx_depth), CYCLE_BUFFER // max(size, 1)))


def _client_bw(end: _Endpoint, cfg: PerfConfig, size: int, target: tuple[int, int]) -> BwResult:
    receiving = cfg.bidirectional and cfg.test == "send_bw"
    if receiving:
        _receiver(end, cfg).top_up()
    end.ctrl.expect(READY)
    if cfg.bidirectional:
        end.ctrl.send(READY)  # our receives are posted too: the server may start
    mine, peer = _bw_run(end, cfg, size, target, receiving, peer_sends=cfg.bidirectional)
    assert mine is not None
    if not cfg.bidirectional:
        return mine
    theirs = BwResult.from_dict(peer["result"])  # type: ignore[arg-type]
    return bw_sum([mine, theirs])


class _Sender:
    """The posting side of a bandwidth test: chains of ``cq_mod`` WRs (the last one
    signaled), at most ``tx_depth`` WRs outstanding per QP, QPs served round-robin."""

    def __init__(self, end: _Endpoint, cfg: PerfConfig, size: int, target: tuple[int, int]) -> None:
        self.qps, self.size, self.cfg = end.qps, size, cfg
        self.cq_mod = max(1, min(cfg.cq_mod, cfg.tx_depth // 2 or 1))
        self.head = self._chain(end, target)
        self.max_chains = max(1, cfg.tx_depth // self.cq_mod)
        count = len(self.qps)
        self.posted, self.outstanding, self.completed = [0] * count, [0] * count, [0] * count
        self.in_flight = self.total = 0
        self.deadline = time.perf_counter() + cfg.duration if cfg.duration else None
        self.marks: list[tuple[float, int]] = []
        self.start = time.perf_counter()

    def _chain(self, end: _Endpoint, target: tuple[int, int]) -> SendWR:
        # one chain serves every QP: post_send copies what it needs out of the WRs
        size, cfg = self.size, self.cfg
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
        last = self.cq_mod - 1
        head: SendWR | None = None
        for i in reversed(range(self.cq_mod)):
            slot = i % slots
            flags = inline | (ibv_send_flags.IBV_SEND_SIGNALED if i == last else 0)
            wr = SendWR(i, opcode, 1, 0, [SGE(mr.buf + slot * size, size, mr.lkey)], flags)
            wr.set_wr_rdma(target[0], target[1] + slot * size)
            wr.next_wr, head = head, wr
        assert head is not None
        return head

    def _more(self, i: int) -> bool:
        if self.deadline is None:
            return self.posted[i] < self.cfg.iters
        return time.perf_counter() < self.deadline

    def post(self) -> None:
        """Fill every QP's send queue, one chain per QP at a time."""
        posted = True
        while posted:
            posted = False
            for i, qp in enumerate(self.qps):
                if self.outstanding[i] < self.max_chains and self._more(i):
                    qp.post_send(self.head)
                    self.posted[i] += self.cq_mod
                    self.outstanding[i] += 1
                    self.in_flight += 1
                    posted = True

    def chain_done(self, i: int) -> None:
        self.outstanding[i] -= 1
        self.in_flight -= 1
        self.completed[i] += self.cq_mod
        self.total += self.cq_mod
        self.marks.append((time.perf_counter(), self.total))

    @property
    def finished(self) -> bool:
        return not self.in_flight and not any(self._more(i) for i in range(len(self.qps)))

    def sent(self) -> list[list[int]]:
        return [[n, n * self.size] for n in self.completed]

    def result(self) -> BwResult:
        elapsed = (self.marks[-1][0] if self.marks else time.perf_counter()) - self.start
        r = _bw_result(self.size, self.total, elapsed, self.marks, self.start, self.cfg)
        r.qps, r.bytes, r.per_qp = len(self.qps), self.total * self.size, list(self.completed)
        return r


class _Receiver:
    """send_bw's receiving side: receives posted on every QP all along (they outlive the
    size they were posted in, so they fit the largest size of the run), put back as whole
    post lists built once: perftest reposts in C; here a RecvWR and a post_recv call per
    message would cost more than the receive itself."""

    def __init__(self, end: _Endpoint, cfg: PerfConfig) -> None:
        self.qps, self.index = end.qps, end.index
        self.stride = max(*cfg.sizes, 1)
        slots = _bw_slots(cfg, self.stride)
        mr = end.data_mr(self.stride * slots)
        # lists of `repost` WRs; a list goes back once that many of a QP's receives are done
        self.repost = max(1, min(REPOST_BATCH, cfg.rx_depth // 4))
        lists = max(1, cfg.rx_depth // self.repost)
        self.rx_depth = lists * self.repost  # kept posted per QP
        self.lists = [self._post_list(mr, k * self.repost, slots) for k in range(lists)]
        self.whole_messages = cfg.wire == "rc"  # stream: a receive is any number of bytes
        self.posted = [0] * len(self.qps)  # outstanding per QP
        self.count = 0  # lists posted
        self.got: list[list[int]] = []
        self.want: list[list[int]] | None = None

    def _post_list(self, mr: MR, first: int, slots: int) -> RecvWR:
        """`repost` receives linked once (distinct WRs: one may appear once per list)."""
        head: RecvWR | None = None
        for n in reversed(range(first, first + self.repost)):
            sge = SGE(mr.buf + (n % slots) * self.stride, self.stride, mr.lkey)
            head = RecvWR(DATA_RECV, 1, [sge], head)
        assert head is not None
        return head

    def top_up(self) -> None:
        """Post lists on every QP until each has ``rx_depth`` receives outstanding."""
        posted, lists, repost, rx_depth = self.posted, self.lists, self.repost, self.rx_depth
        for i, qp in enumerate(self.qps):
            while posted[i] + repost <= rx_depth:
                qp.post_recv(lists[self.count % len(lists)])
                self.count += 1
                posted[i] += repost

    def begin(self) -> None:
        self.got = [[0, 0] for _ in self.qps]
        self.want = None

    def take(self, wcs: list[WC]) -> list[WC]:
        """Count the receives among *wcs* (successful) and put their places back; the
        other completions are returned."""
        others: list[WC] = []
        got, posted, index = self.got, self.posted, self.index
        for wc in wcs:
            if wc.opcode & RECV:
                i = index[wc.qp_num]
                counts = got[i]
                counts[0] += 1
                counts[1] += wc.byte_len
                posted[i] -= 1
            else:
                others.append(wc)
        self.top_up()
        return others

    def qp_complete(self, i: int) -> bool:
        if self.want is None:
            return False
        (got_msgs, got_bytes), (want_msgs, want_bytes) = self.got[i], self.want[i]
        return got_bytes >= want_bytes and (got_msgs >= want_msgs or not self.whole_messages)

    @property
    def complete(self) -> bool:
        return all(self.qp_complete(i) for i in range(len(self.qps)))

    def spare(self, wc: WC) -> bool:
        """A flushed receive of a QP that has everything: the peer is through and closed
        it, while (stream) other QPs may still have bytes waiting in the kernel."""
        return (
            wc.status == ibv_wc_status.IBV_WC_WR_FLUSH_ERR
            and wc.wr_id == DATA_RECV
            and self.qp_complete(self.index[wc.qp_num])
        )


def _receiver(end: _Endpoint, cfg: PerfConfig) -> _Receiver:
    if end.receiver is None:
        end.receiver = _Receiver(end, cfg)
    return end.receiver


def _bw_run(
    end: _Endpoint,
    cfg: PerfConfig,
    size: int,
    target: tuple[int, int],
    receiving: bool,
    peer_sends: bool,
    sending: bool = True,
) -> tuple[BwResult | None, Body]:
    """One size of a bandwidth test on this side: send (unless not *sending*), take in the
    peer's SENDs (*receiving*), and wait for the peer's DONE (if *peer_sends*).  Returns
    our measurement and the peer's DONE body."""
    rx = _receiver(end, cfg) if receiving else None
    if rx is not None:
        rx.begin()
    tx = _Sender(end, cfg, size, target) if sending else None
    mine: BwResult | None = None
    peer: Body | None = None if peer_sends else {}
    while True:
        if tx is not None and mine is None:
            tx.post()
            if tx.finished:
                mine = tx.result()
                end.ctrl.send(DONE, {"sent": tx.sent(), "result": mine.as_dict()})
        if peer is None and end.ctrl.has_message():
            peer = end.ctrl.expect(DONE)
            if rx is not None:
                rx.want = peer["sent"]  # type: ignore[assignment]
        if (tx is None or mine is not None) and peer is not None and (rx is None or rx.complete):
            return mine, peer
        wcs = end.next_wcs(watch_ctrl=peer is None, spare=rx.spare if rx is not None else None)
        if wcs is None:
            continue
        if rx is not None:
            wcs = rx.take(wcs)
        for wc in wcs:
            if tx is None or wc.opcode & RECV:
                raise TcpverbsError(errno.EPROTO, f"unexpected completion {wc}")
            tx.chain_done(end.index[wc.qp_num])


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
    # too few samples for a meaningful peak; with -q the QPs' chains complete in bursts
    # of about one per QP, so a window must span at least one burst
    if len(marks) < 8 * cfg.qps:
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


def _client_send_lat_polling(
    end: _Endpoint, recv_wr: RecvWR, send_wr: SendWR, iters: int, deadline: float | None
) -> list[float]:
    """send_lat's client with busy polling on an rc QP, as perftest's C loop: post the
    receive and the send, poll until both completed (an rc SEND arrives whole), stamp.
    Every instruction here is on the round trip measured: the general loop's generator
    and helpers cost about 6 400 instructions a round trip (26 400 against 20 000 in
    all, ``benchmarks/perf_instructions.py --test send_lat``).  The clock is looked at
    every CLOCK_EVERY empty polls, for a reply that never comes."""
    qp = end.qps[0]
    poll, post_recv, post_send = end.cq.poll, qp.post_recv, qp.post_send
    clock = time.perf_counter_ns
    samples: list[float] = []
    append = samples.append
    i = 0
    while (i < iters) if deadline is None else (time.perf_counter() < deadline):
        post_recv(recv_wr)
        t0 = clock()
        post_send(send_wr)
        waiting = 2  # the send's completion and the reply's
        spins = 0
        stale = 0.0  # set at the first look at the clock: none on a quick round trip
        while waiting:
            n, wcs = poll(2)
            if n:
                for wc in wcs:
                    if wc.status:
                        _check_wc(wc)
                waiting -= n
                continue
            spins += 1
            if not spins % CLOCK_EVERY:
                stale = _overdue_at(stale)
        append((clock() - t0) / 2000)
        i += 1
    return samples


def _await_message(completions: Iterator[WC], qp: QP, sge: SGE, sends: int = 0) -> None:
    """Take *sends* send completions and one message of ``sge.length`` bytes posted into
    *sge* (see :func:`_landed`) from *completions* (:func:`_data_completions`)."""
    arrived = 0
    whole = False
    for wc in completions:
        if not wc.opcode & RECV:
            sends -= 1
        else:
            arrived += wc.byte_len
            whole = _landed(qp, sge, arrived)
        if whole and not sends:
            return


def _landed(qp: QP, sge: SGE, arrived: int) -> bool:
    """*arrived* bytes of the message expected in *sge* are there: is it whole?  A stream
    receive completes with whatever bytes arrived, so the rest of the message gets a new
    receive behind them."""
    if arrived >= sge.length:
        return True
    qp.post_recv(RecvWR(1, 1, [SGE(sge.addr + arrived, sge.length - arrived, sge.lkey)]))
    return False


def _overdue_at(stale: float) -> float:
    """A spinning loop's look at the clock: the time TIMEOUT from its first look (0: none
    yet), by which a completion is overdue; ETIMEDOUT past it."""
    if not stale:
        return time.monotonic() + TIMEOUT
    _check_deadline(stale)
    return stale


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TcpverbsError(errno.ETIMEDOUT, f"no completion within {TIMEOUT} s")


def _client_lat(end: _Endpoint, cfg: PerfConfig, size: int, target: tuple[int, int]) -> LatResult:
    qp = end.qps[0]
    rkey, raddr = target
    n = max(1, size)
    mr = end.data_mr(2 * n)  # [0, n) what we send, [n, 2n) what arrives
    samples: list[float] = []
    test = cfg.test
    iters = cfg.iters
    inline = ibv_send_flags.IBV_SEND_INLINE if 0 < size <= cfg.inline else 0
    signaled = ibv_send_flags.IBV_SEND_SIGNALED
    deadline = time.perf_counter() + cfg.duration if cfg.duration else None
    reply = SGE(mr.buf + n, size, mr.lkey)
    # the WRs are built once, as perftest does: post_send copies what it needs out of them
    recv_wr = RecvWR(1, 1, [SGE(mr.buf + n, n, mr.lkey)])
    send_wr = SendWR(2, OP.IBV_WR_SEND, 1, 0, [SGE(mr.buf, size, mr.lkey)], signaled | inline)
    if test == "send_lat" and not end.events and cfg.wire == "rc":
        return lat_result(size, _client_send_lat_polling(end, recv_wr, send_wr, iters, deadline))
    completions = _data_completions(end)  # one for the run: a batch's rest stays in it
    i = 0
    while (i < iters) if deadline is None else (time.perf_counter() < deadline):
        stamp = (i % 255) + 1
        if test == "send_lat":
            qp.post_recv(recv_wr)
            t0 = time.perf_counter_ns()
            qp.post_send(send_wr)
            _await_message(completions, qp, reply, sends=1)  # the send and the reply
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
        end = _Endpoint(ctx)
        try:
            qp = listener.accept(end.pd, end.ctrl.init, _qp_attr(), timeout=accept_timeout)
            end.ctrl.start(qp)
            body = end.ctrl.expect(CONFIG)
            peer_target = (int(body.pop("rkey")), int(body.pop("addr")))  # type: ignore[call-overload]
            cfg = PerfConfig(**body)  # type: ignore[arg-type]
            end.open_data(cfg)
            for _ in range(cfg.qps):  # the client connects them right after its CONFIG
                end.add_qp(listener.accept(end.pd, end.data_init, _qp_attr(), timeout=30))
            mr = end.data_mr(_pool_size(cfg))
            end.ctrl.send(INFO, {"rkey": mr.rkey, "addr": mr.buf})
            for size in cfg.sizes:
                if cfg.is_bw:
                    _server_bw(end, cfg, size, peer_target)
                else:
                    _server_lat(end, cfg, size, peer_target)
            end.ctrl.send(FIN)
            end.ctrl.flush()  # the client has it: closing now loses nothing
            return cfg
        finally:
            end.close()


def _server_bw(end: _Endpoint, cfg: PerfConfig, size: int, peer_target: tuple[int, int]) -> None:
    receiving = cfg.test == "send_bw"
    if receiving:
        _receiver(end, cfg).top_up()
    end.ctrl.send(READY)
    if cfg.bidirectional:
        end.ctrl.expect(READY)
    # without -b: write_bw and read_bw are one-sided, the server only waits for DONE
    # (polling the data CQ all the while, which drives the progress of its QPs)
    _bw_run(end, cfg, size, peer_target, receiving, True, sending=cfg.bidirectional)


def _server_lat(end: _Endpoint, cfg: PerfConfig, size: int, peer_target: tuple[int, int]) -> None:
    if cfg.test == "send_lat":
        _server_send_lat(end, size)
    elif cfg.test == "write_lat":
        _server_write_lat(end, size, peer_target)
    else:  # read_lat, atomic_lat: one-sided, the server just polls until DONE
        end.ctrl.send(READY)
        while end.next_wc(watch_ctrl=True) is not None:
            pass
    end.ctrl.expect(DONE)


def _server_send_lat(end: _Endpoint, size: int) -> None:
    qp, mr = end.qps[0], end.data
    assert mr is not None
    n = max(1, size)
    recv_wr = RecvWR(DATA_RECV, 1, [SGE(mr.buf, n, mr.lkey)])  # built once, as perftest's
    send_wr = SendWR(101, OP.IBV_WR_SEND, 1, 0, [SGE(mr.buf + n, size, mr.lkey)], 0)
    whole = SGE(mr.buf, size, mr.lkey)
    qp.post_recv(recv_wr)
    end.ctrl.send(READY)
    if not end.events and end.data_init.wire == "rc":
        _server_send_lat_polling(end, recv_wr, send_wr)
        return
    arrived = 0
    for wc in _data_completions(end, watch_ctrl=True):
        if not wc.opcode & RECV:
            continue
        arrived += wc.byte_len
        if not _landed(qp, whole, arrived):
            continue
        arrived = 0
        qp.post_recv(recv_wr)
        qp.post_send(send_wr)


def _server_send_lat_polling(end: _Endpoint, recv_wr: RecvWR, send_wr: SendWR) -> None:
    """send_lat's server with busy polling on an rc QP, until the client's DONE: a
    request arrives whole, and the answer is a receive and a send posted at once (the
    client's loop, :func:`_client_send_lat_polling`, says why there is no generator)."""
    qp, ctrl = end.qps[0], end.ctrl
    poll, post_recv, post_send = end.cq.poll, qp.post_recv, qp.post_send
    spins = 0
    stale = 0.0  # TIMEOUT from the first look at the clock after the last completion
    while True:
        n, wcs = poll(2)
        if n:
            for wc in wcs:
                if wc.status:
                    _check_wc(wc)
                if wc.opcode & RECV:
                    post_recv(recv_wr)
                    post_send(send_wr)
            spins = 0
            stale = 0.0
            continue
        spins += 1
        if not spins % CTRL_EVERY:
            if ctrl.has_message():
                return
            if not spins % CLOCK_EVERY:
                stale = _overdue_at(stale)


def _data_completions(end: _Endpoint, watch_ctrl: bool = False) -> Iterator[WC]:
    """The data completions, successful ones (a failure raises), for as long as they are
    asked for; with *watch_ctrl*, until the peer's DONE is waiting.  Busy polling calls
    ``poll`` itself, as perftest's C loop does, and looks at the control QP every
    CTRL_EVERY and at the clock every CLOCK_EVERY empty polls: every instruction here is
    on the round trip being measured (next_wc's generality cost about 2 us of it)."""
    if end.events:
        yield from _event_completions(end, watch_ctrl)
        return
    poll, ctrl = end.cq.poll, end.ctrl
    deadline = time.monotonic() + TIMEOUT
    spins = 0
    while True:
        n, wcs = poll(2)
        if n:
            for wc in wcs:
                if wc.status:
                    _check_wc(wc)
                yield wc
            deadline = time.monotonic() + TIMEOUT  # (once the answer is on its way)
            continue
        spins += 1
        if not spins % CTRL_EVERY:
            if watch_ctrl and ctrl.has_message():
                return
            if not spins % CLOCK_EVERY:
                _check_deadline(deadline)


def _event_completions(end: _Endpoint, watch_ctrl: bool) -> Iterator[WC]:
    """:func:`_data_completions` with ``--events``: perftest's loop.  The CQ is armed
    before it is polled, so whatever completes after that poll raises an event: the
    loop goes to sleep on the channel as soon as a poll comes back short, without the
    empty poll (a system call) before arming that a poll-first loop makes.  With
    *watch_ctrl* the control CQ is armed too, and looked at when its event comes.  A
    sleep of TIMEOUT seconds without an event raises ETIMEDOUT."""
    cq, ctrl, channel = end.cq, end.ctrl, end.channel
    poll = cq.poll
    cq.req_notify()
    if watch_ctrl:
        ctrl.cq.req_notify()
        if ctrl.has_message():
            return
    while True:
        n, wcs = poll(POLL_BATCH)
        for wc in wcs:
            if wc.status:
                _check_wc(wc)
            yield wc
        if n == POLL_BATCH:
            continue  # there may be more
        woke = channel.get_cq_event(timeout=TIMEOUT)
        woke.ack_events(1)
        if woke is cq:
            cq.req_notify()
        elif watch_ctrl:  # the control CQ's event
            if ctrl.has_message():
                return
            ctrl.cq.req_notify()


def _server_write_lat(end: _Endpoint, size: int, peer_target: tuple[int, int]) -> None:
    qp, mr = end.qps[0], end.data
    assert mr is not None
    n = max(1, size)
    end.ctrl.send(READY)
    view, cq, ctrl = mr.view, end.cq, end.ctrl
    stamp = 1
    while True:
        # wait for the client's write to land (or its DONE)
        while view[n - 1 + n] != stamp:
            cq.poll()
            if ctrl.has_message():
                return
        view[n - 1] = stamp
        wr = SendWR(102, OP.IBV_WR_RDMA_WRITE, 1, 0, [SGE(mr.buf, size, mr.lkey)])
        wr.set_wr_rdma(peer_target[0], peer_target[1] + n)
        qp.post_send(wr)
        stamp = stamp % 255 + 1


def loopback_server(
    test: str, port: int = 0, engine: str | None = None, sq_poll_us: int = 0
) -> tuple[subprocess.Popen[str], int]:
    """Start ``tcpverbs perf TEST --server-only`` as another process (on *engine*, else
    the default, with *sq_poll_us*); return it and its port."""
    cmd = [sys.executable, "-m", "tcpverbs.cli", "perf", test, "--print-port", "-p", str(port)]
    if engine is not None:
        cmd += ["--engine", engine]
    if sq_poll_us:
        cmd += ["--sq-poll-us", str(sq_poll_us)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise TcpverbsError(5, f"the loopback server did not start: {line!r}")
    return proc, int(line)
