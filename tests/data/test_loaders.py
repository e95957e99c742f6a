"""Datasets the engine trains on: one-hot labels by hand, seeded patches, latents drawn from the item seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foscu.data.loaders import LatentSet, SplitVolumes, VolumeSet, one_hot


def test_one_hot_by_hand():
    labels = torch.tensor([[[[0, 2]], [[1, 0]]]], dtype=torch.uint8)  # (N=1, X=2, Y=1, Z=2)
    out = one_hot(labels, 3)
    expected = torch.zeros(1, 3, 2, 1, 2)
    expected[0, 0, 0, 0, 0] = expected[0, 2, 0, 0, 1] = expected[0, 1, 1, 0, 0] = expected[0, 0, 1, 0, 1] = 1
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="label value 3 >= 3 classes"):
        one_hot(labels + 1, 3)
    assert one_hot(torch.zeros((0, 2, 2, 2), dtype=torch.uint8), 5).shape == (0, 5, 2, 2, 2)


def test_a_patch_is_a_window_of_the_volume_drawn_from_the_item_seed():
    shape = (6, 5, 4)
    images = torch.arange(float(np.prod(shape))).view(1, 1, *shape)  # every voxel value unique
    labels = torch.randint(0, 3, (1, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = VolumeSet(SplitVolumes(["a"], images, labels), 3, patch=[4, 3, 2])
    item = data[(0, 7)]
    assert item["image"].shape == (1, 4, 3, 2) and item["label_onehot"].shape == (3, 4, 3, 2)
    x, y, z = np.unravel_index(int(item["image"][0, 0, 0, 0]), shape)  # the window's corner
    assert torch.equal(item["image"], images[0, :, x : x + 4, y : y + 3, z : z + 2])
    assert torch.equal(item["label_onehot"].argmax(0), labels[0, x : x + 4, y : y + 3, z : z + 2].long())
    assert torch.equal(data[(0, 7)]["image"], item["image"])  # same item seed, same window
    assert len({int(data[(0, seed)]["image"][0, 0, 0, 0]) for seed in range(20)}) > 1
    whole = VolumeSet(SplitVolumes(["a"], images, labels), 3)[(0, 7)]
    assert torch.equal(whole["image"], images[0]) and whole["label_onehot"].shape == (3, *shape)


def test_a_latent_is_drawn_around_its_mean_with_noise_from_the_item_seed():
    mean = torch.arange(8.0).view(2, 1, 2, 2)
    sigma = torch.full((2, 1, 2, 2), 0.5)
    extras = {"condition": torch.tensor([[1.0], [2.0]])}
    data = LatentSet(mean, sigma, 0.25, extras)
    item = data[(1, 9)]
    eps = torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(item["latent"], 0.25 * (mean[1] + 0.5 * eps))
    assert torch.equal(item["condition"], extras["condition"][1])
    assert torch.equal(data[(1, 9)]["latent"], item["latent"])
    assert not torch.equal(data[(1, 10)]["latent"], item["latent"])
    assert len(data) == 2
