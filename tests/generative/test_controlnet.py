"""The ControlNet: its loss weight map, its start from the trained UNet, and its conditions."""

from __future__ import annotations

import torch


def test_weight_map_takes_the_largest_class_weight_a_latent_voxel_covers():
    from foscu.generative.controlnet import weight_map

    labels = torch.zeros((1, 4, 4, 4), dtype=torch.uint8)
    labels[0, 3, 0, 1] = 4  # one tumor voxel, in latent voxel (1, 0, 0)
    labels[0, 0:2, 2:4, 0:2] = 1  # a liver block filling latent voxel (0, 1, 0)
    labels[0, 2, 2, 2] = 1  # liver and tumor share latent voxel (1, 1, 1)
    labels[0, 3, 3, 3] = 4
    weights = weight_map(labels, (2, 2, 2), {1: 2.0, 4: 100.0})
    expected = torch.ones((1, 1, 2, 2, 2))
    expected[0, 0, 1, 0, 0] = 100.0
    expected[0, 0, 0, 1, 0] = 2.0
    expected[0, 0, 1, 1, 1] = 100.0
    torch.testing.assert_close(weights, expected)


def test_init_from_unet_copies_the_shared_encoder_and_keeps_the_zero_convolutions():
    from foscu.config import ControlNetStage, DiffusionStage
    from foscu.generative.controlnet import build_controlnet, init_from_unet
    from foscu.generative.diffusion import build_diffusion

    unet_cfg = {
        "channels": [8, 16],
        "num_res_blocks": 1,
        "attention_levels": [False, False],
        "norm_num_groups": 4,
    }
    torch.manual_seed(0)
    unet = build_diffusion(DiffusionStage(unet=unet_cfg), 4)["unet"]
    stage = ControlNetStage(condition="label_downsampled", conditioning_embedding_num_channels=[8])
    net = build_controlnet(stage, unet_cfg, 4, 5, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_from_unet(net, unet)
    after, source = net.state_dict(), unet.state_dict()
    shared = [k for k in after if k in source and after[k].shape == source[k].shape]
    assert len(shared) > 20 and any(k.startswith("down_blocks") for k in shared)
    for key in shared:
        assert torch.equal(after[key], source[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in shared)  # it did copy something
    for key in after:
        if key not in shared:  # the ControlNet's own layers are untouched (its zero convolutions stay zero)
            assert torch.equal(after[key], before[key]), key
    zero = [
        k for k in after if k.startswith("controlnet_down_blocks") or k.startswith("controlnet_mid_block")
    ]
    assert zero and all(float(after[k].abs().max()) == 0 for k in zero)


def test_label_fractions_condition_keeps_a_one_voxel_vessel_as_a_share():
    import torch

    from foscu.generative.controlnet import make_condition

    labels = torch.zeros(1, 8, 8, 4, dtype=torch.long)
    labels[0, 1, :, :] = 2  # a one-voxel-thick sheet of class 2
    frac = make_condition("label_fractions", labels, None, (4, 4, 2), 5)
    nearest = make_condition("label_downsampled", labels, None, (4, 4, 2), 5)
    assert frac.shape == (1, 5, 4, 4, 2)
    assert torch.allclose(frac.sum(1), torch.ones(1, 4, 4, 2))  # shares of each latent voxel
    assert torch.allclose(frac[0, 2, 0], torch.full((4, 2), 0.5))  # 1 of the 2 voxels along x is vessel
    assert float(nearest[0, 2].sum()) == 0.0  # nearest resizing drops the sheet entirely
