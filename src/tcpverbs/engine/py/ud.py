"""UD QPs in the Python engine: one UDP datagram per message (format: :mod:`tcpverbs.wire.ud`).

Theory of operation
-------------------
The verbs layer binds a UD QP's UDP socket when it creates the QP (the port is the QP
number's upper 16 bits) and hands the engine a duplicate at each INIT -> RTR
(:meth:`PyQP.attach`); a RESET closes the duplicate and keeps the port.  What arrived
before RTR is dropped, as a port drops packets for a QP that is not ready.

Sending: a send WR leaves as one ``sendmsg`` (the 24-byte header, then the WR's memory,
no copy) to the address of its AH and the port of its ``remote_qpn``, and completes when
the kernel took it: UD promises nothing more.  When the socket's buffer is full the WR
waits in the send queue for ``EPOLLOUT``.  A local error (no route, say) completes that
WR with ``IBV_WC_GENERAL_ERR`` and the ``errno`` in ``vendor_err``; the QP goes on.

Receiving: each datagram is read whole into a scratch buffer of the largest legal
datagram (fixed when the transport starts, never sized by a peer), checked, and only
then copied behind the 40-byte GRH into the oldest receive WR: a datagram that is
malformed, longer than the MTU, for another QP or with the wrong Q_Key, or that finds
no receive posted, is dropped and counted (``ud_dropped``, ``qkey_violations``) and
never touches the application's memory.  A receive too small for GRH and payload
completes with ``IBV_WC_LOC_LEN_ERR``.

Every method runs with the QP's lock held, as for the other transports.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

from ...enums import ibv_qp_state, ibv_wc_flags, ibv_wc_status, ibv_wr_opcode
from ...errors import RemoteProtocolError, TcpverbsError
from ...wire.frames import FLAG_SOLICITED, Opcode
from ...wire.ud import (
    GRH_SIZE,
    UD_HEADER_SIZE,
    IPAddress,
    UDHeader,
    build_grh,
    decode_ud,
    encode_ud,
)
from .transport import Transport
from .work import RecvWork, SendWork

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .qp import PyQP

__all__ = ["UD_STAT_KEYS", "UdTransport"]

UD_STAT_KEYS = (
    "ud_dropped",  # datagrams dropped: malformed, too long, another QP's, no receive
    "qkey_violations",  # ... of those, with the wrong Q_Key
    "ud_send_errors",  # sends the kernel refused (completed with IBV_WC_GENERAL_ERR)
)
DATAGRAMS_PER_CALL = 64  # a flood of datagrams cannot keep one call reading for ever
DROP_BEFORE_RTR_MAX = 1024
_OK = ibv_wc_status.IBV_WC_SUCCESS
_LOC_LEN = ibv_wc_status.IBV_WC_LOC_LEN_ERR
_GENERAL = ibv_wc_status.IBV_WC_GENERAL_ERR
_GRH = int(ibv_wc_flags.IBV_WC_GRH)
_SEND_IMM = int(ibv_wr_opcode.IBV_WR_SEND_WITH_IMM)
_PKTINFO6 = struct.Struct("16sI")  # struct in6_pktinfo
_PKTINFO4 = struct.Struct("i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_ANCILLARY = socket.CMSG_SPACE(_PKTINFO6.size)


class UdTransport(Transport):
    established = True  # nothing to set up: a datagram socket is ready at once

    def __init__(self, qp: PyQP, sock: socket.socket, mtu: int) -> None:
        super().__init__(qp, sock)
        self.mtu = mtu
        self._scratch = bytearray(UD_HEADER_SIZE + mtu)
        self._view = memoryview(self._scratch)
        for key in UD_STAT_KEYS:
            self.stats.setdefault(key, 0)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)

    def start(self) -> None:
        self._drop_waiting()
        super().start()

    def _drop_waiting(self) -> None:
        """Datagrams that came while the QP was not in RTR are not its to receive (a
        bounded number: a flood meanwhile cannot hold the caller here)."""
        for _ in range(DROP_BEFORE_RTR_MAX):
            try:
                self.sock.recv_into(self._view[:1])  # one datagram, whatever its length
            except OSError:
                return
            self.stats["ud_dropped"] += 1

    # -- the QP's calls ------------------------------------------------------------
    def send_posted(self) -> None:
        qp = self.qp
        while qp.sq and not self._want_write and not self._closed:
            if not self._send(qp.sq[0]):
                self._set_interest(write=True)  # the socket's buffer is full
                return
            qp.sq.popleft()

    def recv_posted(self) -> None:
        """Nothing waits for a receive: a datagram that found none is gone."""

    def progress(self) -> None:
        if self.qp.sq and self.qp.state is ibv_qp_state.IBV_QPS_RTS:
            self.send_posted()
        self.on_readable()

    def take_unfinished(self) -> list[SendWork]:
        return []  # a send completes when the kernel takes it: none is ever in flight

    def outstanding(self) -> Iterable[SendWork]:
        return ()

    def close(self, reason: TcpverbsError | None) -> None:
        super().close(None)  # no goodbye: there is no connection to end

    def _on_error_event(self) -> bool:
        """An ICMP error for an earlier datagram: read (and so cleared), not this QP's end."""
        self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return False

    def _writable(self) -> None:
        self._set_interest(write=False)
        self.send_posted()

    def on_readable(self) -> None:
        for _ in range(DATAGRAMS_PER_CALL):
            if self._closed:
                return
            try:
                n, ancdata, flags, source = self.sock.recvmsg_into([self._view], _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                self.stats["recv_empty"] += 1
                return
            except OSError:  # an ICMP error for an earlier datagram: not this QP's end
                continue
            self.stats["recv_calls"] += 1
            self.stats["bytes_received"] += n
            if flags & socket.MSG_TRUNC:  # longer than the MTU allows
                self.stats["ud_dropped"] += 1
                continue
            self._deliver(n, ancdata, source)

    # -- sending -------------------------------------------------------------------
    def _send(self, work: SendWork) -> bool:
        """Send *work* (or complete it with its error); False when the socket is full."""
        qp = self.qp
        if work.error is not None:
            qp.complete_send(work, work.error[0])
            return True
        assert work.ud is not None  # the QP filled it at post time
        gid, dest_qpn, qkey = work.ud
        imm = work.opcode == _SEND_IMM
        header = UDHeader(
            Opcode.SEND_IMM if imm else Opcode.SEND,
            dest_qpn,
            qp.qp_num,
            qkey,
            work.imm if imm else 0,
            FLAG_SOLICITED if work.solicited else 0,
        )
        try:
            address = self._address_of(gid, dest_qpn >> 8)
            sent = self.sock.sendmsg([encode_ud(header), *work.segments], (), 0, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.stats["ud_send_errors"] += 1
            qp.complete_send(work, _GENERAL, exc.errno or errno.EIO)
            return True
        stats = self.stats
        stats["sendmsg_calls"] += 1
        stats["wrs_sent"] += 1
        stats["bytes_sent"] += sent
        qp.complete_send(work, _OK)
        return True

    def _address_of(self, gid: bytes, port: int) -> tuple[str, int]:
        """Where a datagram for GID *gid* (an IP address) and UDP *port* goes: a
        dual-stack socket takes an IPv4 address in its IPv4-mapped form."""
        addr = ipaddress.IPv6Address(gid)
        if self.sock.family == socket.AF_INET6:
            return str(addr), port
        if addr.ipv4_mapped is None:
            raise OSError(errno.EAFNOSUPPORT, "an IPv6 destination for an IPv4-only UD QP")
        return str(addr.ipv4_mapped), port

    # -- receiving -----------------------------------------------------------------
    def _deliver(
        self, n: int, ancdata: list[tuple[int, int, bytes]], source: tuple[object, ...]
    ) -> None:
        qp = self.qp
        try:
            header = decode_ud(self._view[:n])
        except RemoteProtocolError:
            self.stats["ud_dropped"] += 1
            return
        if header.dest_qpn != qp.qp_num:
            self.stats["ud_dropped"] += 1
            return
        if header.qkey != qp.params.qkey:
            self.stats["ud_dropped"] += 1
            self.stats["qkey_violations"] += 1
            return
        work = qp.next_receive()
        if work is None:
            self.stats["ud_dropped"] += 1
            return
        qp.rq.popleft()
        if work.error is not None:
            qp.complete_recv(work, work.error[0])
            return
        payload = self._view[UD_HEADER_SIZE:n]
        byte_len = GRH_SIZE + len(payload)
        if byte_len > work.capacity:
            qp.complete_recv(work, _LOC_LEN)
            return
        grh = build_grh(_address(source[0]), self._destination(ancdata), n)
        _scatter(work, (grh, payload))
        self.stats["wrs_received"] += 1
        imm = header.imm if header.opcode is Opcode.SEND_IMM else None
        qp.complete_recv(
            work,
            _OK,
            byte_len,
            imm,
            header.solicited,
            src_qp=header.src_qpn,
            wc_flags=_GRH,
        )

    def _destination(self, ancdata: list[tuple[int, int, bytes]]) -> IPAddress:
        """The address the datagram was sent to (its GRH's destination)."""
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO:
                return _address(ipaddress.IPv6Address(data[:16]))
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                return ipaddress.IPv4Address(_PKTINFO4.unpack_from(data)[2])
        return _address(self.sock.getsockname()[0])


def _address(value: object) -> IPAddress:
    addr = ipaddress.ip_address(str(value).split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _scatter(work: RecvWork, pieces: tuple[bytes | memoryview, ...]) -> None:
    """Copy *pieces*, in order, across the WR's segments (which hold them all)."""
    segments = iter(work.segments)
    target = next(segments, None)
    at = 0
    for piece in pieces:
        done = 0
        while done < len(piece):
            assert target is not None  # checked against the capacity first
            take = min(len(piece) - done, len(target) - at)
            target[at : at + take] = piece[done : done + take]
            done += take
            at += take
            if at == len(target):
                target, at = next(segments, None), 0
