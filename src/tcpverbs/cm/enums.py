"""librdmacm's enumerations with their C names and values (``<rdma/rdma_cma.h>``): what
rdma_cm programs and the pyverbs face's ``pyverbs.librdmacm_enums`` spell."""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "RAI_FAMILY",
    "RAI_NOROUTE",
    "RAI_NUMERICHOST",
    "RAI_PASSIVE",
    "RDMA_OPTION_IB",
    "RDMA_OPTION_IB_PATH",
    "RDMA_OPTION_ID",
    "RDMA_OPTION_ID_ACK_TIMEOUT",
    "RDMA_OPTION_ID_AFONLY",
    "RDMA_OPTION_ID_REUSEADDR",
    "RDMA_OPTION_ID_TOS",
    "rdma_cm_event_type",
    "rdma_cm_join_mc_attr_mask",
    "rdma_cm_mc_join_flags",
    "rdma_port_space",
]


class rdma_cm_event_type(IntEnum):
    RDMA_CM_EVENT_ADDR_RESOLVED = 0
    RDMA_CM_EVENT_ADDR_ERROR = 1
    RDMA_CM_EVENT_ROUTE_RESOLVED = 2
    RDMA_CM_EVENT_ROUTE_ERROR = 3
    RDMA_CM_EVENT_CONNECT_REQUEST = 4
    RDMA_CM_EVENT_CONNECT_RESPONSE = 5
    RDMA_CM_EVENT_CONNECT_ERROR = 6
    RDMA_CM_EVENT_UNREACHABLE = 7
    RDMA_CM_EVENT_REJECTED = 8
    RDMA_CM_EVENT_ESTABLISHED = 9
    RDMA_CM_EVENT_DISCONNECTED = 10
    RDMA_CM_EVENT_DEVICE_REMOVAL = 11
    RDMA_CM_EVENT_MULTICAST_JOIN = 12
    RDMA_CM_EVENT_MULTICAST_ERROR = 13
    RDMA_CM_EVENT_ADDR_CHANGE = 14
    RDMA_CM_EVENT_TIMEWAIT_EXIT = 15


class rdma_cm_join_mc_attr_mask(IntFlag):
    RDMA_CM_JOIN_MC_ATTR_ADDRESS = 1
    RDMA_CM_JOIN_MC_ATTR_JOIN_FLAGS = 2


class rdma_cm_mc_join_flags(IntEnum):
    RDMA_MC_JOIN_FLAG_FULLMEMBER = 0
    RDMA_MC_JOIN_FLAG_SENDONLY_FULLMEMBER = 1


class rdma_port_space(IntEnum):
    RDMA_PS_IPOIB = 2
    RDMA_PS_TCP = 262
    RDMA_PS_UDP = 273
    RDMA_PS_IB = 319


RDMA_UDP_QKEY = 0x01234567  # the Q_Key of rdma_cm's UD QPs (<rdma/rdma_cma.h>)

# rdma_getaddrinfo's hint flags (``<rdma/rdma_cma.h>``, #defines rather than an enum)
RAI_PASSIVE = 1
RAI_NUMERICHOST = 2
RAI_NOROUTE = 4
RAI_FAMILY = 8

# rdma_set_option's levels and names
RDMA_OPTION_ID = 0
RDMA_OPTION_IB = 1
RDMA_OPTION_ID_TOS = 0
RDMA_OPTION_ID_REUSEADDR = 1
RDMA_OPTION_ID_AFONLY = 2
RDMA_OPTION_ID_ACK_TIMEOUT = 3
RDMA_OPTION_IB_PATH = 1
