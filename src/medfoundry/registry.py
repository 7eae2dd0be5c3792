"""Plug-in discovery shared by the registries (methods, benchmarks): the objects of one kind that
the modules of a package declare as ``SPEC`` (or a ``SPECS`` tuple), so no list of names is kept."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")


def declared(module: ModuleType, kind: type[T]) -> list[T]:
    """The ``kind`` objects a module declares: its ``SPEC`` and the entries of its ``SPECS``."""
    found = [getattr(module, "SPEC", None), *getattr(module, "SPECS", ())]
    return [spec for spec in found if isinstance(spec, kind)]


def discover(package: str, path: Iterable[str], kind: type[T]) -> list[T]:
    """The ``kind`` objects declared by the modules of ``package`` (folders ``path``), each
    imported, in module-name order."""
    out: list[T] = []
    for info in pkgutil.iter_modules(list(path), f"{package}."):
        out += declared(importlib.import_module(info.name), kind)
    return out
