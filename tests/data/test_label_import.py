"""Label maps from elsewhere: each public layout written here in small, imported, then prepared end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from test_dicom import AXIAL, _positions, _write_series
from typer.testing import CliRunner

from foscu.cli import app
from foscu.data.label_import import import_labels
from foscu.data.nifti import read_nifti
from foscu.data.prepare import crop_pad, prepare_dataset
from foscu.errors import InputError
from foscu.labels import HEPATIC_VEIN, LIVER, PORTAL_VEIN, TUMOR

GRID = (16, 12, 8)  # x, y, z
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _nii(path: Path, array: np.ndarray, affine=AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def _structures() -> dict[str, np.ndarray]:
    """Liver block with a vessel and a tumor inside it, and a spleen beside it (x, y, z)."""
    masks = {name: np.zeros(GRID, bool) for name in ("liver", "vessel", "hv", "tumor", "spleen")}
    masks["liver"][2:10, 2:10, 1:7] = True
    masks["vessel"][4:6, 3:9, 2:5] = True
    masks["hv"][7:9, 3:5, 2:5] = True
    masks["tumor"][6:8, 6:9, 4:6] = True
    masks["spleen"][12:15, 2:6, 2:6] = True
    return masks


def _image() -> np.ndarray:
    return np.random.default_rng(0).normal(100, 10, GRID).astype(np.float32)


def _prepare(raw: Path, out: Path, *rules: str) -> dict:
    return prepare_dataset(raw, out, (8, 8, 4), "tumor", (1, 0, 0), progress=False, label_map=list(rules))


def _label(root: Path, case_id: str) -> np.ndarray:
    return read_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label=True).array


# ---- generic mapping on a raw set with foreign names: prepare --map --------------------------------------


def test_prepare_map_by_name_and_value(tiny_phantom, tmp_path):
    raw = shutil.copytree(tiny_phantom, tmp_path / "raw")
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "Liver": 1, "portal_vein_and_splenic_vein": 2, "hv": 3, "cancer": 4}
    (raw / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="not in FOSCU's label map"):  # no rules: refused as before
        prepare_dataset(raw, tmp_path / "refused", (8, 8, 4), progress=False)
    rules = ["liver=liver", "portal_vein_and_splenic_vein=portal_vein", "4=tumor"]
    record = prepare_dataset(raw, tmp_path / "out", (32, 32, 16), progress=False, label_map=rules)
    case = next(c for c, r in record["cases"].items() if r["center_from"] == "tumor")
    source = read_nifti(raw / "labelsTr" / f"{case}.nii.gz", label=True).array
    expected = np.where(source == 3, 0, source)  # "hv" named by no rule: background
    expected = crop_pad(expected, [tuple(b) for b in record["cases"][case]["crop_box"]], fill=0)
    assert (source == 3).any() and (expected == TUMOR).any()
    assert np.array_equal(_label(tmp_path / "out", case), expected)
    label_map = json.loads((tmp_path / "out" / "preparation.json").read_text())["settings"]["label_map"]
    assert label_map["mapping"] == {
        "Liver": "liver",
        "portal_vein_and_splenic_vein": "portal_vein",
        "cancer": "tumor",
    }
    assert label_map["unmapped_to_background"] == ["background", "hv"]
    res = CliRunner().invoke(app, ["prepare", str(raw), str(tmp_path / "x"), "--map", "lvr=liver"])
    assert res.exit_code == 2 and "'lvr' names no structure" in res.stderr and not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, ["prepare", str(raw), str(tmp_path / "x"), "--map", "liver=kidney"])
    assert res.exit_code == 2 and "'kidney' is not a FOSCU label" in res.stderr


# ---- Medical Segmentation Decathlon ---------------------------------------------------------------------


def _write_msd(root: Path, labels: dict[str, str], values: dict[str, int]) -> None:
    masks = _structures()
    (root).mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps({"name": root.name, "labels": labels, "modality": {"0": "CT"}})
    )
    for n in range(2):
        label = np.zeros(GRID, np.uint8)
        for name, value in values.items():
            label[masks[name]] = value
        _nii(root / "imagesTr" / f"case_{n}.nii.gz", _image())
        _nii(root / "labelsTr" / f"case_{n}.nii.gz", label)
    (root / "imagesTr" / "._case_0.nii.gz").write_bytes(b"\0\5\26\7 macOS resource fork")


def test_msd_task03_liver(tmp_path):
    _write_msd(
        tmp_path / "Task03_Liver", {"0": "background", "1": "liver", "2": "cancer"}, {"liver": 1, "tumor": 2}
    )
    record = import_labels("msd", tmp_path / "Task03_Liver", tmp_path / "raw")
    assert record["mapping"] == {"liver": "liver", "cancer": "tumor"} and sorted(record["cases"]) == [
        "case_0",
        "case_1",
    ]
    masks = _structures()
    label = _label(tmp_path / "raw", "case_0")
    assert np.all(label[masks["tumor"]] == TUMOR) and np.all(label[masks["liver"] & ~masks["tumor"]] == LIVER)
    assert record["cases"]["case_0"]["classes_absent"] == ["portal_vein", "hepatic_vein"]
    prepared = _prepare(tmp_path / "raw", tmp_path / "prep")
    assert (
        prepared["label_import"]["format"] == "msd" and prepared["cases"]["case_0"]["center_from"] == "tumor"
    )


def test_msd_task08_hepatic_vessel(tmp_path):
    root = tmp_path / "Task08_HepaticVessel"
    _write_msd(root, {"0": "background", "1": "Vessel", "2": "Tumour"}, {"vessel": 1, "tumor": 2})
    default = import_labels("msd", root, tmp_path / "raw")
    assert default["mapping"] == {"tumour": "tumor"} and default["unmapped_to_background"] == [
        "background",
        "vessel",
    ]
    chosen = import_labels("msd", root, tmp_path / "raw2", ["vessel=portal_vein"])
    label = _label(tmp_path / "raw2", "case_1")
    assert chosen["mapping"]["vessel"] == "portal_vein" and set(np.unique(label)) == {0, PORTAL_VEIN, TUMOR}
    _prepare(tmp_path / "raw2", tmp_path / "prep")


# ---- TotalSegmentator ------------------------------------------------------------------------------------


def test_totalsegmentator_folder_of_masks_and_multilabel(tmp_path):
    root, masks = tmp_path / "totalseg", _structures()
    ts_names = {
        "liver": "liver",
        "vessel": "portal_vein_and_splenic_vein",
        "spleen": "spleen",
        "hv": "inferior_vena_cava",
    }
    _nii(root / "s0000" / "ct.nii.gz", _image())
    for ours, theirs in ts_names.items():
        _nii(root / "s0000" / "segmentations" / f"{theirs}.nii.gz", masks[ours].astype(np.uint8))
    classes = {"1": "spleen", "5": "liver", "64": "portal_vein_and_splenic_vein", "63": "inferior_vena_cava"}
    multi = np.zeros(GRID, np.uint8)
    for value, name in classes.items():
        multi[masks[next(k for k, v in ts_names.items() if v == name)]] = int(value)
    _nii(root / "s0001" / "mri.nii.gz", _image())
    _nii(root / "s0001" / "segmentations.nii.gz", multi)
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    res = CliRunner().invoke(
        app,
        [
            "import",
            "totalsegmentator",
            str(root),
            str(tmp_path / "raw"),
            "--classes",
            str(tmp_path / "classes.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    for case in ("s0000", "s0001"):
        label = _label(tmp_path / "raw", case)
        assert set(np.unique(label)) == {0, LIVER, PORTAL_VEIN}  # no hepatic vein, no tumor: background
        assert np.all(label[masks["vessel"]] == PORTAL_VEIN) and not label[masks["spleen"]].any()
    _prepare(tmp_path / "raw", tmp_path / "prep")
    res = CliRunner().invoke(app, ["import", "totalsegmentator", str(root), str(tmp_path / "raw3")])
    assert res.exit_code == 2 and "needs --classes" in res.stderr and not (tmp_path / "raw3").exists()


# total_mr's numbering (TotalSegmentator map_to_binary.py) and `total` v2's (CT): same names, other values
TOTAL_MR = {1: "spleen", 5: "liver", 24: "inferior_vena_cava", 25: "portal_vein_and_splenic_vein"}
TOTAL_CT = {1: "spleen", 5: "liver", 63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein"}
OURS = {
    "spleen": "spleen",
    "liver": "liver",
    "inferior_vena_cava": "hv",
    "portal_vein_and_splenic_vein": "vessel",
}


def _caret_xml(table: dict[int, str]) -> bytes:
    """A label table laid out as TotalSegmentator's --ml header extension (CaretExtension XML)."""
    labels = "".join(
        f'<Label Key="{value}" Red="0.5" Green="0.25" Blue="1.0" Alpha="1"><![CDATA[{name}]]></Label>\n'
        for value, name in table.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <Date><![CDATA[2024-01-01T00:00:00]]></Date>'
        f' <VolumeInformation Index="0"> <LabelTable>\n{labels}</LabelTable> <StudyMetaDataLinkSet>'
        "</StudyMetaDataLinkSet> <VolumeType><![CDATA[Label]]></VolumeType> </VolumeInformation>"
        "</CaretExtension>\n    "
    ).encode()


