"""Does the ControlNet condition? The same seed with two masks, after short training on the tiny phantom."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from foscu.config import load_config
from foscu.data.loaders import load_split
from foscu.data.prepare import read_prepared
from foscu.generative.conditioning import conditioning_response
from foscu.generative.sampling import generate_batch, load_pipeline
from foscu.stages import train_stage


@pytest.fixture(scope="module")
def conditioned_run(tiny_run, tiny_prepared, tmp_path_factory):
    """The tiny run with an image VAE that decodes (4 steps decode every latent to ~0) and a ControlNet
    trained long enough to depend on its mask."""
    run = tmp_path_factory.mktemp("conditioning") / "run"
    shutil.copytree(tiny_run, run)
    longer = []
    for section, steps in (("image_vae", 120), ("controlnet", 120)):
        longer += [f"{section}.train.{key}={steps}" for key in ("steps", "checkpoint_every", "val_every")]
    cfg = load_config("tiny", longer)
    for stage in ("image-vae", "image-ldm"):  # the image LDM models the new VAE's latents
        shutil.rmtree(run / stage)
        train_stage(stage, cfg, tiny_prepared, run, progress=False)
    train_stage("controlnet", cfg, tiny_prepared, run, progress=False, folder_name="controlnet-long")
    return run


def _two_masks(prepared) -> tuple[np.ndarray, np.ndarray]:
    labels = load_split(read_prepared(prepared), "training").labels.numpy()
    return labels[0], labels[1]


@pytest.mark.slow
def test_two_masks_same_seed_differ_where_the_masks_differ(conditioned_run, tiny_prepared):
    pipe = load_pipeline(conditioned_run, "duo", "controlnet-long")
    a, b = _two_masks(tiny_prepared)
    response = conditioning_response(pipe, a, b, seed=7, sampler="ddim", steps=4)
    assert response["difference"] > 1e-5  # the same seed twice: only the mask differs
    assert response["ratio"] > 1.5, response  # and the image changes most where the masks differ
    assert response["mask_dependent"]
    # the same mask twice with the same seed: the same image, to the bit
    labels = torch.from_numpy(a[None].astype(np.int64))
    first, _ = generate_batch(pipe, [7], "ddim", 4, labels)
    again, _ = generate_batch(pipe, [7], "ddim", 4, labels)
    assert np.array_equal(first, again)


@pytest.mark.slow
def test_a_controlnet_whose_residuals_stayed_at_zero_is_caught(conditioned_run, tiny_prepared):
    pipe = load_pipeline(conditioned_run, "duo", "controlnet-long")
    with torch.no_grad():  # what an untrained (zero-initialised) ControlNet hands the UNet
        for name, p in pipe.controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.zero_()
    a, b = _two_masks(tiny_prepared)
    response = conditioning_response(pipe, a, b, seed=7, sampler="ddim", steps=4)
    assert response["difference"] == pytest.approx(0.0, abs=1e-6)
    assert not response["mask_dependent"]
