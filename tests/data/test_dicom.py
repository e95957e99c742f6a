"""foscu convert: DICOM series written here with pydicom vs the volumes and affines they came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from typer.testing import CliRunner

from foscu.cli import app
from foscu.data.dicom import convert_dicom
from foscu.data.layout import list_cases
from foscu.errors import InputError

PATIENT_NAME, PATIENT_ID = "DOE^JANE", "PID4711"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SLOPE, INTERCEPT = 2.5, -100.0
ROW_SPACING, COL_SPACING = 0.7, 0.8  # PixelSpacing = (between rows, between columns)


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _write_slice(
    path: Path, pixels: np.ndarray | None, position, orientation, series_uid: str, **extra
) -> None:
    """One MR Image Storage file, explicit VR little endian, 16-bit unsigned pixels (rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, series_uid
    ds.SeriesDescription = extra.pop("description", "")
    ds.ImagePositionPatient = [f"{v:.5f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    rows, cols = extra.pop("size", pixels.shape if pixels is not None else (10, 8))
    ds.Rows, ds.Columns = rows, cols
    for key, value in extra.items():
        setattr(ds, key, value)
    if pixels is not None:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_series(
    folder: Path,
    raw: np.ndarray,
    positions,
    orientation,
    series_uid: str,
    *,
    seed: int = 0,
    names: str = "shuffled",
    drop_pixels: int | None = None,
    sizes: dict[int, tuple[int, int]] | None = None,
    tilted: int | None = None,
    description: str = "",
) -> None:
    """raw (columns, rows, slices) -> one file per slice; file names and InstanceNumbers shuffled."""
    folder.mkdir(parents=True, exist_ok=True)
    n = raw.shape[2]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n) if names == "shuffled" else np.arange(n)
    numbers = rng.permutation(n) + 1
    for k in range(n):
        pixels = None if k == drop_pixels else raw[:, :, k].T  # (rows, columns)
        size = (sizes or {}).get(k)
        if size is not None:
            pixels = np.zeros(size, np.uint16)
        name = f"{series_uid[-4:]}_{perm[k]:03d}.dcm" if names == "shuffled" else f"slice_{k:03d}.dcm"
        slice_orientation = OBLIQUE if k == tilted else orientation
        _write_slice(
            folder / name,
            pixels,
            positions[k],
            slice_orientation,
            series_uid,
            InstanceNumber=int(numbers[k]),
            description=description,
        )


def _positions(origin, normal, step: float, n: int) -> list[np.ndarray]:
    return [np.asarray(origin, float) + k * step * np.asarray(normal, float) for k in range(n)]


def _expected_world(i: int, j: int, k: int, positions, orientation) -> np.ndarray:
    """Ground truth RAS of voxel (i=column, j=row, k=slice) from the values written in the files."""
    ipp = np.array([round(v, 5) for v in positions[k]])
    cos = np.array([round(v, 6) for v in orientation])
    lps = ipp + i * COL_SPACING * cos[:3] + j * ROW_SPACING * cos[3:]
    return lps * [-1, -1, 1]


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
OBLIQUE_R = _rotation((1.0, 2.0, 0.5), 25.0)
OBLIQUE = (*OBLIQUE_R[:, 0], *OBLIQUE_R[:, 1])
SHAPE = (8, 10, 5)  # columns, rows, slices


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Axial + oblique series and a non-DICOM file in one folder; a 3rd series in a patient-named folder."""
    root = tmp_path_factory.mktemp("dicom") / "export"
    rng = np.random.default_rng(7)
    spec = {
        "axial": (
            rng.integers(0, 4000, SHAPE),
            _positions((10, 20, 30), (0, 0, 1), 2.5, 5),
            AXIAL,
            "T1 HBP 20min",
        ),
        "oblique": (
            rng.integers(0, 4000, SHAPE),
            _positions((-40, 5, 60), OBLIQUE_R[:, 2], 3.0, 5),
            OBLIQUE,
            "T1 hepatobiliary oblique",
        ),
        "other": (rng.integers(0, 4000, SHAPE), _positions((0, 0, 0), (0, 0, 1), 4.0, 5), AXIAL, "T2 HASTE"),
    }
    uids = {name: f"1.2.826.0.1.3680043.8.498.{100 + n}" for n, name in enumerate(spec)}
    for n, (name, (raw, pos, ori, desc)) in enumerate(spec.items()):
        folder = root / "DOE_JANE" if name == "other" else root
        _write_series(folder, raw, pos, ori, uids[name], seed=n, description=desc)
    (root / "notes.txt").write_text("not a DICOM file\n")
    (root / "DOE_JANE" / "report.txt").write_text("not DICOM either\n")
    return {"root": root, "spec": spec, "uids": uids}


@pytest.fixture(scope="module")
def converted(mixed_folder: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("conv") / "raw"
    record = convert_dicom(mixed_folder["root"], out, progress=False)
    return out, record


def _by_uid(record: dict) -> dict[str, dict]:
    return {s["series_uid"]: s for s in record["series"]}


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_voxels_and_affine_match_ground_truth(mixed_folder, converted, name):
    out, record = converted
    raw, positions, orientation, _ = mixed_folder["spec"][name]
    entry = _by_uid(record)[mixed_folder["uids"][name]]
    img = nib.load(out / entry["output"])
    assert np.array_equal(np.asarray(img.dataobj), raw * SLOPE + INTERCEPT)
    for ijk in [(0, 0, 0), (7, 0, 0), (0, 9, 0), (0, 0, 4), (7, 9, 4), (3, 5, 2)]:
        world = img.affine @ [*ijk, 1]
        np.testing.assert_allclose(world[:3], _expected_world(*ijk, positions, orientation), atol=1e-4)
    step = 2.5 if name == "axial" else 3.0
    np.testing.assert_allclose(entry["spacing"], [COL_SPACING, ROW_SPACING, step], atol=1e-5)
    assert entry["slices"] == 5 and entry["shape"] == [8, 10, 5]


def test_axial_affine_by_hand(mixed_folder, converted):
    out, record = converted
    entry = _by_uid(record)[mixed_folder["uids"]["axial"]]
    affine = nib.load(out / entry["output"]).affine
    # origin LPS (10, 20, 30); column 0.8 mm, row 0.7 mm, slice 2.5 mm -> RAS negates x and y
    np.testing.assert_allclose(affine @ [1, 2, 3, 1], [-10.8, -21.4, 37.5, 1], atol=1e-6)


def test_layout_and_record(mixed_folder, converted):
    out, record = converted
    assert len(record["series"]) == 3 and record["refused"] == []
    assert sorted(f["file"] for f in record["skipped_files"]) == ["<redacted>/report.txt", "notes.txt"]
    assert all(f["reason"] == "not a DICOM file" for f in record["skipped_files"])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["channel_names"] == {"0": "MRI"}
    cases = list_cases(out, require_labels=False)
    assert [c.case_id for c in cases] == ["FOSCU_0000", "FOSCU_0001", "FOSCU_0002"]
    assert json.loads((out / "conversion.json").read_text()) == record
    by_uid = _by_uid(record)
    assert by_uid[mixed_folder["uids"]["axial"]]["description"] == "T1 HBP 20min"


def test_prepare_takes_the_converted_set_once_labels_are_added(converted, tmp_path):
    from foscu.data.nifti import write_nifti
    from foscu.data.prepare import prepare_dataset

    out, record = converted
    raw = shutil.copytree(out, tmp_path / "raw")
    for entry in record["series"]:
        image = nib.load(raw / entry["output"])
        liver = np.zeros(image.shape, np.uint8)
        liver[2:6, 3:8, 1:4] = 1
        write_nifti(raw / "labelsTr" / f"{entry['case_id']}.nii.gz", liver, image.affine, label=True)
    prepared = prepare_dataset(raw, tmp_path / "prepared", (4, 4, 2), "liver", (1, 1, 1), progress=False)
    assert sorted(prepared["cases"]) == ["FOSCU_0000", "FOSCU_0001", "FOSCU_0002"]


def test_no_patient_identifiers_anywhere(mixed_folder, converted, tmp_path):
    out, record = converted
    text = (out / "conversion.json").read_text().lower() + (out / "dataset.json").read_text().lower()
    names = " ".join(str(p.relative_to(out)).lower() for p in out.rglob("*"))
    for secret in ("doe", "jane", "pid4711"):
        assert secret not in text and secret not in names
    # case ids depend on the UIDs, not on file names or folders
    moved = tmp_path / "moved"
    files = sorted(mixed_folder["root"].rglob("*.dcm"))
    for n, src in enumerate(files):  # reversed walk order, one folder per file group of 4
        target = moved / f"d{(len(files) - n) // 4}" / f"x{len(files) - n:02d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
    again = convert_dicom(moved, tmp_path / "out2", progress=False)
    assert {s["series_uid"]: s["case_id"] for s in again["series"]} == {
        s["series_uid"]: s["case_id"] for s in record["series"]
    }


def test_matches_simpleitk_on_sorted_single_series(tmp_path):
    import SimpleITK as sitk

    raw = np.random.default_rng(3).integers(0, 4000, SHAPE)
    folder = tmp_path / "series"
    _write_series(
        folder, raw, _positions((10, 20, 30), (0, 0, 1), 2.5, 5), AXIAL, "1.2.3.4.5", names="sorted"
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "sitk.nii.gz"))
    reference = nib.load(tmp_path / "sitk.nii.gz")
    record = convert_dicom(folder, tmp_path / "out", progress=False)
    ours = nib.load(tmp_path / "out" / record["series"][0]["output"])
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-4)
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))


def test_series_filter(mixed_folder, tmp_path):
    record = convert_dicom(mixed_folder["root"], tmp_path / "out", "hepatobiliary|hbp", progress=False)
    kept = {s["series_uid"] for s in record["series"]}
    assert kept == {mixed_folder["uids"]["axial"], mixed_folder["uids"]["oblique"]}
    assert [s["series_uid"] for s in record["not_selected"]] == [mixed_folder["uids"]["other"]]
    with pytest.raises(InputError, match="no series converted"):
        convert_dicom(mixed_folder["root"], tmp_path / "none", "arterial", progress=False)
    assert not (tmp_path / "none").exists()
    with pytest.raises(InputError, match="invalid regular expression"):
        convert_dicom(mixed_folder["root"], tmp_path / "bad", "(", progress=False)


def test_faulty_series_are_refused_with_reasons(tmp_path):
    root, rng = tmp_path / "dicom", np.random.default_rng(1)
    z = (0, 0, 1)
    faulty = {
        "missing slice": (_positions((0, 0, 0), z, 2.5, 6)[:2] + _positions((0, 0, 0), z, 2.5, 6)[3:], {}),
        "gantry tilt": ([np.array([0.0, 0.5 * k, 2.5 * k]) for k in range(5)], {}),
        "mixed dimensions": (_positions((0, 0, 0), z, 2.5, 5), {"sizes": {3: (8, 10)}}),
        "at least 3": (_positions((0, 0, 0), z, 2.5, 2), {}),
        "no pixel data": (_positions((0, 0, 0), z, 2.5, 5), {"drop_pixels": 2}),
        "mixed orientations": (_positions((0, 0, 0), z, 2.5, 5), {"tilted": 1}),
        "uneven slice spacing": ([np.array([0.0, 0.0, p]) for p in (0, 2.5, 5.0, 7.0, 9.5)], {}),
    }
    uids = {}
    for n, (reason, (positions, options)) in enumerate(faulty.items()):
        uids[reason] = f"1.2.826.0.1.3680043.8.498.{200 + n}"
        raw = rng.integers(0, 4000, (8, 10, len(positions)))
        _write_series(root / f"s{n}", raw, positions, AXIAL, uids[reason], seed=n, **options)
    _write_series(
        root / "good", rng.integers(0, 4000, SHAPE), _positions((0, 0, 0), z, 2.5, 5), AXIAL, "1.2.9"
    )
    record = convert_dicom(root, tmp_path / "out", progress=False)
    assert [s["series_uid"] for s in record["series"]] == ["1.2.9"]
    refused = {r["series_uid"]: r["reason"] for r in record["refused"]}
    assert set(refused) == set(uids.values())
    for reason, uid in uids.items():
        assert reason in refused[uid] and f"series {uid}" in refused[uid]
    shutil.rmtree(root / "good")  # nothing left to convert: one error naming the folder, no output
    with pytest.raises(InputError, match=r"no series converted: series .*; and 4 more$") as err:
        convert_dicom(root, tmp_path / "out2", progress=False)
    assert err.value.path == str(root) and not (tmp_path / "out2").exists()


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        convert_dicom(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        convert_dicom(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(
        InputError, match="no DICOM image series found .1 file.s. skipped: 1 not a DICOM file"
    ):
        convert_dicom(tmp_path / "text", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli(mixed_folder, tmp_path):
    res = CliRunner().invoke(
        app, ["convert", str(mixed_folder["root"]), str(tmp_path / "out"), "--series", "T2"]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out" / "imagesTr").glob("*.nii.gz"))) == 1
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["convert", str(tmp_path / "empty"), str(tmp_path / "out2")])
    assert res.exit_code == 2
    lines = [line for line in res.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "empty" in lines[0] and str(tmp_path / "empty") in lines[0], res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "out2").exists()


def test_mixed_orientation_message_prints_plain_numbers(tmp_path):
    raw = np.random.default_rng(6).integers(0, 4000, (8, 10, 5))
    _write_series(tmp_path / "s", raw, _positions((0, 0, 0), (0, 0, 1), 2.5, 5), AXIAL, "1.2.3.6", tilted=2)
    with pytest.raises(Exception, match=r"mixed orientations, \[1, 0, 0, 0, 1, 0\] and \[0\.") as err:
        convert_dicom(tmp_path / "s", tmp_path / "out", progress=False)
    assert "np.float64" not in str(err.value)
