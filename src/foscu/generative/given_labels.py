"""Label volumes given for mask-to-image sampling (``foscu sample --labels DIR``), checked against the run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from foscu.errors import InputError

if TYPE_CHECKING:
    from foscu.generative.sampling import Pipeline

Given = list[tuple[str, np.ndarray, np.ndarray]]  # mask-to-image: (case id, label, affine) per case


def read_label_folder(folder: Path, pipe: Pipeline) -> Given:
    """Label volumes for mask-to-image: (case id, label, affine), checked against the run's grid and label map."""
    from foscu.data.layout import case_files
    from foscu.data.nifti import read_nifti

    out = []
    for case_id, path in case_files(folder, "labels").items():
        volume = read_nifti(path, label=True)
        if tuple(volume.array.shape) != tuple(pipe.roi):
            raise InputError(
                path, f"label shape {volume.array.shape} differs from the run's ROI {tuple(pipe.roi)}"
            )
        bad = set(np.unique(volume.array).tolist()) - set(pipe.labels.values())
        if bad:
            raise InputError(path, f"label values {sorted(bad)} are not in the label map {pipe.labels}")
        out.append((case_id, volume.array, volume.affine))
    return out
