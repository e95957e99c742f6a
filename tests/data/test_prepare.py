import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from foscu.cli import app
from foscu.data.layout import write_dataset_json
from foscu.data.nifti import read_nifti, write_nifti
from foscu.data.prepare import (
    crop_box,
    crop_pad,
    lesion_center,
    minmax,
    prepare_dataset,
    read_prepared,
    split_counts,
    split_patients,
)
from foscu.errors import InputError
from foscu.labels import LIVER, TUMOR


def test_split_720_gives_504_72_144_disjoint_and_deterministic():
    ids = [f"p{i:03d}" for i in range(720)]
    assert split_counts(720, (0.7, 0.1, 0.2)) == (504, 72, 144)
    a = split_patients(ids, (0.7, 0.1, 0.2), seed=1)
    b = split_patients(ids, (0.7, 0.1, 0.2), seed=1)
    c = split_patients(ids, (0.7, 0.1, 0.2), seed=2)
    assert [len(a[k]) for k in ("training", "validation", "test")] == [504, 72, 144]
    assert a == b and a != c
    seen = a["training"] + a["validation"] + a["test"]
    assert sorted(seen) == ids  # each case in exactly one split


def test_lesion_center_is_largest_tumor_else_liver():
    label = np.zeros((20, 20, 10), np.uint8)
    label[2:12, 2:12, 2:8] = LIVER
    label[3:5, 3:5, 3:5] = TUMOR  # small tumor
    label[8:12, 8:12, 4:8] = TUMOR  # big tumor: centroid (9.5, 9.5, 5.5)
    center, source = lesion_center(label)
    assert source == "tumor" and np.allclose(center, (9.5, 9.5, 5.5))
    label[label == TUMOR] = LIVER
    center, source = lesion_center(label)
    assert source == "liver" and np.allclose(center, (6.5, 6.5, 4.5))


def test_crop_pads_where_roi_leaves_volume():
    arr = np.arange(5 * 5 * 5, dtype=np.float32).reshape(5, 5, 5)
    box = crop_box((0.0, 2.0, 4.0), (4, 4, 4))
    assert box == [(-2, 2), (0, 4), (2, 6)]
    out = crop_pad(arr, box, fill=-1)
    assert out.shape == (4, 4, 4)
    assert np.all(out[:2] == -1) and np.all(out[:, :, 3] == -1)
    assert out[2, 0, 0] == arr[0, 0, 2]


def test_minmax_scales_and_constant_becomes_zero():
    scaled, warn = minmax(np.array([2.0, 4.0, 6.0], np.float32))
    assert np.allclose(scaled, [0, 0.5, 1]) and warn is None
    flat, warn = minmax(np.full((3, 3), 7.0, np.float32))
    assert np.all(flat == 0) and not np.isnan(flat).any() and "constant" in warn


def test_prepare_tiny_phantom(tiny_phantom, tmp_path):
    out = tmp_path / "prep"
    record = prepare_dataset(
        tiny_phantom, out, roi=(24, 24, 12), split=(0.5, 0.17, 0.33), seed=0, progress=False
    )
    prepared = read_prepared(out)
    assert prepared.roi == (24, 24, 12)
    assert sum(len(v) for v in prepared.datalist.values()) == 6
    for case_id, rec in record["cases"].items():
        img = read_nifti(out / f"imagesTr/{case_id}_0000.nii.gz")
        lab = read_nifti(out / f"labelsTr/{case_id}.nii.gz", label=True)
        assert img.array.shape == (24, 24, 12) == lab.array.shape
        assert img.array.min() == 0.0 and img.array.max() == pytest.approx(1.0)
        # the ROI is centred on the lesion: the centre voxel of the crop is the recorded centre
        src = read_nifti(tiny_phantom / f"labelsTr/{case_id}.nii.gz", label=True)
        if rec["center_from"] == "tumor":
            assert (src.array == TUMOR).any()
        box = rec["crop_box"]
        assert [b - a for a, b in box] == [24, 24, 12]
        # the crop's affine maps its voxel (0,0,0) to the source voxel box start
        assert np.allclose(
            img.affine[:3, 3], src.affine[:3, :3] @ np.array([a for a, _ in box]) + src.affine[:3, 3]
        )
    assert json.loads((out / "dataset.json").read_text())["foscu_prepare"]["roi"] == [24, 24, 12]


