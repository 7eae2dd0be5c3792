"""Eve as Eden defines it: the pooled backbone vector of a crop resized to the model's input
size. ``EveModel`` holds a pretrained (or randomly initialised) 2D backbone with what feeds it;
``embed_boxes`` turns boxes of images into embeddings, batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from medfoundry.data.image2d import load_2d_sized
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.embed.sampling import crop_resize
from medfoundry.errors import CheckpointError, InputError
from medfoundry.nets import create_backbone
from medfoundry.zoo import CheckpointLike, load_backbone, resolve_checkpoint


@dataclass
class EveModel:
    """A 2D backbone in eval mode and how to feed it: crops are resized to ``input_size``,
    images are held at ``work_size`` (the size pretraining loaded them at)."""

    backbone: nn.Module
    input_size: int
    work_size: int
    channels: int
    normalization: dict[str, Any]
    name: str
    load_summary: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device


def _sizes(meta: Any, source: str) -> tuple[int, int]:
    """(input size, working size) of a 2D checkpoint's metadata."""
    size = meta.input_size
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise CheckpointError(f"{source}: Eve needs a square 2D input size, got {size}")
        size = size[0]
    if size is None:
        raise CheckpointError(f"{source}: checkpoint metadata has no input_size")
    load = (meta.training_data or {}).get("load_size")
    return int(size), int(load or size)


def load_eve_model(
    path: CheckpointLike | None,
    *,
    like: CheckpointLike | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> EveModel:
    """The Eve model of a pretrained checkpoint, or with ``path=None`` a random initialisation
    (seeded) of the same network as ``like`` (the random-features baseline)."""
    source = path if path is not None else like
    if source is None:
        raise ValueError("load_eve_model needs a checkpoint or, for random weights, `like`")
    ckpt = resolve_checkpoint(source)
    meta = ckpt.meta
    if meta.spatial_dims != 2:
        raise CheckpointError(f"{ckpt}: Eve is 2D for now; this checkpoint is {meta.spatial_dims}D")
    if meta.backbone is None:
        raise CheckpointError(f"{ckpt}: checkpoint metadata has no 'backbone' entry")
    if meta.task is not None:
        raise CheckpointError(
            f"{ckpt}: a fine-tuned {meta.task} model; embed reads pretrained backbones "
            "(a `medfoundry pretrain` run or an imported checkpoint)"
        )
    input_size, work_size = _sizes(meta, str(ckpt))
    torch.manual_seed(seed)
    backbone = create_backbone(**meta.backbone.config)
    if path is not None:
        summary = load_backbone(ckpt, backbone).summary()
        name = f"{meta.method}-{Path(str(path)).name or path}"
    else:
        summary, name = "random initialisation", "random"
    backbone.eval().to(device)
    return EveModel(
        backbone=backbone,
        input_size=input_size,
        work_size=work_size,
        channels=int(meta.in_channels),
        normalization=dict(meta.normalization or XRAY_NORMALIZATION),
        name=name,
        load_summary=summary,
    )


def load_images(
    paths: Sequence[Path], model: EveModel, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """Images at the model's working size (N, C, s, s) and their stored sizes (N, 2) as (H, W):
    boxes are given in stored pixels."""
    if not paths:
        raise InputError(None, "no images to embed")
    images = torch.empty(len(paths), model.channels, model.work_size, model.work_size)
    sizes = torch.empty(len(paths), 2, dtype=torch.long)
    for i, path in enumerate(tqdm(paths, desc="reading images", disable=not progress, leave=False)):
        images[i], stored = load_2d_sized(
            path, model.work_size, model.channels, model.normalization
        )
        sizes[i] = torch.tensor(stored)
    return images, sizes


@torch.no_grad()
def embed_boxes(
    model: EveModel,
    images: Tensor,
    sizes: Tensor,
    image_index: Tensor,
    boxes: Tensor,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "embedding crops",
) -> Tensor:
    """Eve (M, D), float32 on the CPU, of boxes (M, 4) of images ``image_index`` (M,)."""
    out = []
    starts = range(0, len(boxes), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        stop = start + batch_size
        crops = crop_resize(
            images, sizes, image_index[start:stop], boxes[start:stop], model.input_size
        )
        out.append(model.backbone(crops.to(model.device)).float().cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
