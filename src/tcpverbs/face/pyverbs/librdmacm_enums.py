"""pyverbs.librdmacm_enums: librdmacm's enumerations (tcpverbs' :mod:`tcpverbs.cm.enums`),
each class and each constant."""

from __future__ import annotations

from tcpverbs.cm import enums as _enums
from tcpverbs.cm.enums import *  # noqa: F403

from ._names import export_members

export_members(_enums, globals())