def test_prepare_binary_maps_all_foreground_to_liver(tiny_phantom, tmp_path):
    out = tmp_path / "bin"
    prepare_dataset(tiny_phantom, out, roi=(16, 16, 8), labels="binary", progress=False)
    values = set()
    for f in (out / "labelsTr").glob("*.nii.gz"):
        values |= set(np.unique(read_nifti(f, label=True).array).tolist())
    assert values == {0, 1}


def test_prepare_centres_from_csv(tiny_phantom, tmp_path):
    centres = tmp_path / "centres.csv"
    ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (tiny_phantom / "imagesTr").glob("*.nii.gz"))
    with centres.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "x", "y", "z"])
        for cid in ids:
            w.writerow([cid, 10, 12, 5])
    record = prepare_dataset(
        tiny_phantom, tmp_path / "csv", roi=(8, 8, 4), center=str(centres), progress=False
    )
    assert all(r["crop_box"] == [[6, 14], [8, 16], [3, 7]] for r in record["cases"].values())


# ---- bad input: one line naming the file, exit 2, nothing written --------------------------------------


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _run_prepare(raw, out, *extra):
    return CliRunner().invoke(app, ["prepare", str(raw), str(out), "--roi", "16", "16", "8", *extra])


def _assert_refused(res, out, needle):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_truncated_nifti(tiny_phantom, tmp_path):
    raw = _copy(tiny_phantom, tmp_path / "raw")
    victim = raw / "imagesTr/phantom_0002_0000.nii.gz"
    victim.write_bytes(victim.read_bytes()[:300])
    _assert_refused(_run_prepare(raw, tmp_path / "out"), tmp_path / "out", "phantom_0002_0000.nii.gz")


def test_shape_mismatch(tiny_phantom, tmp_path):
    raw = _copy(tiny_phantom, tmp_path / "raw")
    write_nifti(raw / "labelsTr/phantom_0001.nii.gz", np.zeros((8, 8, 8)), np.eye(4), label=True)
    _assert_refused(_run_prepare(raw, tmp_path / "out"), tmp_path / "out", "phantom_0001.nii.gz")


def test_affine_mismatch(tiny_phantom, tmp_path):
    raw = _copy(tiny_phantom, tmp_path / "raw")
    lab = read_nifti(raw / "labelsTr/phantom_0003.nii.gz", label=True)
    write_nifti(
        raw / "labelsTr/phantom_0003.nii.gz", lab.array, lab.affine * 2 + np.diag([0, 0, 0, -1]), label=True
    )
    _assert_refused(_run_prepare(raw, tmp_path / "out"), tmp_path / "out", "affine")


def test_label_value_outside_map(tiny_phantom, tmp_path):
    raw = _copy(tiny_phantom, tmp_path / "raw")
    lab = read_nifti(raw / "labelsTr/phantom_0004.nii.gz", label=True)
    arr = lab.array.copy()
    arr[0, 0, 0] = 9
    write_nifti(raw / "labelsTr/phantom_0004.nii.gz", arr, lab.affine, label=True)
    _assert_refused(_run_prepare(raw, tmp_path / "out"), tmp_path / "out", "[9]")


def test_nan_voxels(tiny_phantom, tmp_path):
    raw = _copy(tiny_phantom, tmp_path / "raw")
    img = read_nifti(raw / "imagesTr/phantom_0000_0000.nii.gz")
    arr = img.array.copy()
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    nib.save(nib.Nifti1Image(arr, img.affine), str(raw / "imagesTr/phantom_0000_0000.nii.gz"))
    _assert_refused(_run_prepare(raw, tmp_path / "out"), tmp_path / "out", "NaN or inf")


def test_empty_and_missing_folders(tmp_path):
    _assert_refused(_run_prepare(tmp_path / "nope", tmp_path / "out"), tmp_path / "out", "nope")
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    write_dataset_json(empty, "empty", 0)
    _assert_refused(_run_prepare(empty, tmp_path / "out"), tmp_path / "out", "imagesTr")


def test_skip_invalid_records_the_case(tiny_phantom, tmp_path):
    raw = _copy(tiny_phantom, tmp_path / "raw")
    (raw / "imagesTr/phantom_0005_0000.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    res = _run_prepare(raw, out, "--skip-invalid")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "preparation.json").read_text())
    assert "phantom_0005" in record["skipped"] and "phantom_0005" not in record["cases"]


def test_prepare_dataset_refuses_unknown_labels_value(tiny_phantom, tmp_path):
    with pytest.raises(InputError, match="labels: expected binary or multiclass, got 'multi'"):
        prepare_dataset(tiny_phantom, tmp_path / "out", (8, 8, 4), labels="multi", progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
