"""Per-structure reconstruction scores: contrast kept and error inside a structure, by hand on a tube."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foscu.evaluation.reconstruction import StructureScores, dilate, structure_scores
from foscu.labels import LABELS, LIVER, PORTAL_VEIN

LIVER_LEVEL, TUBE_LEVEL = 0.6, 0.2


def _tube_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A 24^3 volume: a liver block (0.6) on background 0, a straight one-voxel portal vein (0.2) through it."""
    label = torch.zeros(24, 24, 24, dtype=torch.uint8)
    label[4:20, 4:20, 4:20] = LIVER
    label[12, 12, 4:20] = PORTAL_VEIN
    image = torch.zeros(24, 24, 24)
    image[label == LIVER] = LIVER_LEVEL
    image[label == PORTAL_VEIN] = TUBE_LEVEL
    return image[None, None], label[None]


def test_dilation_is_a_cube_of_two_voxels():
    mask = torch.zeros(9, 9, 9, dtype=torch.bool)
    mask[4, 4, 4] = True
    grown = dilate(mask)
    assert int(grown.sum()) == 125 and bool(grown[2, 6, 2]) and not bool(grown[1, 4, 4])


def test_a_reconstruction_that_halves_the_tube_contrast_keeps_half_by_hand():
    image, label = _tube_case()
    recon = image.clone()
    recon[0, 0][label[0] == PORTAL_VEIN] = 0.4  # contrast 0.6 - 0.4 = 0.2 of the real 0.6 - 0.2 = 0.4
    scores = structure_scores(image, recon, label, LABELS)
    assert scores["val_contrast_portal_vein"] == pytest.approx(0.5)
    assert scores["val_l1_portal_vein"] == pytest.approx(0.2)  # |0.4 - 0.2| on every tube voxel
    assert scores["val_contrast_liver"] == pytest.approx(1.0) and scores["val_l1_liver"] == 0.0
    assert not any("hepatic_vein" in k or "tumor" in k for k in scores)  # absent structures: no score
    assert structure_scores(image, image, label, LABELS)["val_contrast_portal_vein"] == pytest.approx(1.0)


def test_a_reconstruction_that_blurs_the_tube_away_keeps_little_of_its_contrast():
    image, label = _tube_case()
    blurred = F.avg_pool3d(image, 5, stride=1, padding=2, count_include_pad=False)
    assert structure_scores(image, blurred, label, LABELS)["val_contrast_portal_vein"] < 0.2  # measured 0.00
    # the tube painted over with liver: no contrast kept, while the volume's mean L1 barely moves
    erased = image.clone()
    erased[0, 0][label[0] == PORTAL_VEIN] = LIVER_LEVEL
    scores = structure_scores(image, erased, label, LABELS)
    assert scores["val_contrast_portal_vein"] == pytest.approx(0.0, abs=1e-6)
    assert scores["val_l1_portal_vein"] == pytest.approx(0.4)
    assert float((erased - image).abs().mean()) < 1e-3  # 16 voxels x 0.4 / 24^3


def test_cases_pool_and_a_liver_only_label_map_scores_the_liver_alone():
    image, label = _tube_case()
    half = image.clone()
    half[0, 0][label[0] == PORTAL_VEIN] = 0.4
    scores = StructureScores(LABELS)
    scores.add(image, half, label)  # reconstructed contrast 0.2 of 0.4
    scores.add(image, image, label)  # 0.4 of 0.4
    assert scores.result()["val_contrast_portal_vein"] == pytest.approx(0.6 / 0.8)
    liver_only = structure_scores(image, half, (label > 0).to(torch.uint8), {"background": 0, "liver": 1})
    assert set(liver_only) == {"val_contrast_liver", "val_l1_liver"}