def _ts_case(folder: Path, table: dict[int, str], xml: bytes | None = None, code: int = 0) -> np.ndarray:
    """One ``--ml`` case: image + uint8 segmentations.nii.gz, its table in a header extension; the array."""
    masks = _structures()
    multi = np.zeros(GRID, np.uint8)
    for value, name in table.items():
        multi[masks[OURS[name]]] = value
    _nii(folder / "mri.nii.gz", _image())
    img = nib.Nifti1Image(multi, AFFINE)
    if xml is not None or table:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(code, xml or _caret_xml(table)))
    nib.save(img, str(folder / "segmentations.nii.gz"))
    return multi


def _import_ts(root: Path, out: Path, *options: str):
    return CliRunner().invoke(app, ["import", "totalsegmentator", str(root), str(out), *options])


def _refused(res, out: Path) -> str:
    """The one stderr line of a refusal (exit 2, no output folder)."""
    assert res.exit_code == 2 and not out.exists(), res.output
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr


def test_totalsegmentator_header_table_without_classes(tmp_path):
    root, masks = tmp_path / "ts", _structures()
    multi = {
        "mr0": _ts_case(root / "mr0", TOTAL_MR),  # code 0, as TotalSegmentator writes it
        "ct0": _ts_case(root / "ct0", TOTAL_CT, code=30),  # nibabel's "caret" code: found by content
    }
    assert nib.load(str(root / "mr0" / "segmentations.nii.gz")).header.extensions[0].get_code() == 0
    res = _import_ts(root, tmp_path / "raw")
    assert res.exit_code == 0, res.output
    by_hand = {"mr0": {5: LIVER, 25: PORTAL_VEIN}, "ct0": {5: LIVER, 64: PORTAL_VEIN}}  # IVC, spleen: 0
    for case, values in by_hand.items():
        expected = np.zeros(GRID, np.uint8)
        for value, foscu in values.items():
            expected[multi[case] == value] = foscu
        assert np.array_equal(_label(tmp_path / "raw", case), expected)
        assert not _label(tmp_path / "raw", case)[masks["hv"] & ~masks["vessel"]].any()
    record = json.loads((tmp_path / "raw" / "import.json").read_text())
    assert record["label_tables"] == {"header": 2} and record["classes_file"] is None
    assert {c["label_table"] for c in record["cases"].values()} == {"header"}
    assert record["mapping"] == {"liver": "liver", "portal_vein_and_splenic_vein": "portal_vein"}
    assert record["unmapped_to_background"] == ["inferior_vena_cava", "spleen"]
    meta = json.loads((tmp_path / "raw" / "dataset.json").read_text())
    assert meta["foscu_import"]["label_tables"] == {"header": 2}
    _prepare(tmp_path / "raw", tmp_path / "prep")


