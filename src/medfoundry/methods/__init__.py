"""SSL methods: ``torch.nn.Module``s whose ``forward(images, update=...)`` returns ``{"loss", ...}``.

``build_method(name, backbone, **kwargs)`` is the one entry point. Each method describes itself
with a ``MethodSpec`` (``methods.spec``) declared in its own module as ``SPEC`` / ``SPECS``; the
registry collects them from this package's modules (no list of names here), ``method_spec(name)``
answers the driver, the CLI and the curves, and ``METHODS`` (name -> factory) and ``STAGE_PLANS``
(name -> stage plan) are views of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

from medfoundry.methods.adam import ADAM_LEVELS
from medfoundry.methods.adam_v2 import AdamV2
from medfoundry.methods.mae import MaskedAutoencoder
from medfoundry.methods.moco import MoCo
from medfoundry.methods.spec import MethodSpec, Panel, discover_specs
from medfoundry.methods.stages import Stage
from medfoundry.methods.voco import VoCo
from medfoundry.methods.volume_fusion import RESNET_UNET_DECODER, VolumeFusion

_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (this package's modules are registered on import); a name
    already registered with another spec is refused."""
    if _REGISTRY.get(spec.name, spec) is not spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove the method ``name`` from the registry (a plug-in's, a test's)."""
    _REGISTRY.pop(name, None)


def method_specs() -> tuple[MethodSpec, ...]:
    """Every registered method's spec, in order (``MethodSpec.order``, then name)."""
    return tuple(sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name)))


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in order (the CLI's ``pretrain --method`` choices)."""
    return tuple(s.name for s in method_specs())


def method_spec(name: str) -> MethodSpec:
    """The spec of the method ``name``; ValueError naming the choices when there is none."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(_REGISTRY)}")
    return _REGISTRY[name]


class _SpecField(Mapping[str, Callable[..., Any]]):
    """A live read-only view name -> one field of each registered spec (those that set it)."""

    def __init__(self, field: str) -> None:
        self._field = field

    def _items(self) -> dict[str, Callable[..., Any]]:
        items = ((s.name, getattr(s, self._field)) for s in method_specs())
        return {name: value for name, value in items if value is not None}

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


# Each method's factory, by name (the same name used by configs and the CLI).
METHODS: Mapping[str, Callable[..., nn.Module]] = _SpecField("factory")
# Methods that declare their own stages (config -> [Stage]); the others train their levels.
STAGE_PLANS: Mapping[str, Callable[[dict[str, Any]], list[Stage]]] = _SpecField("stage_plan")


def build_method(name: str, backbone: nn.Module, **kwargs: Any) -> nn.Module:
    """Build the SSL method ``name`` around ``backbone``; kwargs go to the method's class."""
    model = method_spec(name).factory(backbone, **kwargs)
    model.method_name = name
    return model


for _spec in discover_specs(__name__, __path__):
    register_method(_spec)


__all__ = [
    "ADAM_LEVELS",
    "METHODS",
    "RESNET_UNET_DECODER",
    "STAGE_PLANS",
    "AdamV2",
    "MaskedAutoencoder",
    "MethodSpec",
    "MoCo",
    "Panel",
    "Stage",
    "VoCo",
    "VolumeFusion",
    "build_method",
    "method_names",
    "method_spec",
    "method_specs",
    "register_method",
    "unregister_method",
]
