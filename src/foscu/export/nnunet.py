"""``foscu export nnunet``: a prepared set and synthetic pairs as an nnU-Net v2 raw data set whose
cross-validation scores real cases only.

``Dataset<ID>_<name>/`` (nnU-Net's name, the id zero-padded to 3 digits)::

    imagesTr/, labelsTr/   the prepared set's training and validation cases, and the synthetic cases
    imagesTs/, labelsTs/   the prepared set's test cases
    dataset.json           nnU-Net v2 (numTraining: the cases in imagesTr), with a ``foscu_export`` record
    splits_final.json      K folds over the real cases; every synthetic case is in every fold's train list
                           and in no val list, so nnU-Net never scores a synthetic case

nnU-Net reads ``splits_final.json`` from ``nnUNet_preprocessed/Dataset<ID>_<name>/``, not from the raw
folder: copy it there, or pass ``preprocessed`` to write it there. ``nnUNetv2_plan_and_preprocess`` replaces
only its configuration folders (``nnUNetPlans_3d_fullres/`` ...), so a copy made before it stays.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from foscu.data.layout import image_path, label_path, list_cases, read_dataset_json, write_dataset_json
from foscu.errors import InputError
from foscu.runs import atomic_folder, write_json_atomic

SPLITS_FILE = "splits_final.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def dataset_name(dataset_id: int, name: str) -> str:
    """``Dataset007_Liver``: nnU-Net v2's folder name for id 1-999 and a name of letters, digits, - and _."""
    if not 1 <= dataset_id <= 999:
        raise InputError("--id", f"nnU-Net dataset ids are 1 to 999, got {dataset_id}")
    if not NAME.fullmatch(name):
        raise InputError("--name", f"{name!r}: use letters, digits, '-' and '_' (it becomes a folder name)")
    return f"Dataset{dataset_id:03d}_{name}"


def real_folds(case_ids: list[str], folds: int, seed: int) -> list[list[str]]:
    """The validation cases of each of ``folds`` folds: the real cases shuffled by ``seed``, cut in equal parts."""
    if folds < 2:
        raise InputError("--folds", f"cross-validation needs at least 2 folds, got {folds}")
    if len(case_ids) < folds:
        raise InputError(
            "--folds", f"{folds} folds need at least {folds} real cases, the set has {len(case_ids)}"
        )
    order = np.random.default_rng(seed).permutation(sorted(case_ids))
    return [sorted(str(c) for c in part) for part in np.array_split(order, folds)]


def cross_validation_splits(real: list[str], synthetic: list[str], folds: int, seed: int) -> list[dict]:
    """splits_final.json: per fold, ``val`` real cases only, ``train`` the other real cases + every synthetic."""
    out = []
    for val in real_folds(real, folds, seed):
        held = set(val)
        out.append({"train": sorted(c for c in real if c not in held) + sorted(synthetic), "val": val})
    return out


def synthetic_cases(dirs: list[Path], labels: dict[str, int]) -> list[dict[str, str]]:
    """Every case of the synthetic sets as ``syn<k>_<case>`` (k: the set's place in ``dirs``, from 1), refused
    when a set's label map is not the real one."""
    items = []
    for k, root in enumerate(dirs, start=1):
        found = {str(n): int(v) for n, v in read_dataset_json(Path(root))["labels"].items()}
        if found != labels:
            raise InputError(
                Path(root) / "dataset.json", f"label map {found} differs from the real one {labels}"
            )
        for case in list_cases(Path(root)):
            assert case.label is not None  # list_cases refuses an image without its label
            items.append(
                {"case_id": f"syn{k}_{case.case_id}", "image": str(case.image), "label": str(case.label)}
            )
    return items


def _copy(item: dict[str, str], root: Path, split: str = "Tr") -> None:
    for src, dst in (
        (item["image"], image_path(root, item["case_id"], split)),
        (item["label"], label_path(root, item["case_id"], split)),
    ):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)  # fmt: skip


