"""Label cleaning: each rule on a label built by hand, and sampling that draws its image for the cleaned label."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_with_sample_settings

from foscu.generative.label_cleaning import clean_label
from foscu.labels import HEPATIC_VEIN, LIVER, PORTAL_VEIN, TUMOR


def _messy_label() -> np.ndarray:
    label = np.zeros((40, 40, 20), dtype=np.uint8)
    label[5:25, 5:25, 2:12] = LIVER  # the liver: 4000 voxels
    label[32:35, 32:35, 15:17] = LIVER  # a detached fragment: 18 voxels
    label[10:20, 14:15, 6:7] = PORTAL_VEIN  # a vessel inside the liver: stays
    label[2:5, 14:15, 6:7] = HEPATIC_VEIN  # a vessel leaving the liver at its edge (touches it): stays
    label[30:38, 2:3, 18:19] = HEPATIC_VEIN  # a vessel far from any organ: 8 voxels, goes
    label[7:11, 7:11, 3:7] = TUMOR  # a real tumor: 64 voxels, stays
    label[20, 20, 8] = TUMOR  # a one-voxel speck inside the liver: becomes liver
    label[36, 10, 3] = TUMOR  # a speck outside the liver: becomes background
    return label


def test_each_rule_by_hand():
    label = _messy_label()
    out, changed = clean_label(label, spacing=(1.0, 1.0, 1.0), min_tumor_ml=0.01)  # 10 voxels of 1 uL
    assert changed == {"liver_fragments": 18, "tumor_specks": 2, "detached_vessels": 8}
    assert (out[32:35, 32:35, 15:17] == 0).all()
    assert out[20, 20, 8] == LIVER and out[36, 10, 3] == 0
    assert (out[7:11, 7:11, 3:7] == TUMOR).all()
    assert (out[30:38, 2:3, 18:19] == 0).all()
    assert (out[2:5, 14:15, 6:7] == HEPATIC_VEIN).all() and (out[10:20, 14:15, 6:7] == PORTAL_VEIN).all()
    assert (label[32:35, 32:35, 15:17] == LIVER).all()  # the input is left as it was


def test_the_tumor_threshold_is_in_millilitres():
    label = _messy_label()
    # 64 voxels of 2 uL = 0.128 mL: kept at a 0.1 mL threshold, removed (to liver) at 0.2 mL
    kept, _ = clean_label(label, (1.0, 1.0, 2.0), min_tumor_ml=0.1)
    gone, changed = clean_label(label, (1.0, 1.0, 2.0), min_tumor_ml=0.2)
    assert (kept == TUMOR).sum() == 64 and (gone == TUMOR).sum() == 0
    assert changed["tumor_specks"] == 66


def test_a_clean_label_is_left_unchanged():
    label = np.zeros((20, 20, 10), dtype=np.uint8)
    label[2:18, 2:18, 2:8] = LIVER
    label[5:15, 9:10, 5:6] = PORTAL_VEIN
    out, changed = clean_label(label, (1.0, 1.0, 1.0), 0.001)
    np.testing.assert_array_equal(out, label)
    assert set(changed.values()) == {0}


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.name.removesuffix(".nii.gz"): np.asarray(nib.load(p).dataobj)
        for p in sorted((folder / "labelsTr").glob("*.nii.gz"))
    }


@pytest.fixture
def cleaning_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run whose config cleans sampled labels, every tumor counted as a speck."""
    return run_with_sample_settings(tiny_run, tmp_path, clean_labels=True, min_tumor_ml=1.0e6)


def test_sampling_draws_the_image_for_the_cleaned_label(tiny_run, cleaning_run, tmp_path):
    from foscu.generative.generate import generate

    raw = generate(tiny_run, 3, tmp_path / "raw", "ddim", 2, seed=3, progress=False)
    clean = generate(cleaning_run, 3, tmp_path / "clean", "ddim", 2, seed=3, progress=False)
    raw_labels, clean_labels = _labels(raw), _labels(clean)
    record = json.loads((clean / "samples.json").read_text())
    assert record["label_cleaning"]["min_tumor_ml"] == 1.0e6
    assert json.loads((raw / "samples.json").read_text())["label_cleaning"] is None
    spacing = nib.load(next((raw / "labelsTr").glob("*.nii.gz"))).header.get_zooms()
    for case, label in raw_labels.items():
        expected, changed = clean_label(label, spacing, 1.0e6)  # the same sampled label, cleaned
        np.testing.assert_array_equal(clean_labels[case], expected)
        assert record["cases"][case]["cleaning"] == changed
        assert not (clean_labels[case] == TUMOR).any()
        # the image is drawn for the label it is written with: changed label, changed image (the tiny
        # ControlNet is barely trained, so the change is small, but an image drawn before the cleaning would
        # be the raw run's to the bit)
        raw_image, clean_image = (
            np.asarray(nib.load(f / "imagesTr" / f"{case}_0000.nii.gz").dataobj) for f in (raw, clean)
        )
        assert (not np.array_equal(raw_image, clean_image)) == (sum(changed.values()) > 0)
    assert sum(sum(record["cases"][c]["cleaning"].values()) for c in raw_labels) > 0  # the test saw a change
    assert not list(clean.glob(".cleaning-rank*"))  # the per-rank records were merged and removed
