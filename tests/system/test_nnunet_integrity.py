"""nnU-Net v2 as a client: its own dataset integrity check passes on FOSCU's raw, prepared and synthetic sets.

Only the module holding the check is imported (it needs no torchvision, whose PyPI wheel does not import
beside the CPU torch). Skipped, with the reason, where nnunetv2 is not installed (`pip install .[nnunet]`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

integrity = pytest.importorskip(
    "nnunetv2.experiment_planning.verify_dataset_integrity",
    reason="nnunetv2 not installed (pip install -c <torch pin> .[nnunet])",
)

pytestmark = pytest.mark.slow  # the check spawns a worker process that imports nnU-Net (a few seconds)


def _verify(folder: Path) -> None:
    integrity.verify_dataset_integrity(str(folder), num_processes=1)


def test_phantom_raw_set_passes(tiny_phantom):
    _verify(tiny_phantom)


def test_prepared_set_passes(tiny_prepared):
    _verify(tiny_prepared)


def test_synthetic_set_passes(tiny_run, tmp_path):
    from foscu.generative.generate import generate

    out = generate(tiny_run, 2, tmp_path / "synthetic", sampler="ddim", steps=2, progress=False)
    _verify(out)


def test_the_check_bites_on_a_broken_set(tiny_phantom, tmp_path):
    from foscu.data.nifti import read_nifti, write_nifti

    raw = shutil.copytree(tiny_phantom, tmp_path / "raw")
    victim = next(iter(sorted((raw / "labelsTr").glob("*.nii.gz"))))
    label = read_nifti(victim, label=True)
    array = label.array.copy()
    array[0, 0, 0] = 9  # not in dataset.json's labels
    write_nifti(victim, np.asarray(array), label.affine, label=True)
    with pytest.raises(RuntimeError, match="label"):
        _verify(raw)
