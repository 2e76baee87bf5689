"""pyverbs.cmid: the RDMA connection manager (tcpverbs' :mod:`tcpverbs.cm.rdmacm`)."""

from tcpverbs.cm.rdmacm import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam, UDParam

from ._unsupported import unsupported

__all__ = ["CMID", "AddrInfo", "CMEvent", "CMEventChannel", "ConnParam", "JoinMCAttrEx", "UDParam"]

JoinMCAttrEx = unsupported("JoinMCAttrEx", "a tcpverbs device has no multicast")
