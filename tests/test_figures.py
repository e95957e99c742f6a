"""The report's evidence figures: PNGs with one panel row per case or feature row shown, drawn also where a
value is missing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from foscu.data.layout import image_path, label_path
from foscu.data.nifti import write_nifti
from foscu.evaluation.ladder import CLASSES
from foscu.figures import figure_label_realism, figure_ladder, figure_mask_to_image

DPI = 90  # png_bytes' resolution: a figure of w x h inches is a PNG of 90 w x 90 h pixels


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_mask_to_image_shows_one_row_per_case_generated_from_its_mask(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:6, 2:6, 1:3] = 1
    rng = np.random.default_rng(0)
    real = {}
    for case in ("a", "b", "c"):
        write_nifti(image_path(tmp_path / "real", case), rng.random((8, 8, 4)), np.eye(4))
        write_nifti(label_path(tmp_path / "real", case), label, np.eye(4), label=True)
        real[case] = (image_path(tmp_path / "real", case), label_path(tmp_path / "real", case))
    generated = tmp_path / "generated"
    for case in ("a", "c"):  # nothing was generated from b's mask
        write_nifti(image_path(generated, f"{case}_synth"), rng.random((8, 8, 4)), np.eye(4))
    assert _png(figure_mask_to_image(real, generated)).size == (12 * DPI, round(2 * 3.1 * DPI))
    assert _png(figure_mask_to_image(real, generated, n=1)).size == (12 * DPI, round(3.1 * DPI))
    assert figure_mask_to_image({"b": real["b"]}, generated) is None


def test_the_ladder_draws_a_missing_dice_as_zero():
    rows = [
        {"rung": rung, "description": rung, "n": 2, **{f"dice {c}": 0.5 for c in CLASSES}}
        for rung in ("real", "vae", "duo")
    ]
    rows[1][f"dice {CLASSES[-1]}"] = None  # a class the rung's cases never hold
    assert _png(figure_ladder({"rows": rows})).size == (10 * DPI, round(3.8 * DPI))


def test_label_realism_has_a_row_of_four_panels_per_four_features():
    names = ["liver volume", "tumors", "vessel fraction", "components", "outside"]
    features = [{"feature": name, "distance": 0.5} for name in names]
    features[-1]["distance"] = None  # not comparable: no distance in the title
    real = {f"r{i}": {name: float(i) for name in names} for i in range(3)}
    generated = {"g0": {name: np.nan for name in names}, "g1": {name: 1.0 for name in names}}
    realism = {"features": features, "real_cases": real, "generated_cases": generated}
    assert _png(figure_label_realism(realism)).size == (round(4 * 3.2 * DPI), round(2 * 2.4 * DPI))
