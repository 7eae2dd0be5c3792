"""The package's import layers: no module imports a layer above its own.

Every module under ``src/medfoundry`` is parsed with ``ast``; every ``medfoundry.X...`` import
(at module level, inside functions and under ``TYPE_CHECKING`` alike) is mapped to its
top-level part ``X`` (a subpackage or a root module) and checked against ``LAYERS``: a module
may import its own layer and any layer below it, never one above. The few upward imports that
cannot go without a larger refactor are listed in ``KNOWN`` with the reason; any new one fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medfoundry"

#: Bottom to top. ``"medfoundry"`` is the root ``__init__`` (``__version__``; it is imported
#: before any submodule anyway). Parts in the same tuple may import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("medfoundry",),
    ("errors", "registry"),  # base modules: errors, plug-in discovery
    ("runtime",),
    ("config",),
    ("io",),
    ("data",),
    ("metrics",),  # a leaf: numbers from tensors (may use io/data, nothing above)
    ("nets",),  # plain networks; no pretext (the MIM mask token is nets.swin_blocks')
    ("pretext",),  # pretext tasks' data transforms (nothing of nets today; methods use both)
    ("methods",),  # self-supervised methods wrap nets' backbones
    ("zoo",),  # checkpoint format and model loading (builds nets)
    ("embed",),  # embeddings of a checkpoint (zoo, nets); tasks.embed drives it
    ("train",),  # Lightning modules and the training engine
    ("tasks",),  # the user-facing commands (pretrain, finetune, predict, embed)
    ("evaluate",),  # evaluation protocols' parts and reports (arms, Eve, tables, plots)
    ("benchmarks",),  # the benchmark engine and one spec per benchmark
    ("cli",),
)

#: Upward imports allowed for now: (importing module, imported module) -> why.
KNOWN: dict[tuple[str, str], str] = {
    # The root package's public ``medfoundry.predict`` is a lazy facade (``__getattr__``) over
    # the predict task; it runs only on first use of that attribute, never on ``import``.
    ("medfoundry", "medfoundry.tasks.predict"): "lazy public facade medfoundry.predict",
}

#: Parts that must run without Lightning (plain PyTorch, usable from any training loop).
LIGHTNING_FREE = ("pretext", "nets", "methods", "metrics")
LIGHTNING = ("lightning", "pytorch_lightning")


def _rank() -> dict[str, int]:
    return {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _module_name(path: Path) -> str:
    parts = ("medfoundry", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """``medfoundry.nets.swin`` -> ``nets``; ``medfoundry`` -> ``medfoundry``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "medfoundry":  # from medfoundry import nets / __version__
                for alias in node.names:
                    sub = SRC / alias.name
                    is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                    found.append((node.lineno, f"medfoundry.{alias.name}" if is_module else target))
            else:
                found.append((node.lineno, target))
    return found


def _modules() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert files, f"no modules under {SRC}"
    return files


def _edges() -> list[tuple[str, int, str]]:
    """(importing module, line, imported medfoundry module) across the package."""
    edges = []
    for path in _modules():
        for line, target in _imports(path):
            if target == "medfoundry" or target.startswith("medfoundry."):
                edges.append((_module_name(path), line, target))
    return edges


def test_every_part_has_a_layer() -> None:
    rank = _rank()
    parts = {_part(_module_name(p)) for p in _modules()}
    unplaced = sorted(parts - rank.keys())
    assert not unplaced, f"place these in tests/test_layers.py LAYERS: {unplaced}"


def test_no_upward_imports() -> None:
    rank = _rank()
    upward = []
    for importer, line, target in _edges():
        src, dst = _part(importer), _part(target)
        if dst in rank and rank[dst] > rank[src] and (importer, target) not in KNOWN:
            upward.append(f"{importer}:{line} ({src}) imports {target} ({dst})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_known_entries_are_still_needed() -> None:
    rank = _rank()
    seen = {
        (importer, target)
        for importer, _, target in _edges()
        if rank.get(_part(target), -1) > rank.get(_part(importer), -1)
    }
    stale = sorted(set(KNOWN) - seen)
    assert not stale, f"remove from KNOWN in tests/test_layers.py (fixed): {stale}"


def test_plain_pytorch_parts_do_not_import_lightning() -> None:
    offenders = []
    for path in _modules():
        if _part(_module_name(path)) not in LIGHTNING_FREE:
            continue
        for line, target in _imports(path):
            if target.split(".")[0] in LIGHTNING:
                offenders.append(f"{_module_name(path)}:{line} imports {target}")
    assert not offenders, "Lightning in a plain-PyTorch layer:\n" + "\n".join(offenders)
