"""Helpers for tests and examples: connected QP pairs on loopback.

``qp_pair(ctx)`` builds two QPs (each with its own PD and CQs) connected over a real TCP
connection on 127.0.0.1 and returns them in RTS, ready for ``post_*``.  Both may live in
the same thread: the connection hello completes in the background.
"""

from __future__ import annotations

import errno
import itertools
import socket
import time
from dataclasses import dataclass, replace
from typing import TypeVar

from .context import Context
from .cq import CQ, WC
from .enums import ibv_access_flags
from .errors import TcpverbsError
from .pd import PD
from .qp import QP
from .qp_attr import QPAttr, QPCap, QPInitAttr, WireName
from .wr import RecvWR, SendWR

__all__ = ["Endpoint", "chain", "connect", "poll_until", "qp_pair", "tcp_socket_pair"]

WRT = TypeVar("WRT", SendWR, RecvWR)

ALL_ACCESS = (
    ibv_access_flags.IBV_ACCESS_LOCAL_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
    | ibv_access_flags.IBV_ACCESS_REMOTE_READ
    | ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC
)


@dataclass
class Endpoint:
    """One side of a pair: its PD, send CQ, receive CQ and QP."""

    pd: PD
    scq: CQ
    rcq: CQ
    qp: QP


def tcp_socket_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """Two ends of one TCP connection on loopback (made with the plain socket API)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


def make_endpoint(
    ctx: Context,
    wire: WireName = "rc",
    cap: QPCap | None = None,
    sq_sig_all: int = 1,
    cqe: int = 4096,
) -> Endpoint:
    pd = PD(ctx)
    scq = CQ(ctx, cqe)
    rcq = CQ(ctx, cqe)
    init = QPInitAttr(
        scq=scq, rcq=rcq, cap=cap or QPCap(64, 64, 4, 4, 64), sq_sig_all=sq_sig_all, wire=wire
    )
    qp = QP(pd, init, QPAttr(qp_access_flags=ALL_ACCESS))
    return Endpoint(pd, scq, rcq, qp)


def qp_pair(
    ctx: Context,
    wire: WireName = "rc",
    cap: QPCap | None = None,
    sq_sig_all: int = 1,
    ctx_b: Context | None = None,
    cqe: int = 4096,
    attr: QPAttr | None = None,
) -> tuple[Endpoint, Endpoint]:
    """Two QPs in RTS connected to each other over loopback TCP.

    *attr* (optional) supplies the RTR/RTS attributes of both: ``max_rd_atomic``,
    ``max_dest_rd_atomic``, ``min_rnr_timer``, ``rnr_retry``...
    """
    a = make_endpoint(ctx, wire, cap, sq_sig_all, cqe)
    b = make_endpoint(ctx_b or ctx, wire, cap, sq_sig_all, cqe)
    connect(a.qp, b.qp, attr)
    return a, b


def connect(qp_a: QP, qp_b: QP, attr: QPAttr | None = None) -> None:
    """Move two QPs in INIT to RTS over one new loopback TCP connection (*attr* as in
    :func:`qp_pair`)."""
    sa, sb = tcp_socket_pair()
    for qp, sock in ((qp_a, sa), (qp_b, sb)):
        qp.to_rtr(replace(attr or QPAttr(), sock=sock))
        qp.to_rts(replace(attr or QPAttr(), sock=None))


def poll_until(cq: CQ, count: int = 1, timeout: float = 10.0) -> list[WC]:
    """Poll *cq* until *count* completions arrived; ``ETIMEDOUT`` after *timeout* seconds."""

    deadline = time.monotonic() + timeout
    got: list[WC] = []
    while len(got) < count:
        _, wcs = cq.poll(count - len(got))
        got.extend(wcs)
        if len(got) < count and time.monotonic() > deadline:
            raise TcpverbsError(
                errno.ETIMEDOUT, f"only {len(got)} of {count} completions within {timeout} s: {got}"
            )
    return got


def chain(wrs: list[WRT]) -> WRT:
    """Link *wrs* through ``next_wr`` (a post list); return the first."""
    for first, second in itertools.pairwise(wrs):
        first.next_wr = second
    return wrs[0]
