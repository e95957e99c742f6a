"""nnU-Net v2 raw layout: cases found and paired by id, dataset.json written and read, bad sets refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foscu.data.layout import (
    case_entry,
    case_files,
    image_path,
    label_path,
    list_cases,
    read_dataset_json,
    write_dataset_json,
)
from foscu.data.nifti import write_nifti
from foscu.errors import InputError
from foscu.labels import LABELS


def _write_set(root, cases, labelled, split="Tr"):
    for case in cases:
        write_nifti(image_path(root, case, split), np.zeros((2, 2, 2)), np.eye(4))
        if case in labelled:
            write_nifti(label_path(root, case, split), np.zeros((2, 2, 2)), np.eye(4), label=True)


def test_paths_of_a_case():
    assert image_path("set", "liver_007").as_posix() == "set/imagesTr/liver_007_0000.nii.gz"
    assert label_path("set", "liver_007").as_posix() == "set/labelsTr/liver_007.nii.gz"
    assert image_path("set", "liver_007", "Ts").as_posix() == "set/imagesTs/liver_007_0000.nii.gz"
    assert case_entry("a") == {
        "case_id": "a",
        "image": "imagesTr/a_0000.nii.gz",
        "label": "labelsTr/a.nii.gz",
    }


def test_cases_are_paired_and_sorted_by_id(tmp_path):
    _write_set(tmp_path, ["b", "a", "c"], {"a", "b", "c"})
    cases = list_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b", "c"]
    assert (cases[0].image, cases[0].label) == (image_path(tmp_path, "a"), label_path(tmp_path, "a"))


def test_an_unlabelled_image_is_refused_unless_labels_are_optional(tmp_path):
    _write_set(tmp_path, ["a", "b"], {"a"})
    with pytest.raises(InputError, match="has no label file labelsTr/b.nii.gz") as err:
        list_cases(tmp_path)
    assert err.value.path == str(image_path(tmp_path, "b"))
    cases = list_cases(tmp_path, require_labels=False)
    assert [(c.case_id, c.label) for c in cases] == [("a", label_path(tmp_path, "a")), ("b", None)]


def test_a_missing_or_empty_set_is_refused(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        list_cases(tmp_path / "absent")
    with pytest.raises(InputError, match="no imagesTr/ folder"):
        list_cases(tmp_path)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "a.nii.gz").write_bytes(b"")  # no _0000: not a case
    with pytest.raises(InputError, match="no images named <case>_0000.nii.gz"):
        list_cases(tmp_path)


def test_case_files_in_a_set_root_and_in_a_plain_folder(tmp_path):
    root = tmp_path / "set"
    _write_set(root, ["a", "b"], {"a", "b"})
    _write_set(root, ["c"], set(), split="Ts")
    assert case_files(root, "images") == {
        "a": image_path(root, "a"),
        "b": image_path(root, "b"),
        "c": image_path(root, "c", "Ts"),
    }
    assert case_files(root, "labels") == {"a": label_path(root, "a"), "b": label_path(root, "b")}
    plain = tmp_path / "plain"
    for name in ("x.nii.gz", "y.nii"):
        write_nifti(plain / name, np.zeros((2, 2, 2)), np.eye(4))
    expected = {"x": plain / "x.nii.gz", "y": plain / "y.nii"}
    assert case_files(plain, "images") == expected == case_files(plain, "labels")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no labels"):
        case_files(tmp_path / "empty", "labels")


def test_dataset_json_round_trip_and_refusals(tmp_path):
    write_dataset_json(tmp_path, "synthetic", 3, source="foscu sample")
    meta = read_dataset_json(tmp_path)
    assert meta == {
        "name": "synthetic",
        "channel_names": {"0": "MRI"},
        "labels": LABELS,
        "numTraining": 3,
        "file_ending": ".nii.gz",
        "source": "foscu sample",
    }
    path = tmp_path / "dataset.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_dataset_json(tmp_path)
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(InputError, match="has no 'labels' mapping") as err:
        read_dataset_json(tmp_path)
    assert err.value.path == str(path)
    path.unlink()
    with pytest.raises(InputError, match="missing dataset.json"):
        read_dataset_json(tmp_path)
