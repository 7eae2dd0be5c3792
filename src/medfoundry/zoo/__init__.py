"""Checkpoint format: `model.safetensors` + `medfoundry.json`."""

from medfoundry.zoo.checkpoint import (
    LoadReport,
    checkpoint_dir,
    has_decoder,
    load_backbone,
    load_decoder,
    read_metadata,
    save_checkpoint,
)

__all__ = [
    "LoadReport",
    "checkpoint_dir",
    "has_decoder",
    "load_backbone",
    "load_decoder",
    "read_metadata",
    "save_checkpoint",
]
