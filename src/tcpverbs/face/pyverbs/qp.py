"""pyverbs.qp: queue pairs (and the extended ones) and their attributes."""

from tcpverbs.qp import QP
from tcpverbs.qp_attr import QPAttr, QPCap, QPInitAttr, QPInitAttrEx
from tcpverbs.qp_ex import QPEx

__all__ = ["QP", "QPAttr", "QPCap", "QPEx", "QPInitAttr", "QPInitAttrEx"]
