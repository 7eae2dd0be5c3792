"""``medfoundry.predict``: use any fine-tuned model on files, dispatching on its kind.

The model (a run folder, its ``checkpoint/``, or a loaded model) is resolved once by
``medfoundry.zoo.load_model``; 3D segmenters go to ``medfoundry.tasks.predict3d`` (label maps
on each scan's grid), 2D segmenters and classifiers to ``medfoundry.tasks.predict2d`` (masks at
each image's size; one predictions CSV). An option that does not apply to the model's kind
(``probabilities`` for 2D, ``overlay`` for 3D or classification) is ignored with a note in the
summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from medfoundry.tasks.predict2d import predict2d
from medfoundry.tasks.predict3d import PredictSummary, TrainedSegmenter3D
from medfoundry.tasks.predict3d import predict as predict3d
from medfoundry.zoo.models import LoadedModel, from_segmenter3d, load_model

__all__ = ["PredictSummary", "predict"]


def predict(
    model: str | Path | LoadedModel | TrainedSegmenter3D,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    probabilities: bool = False,
    overlay: bool = False,
    overwrite: bool = False,
    continue_on_error: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    resample: str = "probabilities",
) -> PredictSummary:
    """Predict every input with a fine-tuned model of any kind and write the results into
    ``out`` (rules: ``medfoundry.tasks.predict3d`` and ``medfoundry.tasks.predict2d``)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(model, TrainedSegmenter3D):
        model = from_segmenter3d(model)
    elif not isinstance(model, LoadedModel):
        model = load_model(model, device=device)
    options = {
        "overwrite": overwrite,
        "continue_on_error": continue_on_error,
        "progress": progress,
        "device": device,
    }
    if model.kind == "segmentation3d" and model.segmenter3d is not None:
        summary = predict3d(
            model.segmenter3d,
            inputs,
            out,
            probabilities=probabilities,
            resample=resample,
            **options,
        )
        if overlay:
            summary.notes.append("--overlay applies to 2D segmentation models only; ignored")
        return summary
    summary = predict2d(model, inputs, out, overlay=overlay, **options)
    if probabilities:
        summary.notes.append("--probabilities applies to 3D segmentation models only; ignored")
    return summary
