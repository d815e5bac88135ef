"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists its public names and the submodule each comes from; a name is imported on
first use, so ``import lvtl.io.atomic`` does not pull in pydicom and ``lvtl --help`` starts
fast, while ``lvtl.load_series`` and ``lvtl.model.Conv4d`` still work. No lvtl imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(package: str, modules: dict[str, str]) -> tuple[Callable[[str], Any],
                                                        Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` re-exporting, from each submodule
    named in ``modules``, the space-separated names it maps to."""
    exports = {name: module for module, names in modules.items() for name in names.split()}

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_, sorted(exports)
