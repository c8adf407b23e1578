"""Names a package re-exports from its modules, loaded on first use (PEP 562).

A package whose ``__init__`` imports nothing heavy lets a command set its process up
(toybigram.startup) before torch loads, while ``toybigram.X`` still works from Python.
"""
from __future__ import annotations

from importlib import import_module
from typing import Callable


def by_name(modules: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``{module: names}`` turned into ``{name: module}``."""
    return {name: module for module, names in modules.items() for name in names}


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, serving ``exports`` (name -> module)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
