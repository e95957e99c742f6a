"""DICOM files as foscu convert groups them: blanked UIDs grouped like dcm2niix, a DICOM without an image
skipped as such. Every file is written here; each result is compared voxel by voxel and affine by affine
with the same series converted with its UIDs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_dicom import AXIAL, OBLIQUE, _positions, _write_series
from test_dicom_frames import POSITIONS, SHAPE, _assert_same, _convert

from foscu.data.dicom import convert_dicom


def _blank_uids(folder: Path, preamble: bool = True) -> None:
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.StudyInstanceUID = ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        if preamble:  # the file meta keeps its other elements; a blank UID fails pydicom's own check
            ds.save_as(path, enforce_file_format=False)
        else:  # no 128-byte preamble, no file meta: how some anonymisers and old archives write
            ds.preamble, ds.file_meta = None, FileMetaDataset()
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)


@pytest.mark.parametrize("preamble", [True, False])
def test_blanked_uids_grouped_like_dcm2niix(tmp_path, preamble):
    rng = np.random.default_rng(4)
    raws = {"T1 HBP": rng.integers(0, 4000, SHAPE), "T2 HASTE": rng.integers(0, 4000, SHAPE)}
    root = tmp_path / "anon"
    for n, (description, raw) in enumerate(raws.items()):
        orientation, positions = (
            (OBLIQUE, POSITIONS) if n == 0 else (AXIAL, _positions((0, 0, 0), (0, 0, 1), 4, 6))
        )
        _write_series(root, raw, positions, orientation, f"1.2.3.{n}", seed=n, description=description)
        for path in root.glob(f"{n}_*.dcm"):
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = n + 1
            ds.save_as(path, enforce_file_format=True)
    reference_record, reference = _convert(root, tmp_path / "with_uids")
    _blank_uids(root, preamble)
    record, images = _convert(root, tmp_path / "out")
    assert record["refused"] == [] and record["skipped_files"] == []
    assert sorted(images) == sorted(raws)
    for description in raws:
        _assert_same(images[description], reference[description])
    for entry in record["series"]:
        assert entry["series_uid"] is None and entry["case_id"].startswith("FOSCU_")
        assert any("no SeriesInstanceUID" in w for w in entry["warnings"])
    # case ids stay put when the files are renamed and moved
    moved = tmp_path / "moved"
    for n, path in enumerate(sorted(root.rglob("*.dcm"), reverse=True)):
        (moved / f"d{n % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, moved / f"d{n % 3}" / f"IM{n:04d}")
    again = convert_dicom(moved, tmp_path / "out2", progress=False)
    ids = {s["description"]: s["case_id"] for s in record["series"]}
    assert {s["description"]: s["case_id"] for s in again["series"]} == ids


def test_dicom_without_image_is_not_called_not_dicom(tmp_path):
    ds = FileDataset(str(tmp_path / "sr.dcm"), {}, file_meta=FileMetaDataset(), preamble=b"\0" * 128)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "SR"
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    with pytest.raises(Exception, match=r"1 DICOM without an image\)") as err:
        convert_dicom(tmp_path, tmp_path / "out", progress=False)
    assert "not a DICOM file" not in str(err.value)
