"""Segmentation patches: foreground oversampling (nnU-Net's scheme) and seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foscu.data.nifti import write_nifti
from foscu.data.prepare import read_prepared
from foscu.data.transforms import SeededDataset, train_transforms
from foscu.labels import TUMOR


@pytest.fixture()
def small_tumor_case(tmp_path):
    image = np.random.default_rng(0).random((48, 48, 24)).astype(np.float32)
    label = np.zeros((48, 48, 24), np.uint8)
    label[40:43, 3:6, 2:4] = TUMOR  # a corner the uniform crop rarely covers
    write_nifti(tmp_path / "img.nii.gz", image, np.eye(4))
    write_nifti(tmp_path / "lab.nii.gz", label, np.eye(4), label=True)
    return [{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}]


def _hits(items, prob: float, n: int = 20) -> int:
    data = SeededDataset(items, train_transforms("multiclass", [16, 16, 8], prob))
    return sum(int((data[(0, seed)]["label"] == TUMOR).any()) for seed in range(n))


def test_oversampling_puts_the_small_tumor_in_the_patch(small_tumor_case):
    always = _hits(small_tumor_case, 1.0)
    never = _hits(small_tumor_case, 0.0)
    assert always >= 18  # the random affine may still move it out of a few patches
    assert never <= 7 and always > never + 10


def test_same_item_seed_same_patch(small_tumor_case):
    data = SeededDataset(small_tumor_case, train_transforms("multiclass", [16, 16, 8], 0.5))
    a, b = data[(0, 11)], data[(0, 11)]
    assert a["image"].shape == (1, 16, 16, 8)
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())


def test_same_item_seed_same_augmentation(seg_prepared):
    data = read_prepared(seg_prepared)
    dataset = SeededDataset(data.datalist["training"], train_transforms("binary", (16, 16, 16)))
    a, b, c = dataset[(1, 42)], dataset[(1, 42)], dataset[(1, 43)]
    assert a["image"].shape == (1, 16, 16, 16) and set(a["label"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
