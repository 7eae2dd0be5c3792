"""Checkpoint format: `model.safetensors` + `medfoundry.json`."""

from medfoundry.zoo.checkpoint import (
    LoadReport,
    load_backbone,
    read_metadata,
    save_checkpoint,
)

__all__ = ["LoadReport", "load_backbone", "read_metadata", "save_checkpoint"]
