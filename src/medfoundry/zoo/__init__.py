"""Checkpoint format (`model.safetensors` + `medfoundry.json`) and fine-tuned model loading."""

from medfoundry.zoo.checkpoint import (
    LoadReport,
    checkpoint_dir,
    has_decoder,
    load_backbone,
    load_decoder,
    read_meta,
    read_metadata,
    save_checkpoint,
)
from medfoundry.zoo.importers import FORMATS, import_checkpoint
from medfoundry.zoo.meta import (
    BackboneSpec,
    Checkpoint,
    CheckpointLike,
    CheckpointMeta,
    resolve_checkpoint,
)
from medfoundry.zoo.models import LoadedModel, load_model

__all__ = [
    "FORMATS",
    "BackboneSpec",
    "Checkpoint",
    "CheckpointLike",
    "CheckpointMeta",
    "LoadReport",
    "LoadedModel",
    "checkpoint_dir",
    "has_decoder",
    "import_checkpoint",
    "load_backbone",
    "load_decoder",
    "load_model",
    "read_meta",
    "read_metadata",
    "resolve_checkpoint",
    "save_checkpoint",
]
