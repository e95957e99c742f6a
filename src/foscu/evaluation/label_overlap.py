"""How close a label comes to a training patient's: the best liver Dice against every training label.

Labels of one run share the prepared ROI, so their livers are compared voxel by voxel on that grid. A
held-out patient (validation or test, never trained on) shows how far a genuinely new liver stays from
the training livers; a generated label whose liver overlaps a training liver more than every held-out
patient's does is close to a copy of that training patient (the check of benchmarks/memorization_labels.py,
used by the memorization audit and by ``sample.novelty``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foscu.labels import LIVER

CHUNK = 64  # training livers per matrix product: (64, voxels) float32 = 420 MB at 160 x 160 x 64


def liver_masks(labels: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(N, X, Y, Z) labels (or a list of them) -> (N, voxels) bool liver masks (the liver class itself)."""
    return (
        np.stack([np.asarray(label).ravel() == LIVER for label in labels])
        if len(labels)
        else np.zeros((0, 0), bool)
    )


def best_overlap(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query liver mask (Q, V): its best Dice over the reference masks (R, V) and that reference's row.

    Dice = 2 |A and B| / (|A| + |B|), 0 where both are empty; the intersections are one float32 matrix
    product per chunk of references (exact: counts stay below 2**24 voxels).
    """
    if not len(references):
        raise ValueError("the overlap check needs at least one reference label")
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(f"label grids differ: {queries.shape[1:]} voxels against {references.shape[1:]}")
    q = queries.astype(np.float32)
    q_size = q.sum(axis=1)  # (Q,)
    best = np.full(len(q), -1.0)
    index = np.zeros(len(q), dtype=np.int64)
    for start in range(0, len(references), CHUNK):
        r = references[start : start + CHUNK].astype(np.float32)
        inter = q @ r.T  # (Q, chunk)
        total = q_size[:, None] + r.sum(axis=1)[None, :]
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 0.0)
        k = dice.argmax(axis=1)
        value = dice[np.arange(len(q)), k]
        better = value > best
        best[better], index[better] = value[better], k[better] + start
    return best, index


def held_out_threshold(held_out: np.ndarray, training: np.ndarray) -> tuple[float, np.ndarray]:
    """The most any held-out liver (H, V) overlaps its best training liver (R, V), and each one's best."""
    if not len(held_out):
        raise ValueError("the overlap threshold needs at least one held-out (validation/test) label")
    best, _ = best_overlap(held_out, training)
    return float(best.max()), best
