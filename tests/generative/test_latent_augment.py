"""Augmented copies in the latent cache: the affine by hand, label and image copies deformed alike, the same
cache for the same seed, the cache of before at 0 copies, and a ControlNet on augmented pairs resuming exactly."""

from __future__ import annotations

import hashlib
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from foscu.config import AutoencoderStage, load_config
from foscu.data.loaders import SplitVolumes
from foscu.engine import loop
from foscu.generative import autoencoders, latent_augment, latents
from foscu.runs import RunFolder

VAE = {"channels": [4, 4], "num_res_blocks": 1, "latent_channels": 2, "attention_levels": [False, False]}
VAE |= {"norm_num_groups": 2, "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}


def _blocks(n: int, shape=(16, 16, 8)) -> torch.Tensor:
    """(n, X, Y, Z) labels: a few boxes of classes 1-4 at per-case offsets (large enough to survive 10 deg)."""
    labels = torch.zeros((n, *shape), dtype=torch.uint8)
    for i in range(n):
        labels[i, 2 + i % 3 : 12, 3:13, 1:7] = 1
        labels[i, 5:9, 4 + i % 2 : 8, 2:5] = 2 + i % 3
    return labels


def test_the_identity_and_a_one_voxel_shift_by_hand():
    labels = _blocks(1)
    image = labels[:, None].float() / 4  # (1, 1, X, Y, Z)
    identity = latent_augment._theta(
        torch.eye(3, dtype=torch.float64), torch.zeros(3), (16, 16, 8), (1, 1, 2)
    )
    assert torch.equal(latent_augment.deform(labels, identity[None], label=True), labels)
    torch.testing.assert_close(latent_augment.deform(image, identity[None], label=False), image)
    # p_in = p_out + 1 voxel along X: output voxel x shows input voxel x + 1 (border repeated at the end)
    shift = torch.tensor([2 / 16, 0.0, 0.0], dtype=torch.float64)  # one voxel = 2 / 16 of the normalised span
    theta = latent_augment._theta(torch.eye(3, dtype=torch.float64), shift, (16, 16, 8), (1, 1, 2))
    moved = latent_augment.deform(labels, theta[None], label=True)
    assert torch.equal(moved[0, :-1], labels[0, 1:])


def test_a_rotation_is_in_millimetres_not_in_voxels():
    """About Z with half extents 4 mm (X: 8 voxels x 1 mm) and 8 mm (Y: 8 voxels x 2 mm): H^-1 R H."""
    a = math.radians(30)
    r = torch.tensor(
        [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64
    )
    theta = latent_augment._theta(r, torch.zeros(3), (8, 8, 4), (1.0, 2.0, 1.0))
    # affine_grid's axes are (Z, Y, X): theta[2, 1] is X_in per Y_out = R[0, 1] x 8 / 4
    assert float(theta[2, 1]) == pytest.approx(-math.sin(a) * 2, rel=1e-6)
    assert float(theta[1, 2]) == pytest.approx(math.sin(a) / 2, rel=1e-6)
    assert float(theta[0, 0]) == pytest.approx(1.0)


def test_label_copy_k_and_image_copy_k_of_a_case_are_deformed_alike():
    labels = _blocks(3)
    images = labels[:, None].float() / 4  # the image shows its label
    spacing = (2.5, 2.5, 4.8)
    for k in (1, 2):
        label_k = latent_augment.augment_batch(labels, 0, k, 7, spacing, label=True)
        image_k = latent_augment.augment_batch(images, 0, k, 7, spacing, label=False)
        assert not torch.equal(label_k, labels)  # a deformation, not the identity
        same = ((image_k[:, 0] * 4).round().to(torch.uint8) == label_k).float().mean()
        assert same > 0.97  # trilinear and nearest differ on edges only
        # the control: another copy's deformation of the image does not match this label copy
        other = latent_augment.augment_batch(images, 0, 3 - k, 7, spacing, label=False)
        assert ((other[:, 0] * 4).round().to(torch.uint8) == label_k).float().mean() < same - 0.02
    # case i's copy is the same whether it is encoded in a batch from 0 or on its own (batch offsets)
    alone = latent_augment.augment_batch(labels[2:], 2, 1, 7, spacing, label=True)
    assert torch.equal(alone[0], latent_augment.augment_batch(labels, 0, 1, 7, spacing, label=True)[2])


def _vae():
    torch.manual_seed(0)
    return autoencoders.build_autoencoder(AutoencoderStage(autoencoder=VAE), 5)["autoencoder"].eval()


def _cache(tmp_path, name, volumes, kind, copies, seed, monkeypatch=None, record=None):
    encoder = tmp_path / "vae.safetensors"
    if not encoder.exists():
        encoder.write_bytes(b"weights")
    if record is not None:
        real = latent_augment.deform

        def recording(volumes, thetas, label):
            record.append(thetas.clone())
            return real(volumes, thetas, label)

        monkeypatch.setattr(latent_augment, "deform", recording)
    path = tmp_path / f"{name}.safetensors"
    vae = _vae() if kind == "label" else _image_vae()
    latents.build_cache(
        path, vae, encoder, {"training": volumes}, kind, 5, torch.device("cpu"), seed, copies, (2.5, 2.5, 4.8)
    )
    if record is not None:
        monkeypatch.setattr(latent_augment, "deform", real)
    return latents.read_cache(path)


def _image_vae():
    from foscu.config import ImageAutoencoderStage

    torch.manual_seed(0)
    return autoencoders.build_autoencoder(ImageAutoencoderStage(autoencoder=VAE), 1)["autoencoder"].eval()


def test_the_cache_holds_the_cases_then_their_copies_the_same_for_the_same_seed(tmp_path, monkeypatch):
    labels = _blocks(3, (8, 8, 4))
    volumes = SplitVolumes(["a", "b", "c"], labels[:, None].float() / 4, labels)
    plain, plain_meta = _cache(tmp_path, "plain", volumes, "label", 0, 0)
    label_thetas: list[torch.Tensor] = []
    image_thetas: list[torch.Tensor] = []
    two, meta = _cache(tmp_path, "two", volumes, "label", 2, 0, monkeypatch, label_thetas)
    again, _ = _cache(tmp_path, "again", volumes, "label", 2, 0)
    other, _ = _cache(tmp_path, "other", volumes, "label", 2, 1)
    _cache(tmp_path, "image", volumes, "image", 2, 0, monkeypatch, image_thetas)
    mean = two["training"]["mean"]
    assert mean.shape[0] == 9 and meta["case_ids"]["training"][3:6] == ["a~aug1", "b~aug1", "c~aug1"]
    torch.testing.assert_close(mean[:3], plain["training"]["mean"])  # copy 0: the cache of before
    assert plain_meta["scale_factor"] == meta["scale_factor"]  # the cases' own scale, whatever the copies
    assert "augmentation" not in plain_meta and meta["augmentation"]["copies"] == 2
    assert not torch.allclose(mean[3:6], mean[:3])
    torch.testing.assert_close(again["training"]["mean"], mean)  # the same seed: the same cache
    assert not torch.allclose(other["training"]["mean"][3:], mean[3:])  # another seed: other copies
    # the label cache and the image cache deform copy k of each case with one and the same affine
    label_all, image_all = torch.cat(label_thetas), torch.cat(image_thetas)  # (copies x cases, 3, 4)
    assert label_all.shape[0] == 6 and torch.equal(label_all, image_all)
    # and the ControlNet's labels for those rows are the label copies the label cache encoded
    rows = latent_augment.training_labels(labels, 2, 0, (2.5, 2.5, 4.8))
    assert rows.shape[0] == 9 and torch.equal(rows[:3], labels)
    assert torch.equal(rows[3:6], latent_augment.augment_batch(labels, 0, 1, 0, (2.5, 2.5, 4.8), label=True))


def test_a_cache_with_other_copies_or_seed_is_not_current(tmp_path):
    labels = _blocks(2, (8, 8, 4))
    volumes = SplitVolumes(["a", "b"], labels[:, None].float() / 4, labels)
    _cache(tmp_path, "c", volumes, "label", 1, 0)
    path, encoder = tmp_path / "c.safetensors", tmp_path / "vae.safetensors"
    assert latents.cache_is_current(path, encoder, latent_augment.settings(1, 0))
    assert not latents.cache_is_current(path, encoder, latent_augment.settings(1, 1))
    assert not latents.cache_is_current(path, encoder, None)


def _weights(path) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(load_file(str(path)).items()):
        digest.update(key.encode() + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_a_controlnet_on_augmented_pairs_trains_and_resumes_exactly(
    tiny_run, tiny_prepared, tmp_path, monkeypatch
):
    from foscu.stages import train_stage

    cfg = load_config("tiny", ["controlnet.augment_copies=2"])
    runs = {}
    for name in ("whole", "stopped"):
        runs[name] = RunFolder(tmp_path / name)
        shutil.copytree(tiny_run, runs[name].root)
        shutil.rmtree(runs[name].stage("controlnet"))
    train_stage("controlnet", cfg, tiny_prepared, runs["whole"].root, progress=False)
    cache, meta = latents.read_cache(runs["whole"].latents("image-aug2"))
    n = len(meta["case_ids"]["training"])
    assert n == 3 * len(tiny_prepared_training(tiny_prepared)) and cache["training"]["mean"].shape[0] == n
    real = loop.TrainStep.__call__

    def step(self, batch, index):
        if index == 3:
            raise KeyboardInterrupt
        return real(self, batch, index)

    with monkeypatch.context() as patch:
        patch.setattr(loop.TrainStep, "__call__", step)
        with pytest.raises(KeyboardInterrupt):
            train_stage("controlnet", cfg, tiny_prepared, runs["stopped"].root, progress=False)
    train_stage("controlnet", cfg, tiny_prepared, runs["stopped"].root, resume=True, progress=False)
    assert _weights(runs["stopped"].model("controlnet")) == _weights(runs["whole"].model("controlnet"))


def tiny_prepared_training(prepared) -> list:
    from foscu.data.prepare import read_prepared

    return read_prepared(prepared).datalist["training"]
