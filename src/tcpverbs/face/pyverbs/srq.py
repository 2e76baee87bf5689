"""pyverbs.srq: shared receive queues."""

from ._unsupported import not_yet, unsupported

__all__ = ["SRQ", "OpsWr", "SrqAttr", "SrqInitAttr", "SrqInitAttrEx"]

SRQ = not_yet("SRQ")
SrqAttr = not_yet("SrqAttr")
SrqInitAttr = not_yet("SrqInitAttr")
SrqInitAttrEx = not_yet("SrqInitAttrEx")
OpsWr = unsupported("OpsWr", "a tcpverbs device has no tag matching")
