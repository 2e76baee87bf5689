"""pyverbs.spec: flow specifications, for the flow steering a tcpverbs device has not."""

from ._unsupported import unsupported_module

__getattr__ = unsupported_module(__name__, "a tcpverbs device has no flow steering")
