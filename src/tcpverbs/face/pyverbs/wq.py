"""pyverbs.wq: work queues and RSS, for the raw-packet QPs a tcpverbs device has not."""

from ._unsupported import unsupported_module

__getattr__ = unsupported_module(__name__, "a tcpverbs device has no raw-packet work queues")
