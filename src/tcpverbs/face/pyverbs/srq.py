"""pyverbs.srq: shared receive queues (tcpverbs' :mod:`tcpverbs.srq`)."""

from tcpverbs.srq import SRQ, SrqAttr, SrqInitAttr, SrqInitAttrEx

from ._unsupported import unsupported

__all__ = ["SRQ", "OpsWr", "SrqAttr", "SrqInitAttr", "SrqInitAttrEx"]

OpsWr = unsupported("OpsWr", "a tcpverbs device has no tag matching")
