"""Convert the seed projects' published checkpoints into medfoundry checkpoints.

``import_checkpoint(format, src, out)`` (CLI: ``medfoundry import``) reads a published file
safely (never fully unpickled), renames its tensors onto our network, loads them strictly and
writes ``out/checkpoint/`` plus ``out/import_report.json``, usable as ``medfoundry finetune
--pretrained out``. ``FORMATS`` holds one ``Importer`` per format (``adam_v1``, ``vis_mae``,
``voco``, ``misfm``); ``describe_report`` prints a report.

Rules (reading, unwrapping, renaming, what each format maps to): docs/rules/importers.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medfoundry.errors import CheckpointError
from medfoundry.runtime import atomic_write_json
from medfoundry.zoo.checkpoint import save_checkpoint
from medfoundry.zoo.meta import FORMAT_VERSION, META_NAME, CheckpointMeta

REPORT_NAME = "import_report.json"
CONTAINERS = (
    "state_dict",
    "model",
    "model_state_dict",
    "net",
    "network",
    "teacher",
    "student",
    "module",
)
WRAPPERS = ("module.", "net.", "model.")  # stripped while every key carries them


# --- reading ----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_file(path: Path) -> Any:
    """The file's object: safetensors, or ``torch.load(weights_only=True)`` (argparse
    ``Namespace`` allowed: MAE-style checkpoints store their ``args``); never full unpickling."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            unsafe = []
        what = f" (it pickles {', '.join(unsafe[:5])})" if unsafe else f" ({exc})".split("\n")[0]
        raise CheckpointError(
            f"{path}: refused: it cannot be read with torch.load(weights_only=True){what}; "
            "medfoundry never unpickles arbitrary objects. Re-save only its tensors, e.g. "
            "torch.save(state_dict, 'weights.pth'), in an environment you trust"
        ) from exc


def _tensor_dict(obj: Any, path: Path, where: str = "file") -> tuple[dict[str, Tensor], str]:
    """The state dict inside a (nested) container, and where it was found (``[state_dict]``)."""
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        containers = [k for k in CONTAINERS if isinstance(obj.get(k), dict)]
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors, where
        if containers:
            return _tensor_dict(obj[containers[0]], path, f"{where}[{containers[0]}]")
    raise CheckpointError(
        f"{path}: no state dict found in {where} (looked for tensors or one of {list(CONTAINERS)})"
    )


