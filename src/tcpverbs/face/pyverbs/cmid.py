"""pyverbs.cmid: the RDMA connection manager (tcpverbs' :mod:`tcpverbs.cm.rdmacm`)."""

from tcpverbs.cm.rdmacm import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam

from ._unsupported import unsupported

__all__ = ["CMID", "AddrInfo", "CMEvent", "CMEventChannel", "ConnParam", "JoinMCAttrEx", "UDParam"]

UDParam = unsupported("UDParam", "a tcpverbs device has no UD transport")
JoinMCAttrEx = unsupported("JoinMCAttrEx", "a tcpverbs device has no multicast")