def test_totalsegmentator_classes_checked_against_header(tmp_path):
    root = tmp_path / "ts"
    _ts_case(root / "mr0", TOTAL_MR)
    agree = tmp_path / "agree.json"
    agree.write_text(json.dumps({"5": "Liver", "25": "portal_vein_and_splenic_vein"}))  # a part of the table
    record = import_labels("totalsegmentator", root, tmp_path / "raw", classes=agree)
    assert record["label_tables"] == {"header": 1} and record["classes_file"] == str(agree)
    assert "spleen" in record["unmapped_to_background"]  # the table's classes, not only the map's
    ct_map = tmp_path / "ct.json"  # total v2's (CT) numbering given for an MR file
    ct_map.write_text(json.dumps({str(v): n for v, n in TOTAL_CT.items()}))
    err = _refused(_import_ts(root, tmp_path / "x", "--classes", str(ct_map)), tmp_path / "x")
    assert "value 63 is 'inferior_vena_cava' in --classes" in err and "but nothing in the file's own" in err
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps({"5": "liver", "25": "inferior_vena_cava"}))
    err = _refused(_import_ts(root, tmp_path / "x", "--classes", str(swapped)), tmp_path / "x")
    assert "segmentations.nii.gz: value 25 is 'inferior_vena_cava' in --classes" in err
    assert "but 'portal_vein_and_splenic_vein' in the file's own label table" in err


