"""The online probe: kNN / linear scores on separable vs random features, patient split, callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medfoundry.train.probe import (
    class_score,
    knn_probabilities,
    linear_probabilities,
    load_probe_set,
    probe_scores,
)


def features(n: int, separation: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    f = torch.randn(n, 16, generator=g)
    f[:, 0] += separation * (2 * y - 1)
    return f, y


@pytest.mark.parametrize("probe", ["knn", "linear"])
def test_separable_features_score_high_and_random_ones_near_half(probe: str) -> None:
    fn = knn_probabilities if probe == "knn" else linear_probabilities
    ref_f, ref_y = features(200, 6.0, seed=0)
    q_f, q_y = features(200, 6.0, seed=1)
    auc, acc = class_score(fn(ref_f, ref_y, q_f, 2), q_y)
    assert auc > 0.99 and acc > 0.95
    ref_f, ref_y = features(200, 0.0, seed=2)
    q_f, q_y = features(200, 0.0, seed=3)
    auc, _ = class_score(fn(ref_f, ref_y, q_f, 2), q_y)
    assert 0.35 < auc < 0.65


def test_knn_probabilities_are_distributions_and_weight_near_neighbours() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    probs = knn_probabilities(ref, torch.tensor([0, 1, 0]), torch.tensor([[1.0, 0.05]]), 2, k=3)
    torch.testing.assert_close(probs.sum(1), torch.ones(1))
    assert probs[0, 0] > 0.99


def test_multiclass_score_is_balanced_accuracy() -> None:
    probs = torch.eye(3)[[0, 0, 1, 2, 2, 2]]
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    score, balanced = class_score(probs, labels)
    assert score == balanced == pytest.approx((1 + 0.5 + 1) / 3)


def test_probe_set_splits_by_patient_and_backbone_scores(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for label, bright in (("NORMAL", slice(0, 16)), ("PNEUMONIA", slice(16, 32))):
        (tmp_path / label).mkdir()
        for p in range(6):
            for v in range(2):  # two images per patient
                img = 60 + rng.normal(0, 20, (32, 32))
                img[:, bright] += 120  # the classes differ by which half is bright
                img = np.clip(img, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(tmp_path / label / f"person{p}_{label}_{v}.png")
    probe = load_probe_set(tmp_path, 16, per_class=12)
    assert probe.classes == ["NORMAL", "PNEUMONIA"] and len(probe) == 24
    assert set(probe.ref_y.tolist()) == set(probe.query_y.tolist()) == {0, 1}
    patients = [
        {p.name.split("_")[0] + p.parent.name for p in paths}
        for paths in (probe.ref_paths, probe.query_paths)
    ]
    assert not patients[0] & patients[1]  # no patient on both sides
    # a "backbone" of the two half-image means separates them
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d((1, 2)), nn.Flatten(), nn.Linear(2, 4))
    scores = probe_scores(backbone, probe)
    assert scores["knn_auc"] > 0.9 and scores["linear_auc"] > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("probe", ["knn", "linear"])
def test_scores_of_cuda_features_equal_the_cpu_ones(probe: str) -> None:
    """A GPU run's probe (features on the GPU, labels on the CPU) scores as on the CPU."""
    fn = knn_probabilities if probe == "knn" else linear_probabilities
    ref_f, ref_y = features(200, 1.0, seed=0)
    q_f, q_y = features(200, 1.0, seed=1)
    cpu = class_score(fn(ref_f, ref_y, q_f, 2), q_y)
    gpu = class_score(fn(ref_f.cuda(), ref_y, q_f.cuda(), 2), q_y)
    assert gpu == pytest.approx(cpu, abs=1e-3)
