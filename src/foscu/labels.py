"""THE label map. No other file spells a label number.

Paper II-A: liver, portal vein, hepatic vein and tumor; background 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

BACKGROUND = 0
LIVER = 1
PORTAL_VEIN = 2
HEPATIC_VEIN = 3
TUMOR = 4

LABELS: dict[str, int] = {
    "background": BACKGROUND,
    "liver": LIVER,
    "portal_vein": PORTAL_VEIN,
    "hepatic_vein": HEPATIC_VEIN,
    "tumor": TUMOR,
}
NUM_CLASSES = len(LABELS)
CLASS_NAMES: list[str] = list(LABELS)

# liver-only ("binary") view of the paper: every foreground structure counts as liver.
LIVER_ONLY_LABELS: dict[str, int] = {"background": 0, "liver": 1}

Task = Literal["binary", "multiclass"]


def labels_for_task(task: Task) -> dict[str, int]:
    """The label map a task predicts: liver-only (binary) or all five classes."""
    return dict(LIVER_ONLY_LABELS) if task == "binary" else dict(LABELS)


def to_task(label: np.ndarray, task: Task) -> np.ndarray:
    """Map an index label volume (values of LABELS) to the task's label map."""
    if task == "binary":
        return (label != BACKGROUND).astype(np.uint8)
    return label.astype(np.uint8)


def one_hot(label: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(X, Y, Z) index volume -> (C, X, Y, Z) float32 one-hot."""
    eye = np.eye(num_classes, dtype=np.float32)
    return np.moveaxis(eye[label.astype(np.int64)], -1, 0)


def from_one_hot(probabilities: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) scores -> (X, Y, Z) uint8 index volume (argmax over channels)."""
    return np.argmax(probabilities, axis=0).astype(np.uint8)
