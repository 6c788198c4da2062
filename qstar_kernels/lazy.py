"""Lazy package exports (PEP 562): a package names what it exports and the submodule each comes
from; the submodule (and torch with it) is imported on first use. So `qstar --help`, argument
checks and `from qstar_kernels import METHODS` cost no torch import. Used by engine's packages too.
"""
from __future__ import annotations

import importlib


def lazy_getattr(package: str, exports: dict[str, str]):
    """A module `__getattr__` for `package`: name -> `package.<exports[name]>.<name>`, cached."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{exports[name]}")
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
