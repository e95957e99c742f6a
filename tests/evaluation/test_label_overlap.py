"""The best liver overlap against the training labels and the held-out threshold, worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from foscu.evaluation import label_overlap
from foscu.evaluation.label_overlap import best_overlap, held_out_threshold, liver_masks
from foscu.labels import LIVER, TUMOR


def _mask(voxels: list[int], size: int = 8) -> np.ndarray:
    m = np.zeros(size, bool)
    m[voxels] = True
    return m


def test_best_overlap_by_hand_across_chunks(monkeypatch):
    monkeypatch.setattr(label_overlap, "CHUNK", 2)  # three chunks of references
    refs = np.stack([_mask([0, 1]), _mask([4, 5, 6, 7]), _mask([]), _mask([0, 1, 2, 3]), _mask([7])])
    queries = np.stack([_mask([0, 1, 2]), _mask([7]), _mask([])])
    dice, index = best_overlap(queries, refs)
    # query 0: 2*2/(3+2)=0.8 against row 0, 2*3/(3+4)=0.857 against row 3 (in the second chunk)
    assert dice[0] == pytest.approx(6 / 7) and index[0] == 3
    assert dice[1] == pytest.approx(1.0) and index[1] == 4  # an exact copy of the last reference
    assert dice[2] == 0.0  # empty against empty counts as no overlap
    with pytest.raises(ValueError, match="grids differ"):
        best_overlap(queries[:, :4], refs)


def test_liver_masks_take_the_liver_class_only_and_the_threshold_is_the_held_out_maximum():
    label = np.array([[0, LIVER, LIVER, TUMOR]])
    assert liver_masks([label]).tolist() == [[False, True, True, False]]
    training = np.stack([_mask([0, 1, 2, 3]), _mask([6, 7])])
    held = np.stack([_mask([0, 1]), _mask([5, 6, 7])])  # best Dice 2*2/6 = 0.667 and 2*2/5 = 0.8
    threshold, best = held_out_threshold(held, training)
    assert best.tolist() == pytest.approx([2 / 3, 0.8]) and threshold == pytest.approx(0.8)
    with pytest.raises(ValueError, match="held-out"):
        held_out_threshold(held[:0], training)
