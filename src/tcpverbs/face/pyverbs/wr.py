"""pyverbs.wr: work requests and scatter/gather entries."""

from tcpverbs.wr import SGE, RecvWR, SendWR

__all__ = ["SGE", "RecvWR", "SendWR"]
