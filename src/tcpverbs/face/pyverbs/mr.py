"""pyverbs.mr: memory regions (memory windows and device memory a TCP device has not)."""

from tcpverbs.mr import MR

from ._unsupported import holder, unsupported

__all__ = ["DMMR", "MR", "MW", "DmaBufMR", "MWBind", "MWBindInfo"]

_NO_MW = "a tcpverbs device has no memory windows"
MW = unsupported("MW", _NO_MW)
MWBind = unsupported("MWBind", _NO_MW)
MWBindInfo = holder("MWBindInfo")
DMMR = unsupported("DMMR", "a tcpverbs device has no device memory")
DmaBufMR = unsupported("DmaBufMR", "a tcpverbs device registers no dma-buf (GPU) memory")
