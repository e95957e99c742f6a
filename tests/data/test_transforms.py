"""Segmentation patches: foreground oversampling (nnU-Net's scheme) and seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foscu.data.nifti import write_nifti
from foscu.data.prepare import read_prepared
from foscu.data.transforms import SeededDataset, _foreground_crop_class, train_transforms
from foscu.labels import LABELS, TUMOR


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


def test_oversampling_at_the_presets_prob_centres_every_class_equally_often():
    # four small blobs of unequal size, far from the border; the uniform crop almost never centres on one
    # (297 foreground voxels of 32,000 possible centres), so "the centre voxel is foreground" ~ "fg-centred"
    label = torch.zeros((1, 48, 48, 24))
    label[0, 8:14, 8:14, 6:12] = 1  # liver, the largest
    label[0, 32:35, 10:13, 8:11] = 2  # portal vein
    label[0, 10:13, 34:37, 14:17] = 3  # hepatic vein
    label[0, 34:37, 34:37, 12:15] = 4  # tumor
    patch = (9, 9, 5)  # odd: the centre voxel is (4, 4, 2)
    crop = _foreground_crop_class()(patch, 0.33, len(LABELS))
    data = {"image": torch.zeros_like(label), "label": label}
    draws, centred = 1000, []
    for seed in range(draws):
        centre = int(crop.set_random_state(seed=seed)(data)["label"][0, 4, 4, 2])  # the centre voxel
        if centre:
            centred.append(centre)
    assert abs(len(centred) / draws - 0.33) < 0.05
    shares = {c: centred.count(c) / len(centred) for c in (1, 2, 3, 4)}
    assert all(abs(share - 0.25) < 0.08 for share in shares.values()), shares
    again = crop.set_random_state(seed=7)(data)["label"]
    assert torch.equal(again, crop.set_random_state(seed=7)(data)["label"])  # same seed, same patch
