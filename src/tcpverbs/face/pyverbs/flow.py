"""pyverbs.flow: flow steering, which a tcpverbs device has not (the kernel's TCP stack
steers its packets)."""

from ._unsupported import unsupported_module

__getattr__ = unsupported_module(__name__, "a tcpverbs device has no flow steering")