def _strip_wrappers(weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Remove ``module.`` / ``net.`` / ``model.`` while every key starts with it."""
    stripped: list[str] = []
    changed = True
    while changed and weights:
        changed = False
        for prefix in WRAPPERS:
            if all(k.startswith(prefix) for k in weights):
                weights = {k[len(prefix) :]: v for k, v in weights.items()}
                stripped.append(prefix)
                changed = True
    return weights, stripped


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A published file's tensors, unwrapped (container, ``module.``-style wrappers), and how."""
    path = Path(path)
    weights, where = _tensor_dict(_load_file(path), path)
    weights, stripped = _strip_wrappers(weights)
    return weights, {"container": where, "stripped_prefixes": stripped}


# --- channel adaptation -----------------------------------------------------------------------
def adapt_input_channels(weight: Tensor, in_channels: int) -> Tensor:
    """A conv weight (O, I, *k) for ``in_channels`` inputs: summed over I for 1 channel (the
    response to a gray image replicated into the I channels is kept), else the I channels
    repeated cyclically and scaled by I / N (timm's ``adapt_input_conv`` rule)."""
    n_in = weight.shape[1]
    if in_channels == n_in:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % n_in
    return weight[:, index] * (n_in / in_channels)


def adapt_output_channels(weight: Tensor, channels: int, n_out: int, groups: int) -> Tensor:
    """A per-pixel output layer (groups * C, ...) for ``n_out`` channels: the mean over C for
    one channel, else C repeated cyclically (``groups`` = pixels per token, C fastest)."""
    if channels == n_out:
        return weight
    w = weight.reshape(groups, channels, *weight.shape[1:])
    w = w.mean(dim=1, keepdim=True) if n_out == 1 else w[:, torch.arange(n_out) % channels]
    return w.reshape(groups * n_out, *weight.shape[1:])


# --- conversion -------------------------------------------------------------------------------
@dataclass
class Conversion:
    """A file's tensors renamed onto our network, with what was dropped and why."""

    encoder: nn.Module
    encoder_state: dict[str, Tensor]
    decoder: nn.Module | None = None
    decoder_state: dict[str, Tensor] = field(default_factory=dict)
    decoder_partial: bool = False  # only the pretrained part of the decoder is in the file
    dropped: Counter = field(default_factory=Counter)  # prefix -> tensor count
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Importer:
    """One published format: how to build our network and rename the file's tensors onto it.

    ``convert(weights, arch, in_channels)`` returns a ``Conversion``; ``infer(weights)`` reads
    architecture arguments that the file's shapes fix (VoCo's ``feature_size``); ``defaults``
    are the published architecture's arguments (``arch`` overrides them).
    """

    method: str
    sources: str
    defaults: dict[str, Any]
    convert: Callable[[dict[str, Tensor], dict[str, Any], int], Conversion]
    first_convs: tuple[str, ...]  # our names of the convs that read the image
    infer: Callable[[dict[str, Tensor]], dict[str, Any]] | None = None


def _prefix(key: str, depth: int = 1) -> str:
    """The first ``depth`` dotted components of ``key`` (how dropped keys are counted)."""
    return ".".join(key.split(".")[:depth])


def _swin_block_names(key: str) -> str:
    """timm / Swin names of a block's MLP -> MONAI's (``mlp.fc1`` -> ``mlp.linear1``)."""
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


def _adam_v1(weights: dict[str, Tensor], arch: dict[str, Any], in_channels: int) -> Conversion:
    """Adam-v1 (MoCo-v2 query encoder, torchvision ResNet-50) -> ``ResNetBackbone``."""
    from medfoundry.nets.resnet import ResNetBackbone

    encoder = ResNetBackbone(
        str(arch["name"]), in_channels=in_channels, width=float(arch["width"]), spatial_dims=2
    )
    conv = Conversion(encoder, {})
    query = [k for k in weights if k.startswith("encoder_q.")]
    for key, value in weights.items():
        if query and not key.startswith("encoder_q."):
            conv.dropped[_prefix(key)] += 1  # encoder_k (EMA key encoder), queue, queue_ptr
            continue
        name = key[len("encoder_q.") :] if query else key
        for wrapper in ("encoder.", "backbone."):
            name = name[len(wrapper) :] if name.startswith(wrapper) else name
        if name == "fc" or name.startswith("fc."):
            conv.dropped[f"{'encoder_q.' if query else ''}fc"] += 1  # projector / classifier
            continue
        conv.encoder_state[name] = value
    if query:
        conv.notes.append("query encoder (encoder_q) taken; key encoder and queue dropped")
    conv.metadata = {
        "spatial_dims": 2,
        "axis_order": "CHW",
        "input_size": 224,
        "levels_trained": [0, 2, 4],
        # ImageNet mean/std averaged over RGB, on min-max scaled images (source: /255 of 8-bit)
        "normalization": {
            "name": "percentile_minmax",
            "lower": 0.0,
            "upper": 100.0,
            "mean": 0.449,
            "std": 0.226,
        },
    }
    return conv


def _vis_mae(weights: dict[str, Tensor], arch: dict[str, Any], in_channels: int) -> Conversion:
    """VIS-MAE ``SwinMAE`` -> ``SwinBackbone`` (no final norm) + ``SwinDecoder``."""
    from medfoundry.nets.swin import SwinBackbone
    from medfoundry.nets.swin_decoder import SwinDecoder

    depths, heads = [int(d) for d in arch["depths"]], [int(h) for h in arch["num_heads"]]
    encoder = SwinBackbone(
        "swin",
        in_channels=in_channels,
        embed_dim=int(arch["embed_dim"]),
        depths=depths,
        num_heads=heads,
        window_size=int(arch["window_size"]),
        patch_size=int(arch["patch_size"]),
        drop_path=float(arch["drop_path"]),
        final_norm=False,
    )
    n = len(depths)
    decoder = SwinDecoder(
        embed_dim=int(arch["embed_dim"]),
        out_channels=in_channels,
        depths=[depths[n - 2 - i] for i in range(n - 1)],
        num_heads=[heads[n - 2 - i] for i in range(n - 1)],
        window_size=int(arch["window_size"]),
        patch_size=int(arch["patch_size"]),
    )
    conv = Conversion(encoder, {}, decoder)
    for key, value in weights.items():
        name = _swin_block_names(key)
        if key in ("pos_embed", "mask_token"):
            conv.dropped[key] += 1  # fixed sin-cos (never added) / MAE mask token
        elif m := re.match(r"layers\.(\d+)\.downsample\.(.*)", name):
            conv.encoder_state[f"downsamples.{m[1]}.{m[2]}"] = value
        elif name.startswith(("patch_embed.", "layers.")):
            conv.encoder_state[name] = value
        elif name.startswith("first_patch_expanding."):
            conv.decoder_state["expand.0." + name.split(".", 1)[1]] = value
        elif m := re.match(r"layers_up\.(\d+)\.upsample\.(.*)", name):
            conv.decoder_state[f"expand.{int(m[1]) + 1}.{m[2]}"] = value
        elif name.startswith(("layers_up.", "norm_up.")):
            conv.decoder_state[name] = value
        elif name.startswith("decoder_pred."):
            p2 = int(arch["patch_size"]) ** 2
            src_c = value.shape[0] // p2
            conv.decoder_state["head." + name.split(".", 1)[1]] = adapt_output_channels(
                value, src_c, in_channels, p2
            )
            if src_c != in_channels and name.endswith("weight"):
                conv.notes.append(
                    f"decoder head: {src_c} -> {in_channels} output channels "
                    + ("(mean)" if in_channels == 1 else "(repeated)")
                )
        else:
            conv.encoder_state[name] = value  # left for the strict check to name
    conv.metadata = {
        "spatial_dims": 2,
        "axis_order": "CHW",
        "input_size": 224,
        "patch_size": int(arch["patch_size"]),
        "decoder": dict(decoder.config),
        "mae": {"mask_ratio": 0.75, "mask_unit": 16},
        "levels_trained": [0],
        # VIS-MAE: ToTensor (/255 of 8-bit images), Normalize(0.223, 0.202)
        "normalization": {
            "name": "percentile_minmax",
            "lower": 0.0,
            "upper": 100.0,
            "mean": 0.223,
            "std": 0.202,
        },
    }
    return conv


_VOCO_DECODER = re.compile(r"(encoder(1|2|3|4|10)|decoder[1-5])\.")
_VOCO_HEADS = ("proj_head", "rotation_head", "contrastive_head", "conv", "out")


def _voco_select(weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], Counter, list[str]]:
    """Take the EMA teacher of a VoCo training checkpoint (``student.`` / ``teacher.``)."""
    dropped: Counter = Counter()
    for keep, other in (("teacher.", "student."), ("student.", "teacher.")):
        if any(k.startswith(keep) for k in weights):
            out = {}
            for k, v in weights.items():
                if k.startswith(keep):
                    out[k[len(keep) :]] = v
                else:
                    dropped[_prefix(k)] += 1
            return out, dropped, [f"{keep[:-1]} network taken (VoCo {other[:-1]} dropped)"]
    return weights, dropped, []


