"""nets/decay.py: one no-weight-decay rule, used by pretraining and both fine-tuning modules."""

from __future__ import annotations

import torch

from medfoundry.nets import create_backbone
from medfoundry.nets.decay import no_weight_decay
from medfoundry.train.classify_module import ClassificationModule


def _swin():
    return create_backbone(
        "swin", in_channels=1, embed_dim=12, depths=[2, 2], num_heads=[1, 2], window_size=4
    )


def test_rule_exempts_norms_biases_tables_and_mask_token():
    net = _swin()
    exempt = {n for n, p in net.named_parameters() if no_weight_decay(n, p)}
    tables = {n for n, _ in net.named_parameters() if "relative_position_bias_table" in n}
    assert tables and tables <= exempt
    assert all(p.ndim <= 1 or n in tables for n, p in net.named_parameters() if n in exempt)
    assert no_weight_decay("mask_token", torch.nn.Parameter(torch.zeros(1, 1, 8)))
    assert not no_weight_decay("layers.0.qkv.weight", torch.nn.Parameter(torch.zeros(4, 4)))


def test_classification_fine_tuning_does_not_decay_bias_tables():
    net = _swin()
    module = ClassificationModule(net, 2, {"lr": 1e-3, "weight_decay": 0.05}, total_steps=10)
    opt = module.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in module.named_parameters():
        if "relative_position_bias_table" in name or p.ndim <= 1:
            assert id(p) not in decayed, name
    assert decayed, "weights must still be decayed"


def test_segmentation_optimiser_exempts_tables_and_scales_the_encoder_lr():
    from medfoundry.nets.swin_unet import SwinUNet
    from medfoundry.train.optim import encoder_aware_adamw

    model = SwinUNet(_swin(), num_classes=2)
    cfg = {"lr": 1e-3, "weight_decay": 0.05, "encoder_lr_mult": 0.1}
    opt = encoder_aware_adamw(model, cfg, max_steps=10)["optimizer"]
    enc = {id(p) for p in model.encoder.parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            assert group["lr"] == (1e-4 if id(p) in enc else 1e-3)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        if "relative_position_bias_table" in name or p.ndim <= 1:
            assert id(p) not in decayed, name
