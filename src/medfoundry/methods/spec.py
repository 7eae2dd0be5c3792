"""What a pretraining method says about itself, so that the driver, the CLI and the curves need
not name it.

Each method module declares a module-level ``SPEC`` (or ``SPECS``, a tuple) next to its code;
``methods/__init__`` discovers them (``discover_specs``) and keeps them in its registry. Adding a
method is its method module (with its ``SPEC``), its pretext module and its preset
(``configs/<name>.yaml``). Plain data and plain functions only: no Lightning, nothing from
``train`` or ``tasks`` (curve panels are titles and metric names, drawn by ``train.curves``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from medfoundry.methods.stages import Stage
from medfoundry.registry import discover

DATA_KINDS = ("images", "store3d")  # 2D images (folders, a corpus) or one 3D `prepare` store
STAGINGS = ("levels", "plan", "single")


class Panel(NamedTuple):
    """One subplot of the curves: a title, the step-level series it draws (logged metric name,
    matplotlib line style) and its y range."""

    title: str
    series: tuple[tuple[str, str], ...]
    ylim: tuple[float, float] | None = None


# Within-batch retrieval (``methods.signals.retrieval_top1``), drawn by the methods that log it.
RETRIEVAL_PANEL = Panel(
    "within-batch retrieval top-1 (dots: validation)",
    (("train/retrieval_step", "-"), ("val/retrieval", "o-")),
    (-0.02, 1.02),
)


def views_input_size(cfg: Mapping[str, Any]) -> int:
    """The 2D views' side (``views.out_size``): what the backbone of a view method sees."""
    return int(cfg["views"]["out_size"])


def size_3d(size: int | Sequence[int]) -> list[int]:
    """A crop size as [d, h, w] (an int is a cube)."""
    return [int(size)] * 3 if isinstance(size, int) else [int(v) for v in size]


def crop_input_size(cfg: Mapping[str, Any]) -> list[int]:
    """The 3D crop (``data.crop_size``) as [d, h, w]."""
    return size_3d(cfg["data"]["crop_size"])


def section_extra(section: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], dict]:
    """A ``checkpoint_extra`` that stores the config section ``section`` under its name."""

    def extra(cfg: Mapping[str, Any], backbone_cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {section: dict(cfg.get(section, {}))}

    return extra


def require_3d(method: str, backbone: Any) -> None:
    """Raise a clear error unless ``backbone`` is a 3D network (``config["spatial_dims"] == 3``)."""
    config = getattr(backbone, "config", {})
    dims = config.get("spatial_dims")
    if dims != 3:
        name = config.get("name", type(backbone).__name__)
        raise ValueError(
            f"{method} pretrains on 3D crops: it needs a 3D backbone (e.g. name: resnet18, "
            f"spatial_dims: 3), got {name!r} with spatial_dims={dims}"
        )


@dataclass(frozen=True)
class MethodSpec:
    """A pretraining method, as the driver (``tasks.pretrain``), the CLI and the curves see it.

    Attributes:
        name: the config's ``method``, the CLI's ``--method`` and the preset's file name.
        order: position among the methods (CLI choices and help; ties by name).
        factory: ``(backbone, **options) -> nn.Module``, the method around a backbone.
        data: ``images`` (2D images or a corpus, decoded into memory) or ``store3d`` (random
            3D crops of one ``medfoundry prepare`` store).
        stages: ``levels`` (one stage per anatomy level, ``levels`` / ``epochs``), ``plan`` (its
            own ``stage_plan``) or ``single`` (one stage at level 0; an epoch list is summed).
        stage_plan: config -> [Stage], for ``stages == "plan"`` (Adam-v2's L then LCD).
        input_size: config -> the size the backbone sees (an int side, or [d, h, w]).
        section: the config section holding its options (default: ``name``).
        takes_views: the driver also passes ``level``, ``out_size`` (its ``input_size``) and
            ``views.augment`` to the factory (the 2D view methods).
        forced_options: (key, value) set in its section whatever the config says (MoCo-v2
            never prunes, whichever preset it borrows).
        checkpoint_extra: (config, backbone config) -> extra fields of the exported
            checkpoint's metadata (MAE: ``patch_size`` and its section).
        min_batch: the smallest batch it trains on (a smaller validation set is skipped).
        logs_retrieval: logs within-batch retrieval (the representation-collapse guard, and
            checkpoint selection by ``val/retrieval``).
        loss_title: the curves' loss panel title.
        curve_panels: the curves' panels after the loss (``train.curves`` adds the generic
            signal and probe panels whose series are logged).
    """

    name: str
    order: int
    factory: Callable[..., Any]
    data: str = "images"
    stages: str = "single"
    stage_plan: Callable[[dict[str, Any]], list[Stage]] | None = None
    input_size: Callable[[Mapping[str, Any]], int | list[int]] = views_input_size
    section: str = ""
    takes_views: bool = False
    forced_options: tuple[tuple[str, Any], ...] = ()
    checkpoint_extra: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    min_batch: int = 1
    logs_retrieval: bool = False
    loss_title: str = "loss (dots: validation)"
    curve_panels: tuple[Panel, ...] = ()

    def __post_init__(self) -> None:
        if not self.section:
            object.__setattr__(self, "section", self.name)
        if self.data not in DATA_KINDS:
            raise ValueError(f"method {self.name}: data {self.data!r} is not one of {DATA_KINDS}")
        if self.stages not in STAGINGS:
            raise ValueError(f"method {self.name}: stages {self.stages!r} not one of {STAGINGS}")
        if (self.stages == "plan") != (self.stage_plan is not None):
            raise ValueError(f"method {self.name}: a stage_plan goes with stages='plan'")
        if self.min_batch < 1:
            raise ValueError(f"method {self.name}: min_batch must be >= 1")

    @property
    def volumetric(self) -> bool:
        """Trains on 3D crops of a store (a 3D backbone, a 3D checkpoint)."""
        return self.data == "store3d"

    def options(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Its section of ``cfg`` ({} when absent or null)."""
        return cfg.get(self.section) or {}


def discover_specs(package: str, path: Iterable[str]) -> list[MethodSpec]:
    """The specs declared by the modules of ``package`` (folders ``path``), each imported."""
    return discover(package, path, MethodSpec)
