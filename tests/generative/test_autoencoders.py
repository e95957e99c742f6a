"""The autoencoders: the KL term and the label VAE's Dice term by hand, and the latent shape without encoding."""

from __future__ import annotations

import pytest
import torch

from foscu.config import load_config


def test_kl_term_by_hand():
    import math

    from foscu.generative.autoencoders import kl_divergence

    shape = (2, 1, 2, 2, 2)  # 8 latent voxels per case
    assert float(kl_divergence(torch.zeros(shape), torch.ones(shape))) == pytest.approx(0.0, abs=1e-6)
    # per voxel 0.5 (mu^2 + sigma^2 - log sigma^2 - 1): mu 1, sigma 1 -> 0.5; mu 0, sigma 2 -> 0.5 (3 - log 4)
    assert float(kl_divergence(torch.ones(shape), torch.ones(shape))) == pytest.approx(8 * 0.5)
    two = torch.full(shape, 2.0)
    assert float(kl_divergence(torch.zeros(shape), two)) == pytest.approx(
        8 * 0.5 * (3 - math.log(4)), rel=1e-5
    )


def test_label_vae_dice_term_by_hand_and_refused_for_images():
    import torch

    from foscu.config import load_config
    from foscu.generative.autoencoders import foreground_dice_loss, reconstruction_error

    onehot = torch.zeros(1, 3, 4, 4, 4)
    onehot[:, 0] = 1
    onehot[:, 0, :2], onehot[:, 1, :2] = 0, 1  # half the volume class 1, class 2 absent
    perfect = onehot * 20 - 10  # logits that softmax to the one-hot
    assert float(foreground_dice_loss(perfect, onehot)) < 0.01  # absent and not predicted: no loss either
    ce = reconstruction_error(perfect, onehot, "ce")
    both = reconstruction_error(perfect, onehot, "ce", dice_weight=2.0)
    assert float(both - ce) == pytest.approx(2 * float(foreground_dice_loss(perfect, onehot)), rel=1e-5)
    wrong = torch.zeros_like(onehot)
    wrong[:, 2] = 10  # everything predicted as class 2
    assert float(foreground_dice_loss(wrong, onehot)) > 0.9
    load_config("tiny", ["label_vae.dice_weight=1.0"])  # the label VAE takes it
    with pytest.raises(Exception, match="dice_weight"):
        load_config("tiny", ["image_vae.dice_weight=1.0"])


@pytest.mark.parametrize("preset", ["tiny", "demo"])
@pytest.mark.parametrize("roi", [(32, 32, 16), (64, 64, 32), (36, 28, 12)])
def test_the_latent_shape_without_encoding_equals_the_encoded_one(preset, roi):
    """``latent_shape`` (the encoder on the meta device) gives the shape a real encode of the ROI gives."""
    import torch

    from foscu.generative.autoencoders import build_autoencoder, build_vqvae, encode, latent_shape

    cfg = load_config(preset)
    for nets, channels in (
        (build_autoencoder(cfg.label_vae, 5), 5),
        (build_autoencoder(cfg.image_vae, 1), 1),
        (build_vqvae(cfg.vqvae), 1),
    ):
        vae = nets["autoencoder"]
        with torch.no_grad():
            encoded = tuple(encode(vae.eval(), torch.zeros(1, channels, *roi))[0].shape[1:])
        assert latent_shape(vae, channels, roi) == encoded, (preset, roi, type(vae).__name__)
