"""pyverbs.dmabuf: dma-buf (GPU) memory, which a tcpverbs device does not register."""

from ._unsupported import unsupported_module

__getattr__ = unsupported_module(__name__, "a tcpverbs device registers no dma-buf memory")
