"""Dice and HD95 per class on index label volumes, and ``foscu evaluate seg`` (paper Table II).

Empty classes follow nnU-Net's convention by default (see ``CONVENTIONS``): MONAI's ``DiceMetric`` with
``ignore_empty=True`` drops every case whose ground truth lacks the class, so a tumor predicted on a
tumor-free case costs nothing there; nnU-Net scores it 0. Dice is written by hand because of that rule;
HD95 is MONAI's ``compute_hausdorff_distance`` (percentile 95, voxel spacing in mm).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from foscu.errors import InputError
from foscu.labels import BACKGROUND, LABELS, TUMOR, Task, check_task, labels_for_task, to_task

Empty = Literal["nnunet", "monai"]

CONVENTIONS: dict[str, str] = {
    "nnunet": (
        "nnU-Net convention: a class absent from both prediction and ground truth is excluded (null, not "
        "counted in n_valid); a class predicted on a case whose ground truth lacks it, or missed where it is "
        "present, scores Dice 0. HD95 (MONAI, 95th percentile surface distance in mm) is null when either "
        "side is empty. Class means are over valid cases; the foreground mean is the mean of class means."
    ),
    "monai": (
        "MONAI convention (DiceMetric ignore_empty=True): a class absent from the ground truth is excluded "
        "whatever was predicted, so false positives on such cases are not counted; a class missed where it "
        "is present scores Dice 0. HD95 (MONAI, 95th percentile surface distance in mm) is null when either "
        "side is empty. Class means are over valid cases; the foreground mean is the mean of class means."
    ),
}


def _check_settings(task: str, empty: str) -> tuple[Task, Empty]:
    if empty not in CONVENTIONS:
        raise InputError("--empty", f"expected {' or '.join(CONVENTIONS)}, got {empty!r}")
    return check_task(task), empty  # type: ignore[return-value]  # a key of CONVENTIONS


def _foreground(labels: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in labels.items() if value != BACKGROUND}


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")


def dice(
    pred: np.ndarray, gt: np.ndarray, labels: dict[str, int], empty: Empty = "nnunet"
) -> dict[str, float | None]:
    """Dice per foreground class of ``labels`` between two index volumes; None where the class is excluded.

    Args:
        empty: "nnunet" — None only when the class is absent from both; "monai" — None whenever the ground
            truth lacks the class (MONAI's ignore_empty=True), even if it was predicted.
    """
    _check_pair(pred, gt)
    scores: dict[str, float | None] = {}
    for name, value in _foreground(labels).items():
        p, g = pred == value, gt == value
        n_pred, n_gt = int(p.sum()), int(g.sum())
        if n_gt == 0 and (empty == "monai" or n_pred == 0):
            scores[name] = None
            continue
        scores[name] = 2.0 * int(np.logical_and(p, g).sum()) / (n_pred + n_gt)
    return scores


def hd95(
    pred: np.ndarray, gt: np.ndarray, labels: dict[str, int], spacing: Sequence[float]
) -> dict[str, float | None]:
    """95th-percentile Hausdorff distance (mm) per foreground class; None when either side is empty."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    _check_pair(pred, gt)
    distances: dict[str, float | None] = {}
    for name, value in _foreground(labels).items():
        p, g = pred == value, gt == value
        if not p.any() or not g.any():
            distances[name] = None
            continue
        # (1, 1, X, Y, Z) binary masks, the class as the only channel
        p_t = torch.from_numpy(p[None, None].astype(np.float32))
        g_t = torch.from_numpy(g[None, None].astype(np.float32))
        with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
            warnings.simplefilter("ignore", FutureWarning)
            d = compute_hausdorff_distance(
                p_t, g_t, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
            )
        distances[name] = float(d.reshape(-1)[0])
    return distances


def _mean(values: list[float | None]) -> tuple[float | None, int]:
    valid = [v for v in values if v is not None]
    return (float(np.mean(valid)) if valid else None), len(valid)


def _read_case(
    pred_path: Path, gt_path: Path, task: Task
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    from foscu.data.nifti import read_nifti

    gt_vol = read_nifti(gt_path, label=True)
    pred_vol = read_nifti(pred_path, label=True)
    bad_gt = sorted(set(np.unique(gt_vol.array).tolist()) - set(LABELS.values()))
    if bad_gt:
        raise InputError(gt_path, f"label values {bad_gt} are not in FOSCU's label map {LABELS}")
    allowed = labels_for_task(task)
    bad_pred = sorted(set(np.unique(pred_vol.array).tolist()) - set(allowed.values()))
    if bad_pred:
        raise InputError(pred_path, f"values {bad_pred} are not in the {task} label map {allowed}")
    if pred_vol.array.shape != gt_vol.array.shape:
        shapes = f"{pred_vol.array.shape} vs ground truth {gt_vol.array.shape}"
        raise InputError(pred_path, f"shape differs from the ground truth's: {shapes}")
    if not np.allclose(pred_vol.affine, gt_vol.affine, atol=1e-3):
        raise InputError(pred_path, "affine differs from the ground truth's (not on the same grid)")
    return pred_vol.array, to_task(gt_vol.array, task), gt_vol.spacing


def evaluate_segmentation(
    pred_dir: Path, gt_dir: Path, task: str, out: Path | None = None, empty: str = "nnunet"
) -> dict:
    """Dice and HD95 per case and class, class means, foreground mean, false-positive tumor volume.

    ``task`` is binary (liver-only) or multiclass, ``empty`` a key of ``CONVENTIONS``; InputError otherwise.
    Every ground-truth case needs a prediction ``<case>.nii.gz`` on its grid (else InputError). The result
    is written atomically to ``out`` (metrics.json) when given, and returned.
    """
    _check_settings(task, empty)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    from foscu.data.layout import case_files

    gts = case_files(gt_dir, "labels")
    preds = case_files(pred_dir, "labels")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise InputError(
            pred_dir, f"no prediction for ground-truth case(s) {missing[:5]} ({len(missing)} missing)"
        )
    pairs = {case_id: (preds[case_id], gt_path) for case_id, gt_path in gts.items()}
    result = evaluate_cases(pairs, task, out=None, empty=empty)
    result["unmatched_predictions"] = sorted(set(preds) - set(gts))
    if out is not None:
        from foscu.runs import write_json_atomic

        write_json_atomic(out, result)
    return result


def evaluate_cases(
    pairs: dict[str, tuple[Path, Path]], task: str, out: Path | None = None, empty: str = "nnunet"
) -> dict:
    """Like :func:`evaluate_segmentation` for explicit ``case id -> (prediction, ground truth)`` files."""
    from foscu.runs import write_json_atomic

    task, empty = _check_settings(task, empty)
    labels = labels_for_task(task)
    classes = list(_foreground(labels))
    cases: dict[str, dict[str, dict[str, float | None]]] = {}
    fp_tumor_ml: dict[str, float] = {}
    for case_id, (pred_path, gt_path) in pairs.items():
        pred, gt, spacing = _read_case(pred_path, gt_path, task)
        d, h = dice(pred, gt, labels, empty), hd95(pred, gt, labels, spacing)
        cases[case_id] = {name: {"dice": d[name], "hd95": h[name]} for name in classes}
        if task == "multiclass" and not (gt == TUMOR).any():
            fp_tumor_ml[case_id] = float((pred == TUMOR).sum()) * float(np.prod(spacing)) / 1000.0
    mean: dict[str, dict[str, float | int | None]] = {}
    for name in classes:
        dice_mean, n_valid = _mean([c[name]["dice"] for c in cases.values()])
        hd_mean, n_valid_hd = _mean([c[name]["hd95"] for c in cases.values()])
        mean[name] = {"dice": dice_mean, "hd95": hd_mean, "n_valid": n_valid, "n_valid_hd95": n_valid_hd}
    fg_dice, _ = _mean([mean[n]["dice"] for n in classes])  # type: ignore[misc]
    fg_hd, _ = _mean([mean[n]["hd95"] for n in classes])  # type: ignore[misc]
    false_positive = None
    if task == "multiclass":
        false_positive = {
            "n_tumor_free_cases": len(fp_tumor_ml),
            "n_with_false_positive": sum(1 for v in fp_tumor_ml.values() if v > 0),
            "mean_ml": float(np.mean(list(fp_tumor_ml.values()))) if fp_tumor_ml else None,
            "volume_ml": fp_tumor_ml,
        }
    result = {
        "task": task,
        "empty": empty,
        "convention": CONVENTIONS[empty],
        "n_cases": len(cases),
        "mean": mean,
        "foreground_mean": {"dice": fg_dice, "hd95": fg_hd},
        "false_positive_tumor": false_positive,
        "cases": cases,
    }
    if out is not None:
        write_json_atomic(out, result)
    return result
