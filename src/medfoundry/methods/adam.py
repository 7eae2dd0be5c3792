"""Adam-v1: MoCo-v2 (``methods.moco.MoCo``) with the anatomy decomposer and purposive pruner,
trained coarse-to-fine, one stage per level (0, 2, 4), each warm-started from the last."""

from __future__ import annotations

from typing import Any

from torch import nn

from medfoundry.methods.moco import CONTRASTIVE_PANELS, MoCo
from medfoundry.methods.spec import MethodSpec

# Adam-v1's coarse-to-fine schedule: grid sides of the anatomy decomposer, stage by stage.
ADAM_LEVELS: tuple[int, ...] = (0, 2, 4)


def build_adam(backbone: nn.Module, **kwargs: Any) -> MoCo:
    """Adam-v1: MoCo-v2 + anatomy decomposer + purposive pruner (the caller sets the level)."""
    kwargs.setdefault("prune_threshold", 0.8)
    return MoCo(backbone, **kwargs)


SPEC = MethodSpec(
    name="adam",
    order=10,
    factory=build_adam,
    stages="levels",
    section="moco",  # the MoCo section it shares with moco
    takes_views=True,
    logs_retrieval=True,
    curve_panels=CONTRASTIVE_PANELS,
)
