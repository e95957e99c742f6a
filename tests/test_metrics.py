"""foscu.metrics, the notebook facade: the evaluation modules' numbers, and an import that loads no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from foscu import metrics
from foscu.evaluation import segmentation_metrics

LABELS = {"background": 0, "liver": 1, "tumor": 4}


def test_the_facade_gives_the_numbers_of_the_evaluation_modules():
    gt = np.zeros((4, 4, 4), np.int16)
    gt[0, 0, :3] = 1
    pred = np.zeros_like(gt)
    pred[0, 0, :2] = 1
    pred[3, 3, 3] = 4  # a tumor the ground truth lacks: 0 for nnU-Net, excluded by MONAI's convention
    assert metrics.dice(pred, gt, LABELS) == {"liver": pytest.approx(0.8), "tumor": 0.0}  # 2 * 2 / (2 + 3)
    assert metrics.dice(pred, gt, LABELS, empty="monai") == {"liver": pytest.approx(0.8), "tumor": None}
    spacing = (1.0, 1.0, 2.0)
    assert metrics.hd95(pred, gt, LABELS, spacing) == segmentation_metrics.hd95(pred, gt, LABELS, spacing)
    # a = {0, 2}, b = {1, 5}: (1 - 3)^2 + 2 + 8 - 2 sqrt(2 * 8) = 6
    assert metrics.frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(6.0)


def test_importing_the_facade_loads_neither_torch_nor_monai():
    code = "import sys, foscu.metrics; print([m for m in ('torch', 'monai') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
