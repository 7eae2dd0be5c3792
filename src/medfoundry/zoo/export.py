"""Export a ready network to ONNX and check it against PyTorch with onnxruntime.

The file holds the network only (no preprocessing): input ``(B, C, *spatial)`` float32, output
the network's logits. The batch axis is always dynamic; spatial axes are dynamic in steps of the
network's size rule (``multiples``: e.g. 32 per axis for a ResNet U-Net) when torch.export can
trace them so, else fixed at the example size (the report says which). The check runs the ONNX
file and the network on random inputs of other batch sizes (and other spatial sizes when those
are dynamic) and reports the largest absolute difference. onnx, onnxscript and onnxruntime are
the optional extra ``medfoundry[export]``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfoundry.errors import MedfoundryError
from medfoundry.nets.segmenters2d import is_swin_config

EXTRA_HINT = "ONNX export needs the optional extra: pip install 'medfoundry[export]'"


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how the ONNX file compares with PyTorch."""

    path: str
    input_shape: list[int]
    dynamic_batch: bool
    dynamic_spatial: bool
    multiples: list[int]
    checked_shapes: list[list[int]] = field(default_factory=list)
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _require_onnx() -> Any:
    """The onnxruntime module, or a MedfoundryError naming the extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MedfoundryError(f"{EXTRA_HINT} ({e.name} is missing)") from e
    return onnxruntime


def example_shape(
    in_channels: int, size: Sequence[int], multiples: Sequence[int], batch: int = 2
) -> list[int]:
    """The tracing input: ``batch`` >= 2 and every spatial side a multiple of its rule and at
    least twice it (torch.export fixes axes whose example size is 0 or 1 step)."""
    if len(size) != len(multiples):
        raise ValueError(f"size {list(size)} and multiples {list(multiples)} differ in length")
    sides = [max(int(s), 2 * int(m)) for s, m in zip(size, multiples, strict=True)]
    sides = [-(-s // int(m)) * int(m) for s, m in zip(sides, multiples, strict=True)]
    return [max(2, int(batch)), int(in_channels), *sides]


def _export_dynamic(
    network: nn.Module, x: torch.Tensor, multiples: Sequence[int] | None, path: Path
) -> bool:
    """Write ``network`` traced on ``x`` to ``path`` with a dynamic batch and, when
    ``multiples`` is given, spatial axes dynamic in those steps; False if that fails."""
    from torch.export import Dim

    axes: dict[int, Any] = {0: Dim("batch", min=1, max=1024)}
    for i, m in enumerate(multiples or []):
        axes[2 + i] = int(m) * Dim(f"s{i}", min=1, max=4096 // int(m))
    try:
        torch.onnx.export(network, (x,), dynamo=True, dynamic_shapes=(axes,)).save(str(path))
    except Exception:  # noqa: BLE001 - the caller falls back to fixed spatial axes, reported
        return False
    return True


def check_onnx(
    network: nn.Module, path: str | Path, shapes: Sequence[Sequence[int]], seed: int = 0
) -> float:
    """Largest |ONNX - PyTorch| over random inputs of ``shapes`` (CPU, fp32)."""
    ort = _require_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*[int(s) for s in shape], generator=gen)
        with torch.no_grad():
            ref = network(x)
        ref = ref[0] if isinstance(ref, (list, tuple)) else ref
        out = session.run(None, {name: x.numpy()})[0]
        if out.shape != tuple(ref.shape):
            raise MedfoundryError(f"{path}: ONNX output {out.shape} != PyTorch {tuple(ref.shape)}")
        worst = max(worst, float(np.abs(out - ref.numpy()).max()))
    return worst


def export_onnx(
    network: nn.Module,
    out: str | Path,
    in_channels: int,
    size: Sequence[int],
    multiples: Sequence[int] | None = None,
) -> ExportReport:
    """Export ``network`` (eval mode, CPU, fp32) to ``out`` atomically and check it: batch
    always dynamic, spatial axes dynamic in steps of ``multiples`` when given and traceable
    (None: fixed at ``size``, e.g. for Swin networks whose windows fix the token grid)."""
    _require_onnx()
    out = Path(out)
    network = network.cpu().float().eval()
    rules = list(multiples) if multiples else [1] * len(size)
    shape = example_shape(in_channels, size, rules)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".onnx")
    os.close(fd)
    try:
        dynamic = bool(multiples) and _export_dynamic(network, x, multiples, Path(tmp))
        if not dynamic:  # fixed spatial axes at the model's own input size
            shape = [2, int(in_channels), *[int(v) for v in size]]
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
            if not _export_dynamic(network, x, None, Path(tmp)):
                raise MedfoundryError(
                    f"{out}: torch.onnx.export failed for {type(network).__name__}"
                )
        report = ExportReport(str(out), shape, True, dynamic, rules)
        checks = [[1, *shape[1:]], [3, *shape[1:]]]
        if dynamic:
            bigger = [s + m for s, m in zip(shape[2:], rules, strict=True)]
            checks.append([1, shape[1], *bigger])
        else:
            report.notes.append("spatial axes fixed at the input size (not traceable as dynamic)")
        report.checked_shapes = checks
        report.max_abs_diff = check_onnx(network, tmp, checks)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return report


OUTPUTS = {
    "classification": "logits (B, K): softmax over the classes in `names` order",
    "segmentation2d": "logits (B, K, H, W): sigmoid per structure in `names` order, > 0.5",
    "segmentation3d": "logits (B, 1 + K, D, H, W): softmax over background + `names`, argmax",
}


def size_rule(model: Any) -> list[int] | None:
    """Per-axis steps in which a loaded model's spatial axes may vary: the 3D network's size
    rule; 32 for 2D ResNets (five stride-2 stages); None (fixed) for Swin networks."""
    if model.segmenter3d is not None:
        return [int(m) for m in model.segmenter3d.size_multiple]
    swin = is_swin_config(model.meta.backbone_config or {})
    return None if swin else [32] * len(model.input_size)


def export_model(model_path: str | Path, out: str | Path | None = None) -> ExportReport:
    """Export the fine-tuned model at ``model_path`` (``zoo.load_model``) to ONNX at ``out``
    (default ``<run>/model.onnx``) and write ``<out>.json`` beside it: the preprocessing, the
    input layout, the output's meaning and the check's result, for other runtimes."""
    from medfoundry import __version__
    from medfoundry.runtime import atomic_write_json
    from medfoundry.zoo.models import load_model

    _require_onnx()
    model = load_model(model_path, device="cpu")
    run = Path(model_path)
    target = Path(out) if out is not None else (run if run.is_dir() else run.parent) / "model.onnx"
    report = export_onnx(
        model.network, target, model.in_channels, list(model.input_size), size_rule(model)
    )
    sidecar = {
        "format": "onnx",
        "medfoundry_version": __version__,
        "source": str(model.folder),
        "kind": model.kind,
        "names": list(model.names),
        "input": {
            "layout": "NCDHW" if model.spatial_dims == 3 else "NCHW",
            "dtype": "float32",
            "in_channels": model.in_channels,
            "trained_size": list(model.input_size),
            "dynamic_batch": report.dynamic_batch,
            "dynamic_spatial": report.dynamic_spatial,
            "spatial_multiples": report.multiples if report.dynamic_spatial else None,
        },
        "preprocessing": model.preprocessing,
        "output": OUTPUTS[model.kind],
        "check": {"shapes": report.checked_shapes, "max_abs_diff": report.max_abs_diff},
    }
    if model.kind == "segmentation3d":
        sidecar["sliding_window"] = dict(model.segmenter3d.sliding_window)
    atomic_write_json(target.with_suffix(target.suffix + ".json"), sidecar)
    return report
