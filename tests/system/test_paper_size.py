"""The paper preset at the paper's size (160 x 160 x 64) on the CPU: one step of everything.

Catches shape, divisibility and memory mistakes that the tiny sizes of the other tests cannot: every
generative stage of the `paper` preset takes one training step through the real engine (``train_stage`` ->
``fit``), one label -> image pair is sampled with 1 DDIM step (every network of the pair runs once; a
second step repeats the same shapes), and every segmentation architecture takes one step through
``train_segmenter``. The label LDM's UNet runs at the paper's width; the image LDM, its ControlNet and the
VQ-VAE LDM, which build the same UNet on the same latent grids, run it at channels [32, 64, 64]. Trimmed to fit CI: batch 1, one training case and no validation for the generative
stages, the autoencoders on 64 x 64 x 32 patches (their ``patch_size``; encoding the latent caches and
decoding the pair still run at 160 x 160 x 64), and the segmenters' end-of-training validation (one
eval-mode forward of the whole ROI: 41 of ~170 s) run for DynUNet only, the one architecture whose
eval-mode output differs from its training output (no deep-supervision heads). One test for the generative
stages with the pair and one per segmentation architecture, so that two workers share them out
(tests/conftest.py deals the slow tests out to the workers first).
"""

from __future__ import annotations

import resource

import numpy as np
import pytest
import yaml

from foscu.config import load_config
from foscu.data.nifti import read_nifti
from foscu.segmentation.networks import ARCHS

ROI = (160, 160, 64)
SPACING = (1.5, 1.5, 3.0)
GENERATIVE = {
    "label-vae": "label_vae",
    "image-vae": "image_vae",
    "label-ldm": "label_ldm",
    "image-ldm": "image_ldm",
    "controlnet": "controlnet",
    "vqvae": "vqvae",
    "vqvae-ldm": "vqvae_ldm",
}
PATCH = "[64, 64, 32]"  # divisible by the paper VAEs' 4x and the VQ-VAE's 4x downsampling
# the image LDM (and so its ControlNet, a copy of its encoder) and the VQ-VAE LDM build the same UNet as the
# label LDM, which runs at the paper's width; these run it narrower on the same latent grids (165 of the
# test's ~600 s on one thread went to them; the paper widths run on a GPU in benchmarks/gpu_check.py)
NARROW_UNET = "[32, 64, 64]"
PEAK_RSS_GB = 12.0  # the machine has 24 GB shared by parallel test runs


def _one_step_overrides() -> list[str]:
    out = []
    for section in GENERATIVE.values():
        out += [f"{section}.train.epochs=1", f"{section}.train.batch_size=1"]
    out += [f"{s}.patch_size={PATCH}" for s in ("label_vae", "image_vae", "vqvae")]
    out += [f"{s}.unet.channels={NARROW_UNET}" for s in ("image_ldm", "vqvae_ldm")]
    out += ["segmentation.train.steps=1", "segmentation.train.batch_size=1"]
    return out + ["sample.steps=1", "sample.batch_size=1"]


def _prepared(root, cases: int, split: tuple[int, int, int]):
    """Phantom cases 0.. at 160 x 160 x 64, prepared at the paper ROI with ``split`` (cases per split)."""
    from foscu.data.phantom import write_phantom_set
    from foscu.data.prepare import prepare_dataset

    write_phantom_set(root / "raw", cases, ROI, SPACING, seed=0, workers=1, progress=False)
    prepare_dataset(root / "raw", root / "prepared", roi=ROI, split=split, progress=False)
    return root / "prepared"


@pytest.fixture
def paper_root(tmp_path):
    """A folder for one paper-size test, removed afterwards: the paper-size weights take GBs."""
    import shutil

    yield tmp_path
    shutil.rmtree(tmp_path)


def _drop_resume_files(folder):
    """Checkpoint and optimizer state serve only --resume: 0.5 GB each per paper UNet, gone at once."""
    for path in [*folder.glob("checkpoint-*.safetensors"), folder / "train_state.pt"]:
        path.unlink(missing_ok=True)


class _NoValidation:
    """Stands in for ``segmentation.train.Validator``: no forward pass, a constant ``val_dice``."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, nets) -> dict[str, float]:
        return {"val_dice": 0.0}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@pytest.mark.slow
def test_every_generative_stage_and_a_pair_at_the_paper_size(paper_root):
    """One training case, no validation or test; every network of the pair at the paper ROI."""
    from foscu.generative.generate import generate
    from foscu.stages import train_stage

    prepared = _prepared(paper_root, 1, (1, 0, 0))
    cfg = load_config("paper", _one_step_overrides())
    run = paper_root / "run"
    # 1. every generative stage: one optimizer step through the engine, weights written
    for stage in GENERATIVE:
        result = train_stage(stage, cfg, prepared, run, progress=False)
        assert result.steps == 1, stage
        assert (run / stage / "model.safetensors").is_file(), stage
        _drop_resume_files(run / stage)
    for vae in ("label-vae", "image-vae"):  # the preset's stated grid: 8 x 40 x 40 x 16
        info = yaml.safe_load((run / vae / "config.yaml").read_text())
        assert (info["latent_channels"], info["latent_shape"]) == (8, [40, 40, 16]), vae
    label_ldm = yaml.safe_load((run / "label-ldm" / "config.yaml").read_text())
    # the paper's width, attention included
    assert label_ldm["section"]["unet"]["channels"] == [128, 256, 256]
    # 2. one pair with 1 DDIM step, decoded at the paper ROI
    out = paper_root / "samples"
    generate(run, 1, out, "ddim", 1, cfg.seed, batch_size=1, progress=False)
    assert yaml.safe_load((out / "samples.json").read_text())["steps"] == 1
    (image,) = (out / "imagesTr").glob("*_0000.nii.gz")
    (label,) = (out / "labelsTr").glob("*.nii.gz")
    assert read_nifti(image).array.shape == ROI
    labels = read_nifti(label, label=True).array
    assert labels.shape == ROI and set(np.unique(labels)) <= set(range(5))
    assert _peak_rss_gb() < PEAK_RSS_GB


@pytest.fixture(scope="module")
def segmentation_data(tmp_path_factory):
    """1 training and 1 validation case at the paper ROI, shared by the architectures (read-only)."""
    import shutil

    root = tmp_path_factory.mktemp("paper-seg")
    yield _prepared(root, 2, (1, 1, 0))
    shutil.rmtree(root)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_a_segmenter_at_the_paper_size(arch, segmentation_data, paper_root, monkeypatch):
    """One multi-class step at the whole 160 x 160 x 64 ROI; the sliding-window validation at the whole ROI
    for DynUNet only (see the module docstring). One test per architecture, so workers share them out."""
    from foscu.segmentation import train as seg_train
    from foscu.stages import train_segmenter

    cfg = load_config("paper", _one_step_overrides())
    if arch != "dynunet":
        monkeypatch.setattr(seg_train, "Validator", _NoValidation)
    folder, fitted = train_segmenter(arch, "multiclass", cfg, segmentation_data, paper_root, progress=False)
    assert fitted.steps == 1 and (folder / "model.safetensors").is_file()
    if arch == "dynunet":  # a real Dice of the validation case, per class
        assert 0.0 <= fitted.last["val_dice"] <= 1.0 and "val_dice_liver" in fitted.last
    _drop_resume_files(folder)
    assert _peak_rss_gb() < PEAK_RSS_GB
