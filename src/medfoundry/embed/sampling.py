"""Cut boxes out of images and resize them to the model's input size, all crops in one call.

Images are held at a working resolution (the size the model's pretraining loaded images at);
boxes are in pixels of the image as stored, so they are mapped through normalised coordinates
and the working resolution never changes which region a box covers. Samples outside the image
repeat its edge (``padding_mode="border"``, as the pretraining views do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_theta(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Affine maps (M, 2, 3) from an output crop's [-1, 1] grid to its box in the image's
    normalised coordinates; ``boxes`` (M, 4) in pixels, ``sizes`` (M, 2) the images' (H, W)."""
    h, w = sizes[:, 0].float(), sizes[:, 1].float()
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0] = (x1 - x0) / w  # half-width in normalised units: (x1 - x0) / 2 * 2 / W
    theta[:, 0, 2] = (x0 + x1) / w - 1  # centre: 2 * (x0 + x1) / 2 / W - 1
    theta[:, 1, 1] = (y1 - y0) / h
    theta[:, 1, 2] = (y0 + y1) / h - 1
    return theta


def crop_resize(
    images: Tensor, sizes: Tensor, image_index: Tensor, boxes: Tensor, out_size: int
) -> Tensor:
    """Crops (M, C, out, out) of ``images`` (N, C, h, w) for boxes (M, 4) of images
    ``image_index`` (M,); ``sizes`` (N, 2) are the images' stored (H, W) the boxes refer to."""
    index = image_index.long()
    theta = box_theta(boxes, sizes[index]).to(images.device, images.dtype)
    grid = F.affine_grid(
        theta, [len(boxes), images.shape[1], out_size, out_size], align_corners=False
    )
    return F.grid_sample(
        images[index], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
