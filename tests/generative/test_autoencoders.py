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


def test_structure_weighted_reconstruction_by_hand():
    from foscu.generative.autoencoders import reconstruction_error, structure_weights
    from foscu.labels import LIVER, PORTAL_VEIN, TUMOR

    onehot = torch.zeros(1, 5, 2, 2, 2)
    onehot[:, LIVER] = 1
    onehot[0, LIVER, 0, 0, 0], onehot[0, PORTAL_VEIN, 0, 0, 0] = 0, 1  # one vein voxel of 8
    onehot[0, LIVER, 1, 1, 1], onehot[0, TUMOR, 1, 1, 1] = 0, 1  # one tumor voxel
    weights = structure_weights(onehot, 10.0)
    assert weights.shape == (1, 1, 2, 2, 2) and float(weights.sum()) == 6 + 2 * 11
    target, recon = torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    recon[0, 0, 0, 0, 0] = 0.5  # error on the vein voxel only: 11 x 0.5 of a weight of 28
    assert float(reconstruction_error(recon, target, "l1", voxel_weights=weights)) == pytest.approx(5.5 / 28)
    assert float(reconstruction_error(recon, target, "l2", voxel_weights=weights)) == pytest.approx(2.75 / 28)
    assert float(reconstruction_error(recon, target, "l1")) == pytest.approx(0.5 / 8)  # unweighted
    liver_only = structure_weights(onehot[:, :2], 10.0)  # a liver-only label map holds no structure
    assert torch.equal(liver_only, torch.ones_like(liver_only))


def test_structure_weight_zero_is_the_plain_loss_and_a_weight_moves_the_loss():
    from foscu.generative.autoencoders import autoencoder_loss, build_autoencoder

    cfg = load_config("tiny")
    torch.manual_seed(0)
    nets = build_autoencoder(cfg.image_vae, 1)
    image = torch.rand(2, 1, 16, 16, 8)
    label = (image > 0.8).long()[:, 0] * 2  # "vessel" where bright, background elsewhere
    onehot = torch.nn.functional.one_hot(label, 5).permute(0, 4, 1, 2, 3).float()
    batch = {"image": image, "label_onehot": onehot}
    kw = {"key": "image", "kind": "l1", "kl_weight": 0.0}

    def reconstruction(weight: float | None) -> torch.Tensor:
        torch.manual_seed(1)  # the VAE samples its latent
        if weight is None:
            return torch.nn.functional.l1_loss(nets["autoencoder"](image)[0], image)
        return autoencoder_loss(nets, batch, **kw, structure_weight=weight)["reconstruction"]

    assert torch.equal(reconstruction(0.0), reconstruction(None))  # bit for bit the loss of before
    assert not torch.isclose(reconstruction(10.0), reconstruction(0.0))


def test_structure_weight_is_the_image_vaes_and_refused_where_it_would_do_nothing(tmp_path, tiny_phantom):
    from foscu.data.prepare import prepare_dataset
    from foscu.errors import InputError
    from foscu.stages import train_stage

    assert load_config("tiny", ["image_vae.structure_weight=10"]).image_vae.structure_weight == 10
    with pytest.raises(InputError, match="structure_weight"):
        load_config("tiny", ["label_vae.structure_weight=10"])
    with pytest.raises(InputError, match="structure_weight"):
        load_config("tiny", ["image_vae.structure_weight=-1"])
    liver_only = tmp_path / "liver-only"
    prepare_dataset(tiny_phantom, liver_only, roi=(32, 32, 16), labels="binary", progress=False)
    with pytest.raises(InputError, match="liver-only"):
        cfg = load_config("tiny", ["image_vae.structure_weight=10"])
        train_stage("image-vae", cfg, liver_only, tmp_path / "run", progress=False)


def test_image_vae_validation_logs_the_per_structure_scores(tiny_prepared, tmp_path):
    import json

    from foscu.engine.checkpoint import read_weights
    from foscu.stages import train_stage

    for weight in (0, 10):
        cfg = load_config("tiny", [f"image_vae.structure_weight={weight}"])
        train_stage("image-vae", cfg, tiny_prepared, tmp_path / f"run{weight}", progress=False)
    log = tmp_path / "run10" / "image-vae" / "metrics.jsonl"
    last = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert {"val_l1", "val_contrast_liver", "val_l1_liver", "val_contrast_portal_vein"} <= set(last)
    assert all(k.startswith(("val_contrast_", "val_l1")) for k in last if k.startswith("val_"))
    a, b = (read_weights(tmp_path / f"run{w}" / "image-vae" / "model.safetensors")[0] for w in (0, 10))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the weight reaches training
