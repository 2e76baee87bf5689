"""pyverbs.libibverbs_enums: libibverbs' enumerations, each class and each constant.

The classes are tcpverbs' own (:mod:`tcpverbs.enums`); every member is also a module
constant, as pyverbs spells them (``e.IBV_ACCESS_LOCAL_WRITE``).
"""

from __future__ import annotations

from tcpverbs import enums as _enums
from tcpverbs.enums import *  # noqa: F403 (the classes, by their C names)

from ._names import export_members

export_members(_enums, globals())

# constants libibverbs defines outside its enums
IBV_QPF_GRH_REQUIRED = 1
IBV_WC_STANDARD_FLAGS = 127  # the wc_flags every CQ can report
_IBV_ADVISE_MR_ADVICE_PREFETCH = 0
_IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE = 1
_IBV_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT = 2
_IBV_ADVISE_MR_FLAG_FLUSH = 1
_IBV_ALLOCATOR_USE_DEFAULT = (1 << 64) - 1
_IBV_DEVICE_RAW_SCATTER_FCS = 1 << 34
_IBV_DEVICE_PCI_WRITE_END_PADDING = 1 << 36
