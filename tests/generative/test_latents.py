"""The latent caches: an empty split, the scale factor, and the label cache one-hot encoded a batch at a time."""

from __future__ import annotations

import pytest
import torch

from foscu.config import load_config


def test_an_empty_split_encodes_to_an_empty_latent_cache():
    """A split with no cases (the paper-size test's set has no validation split) encodes to (0, c, x, y, z)."""
    import torch

    from foscu.generative.autoencoders import build_autoencoder
    from foscu.generative.latents import encode_volumes

    vae = build_autoencoder(load_config("tiny").label_vae, 5)["autoencoder"]
    mean, sigma = encode_volumes(
        vae, torch.zeros(0, 32, 32, 16, dtype=torch.uint8), 2, torch.device("cpu"), 5
    )
    assert mean.shape == sigma.shape and mean.shape[0] == 0 and mean.shape[2:] == (16, 16, 8)


def test_scale_factor_is_one_over_the_latent_std_and_refuses_a_broken_encoder():
    from foscu.errors import InputError
    from foscu.generative.latents import scale_factor

    z = torch.randn(4, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    z = 2.0 * z / z.std()
    assert scale_factor(z, "vae") == pytest.approx(0.5, rel=1e-5)
    for broken in (torch.zeros(4, 2), torch.full((4, 2), float("nan"))):
        with pytest.raises(InputError, match="retrain"):
            scale_factor(broken, "vae.safetensors")


def test_label_latent_cache_one_hot_encodes_one_batch_at_a_time(tmp_path, monkeypatch):
    # the whole training split one-hot at once is ~50 GB at 504 cases x 160x160x64 (int64 then float32)
    from foscu.config import AutoencoderStage
    from foscu.data import loaders
    from foscu.data.loaders import SplitVolumes
    from foscu.generative import autoencoders, latents

    cfg = {"channels": [4, 4], "num_res_blocks": 1, "latent_channels": 2, "attention_levels": [False, False]}
    cfg |= {"norm_num_groups": 2, "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
    torch.manual_seed(0)
    vae = autoencoders.build_autoencoder(AutoencoderStage(autoencoder=cfg), 5)["autoencoder"].eval()
    labels = torch.randint(0, 5, (5, 8, 8, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        expected = autoencoders.encode(vae, loaders.one_hot(labels, 5))[0]

    sizes: list[int] = []
    real_one_hot = loaders.one_hot

    def recording(x: torch.Tensor, num_classes: int) -> torch.Tensor:
        sizes.append(len(x))
        return real_one_hot(x, num_classes)

    def no_int64(*args, **kwargs):
        raise AssertionError("F.one_hot builds an int64 copy")

    monkeypatch.setattr(latents, "one_hot", recording)
    monkeypatch.setattr(torch.nn.functional, "one_hot", no_int64)
    encoder = tmp_path / "vae.safetensors"
    encoder.write_bytes(b"weights")
    volumes = SplitVolumes([f"c{i}" for i in range(5)], torch.zeros((5, 1, 8, 8, 4)), labels)
    path = tmp_path / "label.safetensors"
    latents.build_cache(path, vae, encoder, {"training": volumes}, "label", 5, torch.device("cpu"), 0)
    assert sizes and max(sizes) <= 2 and sum(sizes) == 5  # per batch of 2
    cache, meta = latents.read_cache(path)
    torch.testing.assert_close(cache["training"]["mean"], expected)
    assert meta["case_ids"]["training"] == [f"c{i}" for i in range(5)]
