"""THE label map. No other file spells a label number.

Paper II-A: liver, portal vein, hepatic vein and tumor; background 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args, overload

import numpy as np

from foscu.errors import InputError

if TYPE_CHECKING:
    import torch

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

# liver-only ("binary") view of the paper: every foreground structure counts as liver.
LIVER_ONLY_LABELS: dict[str, int] = {"background": BACKGROUND, "liver": LIVER}

Task = Literal["binary", "multiclass"]
TASKS: tuple[Task, ...] = get_args(Task)


def check_task(task: str, where: str = "--task") -> Task:
    """``task`` as a Task; InputError (at ``where``) for any other name."""
    if task not in TASKS:
        raise InputError(where, f"expected {' or '.join(TASKS)}, got {task!r}")
    return task  # type: ignore[return-value]  # one of TASKS


def labels_for_task(task: Task) -> dict[str, int]:
    """The label map a task predicts: liver-only (binary) or all five classes."""
    return dict(LIVER_ONLY_LABELS) if task == "binary" else dict(LABELS)


@overload
def liver_only(label: np.ndarray) -> np.ndarray: ...
@overload
def liver_only(label: torch.Tensor) -> torch.Tensor: ...
def liver_only(label: Any) -> Any:
    """The liver-only view of an index label volume: every foreground structure becomes LIVER.

    Takes a numpy array or a torch tensor and returns the same kind with the same dtype.
    """
    foreground = label != BACKGROUND
    if isinstance(label, np.ndarray):
        return np.where(foreground, LIVER, BACKGROUND).astype(label.dtype)
    return foreground.to(label.dtype) * LIVER


def to_task(label: np.ndarray, task: Task) -> np.ndarray:
    """Map an index label volume (values of LABELS) to the task's label map, as uint8."""
    if task == "binary":
        return liver_only(label).astype(np.uint8)
    return label.astype(np.uint8)
