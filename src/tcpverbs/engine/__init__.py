"""Engines, and the choice of one.

:mod:`.api` is the contract between the verbs objects and any engine; :mod:`.py` is the
pure-Python engine (the reference), :mod:`.native` the C one (``tcpverbs._native``).
:func:`open_engine` picks the engine of a new context: the *choice* passed to
``Context(engine=...)``, else the ``TCPVERBS_ENGINE`` environment variable, else the
default.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ..errors import TcpverbsError
from .api import ENGINE_ENV, ContextEngine, EngineOptions

__all__ = [
    "ENGINES",
    "EngineFactory",
    "available_engines",
    "chosen_engine",
    "default_engine",
    "open_engine",
]

# an engine of one's own (tcpverbs.testing.FakeEngine, say): called with the device name
# and the context's options
EngineFactory = Callable[[str, EngineOptions], ContextEngine]

ENGINES = ("native", "python")  # every engine this package knows, default first


def available_engines() -> list[str]:
    """The engines that can run here (the native one only once its extension is built)."""
    return [name for name in ENGINES if name != "native" or _native_built()]


def _native_built() -> bool:
    try:
        from .. import _native
    except ImportError:
        return False
    return hasattr(_native, "Engine")


def chosen_engine(choice: str | None = None) -> str:
    """The name of the engine a context opened with *choice* gets: the native one by
    default, the Python one where the extension is not built."""
    return choice if choice is not None else os.environ.get(ENGINE_ENV) or default_engine()


def default_engine() -> str:
    return available_engines()[0]


def open_engine(
    device: str,
    choice: str | EngineFactory | None = None,
    options: EngineOptions = EngineOptions(),  # noqa: B008 (frozen: one shared is fine)
) -> ContextEngine:
    """The engine for a new context on *device*: *choice* names one, or builds one."""
    if callable(choice):
        return choice(device, options)
    name = chosen_engine(choice)
    if name == "python":
        from .py import PyEngine

        return PyEngine(device, options)
    if name == "native" and _native_built():
        from .native import NativeEngine

        return NativeEngine(device, options)
    source = "engine=" if choice is not None else f"{ENGINE_ENV}="
    raise TcpverbsError(
        errno.EINVAL if name not in ENGINES else errno.EOPNOTSUPP,
        f"{source}{name!r}: no such engine here (available: {', '.join(available_engines())})",
    )