def _check_free(out: Path, folder: str, preprocessed: Path | None) -> None:
    """nnU-Net finds a dataset by its id: another name with the same id (raw or preprocessed) is refused."""
    prefix = folder[: len("Dataset000")]
    for root in (out, preprocessed):
        if root is None or not root.is_dir():
            continue
        for other in root.glob(f"{prefix}_*"):
            if other.name != folder:
                raise InputError(other, f"holds this id already: nnU-Net could not tell it from {folder}")
    if preprocessed is not None and (preprocessed / folder / SPLITS_FILE).exists():
        raise InputError(preprocessed / folder / SPLITS_FILE, "exists: remove it or leave out --preprocessed")


def export_nnunet(
    data: Path,
    synthetic: list[Path],
    out: Path,
    dataset_id: int,
    name: str,
    synthetic_fraction: float | None = None,
    folds: int = 5,
    seed: int = 0,
    preprocessed: Path | None = None,
) -> dict[str, Any]:
    """Write ``out/Dataset<ID>_<name>`` (whole or not at all); returns its dataset.json ``foscu_export`` record.

    Args:
        data: the prepared set (``foscu prepare``); training + validation -> imagesTr, test -> imagesTs.
        synthetic: synthetic sets in nnU-Net layout (``foscu sample``), joining imagesTr.
        synthetic_fraction: synthetic cases per real imagesTr case, drawn by ``seed``; None: all of them.
        folds: cross-validation folds over the real cases; ``seed`` shuffles them.
        preprocessed: nnUNet_preprocessed: splits_final.json is also written to its Dataset folder.
    """
    from foscu.data.prepare import read_prepared
    from foscu.segmentation.train import mix_training

    prepared = read_prepared(Path(data))
    folder = dataset_name(dataset_id, name)
    _check_free(Path(out), folder, preprocessed)
    real = prepared.datalist["training"] + prepared.datalist["validation"]
    pool = synthetic_cases(list(synthetic), prepared.labels)
    if synthetic_fraction is not None and synthetic_fraction < 0:
        raise InputError("--synthetic-fraction", f"must be >= 0, got {synthetic_fraction}")
    drawn = (
        pool
        if synthetic_fraction is None
        else mix_training(real, pool, synthetic_fraction, seed)[len(real) :]
    )
    real_ids = [c["case_id"] for c in real]
    clash = sorted(set(real_ids) & {c["case_id"] for c in drawn})
    if clash:
        raise InputError(data, f"real case ids {clash} are also synthetic case names")
    splits = cross_validation_splits(real_ids, [c["case_id"] for c in drawn], folds, seed)
    record = {
        "prepared": str(prepared.root),
        "synthetic_sets": [str(p) for p in synthetic],
        "synthetic_fraction": synthetic_fraction,
        "seed": seed,
        "real_cases": sorted(real_ids),
        "synthetic_cases": sorted(c["case_id"] for c in drawn),
        "test_cases": sorted(c["case_id"] for c in prepared.datalist["test"]),
        "folds": folds,
    }
    with atomic_folder(Path(out) / folder) as tmp:
        for item in real + drawn:
            _copy(item, tmp)
        for item in prepared.datalist["test"]:
            _copy(item, tmp, "Ts")
        write_dataset_json(tmp, name, len(real) + len(drawn), labels=prepared.labels, foscu_export=record)
        write_json_atomic(tmp / SPLITS_FILE, splits)
        if preprocessed is not None:
            write_json_atomic(preprocessed / folder / SPLITS_FILE, splits)
    return record


def next_steps(out: Path, dataset_id: int, name: str, preprocessed: Path | None) -> list[str]:
    """The nnU-Net commands that follow the export: plan and preprocess, copy the splits, train a fold."""
    folder = dataset_name(dataset_id, name)
    copy = (
        f"# splits_final.json is already in {preprocessed / folder}"
        if preprocessed is not None
        else f"cp {Path(out) / folder / SPLITS_FILE} $nnUNet_preprocessed/{folder}/"
    )
    return [
        f"export nnUNet_raw={out} nnUNet_preprocessed={preprocessed or 'PREPROCESSED'} nnUNet_results=RESULTS",
        f"nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity",
        copy,
        f"nnUNetv2_train {dataset_id} 3d_fullres 0   # folds 0, 1, ...: each validates on real cases only",
    ]
