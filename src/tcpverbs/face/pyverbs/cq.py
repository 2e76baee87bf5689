"""pyverbs.cq: completion queues, channels and work completions."""

from tcpverbs.cq import CQ, WC, CompChannel

from ._unsupported import not_yet

__all__ = ["CQ", "CQEX", "WC", "CompChannel", "CqInitAttrEx", "PollCqAttr"]

CQEX = not_yet("CQEX")
CqInitAttrEx = not_yet("CqInitAttrEx")
PollCqAttr = not_yet("PollCqAttr")