def _voco_infer(weights: dict[str, Tensor]) -> dict[str, Any]:
    """``feature_size`` from the patch embedding, ``use_v2`` from the ``layers1c`` blocks."""
    weights, _, _ = _voco_select(weights)
    out: dict[str, Any] = {}
    for key, value in weights.items():
        if key.endswith("patch_embed.proj.weight"):
            out["feature_size"] = int(value.shape[0])
    out["use_v2"] = any(".layers1c." in f".{k}" for k in weights)
    return out


def _voco(weights: dict[str, Tensor], arch: dict[str, Any], in_channels: int) -> Conversion:
    """VoCo / Swin-UNETR SSL -> ``SwinViT3D`` (+ the UNETR conv blocks of ``swinunetr``)."""
    from medfoundry.nets.swinunetr import SwinUNETRNet, SwinViT3D

    weights, dropped, notes = _voco_select(weights)
    encoder = SwinViT3D(
        in_channels=in_channels,
        feature_size=int(arch["feature_size"]),
        depths=[int(d) for d in arch["depths"]],
        num_heads=[int(h) for h in arch["num_heads"]],
        window_size=int(arch["window_size"]),
        use_v2=bool(arch["use_v2"]),
    )
    net = SwinUNETRNet(encoder, 2)
    conv = Conversion(encoder, {}, net.decoder, decoder_partial=True, dropped=dropped, notes=notes)
    for key, value in weights.items():
        name = _swin_block_names(key.replace("swin_vit.", "swinViT."))
        if name.startswith("swinViT."):
            conv.encoder_state[name[len("swinViT.") :]] = value
        elif name.startswith("patch_embed.") or re.match(r"layers\dc?\.", name):
            conv.encoder_state[name] = value  # Swin-UNETR SSL: the bare transformer
        elif _VOCO_DECODER.match(name):
            conv.decoder_state[name] = value
        elif _prefix(name) in _VOCO_HEADS:
            conv.dropped[_prefix(name)] += 1  # projector / SSL heads / a fine-tuned class head
        else:
            conv.encoder_state[name] = value  # left for the strict check to name
    conv.metadata = {
        "spatial_dims": 3,
        "axis_order": "CXYZ (MONAI LoadImage, RAS) in the source",
        "input_size": [96, 96, 96],
        "decoder": {"type": "swinunetr"},
        "voco": {},
        "normalization": {
            "name": "source",
            "description": "VoCo: CT HU [-175, 250] scaled to [0, 1], 1.5 mm (fine-tuning)",
        },
    }
    return conv


