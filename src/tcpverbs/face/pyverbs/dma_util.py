"""pyverbs.dma_util: MMIO helpers for hardware doorbells, which a tcpverbs device has not."""

from ._unsupported import unsupported_module

__getattr__ = unsupported_module(__name__, "a tcpverbs device has no MMIO doorbells")
