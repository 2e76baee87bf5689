"""Memory regions: registered memory that work requests read from and land in.

An MR is either memory the library allocates (``mmap``: page-aligned, zeroed) or a
caller's writable buffer registered in place — a ``bytearray``, ``mmap``, numpy array,
or anything exporting the writable buffer protocol — without copying.  While registered,
the buffer's export is held, so a ``bytearray`` cannot be resized under a transfer.

Addresses are absolute, as in libibverbs: ``mr.buf`` is the integer address of the first
byte, and an :class:`~tcpverbs.SGE` names ``addr`` in ``[mr.buf, mr.buf + mr.length)``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from typing import TYPE_CHECKING

from ._base import VerbsObject
from .enums import ibv_access_flags, ibv_rereg_mr_flags
from .errors import TcpverbsError, check_flags

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from .pd import PD

__all__ = ["MR"]

_A = ibv_access_flags
_SUPPORTED_ACCESS = (
    _A.IBV_ACCESS_LOCAL_WRITE
    | _A.IBV_ACCESS_REMOTE_WRITE
    | _A.IBV_ACCESS_REMOTE_READ
    | _A.IBV_ACCESS_REMOTE_ATOMIC
    | _A.IBV_ACCESS_RELAXED_ORDERING
)


def _check_access(access: int) -> ibv_access_flags:
    flags = check_flags(
        access,
        ibv_access_flags,
        _SUPPORTED_ACCESS,  # the rest are verbs flags for what a TCP device has not
        "Failed to register a MR: unknown access flags {value!r}",
        "Failed to register a MR: a tcpverbs device does not offer {names} "
        "(no memory windows, on-demand paging, zero-based or huge-page MRs, flushes)",
    )
    needs_local_write = _A.IBV_ACCESS_REMOTE_WRITE | _A.IBV_ACCESS_REMOTE_ATOMIC
    if flags & needs_local_write and not flags & _A.IBV_ACCESS_LOCAL_WRITE:
        raise TcpverbsError(
            errno.EINVAL,
            "Failed to register a MR: REMOTE_WRITE and REMOTE_ATOMIC access require "
            "LOCAL_WRITE (see ibv_reg_mr(3))",
        )
    return flags


class MR(VerbsObject):
    """``ibv_reg_mr``.  ``MR(pd, length, access)``, ``MR(pd, length, access, address=buf)``
    with a writable buffer, or ``address=`` an integer address of raw memory (pyverbs'
    ``posix_memalign``, ``mmap``): that memory must stay mapped and writable while it is
    registered, as in verbs."""

    def __init__(
        self, pd: PD, length: int, access: int, address: WriteableBuffer | int | None = None
    ) -> None:
        self._access = _check_access(access)
        _check_length(length)
        self._mmap: mmap.mmap | None = None
        view = self._translate(length, address)
        self.pd = pd
        super().__init__(pd)
        self.lkey = self.rkey = pd.ctx._new_key()
        # pyverbs' MR.handle (the kernel's name for it): unique in the context, as a PD's
        self.handle = pd.ctx._new_handle(self)
        pd.ctx._engine.reg_mr(self.lkey, pd.handle, self._view, self.buf, int(self._access))
        del view

    def _translate(self, length: int, address: WriteableBuffer | int | None) -> memoryview:
        """Take the memory the MR stands for (new anonymous memory without *address*)."""
        if address is None:
            self._mmap = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            view = memoryview(self._mmap)
        elif isinstance(address, int):
            view = _raw_bytes(address, length)
        else:
            view = _writable_bytes(address, length)
        self._view: memoryview = view[:length]
        # Holding a ctypes object over the buffer pins the export and gives the address.
        self._anchor = (ctypes.c_char * length).from_buffer(self._view)
        self.buf: int = ctypes.addressof(self._anchor)
        self.length = length
        return view

    def rereg(
        self,
        flags: int,
        pd: PD | None = None,
        addr: WriteableBuffer | int = 0,
        length: int = 0,
        access: int = 0,
    ) -> None:
        """``ibv_rereg_mr``: change the MR's memory (``IBV_REREG_MR_CHANGE_TRANSLATION``:
        *addr*, *length*), its PD (``..._CHANGE_PD``) and/or its access
        (``..._CHANGE_ACCESS``); the keys stay.  A receive WR posted before and not yet
        used is checked against the new registration, as hardware checks an lkey when
        it uses it: if the MR no longer gives its QP that memory, it completes with
        ``IBV_WC_LOC_PROT_ERR`` when a message comes for it (the sender's WR with
        ``IBV_WC_REM_OP_ERR``).  Work moving data with the MR now, and send WRs that use
        it, are revoked as by deregistration.  If the new registration fails, the MR is
        closed."""
        self._check_open()
        known = int(ibv_rereg_mr_flags.IBV_REREG_MR_CHANGE_TRANSLATION) | int(
            ibv_rereg_mr_flags.IBV_REREG_MR_CHANGE_PD
            | ibv_rereg_mr_flags.IBV_REREG_MR_CHANGE_ACCESS
        )
        if not isinstance(flags, int) or not flags or flags & ~known:
            raise TcpverbsError(errno.EINVAL, f"Failed to rereg MR: flags {flags!r}")
        new_access = self._access
        if flags & ibv_rereg_mr_flags.IBV_REREG_MR_CHANGE_ACCESS:
            new_access = _check_access(access)
        new_pd = self.pd
        if flags & ibv_rereg_mr_flags.IBV_REREG_MR_CHANGE_PD:
            from .pd import PD

            if not isinstance(pd, PD) or pd.ctx is not self.pd.ctx:
                raise TcpverbsError(
                    errno.EINVAL, "Failed to rereg MR: pd must be a PD of its context"
                )
            pd._check_open()
            new_pd = pd
        translate = flags & ibv_rereg_mr_flags.IBV_REREG_MR_CHANGE_TRANSLATION
        if translate:
            _check_length(length)
            old = (self._mmap, self._view, self._anchor, self.buf, self.length)
            self._translate(length, addr)  # checked before anything changes
        if new_pd is not self.pd:
            self._move_to(self.pd, new_pd)
            self.pd = new_pd
        self._access = new_access
        try:
            self.pd.ctx._engine.rereg_mr(
                self.lkey, new_pd.handle, self._view, self.buf, int(new_access)
            )
        except BaseException:
            self.close()
            raise
        if translate:
            del old  # the previous memory's references go with the registration

    @property
    def access(self) -> ibv_access_flags:
        """The access flags it is registered with (``rereg`` may change them)."""
        return self._access

    @property
    def view(self) -> memoryview:
        """The registered bytes as a writable memoryview (no copy)."""
        self._check_open()
        return self._view

    def read(self, length: int, offset: int) -> bytes:
        """Copy ``length`` bytes starting at ``offset`` out of the MR."""
        self._check_open()
        self._check_range(length, offset)
        return bytes(self._view[offset : offset + length])

    def write(self, data: ReadableBuffer | str, length: int, offset: int = 0) -> None:
        """Copy the first ``length`` bytes of ``data`` into the MR at ``offset``."""
        self._check_open()
        raw = data.encode() if isinstance(data, str) else memoryview(data).cast("B")
        if length > len(raw):
            raise TcpverbsError(errno.EINVAL, f"length {length} exceeds data of {len(raw)} bytes")
        self._check_range(length, offset)
        self._view[offset : offset + length] = raw[:length]

    def _check_range(self, length: int, offset: int) -> None:
        if length < 0 or offset < 0 or offset + length > self.length:
            raise TcpverbsError(
                errno.EINVAL,
                f"range [{offset}, {offset + length}) is outside the MR of {self.length} bytes",
            )

    def _release(self) -> None:
        # synchronous: the engine gives no new access once this returns; views already
        # handed to queued work keep the memory alive until they are dropped, and the MR
        # itself lets go of its references now
        self.pd.ctx._engine.dereg_mr(self.lkey)
        self.pd.ctx._drop_key(self.lkey)
        del self._anchor
        self._view = memoryview(b"")
        self._mmap = None

    def __repr__(self) -> str:
        if self._closed:
            return "<MR closed>"
        return f"<MR buf=0x{self.buf:x} length={self.length} lkey=0x{self.lkey:08x}>"


def _check_length(length: object) -> None:
    if not isinstance(length, int) or length <= 0:
        raise TcpverbsError(errno.EINVAL, f"MR length must be a positive int, got {length!r}")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MS_ASYNC = 1


def _raw_bytes(address: int, length: int) -> memoryview:
    """The *length* bytes at *address*, if the whole range is mapped (``msync`` says
    ENOMEM for a range with a hole: refused, not a crash later)."""
    if not 0 < address < 1 << 64 or address + length > 1 << 64:
        raise TcpverbsError(errno.EINVAL, f"Failed to register a MR: address {address:#x}")
    start = address & ~(mmap.PAGESIZE - 1)
    if _libc.msync(start, address + length - start, _MS_ASYNC) != 0:
        raise TcpverbsError(
            errno.EFAULT,
            f"Failed to register a MR: [{address:#x}, {address + length:#x}) is not mapped",
        )
    return memoryview((ctypes.c_char * length).from_address(address)).cast("B")


def _writable_bytes(buffer: WriteableBuffer, length: int) -> memoryview:
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TcpverbsError(
            errno.EINVAL, f"address must be a buffer object, not {type(buffer).__name__}"
        ) from None
    if view.readonly:
        raise TcpverbsError(errno.EACCES, "cannot register a read-only buffer")
    if not view.c_contiguous:
        raise TcpverbsError(errno.EINVAL, "cannot register a non-contiguous buffer")
    view = view.cast("B")
    if length > view.nbytes:
        raise TcpverbsError(
            errno.EINVAL, f"length {length} exceeds the buffer's {view.nbytes} bytes"
        )
    return view
