"""MIS-FM Volume Fusion: segment the blend weight of two fused sub-volumes (K + 1 classes).

Each crop of the batch is the background of one fused volume and the foreground of another (a
random derangement of the batch, so no crop is fused with itself); random cuboid blocks set the
voxel-wise weight ``alpha = class / K`` (``pretext.volume_fusion``), and a 3D segmentation
network predicts the class map, trained with ``(Dice + CE) / 2`` on the one-hot target.

Differences from the references, on purpose:

* the foreground is another crop of the batch drawn at random each step (the 2023 code paired
  each sample with the previous one, ``torch.roll``; PyMIC's current ``Crop4VolumeFusion``
  takes two augmented crops of one volume). Batch size must be >= 2.
* no contrast augmentation of the sub-volumes: the inputs are intensity-normalised crops from
  the preprocessed store, so the two sub-volumes are already on one scale;
* block sizes are fractions of the crop (``FusionConfig``), equal to the paper's voxel ranges on
  its 64x128x128 sub-volumes;
* the segmenter is a ``ResNetUNet`` on a 3D ResNet, or MIS-FM's PCT-Net (``nets.pctnet``,
  ``backbone.name: pctnet``) with deep supervision (not FMUNet); the whole encoder and decoder
  transfer (``export_backbone`` / ``export_decoder``), and only the output convolutions are left
  for the downstream task to re-initialise;
* a segmenter that returns a list in training ([main, aux...], all at the input size) is
  trained on the deep-supervision sum with weights 1 / 2^i, normalised (PyMIC's ``deep_sup``);
  the reported ``dice``, ``ce`` and ``accuracy`` and the validation loss use the main output;
* ``update=False`` (validation) draws pairs and blocks from a fixed seed, and in training mode
  leaves the BatchNorm running statistics untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from medfoundry.methods.losses import deep_supervision_weights
from medfoundry.methods.spec import MethodSpec, Panel, crop_input_size, require_3d, section_extra
from medfoundry.methods.stateless import call_keeping_buffers
from medfoundry.nets.pctnet import PCTNet, PCTNetEncoder
from medfoundry.nets.unet import ResNetUNet
from medfoundry.pretext.volume_fusion import FusionConfig, random_derangement, volume_fusion


class VolumeFusion(nn.Module):
    """Volume Fusion pretraining: ``forward(crops) -> {"loss", "dice", "ce", "accuracy"}``.

    ``dice`` is the soft Dice loss (1 - mean class Dice), ``ce`` the cross-entropy and
    ``accuracy`` the fraction of voxels whose class is predicted right.

    Args:
        segmenter: maps (B, 1, D, H, W) to logits (B, num_classes, D, H, W); its ``encoder``
            is the exported backbone and its ``decoder`` the exported decoder.
        num_classes: K + 1 blend-weight classes (5: alpha in {0, .25, .5, .75, 1}).
        fusion: block sampling (a ``FusionConfig`` or a dict of its fields; K is taken from
            ``num_classes`` when not given).
        dice_weight, ce_weight: loss = dice_weight * Dice + ce_weight * CE (PyMIC: 0.5, 0.5).
        val_seed: seed of the pairs and blocks drawn when ``update=False`` without a generator.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        num_classes: int = 5,
        fusion: FusionConfig | dict | None = None,
        dice_weight: float = 0.5,
        ce_weight: float = 0.5,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (K + 1 with K >= 1), got {num_classes}")
        if isinstance(fusion, dict):
            fusion = FusionConfig(**{"num_classes_fg": num_classes - 1, **fusion})
        self.fusion = fusion or FusionConfig(num_classes_fg=num_classes - 1)
        if self.fusion.num_classes_fg != num_classes - 1:
            raise ValueError(
                f"num_classes {num_classes} needs K = {num_classes - 1} fusion classes, the "
                f"fusion config has K = {self.fusion.num_classes_fg}"
            )
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"loss weights must be >= 0, not both 0: {dice_weight, ce_weight}")
        self.num_classes = int(num_classes)
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.val_seed = int(val_seed)
        self.segmenter = segmenter
        # batch=True: one Dice per class over the whole batch (a class absent from one crop
        # does not count as a failure there)
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True)

    @property
    def backbone(self) -> nn.Module:
        """The segmenter's encoder: what downstream tasks fine-tune."""
        return self.segmenter.encoder

    def fuse(
        self, crops: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fused crops (B, C, D, H, W) and class maps (B, D, H, W): crop i is the background and
        another crop of the batch the foreground."""
        if crops.ndim != 5:
            raise ValueError(f"crops must be (B, C, D, H, W), got shape {tuple(crops.shape)}")
        if crops.shape[0] < 2:
            raise ValueError("volume fusion pairs crops of one batch: batch size must be >= 2")
        partner = random_derangement(crops.shape[0], generator, crops.device)
        return volume_fusion(crops[partner], crops, self.fusion, generator)

    def forward(
        self, images: Tensor, update: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss and statistics for a batch of crops (B, 1, D, H, W); fusion happens here.

        The method keeps no state besides its parameters and BatchNorm statistics; with
        ``update=False`` the pairs and blocks come from ``val_seed`` and the statistics stay.
        """
        if not update and generator is None:
            generator = torch.Generator(device=images.device).manual_seed(self.val_seed)
        with torch.no_grad():
            fused, labels = self.fuse(images, generator)
        if not update and self.training:
            out = call_keeping_buffers(self.segmenter, fused)
        else:
            out = self.segmenter(fused)  # (B, K+1, D, H, W), or a list of them
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        if not update:  # validation: the main output only
            outputs = outputs[:1]
        for logits in outputs:
            if logits.shape[1] != self.num_classes or logits.shape[2:] != labels.shape[1:]:
                raise ValueError(
                    f"segmenter gave {tuple(logits.shape)}, expected (B, {self.num_classes}, "
                    f"{', '.join(map(str, labels.shape[1:]))})"
                )
        terms = [self._dice_ce(logits.float(), labels) for logits in outputs]
        weights = deep_supervision_weights(len(terms))
        loss = torch.stack(
            [
                w * (self.dice_weight * d + self.ce_weight * c)
                for w, (d, c) in zip(weights, terms, strict=True)
            ]
        ).sum()
        dice, ce = terms[0]
        with torch.no_grad():
            accuracy = (outputs[0].argmax(dim=1) == labels).float().mean()
        return {
            "loss": loss,
            "dice": dice.detach(),
            "ce": ce.detach(),
            "accuracy": accuracy,
        }

    def _dice_ce(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Soft Dice loss and cross-entropy of logits (B, K+1, D, H, W) against (B, D, H, W)."""
        return self.dice(logits, labels[:, None]), F.cross_entropy(logits, labels)

    # --- export -----------------------------------------------------------------------------------
    def export_backbone(self) -> dict[str, Tensor]:
        """The encoder's weights (``segmenter.encoder``), detached copies."""
        return {k: v.detach().clone() for k, v in self.segmenter.encoder.state_dict().items()}

    def export_decoder(self) -> dict[str, Tensor]:
        """The decoder's weights (``segmenter.decoder``, without the K+1-class output layer nor
        deep-supervision heads), detached copies; they load into the ``decoder`` of a
        ``ResNetUNet`` of the same channels or of a ``PCTNet`` on the same encoder config."""
        return {k: v.detach().clone() for k, v in self.segmenter.decoder.state_dict().items()}


# Volume Fusion's ResNet-UNet decoder channels when the config gives none.
RESNET_UNET_DECODER: tuple[int, ...] = (256, 128, 64, 32, 16)


def build_volume_fusion(
    backbone: nn.Module,
    num_classes: int = 5,
    decoder_channels: Sequence[int] | None = None,
    deep_supervision: bool | None = None,
    **kwargs: Any,
) -> VolumeFusion:
    """MIS-FM Volume Fusion: a 3D segmenter predicts the K + 1 blend-weight classes.

    A ``PCTNetEncoder`` gets the PCT-Net decoder with deep supervision (MIS-FM's setting;
    ``deep_supervision: false`` turns it off); any other 3D backbone with feature maps gets a
    ``ResNetUNet`` with ``decoder_channels`` (default ``RESNET_UNET_DECODER``).
    """
    require_3d("volume_fusion", backbone)
    if isinstance(backbone, PCTNetEncoder):
        if decoder_channels is not None:
            raise ValueError(
                "volume_fusion with PCT-Net: its decoder mirrors the encoder's channels, so "
                "decoder_channels must be null (see the volume_fusion_pctnet preset)"
            )
        ds = True if deep_supervision is None else bool(deep_supervision)
        segmenter: nn.Module = PCTNet(backbone, num_classes, deep_supervision=ds)
        return VolumeFusion(segmenter, num_classes=num_classes, **kwargs)
    if not hasattr(backbone, "feature_channels"):
        raise ValueError("volume_fusion needs a ResNet backbone (its U-Net uses the feature maps)")
    if deep_supervision:
        raise ValueError("volume_fusion: deep_supervision needs a PCT-Net backbone (name: pctnet)")
    channels = RESNET_UNET_DECODER if decoder_channels is None else decoder_channels
    segmenter = ResNetUNet(backbone, num_classes, decoder_channels=channels)
    return VolumeFusion(segmenter, num_classes=num_classes, **kwargs)


SPEC = MethodSpec(
    name="volume_fusion",
    order=50,
    factory=build_volume_fusion,
    data="store3d",
    input_size=crop_input_size,
    checkpoint_extra=section_extra("volume_fusion"),
    min_batch=2,  # each crop is fused with another crop of its batch
    curve_panels=(
        Panel(
            "Dice loss (solid) and cross-entropy (dashed)",
            (("train/dice_step", "-"), ("train/ce_step", "--")),
        ),
        Panel("voxel accuracy of the fusion class", (("train/accuracy_step", "-"),), (0.0, 1.0)),
    ),
)