def test_totalsegmentator_multilabel_without_table(tmp_path):
    root = tmp_path / "ts"
    multi = _ts_case(root / "mr0", TOTAL_MR)
    nib.save(nib.Nifti1Image(multi, AFFINE), str(root / "mr0" / "segmentations.nii.gz"))  # no extension
    err = _refused(_import_ts(root, tmp_path / "x"), tmp_path / "x")
    assert "segmentations.nii.gz: a multi-label file needs --classes (its header holds no label table)" in err
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({str(v): n for v, n in TOTAL_MR.items()}))
    record = import_labels("totalsegmentator", root, tmp_path / "raw", classes=classes)
    assert record["label_tables"] == {"--classes": 1} and record["cases"]["mr0"]["label_table"] == "--classes"
    assert (_label(tmp_path / "raw", "mr0") == PORTAL_VEIN).any()
    shutil.rmtree(root / "mr0")
    _nii(root / "s0" / "ct.nii.gz", _image())
    _nii(root / "s0" / "segmentations" / "liver.nii.gz", _structures()["liver"].astype(np.uint8))
    err = _refused(_import_ts(root, tmp_path / "y", "--classes", str(classes)), tmp_path / "y")
    assert "--classes given, but no case has a multi-label segmentations file" in err
    record = import_labels("totalsegmentator", root, tmp_path / "raw2")
    assert record["label_tables"] == {"per-structure files": 1}


@pytest.mark.parametrize(
    "xml, problem",
    [
        (_caret_xml(TOTAL_MR)[:-40], "not well-formed XML"),  # cut inside the closing tags
        (b"<CaretExtension><VolumeInformation/></CaretExtension>", "no CaretExtension/VolumeInformation"),
        (_caret_xml({5: "liver"}).replace(b'Key="5"', b'Key="five"'), "expected an integer Key"),
        (_caret_xml({5: "liver", 6: "Liver"}), "names 'liver' or value 6 twice"),
        (
            b'<!DOCTYPE r [<!ENTITY a "aaaa">]><CaretExtension>&a;</CaretExtension>',
            "DOCTYPE/ENTITY declaration",
        ),
    ],
    ids=["truncated", "no-label-table", "key-not-integer", "name-twice", "entity-declaration"],
)
def test_totalsegmentator_malformed_table_refused(tmp_path, xml, problem):
    root = tmp_path / "ts"
    _ts_case(root / "mr0", TOTAL_MR, xml=xml)
    err = _refused(_import_ts(root, tmp_path / "x"), tmp_path / "x")
    assert f"{root / 'mr0' / 'segmentations.nii.gz'}: " in err and problem in err


def test_totalsegmentator_value_outside_header_table_refused(tmp_path):
    root = tmp_path / "ts"
    _ts_case(root / "mr0", TOTAL_MR, xml=_caret_xml({5: "liver", 24: "inferior_vena_cava", 1: "spleen"}))
    err = _refused(_import_ts(root, tmp_path / "x"), tmp_path / "x")
    assert "label values [25] are not in its header's label table" in err


def test_totalsegmentator_uncompressed_file_with_two_tables_refused(tmp_path):
    root = tmp_path / "ts"
    _ts_case(root / "mr0", TOTAL_MR)
    img = nib.load(str(root / "mr0" / "segmentations.nii.gz"))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, _caret_xml(TOTAL_CT)))
    nib.save(img, str(root / "mr0" / "segmentations.nii"))  # -o segmentations.nii
    (root / "mr0" / "segmentations.nii.gz").unlink()
    err = _refused(_import_ts(root, tmp_path / "x"), tmp_path / "x")
    assert "segmentations.nii: 2 label tables in its header extensions" in err


def test_totalsegmentator_own_writer_total_mr(tmp_path):
    """Where TotalSegmentator is installed: a file its own --ml writer labels, with its total_mr table."""
    writer = pytest.importorskip("totalsegmentator.nifti_ext_header")
    class_map = pytest.importorskip("totalsegmentator.map_to_binary").class_map["total_mr"]
    root = tmp_path / "ts"
    multi = _ts_case(root / "p01", {})
    for value, name in TOTAL_MR.items():
        assert class_map[value] == name  # the numbers this file's other tests use
        multi[_structures()[OURS[name]]] = value
    img = writer.add_label_map_to_nifti(nib.Nifti1Image(multi, AFFINE), class_map)
    nib.save(img, str(root / "p01" / "segmentations.nii.gz"))
    record = import_labels("totalsegmentator", root, tmp_path / "raw")
    assert (
        record["label_tables"] == {"header": 1}
        and len(record["unmapped_to_background"]) == len(class_map) - 2
    )
    assert np.array_equal(
        _label(tmp_path / "raw", "p01"),
        np.where(multi == 5, LIVER, 0) + np.where(multi == 25, PORTAL_VEIN, 0),
    )


