"""The pyverbs face: pyverbs programs run unchanged on tcpverbs (issue #11).

``face/pyverbs`` is a package named ``pyverbs`` whose modules (``pyverbs.device``,
``pyverbs.qp``, ``pyverbs.enums``, ...) hand out tcpverbs' own classes and exceptions
under pyverbs' names, so ``isinstance`` and ``except`` work across both.  It is not on
the import path: ``import tcpverbs`` changes nothing, and a real rdma-core installation
keeps its ``pyverbs``.  A program opts in from outside, without an edit::

    tcpverbs run -- python prog.py

puts this directory first on ``PYTHONPATH`` for the program and its children (see
:func:`environ`).  What a TCP device cannot offer (device memory, memory windows, XRC,
flow steering, the vendor providers) raises ``PyverbsRDMAError`` with ``EOPNOTSUPP``, which
pyverbs programs and rdma-core's tests take as "not supported here".
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

__all__ = ["PATH", "environ"]

PATH = pathlib.Path(__file__).resolve().parent  # holds the package "pyverbs"


def environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """*base* (default: this process's environment) with the face first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    rest = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{PATH}{os.pathsep}{rest}" if rest else str(PATH)
    return env
