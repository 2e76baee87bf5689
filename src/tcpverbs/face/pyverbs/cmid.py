"""pyverbs.cmid: the RDMA connection manager."""

from ._unsupported import not_yet, unsupported

__all__ = ["CMID", "AddrInfo", "CMEvent", "CMEventChannel", "ConnParam", "JoinMCAttrEx", "UDParam"]

CMID = not_yet("CMID")
AddrInfo = not_yet("AddrInfo")
CMEvent = not_yet("CMEvent")
CMEventChannel = not_yet("CMEventChannel")
ConnParam = not_yet("ConnParam")
UDParam = unsupported("UDParam", "a tcpverbs device has no UD transport")
JoinMCAttrEx = unsupported("JoinMCAttrEx", "a tcpverbs device has no multicast")