# ---- 3D-IRCADb -------------------------------------------------------------------------------------------


def _dicom_folder(folder: Path, volume: np.ndarray, uid: str) -> None:
    """volume (columns, rows, slices) as IRCADb ships it: image_0, image_1, ... without extension."""
    _write_series(
        folder, volume, _positions((-20, 10, 5), (0, 0, 1), 3.0, volume.shape[2]), AXIAL, uid, names="sorted"
    )
    for k, path in enumerate(sorted(folder.glob("slice_*.dcm"))):
        path.rename(folder / f"image_{k}")


def test_ircadb_per_structure_masks(tmp_path):
    patient, masks = tmp_path / "3Dircadb1" / "3Dircadb1.7", _structures()
    raw_image = np.random.default_rng(1).integers(0, 3000, GRID)
    _dicom_folder(patient / "PATIENT_DICOM", raw_image, "1.2.3.40")
    tumor2 = np.zeros(GRID, bool)
    tumor2[3:5, 7:9, 1:3] = True
    structures = {
        "liver": masks["liver"],
        "portalvein": masks["vessel"],
        "venoussystem": masks["hv"],
        "livertumor01": masks["tumor"],
        "livertumor02": tumor2,
        "bone": masks["spleen"],
    }
    for n, (name, mask) in enumerate(structures.items()):
        _dicom_folder(patient / "MASKS_DICOM" / name, mask.astype(np.uint16) * 255, f"1.2.3.4{n}")
    record = import_labels("ircadb", tmp_path / "3Dircadb1", tmp_path / "raw")
    assert record["unmapped_to_background"] == ["bone"] and list(record["cases"]) == ["ircadb_7"]
    label = read_nifti(tmp_path / "raw" / "labelsTr" / "ircadb_7.nii.gz", label=True)
    assert np.all(label.array[masks["tumor"] | tumor2] == TUMOR)
    assert np.all(label.array[masks["hv"]] == HEPATIC_VEIN) and np.all(
        label.array[masks["vessel"] & ~(masks["tumor"] | tumor2)] == PORTAL_VEIN
    )
    image = read_nifti(tmp_path / "raw" / "imagesTr" / "ircadb_7_0000.nii.gz")
    np.testing.assert_allclose(image.array, raw_image * 2.5 - 100.0)  # the series' rescale (test_dicom)
    assert np.allclose(label.affine, image.affine)
    _prepare(tmp_path / "raw", tmp_path / "prep")


# ---- CHAOS MR --------------------------------------------------------------------------------------------


def test_chaos_png_masks_paired_by_slice(tmp_path):
    series, masks = tmp_path / "MR" / "3" / "T2SPIR", _structures()
    raw_image = np.random.default_rng(2).integers(0, 3000, GRID)
    _write_series(
        series / "DICOM_anon", raw_image, _positions((0, 0, 0), (0, 0, 1), 3.0, GRID[2]), AXIAL, "1.2.3.5"
    )
    by_position = {}
    for path in (series / "DICOM_anon").glob("*.dcm"):
        k = int(round(float(pydicom.dcmread(path).ImagePositionPatient[2]) / 3.0))
        stem = f"IMG-0002-{k * 7 % 11:05d}"  # names in no slice order
        path.rename(path.with_name(stem + ".dcm"))
        by_position[k] = stem
    (series / "Ground").mkdir()
    for k, stem in by_position.items():
        grey = np.zeros(GRID[:2], np.uint8)
        grey[masks["liver"][:, :, k]] = 63
        grey[masks["spleen"][:, :, k]] = 252
        Image.fromarray(grey.T).save(series / "Ground" / f"{stem}.png")  # PNG rows x columns
    res = CliRunner().invoke(app, ["import", "chaos", str(tmp_path / "MR"), str(tmp_path / "raw")])
    assert res.exit_code == 0, res.output
    label = _label(tmp_path / "raw", "chaos_3")
    assert np.array_equal(label, masks["liver"].astype(np.uint8) * LIVER)  # spleen band -> background
    _prepare(tmp_path / "raw", tmp_path / "prep")
    next((series / "Ground").glob("*.png")).unlink()
    res = CliRunner().invoke(app, ["import", "chaos", str(tmp_path / "MR"), str(tmp_path / "raw2")])
    assert res.exit_code == 2 and "has no mask Ground/" in res.stderr and not (tmp_path / "raw2").exists()
