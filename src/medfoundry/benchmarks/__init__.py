"""Benchmarks: one engine (`engine`) and one `BenchmarkSpec` per benchmark, found by name.

Every module of this package with a module-level ``SPEC`` is a benchmark: the registry below
finds it, the CLI gives it a ``medfoundry benchmark <command>`` with the shared flags, and
``benchmark merge`` uses its results layout. Adding one: docs/contributing.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from medfoundry.benchmarks.spec import BenchmarkSpec


@cache
def specs() -> dict[str, BenchmarkSpec]:
    """{name: spec} of every benchmark module in this package, sorted by CLI command."""
    found: dict[str, BenchmarkSpec] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, BenchmarkSpec):
            found[spec.name] = spec
    return dict(sorted(found.items(), key=lambda kv: kv[1].command))


def get_spec(name: str) -> BenchmarkSpec:
    """The spec called ``name`` (results' ``benchmark`` value) or with CLI command ``name``."""
    for spec in specs().values():
        if name in (spec.name, spec.command):
            return spec
    raise KeyError(name)


__all__ = ["BenchmarkSpec", "get_spec", "specs"]
