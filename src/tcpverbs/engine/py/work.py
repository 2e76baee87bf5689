"""Work requests as the engine sees them: validated, with memory already resolved.

Internal: built by :mod:`.qp` at post time, consumed by the transports.
A WR whose memory could not be resolved still enters the queue, carrying ``error``, so
that its error completion comes out in queue order like on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .memory import Region

__all__ = ["RecvWork", "SendWork"]

Segment = memoryview | bytes


@dataclass(slots=True, eq=False)
class SendWork:
    wr_id: int
    opcode: int  # ibv_wr_opcode
    wc_opcode: int  # ibv_wc_opcode its completion reports
    signaled: bool
    solicited: bool
    segments: list[Segment]
    length: int
    imm: int = 0
    error: tuple[int, str] | None = None  # (ibv_wc_status, why) found at post time
    seq: int = 0  # rc: request number; stream: stream offset just past this WR
    rkey: int = 0  # RDMA and atomic target
    remote_addr: int = 0
    compare_add: int = 0
    swap: int = 0
    fence: bool = False  # wait for earlier READs and atomics
    needs_response: bool = False  # READ / atomic: completes on its response, not an ACK
    rnr_tries: int = 0
    regions: tuple[Region, ...] = ()  # the local memory it uses (deregistration revokes it)
    ud: tuple[bytes, int, int] | None = None  # ud: (destination GID, QP number, Q_Key)


@dataclass(slots=True, eq=False)
class RecvWork:
    wr_id: int
    segments: list[memoryview]
    capacity: int
    error: tuple[int, str] | None = None
    regions: tuple[Region, ...] = ()
