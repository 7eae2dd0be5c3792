"""View generators: pure, batched tensor functions that turn a batch of images into SSL inputs."""

from medfoundry.pretext.adam_v2 import AdamV2Augment, concentric_views, multicrop_views
from medfoundry.pretext.anatomy import AnatomyAugment, decompose_views
from medfoundry.pretext.voco import VoCoAugment, VoCoViews, overlap_targets, voco_views
from medfoundry.pretext.volume_fusion import (
    FusionBlocks,
    FusionConfig,
    random_derangement,
    volume_fusion,
)

__all__ = [
    "AdamV2Augment",
    "AnatomyAugment",
    "FusionBlocks",
    "FusionConfig",
    "VoCoAugment",
    "VoCoViews",
    "concentric_views",
    "decompose_views",
    "multicrop_views",
    "overlap_targets",
    "random_derangement",
    "voco_views",
    "volume_fusion",
]
