"""pyverbs.mem_alloc: raw memory for programs that register an address (``MR(...,
address=)``): aligned allocations and mappings from libc, returned as integers."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap as _mmap

from tcpverbs.errors import TcpverbsError

__all__ = [
    "MAP_ANONYMOUS_",
    "MAP_HUGETLB_",
    "MAP_PRIVATE_",
    "PROT_READ_",
    "PROT_WRITE_",
    "free",
    "mmap",
    "munmap",
    "posix_memalign",
]

MAP_ANONYMOUS_ = _mmap.MAP_ANONYMOUS
MAP_PRIVATE_ = _mmap.MAP_PRIVATE
MAP_HUGETLB_ = 0x40000  # <sys/mman.h> on Linux
PROT_READ_ = _mmap.PROT_READ
PROT_WRITE_ = _mmap.PROT_WRITE

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def posix_memalign(size: int, alignment: int = 8) -> int:
    """*size* bytes aligned to *alignment* (a power of two, a multiple of the pointer
    size); the address.  Give it back with :func:`free`."""
    out = ctypes.c_void_p()
    err = _libc.posix_memalign(ctypes.byref(out), alignment, size)
    if err:
        raise TcpverbsError(err, f"posix_memalign({size}, {alignment}) failed")
    return int(out.value or 0)


def free(ptr: int) -> None:
    """Give back what :func:`posix_memalign` returned."""
    _libc.free(ptr)


def mmap(
    addr: int = 0,
    length: int = 0,
    prot: int = PROT_READ_ | PROT_WRITE_,
    flags: int = MAP_PRIVATE_ | MAP_ANONYMOUS_,
    fd: int = -1,
    offset: int = 0,
) -> int:
    """``mmap(2)``; the address of the mapping."""
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        err = ctypes.get_errno() or errno.ENOMEM
        raise TcpverbsError(err, f"mmap of {length} bytes failed")
    return int(got)


def munmap(addr: int, length: int) -> None:
    """``munmap(2)``."""
    if _libc.munmap(addr, length) != 0:
        err = ctypes.get_errno() or errno.EINVAL
        raise TcpverbsError(err, f"munmap of {length} bytes at {addr:#x} failed")
