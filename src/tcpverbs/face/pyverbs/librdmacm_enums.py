"""pyverbs.librdmacm_enums: librdmacm's enumerations (tcpverbs' :mod:`tcpverbs.cm.enums`),
each class and each constant."""

from __future__ import annotations

from tcpverbs.cm import enums as _enums
from tcpverbs.cm.enums import *  # noqa: F403

from ._names import export_members

export_members(_enums, globals())

# rdma_getaddrinfo's hints and rdma_set_option's names, outside librdmacm's enums
RAI_PASSIVE = 1
RAI_NUMERICHOST = 2
RAI_NOROUTE = 4
RAI_FAMILY = 8
RDMA_OPTION_ID = 0
RDMA_OPTION_ID_ACK_TIMEOUT = 3
