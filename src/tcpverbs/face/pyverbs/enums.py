"""pyverbs.enums: the name rdma-core's releases up to v44 use for ``libibverbs_enums``."""

from .libibverbs_enums import *  # noqa: F403
from .libibverbs_enums import (  # the underscored ones are not in *
    _IBV_ADVISE_MR_ADVICE_PREFETCH,
    _IBV_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT,
    _IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE,
    _IBV_ADVISE_MR_FLAG_FLUSH,
    _IBV_ALLOCATOR_USE_DEFAULT,
    _IBV_DEVICE_PCI_WRITE_END_PADDING,
    _IBV_DEVICE_RAW_SCATTER_FCS,
)

__all__ = [
    "_IBV_ADVISE_MR_ADVICE_PREFETCH",
    "_IBV_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT",
    "_IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE",
    "_IBV_ADVISE_MR_FLAG_FLUSH",
    "_IBV_ALLOCATOR_USE_DEFAULT",
    "_IBV_DEVICE_PCI_WRITE_END_PADDING",
    "_IBV_DEVICE_RAW_SCATTER_FCS",
]
