"""Lazy package exports: a name is imported from its module on first use, so `import fcnseg`
stays cheap (no torch import until a model, dataset or engine name is touched)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """(module ``__getattr__``, ``__all__``) for ``exports``: public name -> module that defines it."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
