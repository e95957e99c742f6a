import numpy as np
from PIL import Image
from typer.testing import CliRunner

from foscu.cli import app
from foscu.labels import TUMOR
from foscu.viz import overlay_rgb, view_center


def test_view_writes_png_with_overlay(tiny_phantom, tmp_path):
    out = tmp_path / "view.png"
    res = CliRunner().invoke(
        app,
        [
            "view",
            str(tiny_phantom / "imagesTr/phantom_0000_0000.nii.gz"),
            "--label",
            str(tiny_phantom / "labelsTr/phantom_0000.nii.gz"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert pixels.shape[1] > pixels.shape[0] > 100
    # the liver overlay is orange: red well above blue somewhere in the picture
    assert ((pixels[..., 0] - pixels[..., 2]) > 80).sum() > 50


def test_view_centre_is_the_tumor():
    label = np.zeros((10, 10, 6), np.uint8)
    label[6:8, 2:4, 1:3] = TUMOR
    assert view_center(label, label.shape) == (6, 2, 2) or view_center(label, label.shape) == (7, 3, 2)


def test_overlay_colours_only_labelled_pixels():
    img = np.linspace(0, 1, 16).reshape(4, 4)
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0] = 1
    rgb = overlay_rgb(img, lab)
    assert rgb[0, 0, 0] != rgb[0, 0, 2]
    assert np.allclose(rgb[1:, :, 0], rgb[1:, :, 2])


def test_view_missing_file(tmp_path):
    res = CliRunner().invoke(app, ["view", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "v.png")])
    assert res.exit_code == 2 and "x.nii.gz: file not found" in res.output
