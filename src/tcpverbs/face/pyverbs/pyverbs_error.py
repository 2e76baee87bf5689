"""pyverbs.pyverbs_error: the exceptions -- tcpverbs' own (:mod:`tcpverbs.errors`)."""

from tcpverbs.errors import PyverbsError, PyverbsRDMAError, PyverbsUserError

__all__ = ["PyverbsError", "PyverbsRDMAError", "PyverbsUserError"]
