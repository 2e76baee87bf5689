"""pyverbs.cq: completion queues (and the extended ones), channels, work completions."""

from tcpverbs.cq import CQ, WC, CompChannel
from tcpverbs.cq_ex import CQEX, CqInitAttrEx, PollCqAttr

__all__ = ["CQ", "CQEX", "WC", "CompChannel", "CqInitAttrEx", "PollCqAttr"]
