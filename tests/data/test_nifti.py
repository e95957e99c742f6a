"""The one NIfTI reader/writer: a round trip keeps voxels, affine and kind; what a user must fix is refused."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from foscu.data.nifti import read_nifti, read_shape, write_nifti
from foscu.errors import InputError

# an oblique-free but permuted, flipped grid: 2 mm along i, 1.5 mm along j, 3 mm along k
AFFINE = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def test_write_then_read_keeps_voxels_affine_and_kind(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 4, 3)).astype(np.float32)
    write_nifti(tmp_path / "img.nii.gz", image, AFFINE)
    volume = read_nifti(tmp_path / "img.nii.gz")
    assert volume.array.dtype == np.float32 and np.array_equal(volume.array, image)
    np.testing.assert_array_equal(volume.affine, AFFINE)
    assert volume.spacing == pytest.approx((2.0, 1.5, 3.0))
    label = rng.integers(0, 5, (5, 4, 3))
    write_nifti(tmp_path / "lab.nii.gz", label, AFFINE, label=True)
    assert nib.load(tmp_path / "lab.nii.gz").get_data_dtype() == np.uint8  # labels are stored as uint8
    read = read_nifti(tmp_path / "lab.nii.gz", label=True)
    assert read.array.dtype == np.int16 and np.array_equal(read.array, label)
    assert read_shape(tmp_path / "lab.nii.gz") == (5, 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz", "lab.nii.gz"]  # no temporaries left


def test_a_trailing_singleton_axis_is_dropped(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 2, 2, 1), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    assert read_nifti(tmp_path / "x.nii.gz").array.shape == (3, 2, 2)
    assert read_shape(tmp_path / "x.nii.gz") == (3, 2, 2)


def _saved(path, array, sform=None):
    image = nib.Nifti1Image(array, np.eye(4) if sform is None else None)
    if sform is not None:  # nibabel refuses a singular matrix as qform; a file may still hold it as sform
        image.header.set_sform(sform, code=1)
    nib.save(image, path)
    return path


def test_what_a_user_must_fix_is_refused_naming_the_file(tmp_path):
    image = np.zeros((4, 4, 4), np.float32)
    image[1, 2, 3], image[0, 0, 0] = np.nan, np.inf
    bad = _saved(tmp_path / "bad_0000.nii.gz", image)
    with pytest.raises(InputError) as err:
        read_nifti(bad)
    assert (err.value.path, err.value.problem) == (str(bad), "image has 2 NaN or inf voxels")
    half = _saved(tmp_path / "half.nii.gz", np.full((2, 2, 2), 1.5, np.float32))
    with pytest.raises(InputError, match="label volume has non-integer values"):
        read_nifti(half, label=True)
    with pytest.raises(InputError, match="label volume has NaN or inf voxels"):
        read_nifti(bad, label=True)
    flat = _saved(tmp_path / "flat.nii.gz", np.zeros((2, 2, 2), np.float32), np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(InputError, match="affine is singular or not finite"):
        read_nifti(flat)
    series = _saved(tmp_path / "4d.nii.gz", np.zeros((2, 2, 2, 3), np.float32))
    for read in (read_nifti, read_shape):
        with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(2, 2, 2, 3\)"):
            read(series)
        with pytest.raises(InputError, match="file not found") as err:
            read(tmp_path / "absent.nii.gz")
        assert err.value.path == str(tmp_path / "absent.nii.gz")
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(InputError, match="not a readable NIfTI file") as err:
        read_nifti(cut)
    assert err.value.path == str(cut)
