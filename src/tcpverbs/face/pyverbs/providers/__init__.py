"""pyverbs' vendor providers (mlx5, efa, ...): none drives a TCP device.

Every module under ``pyverbs.providers`` imports, so programs and test suites that import
them at start-up load; using one of their names raises ``EOPNOTSUPP``.  A finder makes
the modules on demand, so a provider module this list never heard of imports too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

from .._unsupported import unsupported_module


class _ProviderModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(__name__ + "."):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        vendor = module.__name__.split(".")[2]
        why = f"the {vendor} provider drives {vendor} hardware; a tcpverbs device is TCP"
        module.__getattr__ = unsupported_module(module.__name__, why)  # type: ignore[method-assign]


if not any(isinstance(f, _ProviderModules) for f in sys.meta_path):
    sys.meta_path.append(_ProviderModules())