def _misfm_fusion(key: str, value: Tensor) -> Tensor:
    """MIS-FM's up-block fuses cat(skip, up); ours cat(up, skip): swap the two input halves."""
    if key.endswith("num_batches_tracked") or value.ndim == 0 or value.shape[0] == 1:
        return value  # a single PReLU weight
    axis = 1 if value.ndim == 5 else 0  # conv (O, 2C, k) vs BN (2C,)
    half = value.shape[axis] // 2
    return torch.cat(value.split(half, dim=axis)[::-1], dim=axis)


def _misfm(weights: dict[str, Tensor], arch: dict[str, Any], in_channels: int) -> Conversion:
    """MIS-FM PCT-Net -> ``PCTNetEncoder(down_preact=True)`` + ``PCTNetDecoder``."""
    from medfoundry.nets.pctnet import PCTNetDecoder, PCTNetEncoder

    mode = int(arch["resolution_mode"])
    encoder = PCTNetEncoder(
        in_channels=in_channels,
        feature_channels=[int(c) for c in arch["feature_channels"]],
        dropout=[float(p) for p in arch["dropout"]],
        depths=[int(d) for d in arch["depths"]],
        num_heads=[int(h) for h in arch["num_heads"]],
        window_size=int(arch["window_size"]),
        resolution_mode=mode,
        down_preact=True,
    )
    decoder = PCTNetDecoder.from_encoder(encoder)
    conv = Conversion(encoder, {}, decoder)
    # (source prefix, part, our prefix, fusion block?)
    rules = [
        (f"embeddings.{mode}.proj.", "e", "proj.", False),
        (f"embeddings.{mode}.conv0.conv_conv.", "e", "block0.", False),
        (f"embeddings.{mode}.conv1.conv_conv.", "e", "block1.", False),
        (f"embeddings.{mode}.down1.conv.", "e", "down1.", False),
        (f"embeddings.{mode}.down2.conv.", "e", "down2.", False),
        ("pyramid_ct.down3.conv.", "e", "down3.", False),
        ("pyramid_ct.down4.conv.", "e", "down4.", False),
        ("pyramid_ct.convtrans_e2.", "e", "pct2.", False),
        ("pyramid_ct.convtrans_e3.", "e", "pct3.", False),
        ("pyramid_ct.convtrans_e4.", "e", "pct4.", False),
        ("pyramid_ct.up4.up.", "d", "up3.up.", False),
        ("pyramid_ct.up4.conv.", "d", "up3.fuse.", True),
        ("pyramid_ct.convtrans_d3.", "d", "pct3.", False),
        ("pyramid_ct.up3.up.", "d", "up2.up.", False),
        ("pyramid_ct.up3.conv.", "d", "up2.fuse.", True),
        ("pyramid_ct.convtrans_d2.", "d", "pct2.", False),
        (f"pred_heads.{mode}.up2.up.", "d", "up1.up.", False),
        (f"pred_heads.{mode}.up2.conv.", "d", "up1.fuse.", True),
        (f"pred_heads.{mode}.conv1.conv_conv.", "d", "block1.", False),
        (f"pred_heads.{mode}.up1.up.", "d", "up0.up.", False),
        (f"pred_heads.{mode}.up1.conv.", "d", "up0.fuse.", True),
        (f"pred_heads.{mode}.conv0.conv_conv.", "d", "block0.", False),
    ]
    for key, value in weights.items():
        if re.match(r"(embeddings|pred_heads)\.\d\.", key) and int(key.split(".")[1]) != mode:
            conv.dropped[f"{_prefix(key, 2)} (resolution_mode {key.split('.')[1]})"] += 1
            continue
        head = re.search(r"\.(out_conv\d)\.", key)
        if head or re.search(r"convtrans_\w+\.norm_layer\.", key):
            what = f"{head[1]} (class head)" if head else "norm_layer (unused LayerNorm)"
            conv.dropped[what] += 1
            continue
        for src, part, ours, fusion in rules:
            if key.startswith(src):
                rest = key[len(src) :]
                if src.endswith(("down1.conv.", "down2.conv.", "down3.conv.", "down4.conv.")):
                    rest = f"{int(rest.split('.')[0]) + 1}.{rest.split('.', 1)[1]}"  # after pool
                if rest.startswith("conv.conv_conv."):  # the PCT block's ConvBlock
                    rest = "conv." + rest[len("conv.conv_conv.") :]
                rest = rest.replace("trans.blocks.", "swin.blocks.")
                name = ours + _swin_block_names("." + rest)[1:]
                value = _misfm_fusion(key, value) if fusion else value
                (conv.encoder_state if part == "e" else conv.decoder_state)[name] = value
                break
        else:
            conv.encoder_state[key] = value  # left for the strict check to name
    conv.notes.append(
        "up-block fusion inputs swapped (MIS-FM: cat(skip, up); ours: cat(up, skip)); "
        "MIS-FM's relative_position_index buffers kept (its index formula differs from MONAI's)"
    )
    conv.metadata = {
        "spatial_dims": 3,
        "axis_order": "CDHW (SimpleITK array order, PyMIC) in the source",
        "input_size": [64, 128, 128],
        "decoder": dict(decoder.config),
        "volume_fusion": {},
        "normalization": {
            "name": "source",
            "description": "MIS-FM fine-tuning demo: NormalizeWithMeanStd per volume (CT)",
        },
    }
    return conv


