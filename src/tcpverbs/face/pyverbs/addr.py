"""pyverbs.addr: address vectors."""

from tcpverbs.ah import AH
from tcpverbs.qp_attr import AHAttr, GlobalRoute

__all__ = ["AH", "AHAttr", "GlobalRoute"]
