"""Benchmarks: one engine (`engine`) and one `BenchmarkSpec` per benchmark, found by name.

Every module of this package with a module-level ``SPEC`` is a benchmark: the registry below
finds it, the CLI gives it a ``medfoundry benchmark <command>`` with the shared flags, and
``benchmark merge`` uses its results layout. Adding one: docs/contributing.md.
"""

from __future__ import annotations

from functools import cache

from medfoundry.benchmarks.spec import BenchmarkSpec
from medfoundry.registry import discover


@cache
def specs() -> dict[str, BenchmarkSpec]:
    """{name: spec} of every benchmark module in this package, sorted by CLI command."""
    found = discover(__name__, __path__, BenchmarkSpec)
    return {s.name: s for s in sorted(found, key=lambda s: s.command)}


def get_spec(name: str) -> BenchmarkSpec:
    """The spec called ``name`` (results' ``benchmark`` value) or with CLI command ``name``."""
    for spec in specs().values():
        if name in (spec.name, spec.command):
            return spec
    raise KeyError(name)


__all__ = ["BenchmarkSpec", "get_spec", "specs"]
