"""zoo/export.py: ONNX export with a dynamic batch (and spatial axes in steps of the network's
size rule), checked against PyTorch with onnxruntime; a clear error without the extra."""

from __future__ import annotations

import builtins

import pytest
import torch

from medfoundry.errors import MedfoundryError
from medfoundry.zoo.export import example_shape, export_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

RESNET = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}


def test_example_shape_takes_two_steps_of_every_rule():
    assert example_shape(1, [32, 100], [32, 32]) == [2, 1, 64, 128]
    assert example_shape(3, [256, 256], [32, 32], batch=1) == [2, 3, 256, 256]
    with pytest.raises(ValueError):
        example_shape(1, [32], [32, 32])


def test_segmenter_exports_with_dynamic_batch_and_spatial_axes(tmp_path):
    from medfoundry.tasks.segmentation import build_segmenter

    torch.manual_seed(0)
    model, _ = build_segmenter(RESNET, 2, None, decoder_channels=(8, 8, 8, 8, 8))
    out = tmp_path / "seg.onnx"
    report = export_onnx(model, out, 1, [64, 64], [32, 32])
    assert out.is_file() and report.dynamic_spatial and report.dynamic_batch
    assert [1, 1, 96, 96] in report.checked_shapes  # a size it was not traced at
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_fixed_spatial_axes_without_a_size_rule_and_a_wrong_output_is_caught(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))  # needs 4x4 inputs
    report = export_onnx(net, tmp_path / "cls.onnx", 1, [4, 4], None)
    assert not report.dynamic_spatial and report.notes
    assert report.checked_shapes == [[1, 1, 4, 4], [3, 1, 4, 4]]
    assert report.max_abs_diff <= 1e-5


def test_missing_extra_is_a_clear_error(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(MedfoundryError, match=r"medfoundry\[export\]"):
        export_onnx(torch.nn.Identity(), tmp_path / "x.onnx", 1, [4, 4])