FORMATS: dict[str, Importer] = {
    "adam_v1": Importer(
        method="adam",
        sources="Eden Adam-v1 ResNet-50 (checkpoint.pth / best_checkpoint.pth)",
        defaults={"name": "resnet50", "width": 1.0},
        convert=_adam_v1,
        first_convs=("conv1.weight",),
    ),
    "vis_mae": Importer(
        method="mae",
        sources="VIS-MAE swin_mae checkpoint-*.pth ({'model': ...})",
        defaults={
            "embed_dim": 96,
            "depths": [2, 2, 2, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "patch_size": 4,
            "drop_path": 0.1,
        },
        convert=_vis_mae,
        first_convs=("patch_embed.proj.weight",),
    ),
    "voco": Importer(
        method="voco",
        sources="VoCo VoCo_10k.pt / training checkpoints; Swin-UNETR SSL model_swinvit.pt",
        defaults={
            "feature_size": 48,
            "depths": [2, 2, 2, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "use_v2": True,
        },
        convert=_voco,
        first_convs=(
            "patch_embed.proj.weight",
            "encoder1.layer.conv1.conv.weight",
            "encoder1.layer.conv3.conv.weight",
        ),
        infer=_voco_infer,
    ),
    "misfm": Importer(
        method="volume_fusion",
        sources="MIS-FM pctnet_ct10k_volf.pt (PCT-Net)",
        defaults={
            "feature_channels": [24, 48, 128, 256, 512],
            "dropout": [0.0, 0.0, 0.2, 0.2, 0.2],
            "depths": [2, 2, 2],
            "num_heads": [4, 8, 16],
            "window_size": 6,
            "resolution_mode": 1,
        },
        convert=_misfm,
        first_convs=("proj.weight",),
    ),
}


# --- strict load ------------------------------------------------------------------------------
def _shape(t: Tensor) -> str:
    """``2x3x7x7``: a shape for one-line messages."""
    return "x".join(str(s) for s in t.shape) or "scalar"


def _strict_load(
    module: nn.Module,
    state: dict[str, Tensor],
    src: Path,
    fmt: str,
    part: str,
    arch: dict[str, Any],
    partial: bool = False,
) -> dict[str, Any]:
    """Load ``state`` into ``module`` with every name and shape matching, or raise naming the
    file and the first mismatches. ``relative_position_index`` buffers absent from the file
    come from the fresh network (they are fixed); ``partial``: only the file's keys must fit."""
    own = module.state_dict()
    filled = [k for k in own if k not in state and k.endswith("relative_position_index")]
    missing = [k for k in own if k not in state and k not in filled]
    if partial:  # every tensor of each pretrained block the file has must be there
        present = {_prefix(k) for k in state}
        missing = [k for k in missing if _prefix(k) in present]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        parts = []
        if bad:
            first = "; ".join(f"{k} {_shape(state[k])} vs {_shape(own[k])}" for k in bad[:3])
            parts.append(f"{len(bad)} shape mismatches (file vs network: {first})")
        if missing:
            parts.append(f"{len(missing)} network tensors missing from the file ({missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} file tensors with no place ({unexpected[:3]})")
        raise CheckpointError(
            f"{src.name}: not a {fmt} {part} of the expected architecture "
            f"({json.dumps(arch, sort_keys=True)}): {'; '.join(parts)}"
        )
    merged = {**own, **state} if partial else {**{k: own[k] for k in filled}, **state}
    module.load_state_dict(merged, strict=True)
    return {
        "loaded": len(state),
        "total": len(own),
        "filled_from_network": filled,
    }


# --- entry point ------------------------------------------------------------------------------
def _check_arch(format: str, arch: dict[str, Any], settings: dict[str, Any]) -> None:
    """An ``--arch`` key the format does not take is an error naming the nearest one (it would
    be ignored, and the import go on with the published value)."""
    import difflib

    for key in sorted(set(arch) - set(settings)):
        near = difflib.get_close_matches(key, sorted(settings), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise CheckpointError(
            f"--arch {key}: not an architecture argument of {format}{hint} "
            f"(it takes {', '.join(sorted(settings))})"
        )


def import_checkpoint(
    format: str,
    src: str | Path,
    out: str | Path,
    in_channels: int | None = None,
    arch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert the published file ``src`` (``format``: a ``FORMATS`` key) into the medfoundry
    checkpoint ``out/checkpoint/``; returns the load report (also ``out/import_report.json``).

    ``in_channels``: input channels of the new network (default: the file's); ``arch``:
    architecture arguments over the format's published ones (e.g. VoCo ``depths``).
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown import format {format!r}; choose from {sorted(FORMATS)}")
    importer = FORMATS[format]
    src, out = Path(src), Path(out)
    target = out / "checkpoint"
    if (target / META_NAME).is_file():
        raise CheckpointError(f"{target}: already holds a checkpoint; choose a new --out")
    weights, how = read_state_dict(src)
    settings = {**importer.defaults, **(importer.infer(weights) if importer.infer else {})}
    _check_arch(format, arch or {}, settings)
    settings.update(arch or {})
    try:
        conv = importer.convert(weights, settings, int(in_channels or 1))
    except (TypeError, ValueError) as exc:  # a bad --arch value (int("abc"), a wrong length)
        raise CheckpointError(f"{src.name}: cannot build the {format} network ({exc})") from exc
    renamed = {**conv.encoder_state, **conv.decoder_state}
    firsts = [k for k in importer.first_convs if k in renamed]
    if not firsts:
        raise CheckpointError(
            f"{src.name}: not a {format} checkpoint: none of {list(importer.first_convs)} found "
            f"after renaming (first keys: {sorted(weights)[:5]})"
        )
    channels = int(in_channels or renamed[firsts[0]].shape[1])  # default: the file's
    if channels != int(in_channels or 1):
        conv = importer.convert(weights, settings, channels)
    adapted = []
    for key in firsts:
        state = conv.encoder_state if key in conv.encoder_state else conv.decoder_state
        if state[key].shape[1] != channels:
            rule = "sum" if channels == 1 else "repeat x I/N"
            adapted.append(f"{key}: {state[key].shape[1]} -> {channels} channels ({rule})")
            state[key] = adapt_input_channels(state[key], channels)
    enc = _strict_load(conv.encoder, conv.encoder_state, src, format, "encoder", settings)
    dec = None
    if conv.decoder is not None and conv.decoder_state:
        dec = _strict_load(
            conv.decoder, conv.decoder_state, src, format, "decoder", settings, conv.decoder_partial
        )
    elif conv.decoder is not None and not conv.decoder_partial:
        raise CheckpointError(f"{src.name}: no {format} decoder tensors found")
    backbone = dict(conv.encoder.config)  # type: ignore[union-attr]
    sha256 = _sha256(src)
    meta = CheckpointMeta.from_json(  # the format's fields (conv.metadata) typed and checked
        {
            "format_version": FORMAT_VERSION,
            "method": importer.method,
            "backbone": backbone,
            "in_channels": channels,
            **conv.metadata,
            "imported_from": {"file": src.name, "sha256": sha256, "format": format},
            "training_data": {"source": importer.sources},
        },
        target / META_NAME,
    )
    decoder_weights = None
    if dec is not None and conv.decoder is not None:
        full = conv.decoder.state_dict()
        decoder_weights = {k: full[k] for k in conv.decoder_state} if conv.decoder_partial else full
    report = {
        "format": format,
        "file": src.name,
        "sha256": sha256,
        "container": how["container"],
        "stripped_prefixes": how["stripped_prefixes"],
        "architecture": settings,
        "encoder": f"{enc['loaded']}/{enc['total']}",
        "decoder": f"{dec['loaded']}/{dec['total']}" if dec else "none in file",
        "filled_from_network": enc["filled_from_network"]
        + (dec["filled_from_network"] if dec else []),
        "dropped": dict(sorted(conv.dropped.items())),
        "channel_adaptation": adapted or [f"none ({channels} channels)"],
        "notes": conv.notes,
    }
    save_checkpoint(target, conv.encoder.state_dict(), meta, decoder=decoder_weights)
    atomic_write_json(out / REPORT_NAME, report)
    return report


def describe_report(report: dict[str, Any]) -> str:
    """The load report as a few printable lines."""
    dropped = ", ".join(f"{k}: {n}" for k, n in report["dropped"].items()) or "nothing"
    lines = [
        f"imported {report['file']} ({report['format']}, sha256 {report['sha256'][:12]}...)",
        f"  encoder tensors {report['encoder']}, decoder tensors {report['decoder']}",
        f"  dropped: {dropped}",
        f"  channels: {'; '.join(report['channel_adaptation'])}",
    ]
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


__all__ = [
    "FORMATS",
    "Importer",
    "adapt_input_channels",
    "describe_report",
    "import_checkpoint",
    "read_state_dict",
]
