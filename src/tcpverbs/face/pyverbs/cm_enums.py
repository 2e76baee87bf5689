"""pyverbs.cm_enums: the name rdma-core's releases up to v44 use for ``librdmacm_enums``."""

from .librdmacm_enums import *  # noqa: F403
