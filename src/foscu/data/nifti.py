"""The one NIfTI reader/writer: shape, affine and finiteness checks; atomic writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foscu.errors import InputError
from foscu.runs import atomic_path


@dataclass
class Volume:
    """A 3D volume on its grid: ``array`` indexed (i, j, k), ``affine`` voxel -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (the affine's column lengths)."""
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(s[0]), float(s[1]), float(s[2]))


def read_shape(path: str | Path) -> tuple[int, int, int]:
    """The (i, j, k) grid of a 3D NIfTI from its header alone (no voxels read); refuses as ``read_nifti``."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)  # type: ignore[attr-defined]
    except Exception as err:  # nibabel raises many types for truncated/corrupt files
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D volume, got shape {shape}")
    return shape  # type: ignore[return-value]


def read_nifti(path: str | Path, *, label: bool = False) -> Volume:
    """Read a 3D NIfTI (a trailing singleton 4th axis is dropped), refusing anything a user must fix.

    Raises InputError naming the file for: a missing file, a truncated/corrupt file, a non-3D volume,
    NaN/inf voxels, a singular affine; with ``label=True``, non-integer values.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img: Any = nib.load(str(path))  # a NIfTI image (nibabel types it as any file image)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for truncated/corrupt files
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got shape {tuple(data.shape)}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "affine is singular or not finite")
    if label:
        if np.issubdtype(data.dtype, np.floating):
            if not np.all(np.isfinite(data)):
                raise InputError(path, "label volume has NaN or inf voxels")
            if not np.all(data == np.round(data)):
                raise InputError(path, "label volume has non-integer values")
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
        if not np.all(np.isfinite(data)):
            n_bad = int((~np.isfinite(data)).sum())
            raise InputError(path, f"image has {n_bad} NaN or inf voxels")
    return Volume(np.ascontiguousarray(data), affine)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, *, label: bool = False) -> None:
    """Write a 3D volume atomically: labels as uint8, images as float32."""
    import nibabel as nib

    data = np.asarray(array, dtype=np.uint8 if label else np.float32)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if not label:
        img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
