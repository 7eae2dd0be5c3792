"""Benchmark arms: one per pretrained checkpoint plus a scratch arm per distinct network.

Shared by the benchmark protocols (JSRT few-shot, Kermany label efficiency) so that every
benchmark names, builds and compares its arms the same way.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.errors import MedfoundryError
from medfoundry.nets import create_backbone
from medfoundry.zoo import Checkpoint, CheckpointMeta, load_backbone, resolve_checkpoint
from medfoundry.zoo.meta import require_2d_backbone


def checkpoint_label(path: Path) -> str:
    """A readable folder name for a checkpoint path (skip `checkpoint/` and the weights file)."""
    p = path.resolve() if path.exists() else path
    if p.is_file():
        p = p.parent
    if p.name == "checkpoint" and p.parent.name:
        p = p.parent
    return p.name or str(path)


def slug(text: str) -> str:
    """`text` reduced to characters safe in file names."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "arm"


def data_key(arm: dict[str, Any]) -> str:
    """Arms with equal keys read identical input tensors (size, normalisation, channels)."""
    return json.dumps(
        [arm["image_size"], arm["normalization"], arm["backbone"]["in_channels"]], sort_keys=True
    )


def arm_backbone(meta_backbone: dict[str, Any]) -> dict[str, Any]:
    """The backbone arguments an arm rebuilds its network from (all of them for Swin)."""
    if str(meta_backbone["name"]).startswith("swin"):
        return {**meta_backbone, "spatial_dims": int(meta_backbone.get("spatial_dims", 2))}
    return {
        "name": meta_backbone["name"],
        "in_channels": int(meta_backbone.get("in_channels", 1)),
        "width": float(meta_backbone.get("width", 1.0)),
        "spatial_dims": int(meta_backbone.get("spatial_dims", 2)),
    }


def checkpoint_arm_name(
    meta: CheckpointMeta | None, path: str | Path | Checkpoint, taken: set[str]
) -> str:
    """`<method>-<run folder>`, suffixed `-2`, `-3`, ... until not in `taken` (then added)."""
    method = meta.method if meta is not None else "pretrained"
    base = f"{method}-{checkpoint_label(Path(str(path)))}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def is_scratch_entry(path: str | Path | None) -> bool:
    """True for the `--pretrained` entries that add no checkpoint arm (None, "none", "scratch")."""
    return path is None or str(path).strip().lower() in ("", "none", "scratch")


def resolve_arms(
    pretrained: Sequence[str | Path | None],
    config: dict[str, Any],
    benchmark: str = "this benchmark",
) -> list[dict[str, Any]]:
    """The benchmark's arms: one per checkpoint (method + folder name), then the scratch arms.

    Every distinct network among the checkpoints (architecture, input size, normalisation)
    gets its own scratch arm with that network: "scratch" for the first checkpoint's, then
    "scratch-<backbone>" (e.g. a Swin scratch beside a ResNet one when MAE and Adam checkpoints
    are compared). Without checkpoints: one "scratch" arm from config["backbone"] /
    default_image_size / the X-ray normalisation. `config["image_size"]` (when set) overrides
    every arm's input size. `benchmark` names the benchmark in error messages. A checkpoint
    arm's `resolved` holds its `Checkpoint`, read once here and passed on to training.
    """
    arms: list[dict[str, Any]] = []
    names: set[str] = {"scratch"}
    for p in pretrained:
        if is_scratch_entry(p):
            continue
        resolved = resolve_checkpoint(p)
        meta = resolved.meta
        backbone, side = require_2d_backbone(resolved, benchmark)
        name = checkpoint_arm_name(meta, p, names)
        arms.append(
            {
                "name": name,
                "checkpoint": str(p),
                "resolved": resolved,
                "method": meta.method,
                "backbone": arm_backbone(backbone.config),
                "image_size": int(config["image_size"] or side or config["default_image_size"]),
                "normalization": meta.normalization
                or config["normalization"]
                or XRAY_NORMALIZATION,
            }
        )
    scratch_arms: list[dict[str, Any]] = []
    seen: list[str] = []
    names.discard("scratch")  # reserved above so that no checkpoint arm takes it
    for arm in arms:
        scratch = {k: copy.deepcopy(arm[k]) for k in ("backbone", "image_size", "normalization")}
        signature = json.dumps(scratch, sort_keys=True)
        if signature in seen:
            continue
        seen.append(signature)
        name = "scratch" if not scratch_arms else f"scratch-{slug(scratch['backbone']['name'])}"
        while name in names:
            name += "+"
        names.add(name)
        scratch_arms.append({"name": name, "checkpoint": None, "method": "scratch", **scratch})
    if not scratch_arms:
        scratch = {
            "backbone": arm_backbone(
                {"name": "resnet50", "in_channels": 1, "spatial_dims": 2, **config["backbone"]}
            ),
            "image_size": int(config["image_size"] or config["default_image_size"]),
            "normalization": config["normalization"] or XRAY_NORMALIZATION,
        }
        scratch_arms.append({"name": "scratch", "checkpoint": None, "method": "scratch", **scratch})
    arms += scratch_arms
    for arm in arms:
        if int(arm["backbone"]["spatial_dims"]) != 2:
            raise MedfoundryError(f"arm {arm['name']}: {benchmark} is 2D; backbone is 3D")
        if arm["image_size"] % 32:
            raise MedfoundryError(f"arm {arm['name']}: image_size {arm['image_size']} % 32 != 0")
    return arms


def arm_checkpoint(arm: dict[str, Any]) -> Checkpoint | str | None:
    """What an arm trains from: its resolved `Checkpoint`, else its path (None: scratch)."""
    return arm.get("resolved") or arm["checkpoint"]


def load_reports(arms: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Load every checkpoint into its network once, so a misfit fails before any training."""
    reports: dict[str, str] = {}
    for arm in arms:
        if arm["checkpoint"] is not None:
            report = load_backbone(arm_checkpoint(arm), create_backbone(**arm["backbone"]))
            reports[arm["name"]] = report.summary()
    return reports


def arm_info(arm: dict[str, Any], load_report: str | None) -> dict[str, Any]:
    """What results.json records about an arm (network, input, checkpoint, load report)."""
    return {
        "checkpoint": arm["checkpoint"],
        "method": arm["method"],
        "backbone": arm["backbone"],
        "image_size": arm["image_size"],
        "normalization": arm["normalization"],
        "load_report": load_report,
    }


def arm_table_row(name: str, info: dict[str, Any], lr: str) -> str:
    """A Markdown row: arm, checkpoint, network, input size, load report, chosen lr(s)."""
    bb = info["backbone"]
    width = f" ×{bb['width']}" if "width" in bb else ""  # narrowed ResNets; Swin has none
    return (
        f"| {name} | {info['checkpoint'] or '–'} | {bb['name']}{width} "
        f"({bb.get('in_channels', 1)} ch) | {info['image_size']}² | "
        f"{info.get('load_report') or '–'} | {lr} |"
    )
