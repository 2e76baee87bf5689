"""pyverbs.addr: address vectors."""

from tcpverbs.qp_attr import AHAttr, GlobalRoute

from ._unsupported import not_yet

__all__ = ["AH", "AHAttr", "GlobalRoute"]

AH = not_yet("AH")
