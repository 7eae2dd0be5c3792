"""View generators: pure, batched tensor functions that turn a batch of images into SSL inputs."""

from medfoundry.pretext.anatomy import AnatomyAugment, decompose_views

__all__ = ["AnatomyAugment", "decompose_views"]
