"""nnU-Net v2 raw layout: ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from foscu.errors import InputError
from foscu.labels import LABELS
from foscu.runs import write_json_atomic

FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"


@dataclass(frozen=True)
class Case:
    """One case of a raw set: its id, image path and (optional) label path."""

    case_id: str
    image: Path
    label: Path | None


def images_dir(root: Path, split: str = "Tr") -> Path:
    """The images folder of an nnU-Net set: ``imagesTr`` (``split`` "Ts": the test images)."""
    return Path(root) / f"images{split}"


def image_path(root: Path, case_id: str, split: str = "Tr") -> Path:
    """A case's image (channel 0): ``<root>/imagesTr/<case>_0000.nii.gz``."""
    return images_dir(root, split) / f"{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}"


def label_path(root: Path, case_id: str, split: str = "Tr") -> Path:
    """A case's label: ``<root>/labelsTr/<case>.nii.gz``."""
    return Path(root) / f"labels{split}" / f"{case_id}{FILE_ENDING}"


def case_entry(case_id: str) -> dict[str, str]:
    """A case as a MONAI datalist item: its id and image/label paths relative to the set's root."""
    return {
        "case_id": case_id,
        "image": image_path(Path(), case_id).as_posix(),
        "label": label_path(Path(), case_id).as_posix(),
    }


def write_dataset_json(
    root: Path, name: str, num_training: int, labels: dict[str, int] | None = None, **extra: object
) -> None:
    """dataset.json as nnU-Net v2 reads it (channel 0 is the MRI)."""
    meta = {
        "name": name,
        "channel_names": {"0": "MRI"},
        "labels": dict(labels or LABELS),
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        **extra,
    }
    write_json_atomic(Path(root) / "dataset.json", meta)


def read_dataset_json(root: Path) -> dict:
    """A set's dataset.json, refused (InputError) when missing, not JSON or without a label map."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise InputError(path, "missing dataset.json (expected an nnU-Net v2 raw data set)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    if not isinstance(meta.get("labels"), dict):
        raise InputError(path, "has no 'labels' mapping")
    return meta


def list_cases(root: Path, require_labels: bool = True) -> list[Case]:
    """The cases of a raw set, sorted by id; refuses an empty/missing folder or an unpaired file."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    images = images_dir(root)
    if not images.is_dir():
        raise InputError(root, f"no {images.name}/ folder (expected nnU-Net v2 raw layout)")
    cases: list[Case] = []
    for img in sorted(images.glob(f"*{CHANNEL_SUFFIX}{FILE_ENDING}")):
        case_id = img.name[: -len(CHANNEL_SUFFIX + FILE_ENDING)]
        lab = label_path(root, case_id)
        if not lab.is_file():
            if require_labels:
                raise InputError(img, f"has no label file {lab.relative_to(root)}")
        cases.append(Case(case_id, img, lab if lab.is_file() else None))
    if not cases:
        raise InputError(images, f"no images named <case>{CHANNEL_SUFFIX}{FILE_ENDING}")
    return cases


def _nifti_files(folder: Path, suffix: str) -> dict[str, Path]:
    """``<case><suffix>.nii(.gz)`` in ``folder`` -> {case: path}."""
    files = {}
    for ending in (FILE_ENDING, ".nii"):
        for path in sorted(folder.glob(f"*{suffix}{ending}")):
            files[path.name[: -len(suffix + ending)]] = path
    return files


def case_files(folder: Path, kind: Literal["images", "labels"]) -> dict[str, Path]:
    """Case id -> NIfTI file in an nnU-Net set root (``<kind>Tr/``, ``<kind>Ts/``) or in a plain folder.

    Images are ``<case>_0000.nii.gz`` (a plain folder without such names may hold ``<case>.nii.gz``);
    labels are ``<case>.nii.gz``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    subdirs = [folder / f"{kind}{s}" for s in ("Tr", "Ts") if (folder / f"{kind}{s}").is_dir()]
    suffix = CHANNEL_SUFFIX if kind == "images" else ""
    files: dict[str, Path] = {}
    for sub in subdirs or [folder]:
        files.update(_nifti_files(sub, suffix))
    if not files and not subdirs and kind == "images":
        files = _nifti_files(folder, "")
    if not files:
        raise InputError(
            folder, f"no {kind} (expected {kind}Tr/<case>{suffix}{FILE_ENDING} or *{FILE_ENDING})"
        )
    return files
