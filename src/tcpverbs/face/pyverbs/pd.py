"""pyverbs.pd: protection domains."""

from tcpverbs.pd import PD

from ._unsupported import holder, unsupported

__all__ = ["PD", "ParentDomain", "ParentDomainContext", "ParentDomainInitAttr"]

_NO_PARENT = "a tcpverbs device has no parent domains (custom allocators for its queues)"
ParentDomain = unsupported("ParentDomain", _NO_PARENT)
ParentDomainContext = holder("ParentDomainContext")
ParentDomainInitAttr = holder("ParentDomainInitAttr")
