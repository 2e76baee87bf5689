"""pyverbs.xrcd: XRC domains, which a tcpverbs device has not (its QPs are RC)."""

from ._unsupported import holder, unsupported

__all__ = ["XRCD", "XRCDInitAttr"]

_NO_XRC = "a tcpverbs device has no XRC transport"
XRCD = unsupported("XRCD", _NO_XRC)
XRCDInitAttr = holder("XRCDInitAttr")
