"""Completion queues, work completions and completion channels.

The engine keeps the completions (:mod:`tcpverbs.engine.api`); :meth:`CQ.poll` turns its
fixed-layout records into :class:`WC` objects.  A CQ holds at most ``cqe`` completions;
one more is a CQ overrun, as on hardware: the completion is counted, an
``IBV_EVENT_CQ_ERR`` async event is raised and the next :meth:`CQ.poll` raises
``EOVERFLOW`` saying how many were lost — never silent.  Because a work request's queue
slot is freed only when its completion is polled, a CQ with at least as many entries as
the queues that feed it cannot overrun.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from itertools import starmap
from typing import TYPE_CHECKING

from ._base import VerbsObject
from .device import MAX_CQE
from .engine.api import FAST_POLL, ChannelEngine, CQEngine, Overrun
from .enums import ibv_wc_opcode, ibv_wc_status
from .errors import TcpverbsError, check_int, check_timeout

if TYPE_CHECKING:
    from .context import Context

__all__ = ["CQ", "WC", "CompChannel"]

DEFAULT_SPIN_US = 50  # CQ.wait polls this long before it sleeps (Context(spin_us=...))
MAX_SPIN_US = 10_000_000


_INT_MAX = 2**31 - 1  # num_entries is a C int in ibv_poll_cq


def check_spin(spin_us: int) -> int:
    return check_int("spin_us", spin_us, 0, MAX_SPIN_US)


@dataclass(slots=True)
class WC:
    """``struct ibv_wc``.

    This is the pure twin.  Where the C extension is built, ``tcpverbs.WC`` is its
    compiled twin (``tcpverbs._native.WC``), which keeps the fields as C integers, as
    pyverbs does: the same constructor, attributes, ``==``, repr and str, but a field
    holds an int from 0 to 2**64 - 1 and the ``dataclasses`` functions do not apply.
    ``PyWC`` names this one either way."""

    wr_id: int = 0
    status: int = ibv_wc_status.IBV_WC_SUCCESS
    opcode: int = ibv_wc_opcode.IBV_WC_SEND
    vendor_err: int = 0
    byte_len: int = 0
    qp_num: int = 0
    src_qp: int = 0
    imm_data: int = 0
    wc_flags: int = 0
    pkey_index: int = 0
    slid: int = 0
    sl: int = 0
    dlid_path_bits: int = 0

    def __str__(self) -> str:
        return describe_wc(self)


def describe_wc(wc: WC) -> str:
    """``str()`` of either twin: status and opcode by name."""
    status = ibv_wc_status(wc.status).name
    try:
        opcode = ibv_wc_opcode(wc.opcode).name
    except ValueError:
        opcode = str(wc.opcode)
    return (
        f"WC(wr_id={wc.wr_id}, {status}, {opcode}, byte_len={wc.byte_len}, "
        f"qp_num={wc.qp_num}, imm_data={wc.imm_data}, wc_flags={wc.wc_flags})"
    )


PyWC = WC
if not TYPE_CHECKING:  # (the type checker sees the pure twin; both have its attributes)
    try:
        from ._native import WC  # the compiled twin, when built
    except ImportError:
        pass


class CompChannel(VerbsObject):
    """``ibv_create_comp_channel``: where armed CQs report new completions.

    ``fd`` is an eventfd that becomes readable when an event is pending, so it can sit in
    the application's own ``select``/``epoll`` loop.
    """

    def __init__(self, ctx: Context) -> None:
        ctx._check_open()
        self.ctx = ctx
        self._channel: ChannelEngine = ctx._engine.create_channel()
        try:
            super().__init__(ctx)
        except BaseException:
            self._channel.destroy()
            raise
        self.fd = self._channel.fd

    def get_cq_event(self, cq: CQ | None = None, timeout: float | None = None) -> CQ:
        """Block until an armed CQ of this channel got a completion; return that CQ.

        Each event must be acknowledged with ``cq.ack_events(n)``.  With *cq*, an event
        for another CQ raises ``EINVAL`` (as pyverbs checks).  *timeout* seconds without an
        event raise ``ETIMEDOUT``; closing the channel meanwhile raises ``EBADF``.
        """
        # as CQ.wait, the checks' calls run only for unusual arguments
        if self._closed:
            self._check_open()
        if timeout is not None and (timeout.__class__ is not float or not timeout >= 0):
            timeout = check_timeout(timeout)
        handle = self._channel.get_cq_event(timeout)
        if self._closed:
            self._check_open()
        if handle is None:
            raise TcpverbsError(errno.ETIMEDOUT, "no completion event within the timeout")
        got = self.ctx._objects.get(handle)
        if not isinstance(got, CQ):  # the CQ is gone, and nobody holds it any more
            raise TcpverbsError(errno.EBADF, "completion event of a CQ that no longer exists")
        got._events_unacked += 1
        if cq is not None and got is not cq:
            raise TcpverbsError(errno.EINVAL, "completion event belongs to another CQ")
        return got

    def _release(self) -> None:
        self._channel.destroy()


class CQ(VerbsObject):
    """``ibv_create_cq``: ``CQ(ctx, cqe, cq_context=None, channel=None, comp_vector=0)``.

    *spin_us* (a tcpverbs extension) is how long :meth:`wait` polls before it sleeps;
    None takes the context's ``spin_us``.
    """

    def __init__(
        self,
        ctx: Context,
        cqe: int | float,
        cq_context: object = None,
        channel: CompChannel | None = None,
        comp_vector: int = 0,
        *,
        spin_us: int | None = None,
    ) -> None:
        if isinstance(cqe, float) and cqe.is_integer():  # pyverbs takes 100.0 for 100
            cqe = int(cqe)
        if not isinstance(cqe, int) or not 1 <= cqe <= MAX_CQE:
            raise TcpverbsError(errno.EINVAL, f"cqe must be in 1..{MAX_CQE}, got {cqe!r}")
        if spin_us is not None:
            check_spin(spin_us)
        if channel is not None and channel.ctx is not ctx:
            raise TcpverbsError(errno.EINVAL, "completion channel belongs to another context")
        if comp_vector != 0:
            raise TcpverbsError(errno.EINVAL, "tcpverbs contexts have one completion vector (0)")
        parents: tuple[VerbsObject, ...] = (ctx,) if channel is None else (ctx, channel)
        for parent in parents:
            parent._check_open()
        self.ctx = ctx
        self.cqe = cqe
        self.cq_context = cq_context
        self.channel = channel
        self.spin_us = spin_us
        self._events_unacked = 0
        self.handle = ctx._new_handle(self)
        self._cq: CQEngine = ctx._engine.create_cq(
            self.handle, cqe, channel._channel if channel is not None else None
        )
        try:  # joins the tree only once the engine has it: a failure leaves nothing behind
            super().__init__(*parents)
        except BaseException:
            self._cq.destroy()
            raise
        # an engine that builds WC objects itself (the native one, in C) is asked for them
        self._poll_wc: Callable[[int], list[WC]] | None = getattr(self._cq, "poll_wc", None)
        self._wait_wc: Callable[[int, float | None, int], list[WC]] | None = getattr(
            self._cq, "wait_wc", None
        )
        if self._poll_wc is not None:
            # an empty poll costs the engine ~2 200 instructions and this method ~1 000
            # more: the engine does its common path itself, the rest still comes here
            self._shadow_with_fast_call(ctx._engine, _POLL, self._poll_wc, self._overrun, FAST_POLL)

    @property
    def comp_channel(self) -> CompChannel | None:
        """pyverbs' name for :attr:`channel`."""
        return self.channel

    def resize(self, cqe: int) -> None:
        """``ibv_resize_cq``: not offered (``EOPNOTSUPP``), as by siw, the kernel's
        software RDMA device: a CQ keeps the size it was made with.  Programs and
        rdma-core's tests take ``EOPNOTSUPP`` as "not supported"."""
        self._check_open()
        check_int("cqe", cqe, 1, MAX_CQE)
        raise TcpverbsError(
            errno.EOPNOTSUPP,
            f"Failed to resize CQ: a tcpverbs CQ keeps its size ({self.cqe} entries)",
        )

    # -- application side --------------------------------------------------------
    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        """``ibv_poll_cq``: up to *num_entries* completions, oldest first.

        An empty CQ first lets its QPs make progress (a non-blocking receive), so a
        thread that spins on ``poll`` drives its own traffic.
        """
        self._check_open()
        if num_entries.__class__ is not int or num_entries < 1:  # (the hot path: no call)
            check_int("num_entries", num_entries, 1, _INT_MAX)
        try:
            if self._poll_wc is not None:
                wcs = self._poll_wc(num_entries)
                return len(wcs), wcs
            records = self._cq.poll(num_entries)
        except Overrun as exc:
            raise self._overrun(exc) from None
        return len(records), list(starmap(WC, records))

    def wait(
        self, num_entries: int = 1, timeout: float | None = None, spin_us: int | None = None
    ) -> list[WC]:
        """Poll for up to *spin_us* microseconds, then sleep until a completion arrives;
        return 1 to *num_entries* completions (a tcpverbs extension, no verbs call).

        Spinning answers fastest but keeps a core busy; sleeping frees the core and
        costs a thread wake-up per message (the native engine's sleeper reads its QPs'
        sockets itself, so that is one wake-up, as for a blocking ``recv``).
        *spin_us* defaults to the CQ's ``spin_us``, else the context's.  *timeout*
        seconds without a completion raise ``ETIMEDOUT``.  The CQ needs no completion
        channel; an armed one still gets its event.
        """
        # the checks' calls run only for unusual arguments: a thread that sleeps on every
        # message pays for this wrapper on every message (it cost 2.3 us, the C wait 0.5)
        if self._closed:
            self._check_open()
        if num_entries.__class__ is not int or not 1 <= num_entries <= _INT_MAX:
            check_int("num_entries", num_entries, 1, _INT_MAX)
        if timeout is not None and (timeout.__class__ is not float or not timeout >= 0):
            timeout = check_timeout(timeout)
        if spin_us is None:
            spin = self.ctx.spin_us if self.spin_us is None else self.spin_us
        elif spin_us.__class__ is int and 0 <= spin_us <= MAX_SPIN_US:
            spin = spin_us
        else:
            spin = check_spin(spin_us)
        try:
            if self._wait_wc is not None:
                wcs = self._wait_wc(num_entries, timeout, spin)
            else:
                wcs = list(starmap(WC, self._cq.wait(num_entries, timeout, spin)))
        except Overrun as exc:
            raise self._overrun(exc) from None
        if self._closed:
            self._check_open()
        if not wcs:
            raise TcpverbsError(errno.ETIMEDOUT, f"no completion within {timeout} s")
        return wcs

    def _overrun(self, exc: Overrun) -> TcpverbsError:
        return TcpverbsError(
            errno.EOVERFLOW, f"CQ overrun: {exc.lost} completions did not fit in {self.cqe}"
        )

    def statistics(self) -> dict[str, int]:
        """Counters of this CQ: polls (and how many found nothing), GIL yields,
        completions queued, overruns, sleeps in :meth:`wait`, channel events; and
        ``pending``, the completions waiting to be polled now."""
        return self._cq.statistics()

    def req_notify(self, solicited_only: bool = False) -> None:
        """``ibv_req_notify_cq``: one event on the channel for the next completion."""
        if self._closed:
            self._check_open()
        if self.channel is None:
            raise TcpverbsError(errno.EINVAL, "CQ was created without a completion channel")
        self._cq.req_notify(bool(solicited_only))

    def ack_events(self, num_events: int) -> None:
        """``ibv_ack_cq_events``."""
        if num_events < 0 or num_events > self._events_unacked:
            raise TcpverbsError(
                errno.EINVAL,
                f"acknowledging {num_events} events, {self._events_unacked} were received",
            )
        self._events_unacked -= num_events

    def _release(self) -> None:
        self._cq.destroy()

    def __len__(self) -> int:
        return self._cq.pending

    def __repr__(self) -> str:
        return f"<CQ cqe={self.cqe} pending={len(self)}>"


_POLL = CQ.poll  # what a FastCall shadows, and falls back to
