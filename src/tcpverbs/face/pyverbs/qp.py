"""pyverbs.qp: queue pairs and their attributes."""

from tcpverbs.qp import QP
from tcpverbs.qp_attr import QPAttr, QPCap, QPInitAttr, QPInitAttrEx

from ._unsupported import not_yet

__all__ = ["QP", "QPAttr", "QPCap", "QPEx", "QPInitAttr", "QPInitAttrEx"]

QPEx = not_yet("QPEx")
