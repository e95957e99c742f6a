import json

import numpy as np
import pytest
from typer.testing import CliRunner

from foscu.cli import app
from foscu.data.nifti import read_nifti
from foscu.data.phantom import generate_case, write_phantom_set
from foscu.errors import InputError
from foscu.labels import HEPATIC_VEIN, LIVER, NUM_CLASSES, PORTAL_VEIN, TUMOR

SHAPE = (64, 64, 24)
SPACING = (3.75, 3.75, 8.0)


@pytest.fixture(scope="module")
def cases():
    return [generate_case(i, seed=11, shape=SHAPE, spacing=SPACING) for i in range(12)]


def test_every_label_present_and_plausible(cases):
    for case in cases:
        counts = np.bincount(case.label.ravel(), minlength=NUM_CLASSES)
        assert counts.size == NUM_CLASSES  # no value outside the label map
        liver_fraction = (counts[LIVER:]).sum() / case.label.size
        assert 0.02 < liver_fraction < 0.25
        assert counts[PORTAL_VEIN] > 0 and counts[HEPATIC_VEIN] > 0
        assert (counts[TUMOR] > 0) == (case.n_tumors > 0)


def test_about_half_tumor_free_and_at_most_three_tumors():
    n = [generate_case(i, seed=5, shape=(24, 24, 12), spacing=(10, 10, 16)).n_tumors for i in range(40)]
    free = sum(1 for k in n if k == 0)
    assert 10 <= free <= 30
    assert max(n) <= 3


def test_hepatobiliary_contrast_ordering(cases):
    """Liver is the brightest solid organ; vessels and tumors are hypointense to it."""
    for case in cases:
        med = {
            k: np.median(case.image[case.label == k]) for k in range(NUM_CLASSES) if (case.label == k).any()
        }
        assert med[LIVER] > med[PORTAL_VEIN] * 1.15  # thin vessels: partial volume at 3.75 mm
        assert med[LIVER] > med[HEPATIC_VEIN] * 1.15
        if TUMOR in med:
            assert med[LIVER] > med[TUMOR] * 1.3
        assert med[LIVER] > np.percentile(case.image[case.label == 0], 90)


def test_liver_shape_varies_per_case(cases):
    livers = [(c.label > 0) for c in cases[:4]]
    for a, b in zip(livers, livers[1:], strict=False):
        overlap = (a & b).sum() / (a | b).sum()
        assert overlap < 0.95


def test_deterministic_and_independent_of_set_size(tmp_path):
    a = generate_case(3, seed=7, shape=(32, 32, 16), spacing=(7.5, 7.5, 12))
    b = generate_case(3, seed=7, shape=(32, 32, 16), spacing=(7.5, 7.5, 12))
    c = generate_case(3, seed=8, shape=(32, 32, 16), spacing=(7.5, 7.5, 12))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    runner = CliRunner()
    for n, name in ((4, "four"), (6, "six")):
        res = runner.invoke(
            app,
            [
                "phantom",
                str(tmp_path / name),
                "--cases",
                str(n),
                "--shape",
                "32",
                "32",
                "16",
                "--spacing",
                "7.5",
                "7.5",
                "12",
                "--seed",
                "7",
                "--workers",
                "1",
            ],
        )
        assert res.exit_code == 0, res.output
    v4 = read_nifti(tmp_path / "four/imagesTr/phantom_0003_0000.nii.gz")
    v6 = read_nifti(tmp_path / "six/imagesTr/phantom_0003_0000.nii.gz")
    assert np.array_equal(v4.array, v6.array)
    assert np.allclose(v4.array, a.image)
    assert np.allclose(v4.spacing, (7.5, 7.5, 12))


def test_nnunet_layout(tiny_phantom):
    meta = json.loads((tiny_phantom / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "portal_vein": 2, "hepatic_vein": 3, "tumor": 4}
    assert meta["numTraining"] == 6 and meta["file_ending"] == ".nii.gz"
    assert len(list((tiny_phantom / "imagesTr").glob("*_0000.nii.gz"))) == 6
    assert len(list((tiny_phantom / "labelsTr").glob("*.nii.gz"))) == 6


def test_refuses_to_overwrite(tiny_phantom):
    res = CliRunner().invoke(app, ["phantom", str(tiny_phantom), "--cases", "1"])
    assert res.exit_code == 2
    assert "not empty" in res.output


def test_liver_on_the_patients_right_in_world_coordinates(tiny_phantom):
    """RAS+: world x grows toward the patient's right, where the liver lies (written affine, read back)."""
    import nibabel as nib

    for path in sorted((tiny_phantom / "labelsTr").glob("*.nii.gz")):
        volume = read_nifti(path, label=True)
        assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
        voxels = np.argwhere(volume.array > 0)  # liver and everything inside it
        centroid = volume.affine @ np.append(voxels.mean(axis=0), 1.0)
        assert centroid[0] > 0, path.name


def test_liver_clearly_right_of_the_midline(cases):
    for case in cases:
        x = (np.argwhere(case.label > 0)[:, 0] * case.affine[0, 0] + case.affine[0, 3]).mean()
        assert x > 0.1 * SHAPE[0] * SPACING[0] / 2  # clearly right of the midline, not just across it


@pytest.mark.parametrize(
    ("shape", "spacing", "problem"),
    [((32, 32, 4), (1.0, 1.0, 1.0), "--shape: every axis needs at least 8 voxels"),
     ((32, 32, 16), (1.0, 0.0, 1.0), "--spacing: spacing must be positive")],
)  # fmt: skip
def test_a_grid_too_small_or_a_spacing_not_positive_is_refused_writing_nothing(
    tmp_path, shape, spacing, problem
):
    with pytest.raises(InputError, match=problem):
        write_phantom_set(tmp_path / "out", 2, shape, spacing, workers=1, progress=False)
    assert not (tmp_path / "out").exists()
