"""``foscu prepare``: lesion-centred ROI, min-max to [0, 1], label mapping, patient split (paper II-A).

A prepared set is the raw layout plus ``datalist.json`` (MONAI datalist: training / validation / test,
paths relative to the set), ``preparation.json`` (per case: source, centre, crop box, warnings) and
``dataset.json`` with a ``foscu_prepare`` record. The ROI enters here and nowhere else: every later stage
reads the spatial size from the prepared set (``read_prepared(...).roi``).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from foscu.data.layout import (
    Case,
    case_entry,
    image_path,
    label_path,
    list_cases,
    read_dataset_json,
    write_dataset_json,
)
from foscu.data.nifti import Volume, read_nifti, write_nifti
from foscu.errors import InputError
from foscu.labels import BACKGROUND, LABELS, TUMOR, Task, check_task, labels_for_task, liver_only
from foscu.runs import atomic_folder, write_json_atomic

SPLITS = ("training", "validation", "test")


@dataclass
class PreparedSet:
    """A prepared set as later stages see it: ROI, label map and the datalist with absolute paths."""

    root: Path
    roi: tuple[int, int, int]
    spacing: tuple[float, float, float]
    labels: dict[str, int]
    datalist: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Cases per split: train and validation rounded, test takes the rest (720 -> 504/72/144)."""
    total = sum(fractions)
    if total <= 0 or min(fractions) < 0:
        raise InputError("--split", f"fractions must be >= 0 with a positive sum, got {fractions}")
    n_train = int(round(n * fractions[0] / total))
    n_val = int(round(n * fractions[1] / total))
    n_val = min(n_val, n - n_train)
    return n_train, n_val, n - n_train - n_val


def split_patients(
    case_ids: list[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[str]]:
    """Deterministic per-seed patient split; every case lands in exactly one split."""
    order = sorted(case_ids)
    rng = np.random.default_rng(seed)
    perm = [order[i] for i in rng.permutation(len(order))]
    n_train, n_val, _ = split_counts(len(order), fractions)
    return {
        "training": sorted(perm[:n_train]),
        "validation": sorted(perm[n_train : n_train + n_val]),
        "test": sorted(perm[n_train + n_val :]),
    }


def read_centers_csv(path: Path) -> dict[str, tuple[float, float, float]]:
    """Per-case ROI centres in voxel coordinates: a CSV with columns case_id, x, y, z (e.g. ITK-SNAP)."""
    if not path.is_file():
        raise InputError(path, "centre CSV not found")
    centers: dict[str, tuple[float, float, float]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"case_id", "x", "y", "z"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)} (need case_id, x, y, z)")
        for row in reader:
            try:
                centers[row["case_id"]] = (float(row["x"]), float(row["y"]), float(row["z"]))
            except ValueError:
                raise InputError(path, f"non-numeric centre for case {row['case_id']!r}") from None
    return centers


def lesion_center(label: np.ndarray) -> tuple[tuple[float, float, float], str]:
    """Centroid of the largest tumor component; the liver's where there is no tumor; else the volume's."""
    tumor = label == TUMOR
    if tumor.any():
        components, n = ndimage.label(tumor)
        sizes = ndimage.sum(tumor, components, index=range(1, n + 1))
        biggest = int(np.argmax(sizes)) + 1
        return tuple(ndimage.center_of_mass(components == biggest)), "tumor"  # type: ignore[return-value]
    foreground = label != BACKGROUND
    if foreground.any():  # the whole organ: liver with its vessels
        return tuple(ndimage.center_of_mass(foreground)), "liver"  # type: ignore[return-value]
    return tuple((np.asarray(label.shape) - 1) / 2.0), "volume"  # type: ignore[return-value]


def crop_box(center: tuple[float, float, float], roi: tuple[int, int, int]) -> list[tuple[int, int]]:
    """[start, stop) per axis of an ROI centred on ``center`` (may leave the volume: padded later)."""
    return [
        (int(math.floor(c + 0.5)) - r // 2, int(math.floor(c + 0.5)) - r // 2 + r)
        for c, r in zip(center, roi, strict=False)
    ]


def crop_pad(array: np.ndarray, box: list[tuple[int, int]], fill: float) -> np.ndarray:
    """Crop ``box`` out of ``array``, padding with ``fill`` where the box leaves the volume."""
    out = np.full([b - a for a, b in box], fill, dtype=array.dtype)
    src, dst = [], []
    for (a, b), n in zip(box, array.shape, strict=False):
        lo, hi = max(a, 0), min(b, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = array[tuple(src)]
    return out


def minmax(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Scale to [0, 1]; a constant image becomes zeros with a warning (never NaN)."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(image, dtype=np.float32), "constant image: written as zeros"
    return ((image - lo) / (hi - lo)).astype(np.float32), None


def label_lookup(
    raw_labels: dict[str, int],
    source: Path,
    mapping: Task,
    rename: dict[str, str] | None = None,
) -> np.ndarray:
    """A lookup table raw label value -> FOSCU label value (-1: not a label), matched by name (dataset.json).

    ``mapping`` "binary" maps every foreground structure to liver. ``rename`` (from ``--map`` rules) maps
    foreign names onto FOSCU names; with it, unnamed labels become background instead of being refused.
    """
    if rename is not None:
        named = {value: rename.get(name, "background") for name, value in raw_labels.items()}
    else:
        unknown = sorted(set(raw_labels) - set(LABELS))
        if unknown:
            raise InputError(source, f"labels {unknown} are not in FOSCU's label map {sorted(LABELS)}")
        named = {value: name for name, value in raw_labels.items()}
    size = max(named) + 1
    table = np.full(size, -1, dtype=np.int16)
    for value, name in named.items():
        table[value] = LABELS[name]
    return table if mapping == "multiclass" else _liver_only_table(table)


def _liver_only_table(table: np.ndarray) -> np.ndarray:
    """A lookup table with every foreground value mapped to liver; -1 (not a label) stays."""
    out = table.copy()
    known = table >= 0
    out[known] = liver_only(table[known])
    return out


@dataclass(frozen=True)
class _Recipe:
    """What every case of a set is prepared with."""

    table: np.ndarray  # raw label value -> written label value (-1: refused)
    center_table: np.ndarray  # raw label value -> the label map the ROI centre is found on
    roi: tuple[int, int, int]
    centers: dict[str, tuple[float, float, float]] | None  # from a CSV; None: found on the label


def _load_pair(case: Case, table: np.ndarray) -> tuple[Volume, np.ndarray]:
    """Read and check an image/label pair; returns the image and the RAW label values (validated)."""
    image = read_nifti(case.image)
    assert case.label is not None
    label_vol = read_nifti(case.label, label=True)
    if image.array.shape != label_vol.array.shape:
        raise InputError(
            case.label, f"shape {label_vol.array.shape} differs from its image's {image.array.shape}"
        )
    if not np.allclose(image.affine, label_vol.affine, atol=1e-3):
        raise InputError(case.label, "affine differs from its image's (image and label are not on one grid)")
    values = np.unique(label_vol.array)
    bad = [int(v) for v in values if v < 0 or v >= len(table) or table[v] < 0]
    if bad:
        raise InputError(case.label, f"label values {bad} are not in dataset.json's label map")
    return image, label_vol.array


def _prepare_case(case: Case, recipe: _Recipe, out: Path) -> dict:
    """Crop, scale and map one case into ``out``; returns its preparation.json record."""
    image, raw_label = _load_pair(case, recipe.table)
    label = recipe.table[raw_label].astype(np.uint8)
    if recipe.centers is not None:
        if case.case_id not in recipe.centers:
            raise InputError(case.image, "case has no row in the centre CSV")
        center, center_source = recipe.centers[case.case_id], "csv"
    else:
        # the lesion is found on the full label map even for the liver-only mapping
        center, center_source = lesion_center(recipe.center_table[raw_label])
    box = crop_box(center, recipe.roi)
    warnings: list[str] = []
    if any(a < 0 or b > n for (a, b), n in zip(box, image.array.shape, strict=False)):
        warnings.append("ROI leaves the volume: padded")
    cropped = crop_pad(image.array, box, fill=float(image.array.min()))
    scaled, warn = minmax(cropped)
    if warn:
        warnings.append(warn)
    affine = image.affine.copy()
    affine[:3, 3] = (
        image.affine[:3, :3] @ np.array([a for a, _ in box], dtype=np.float64) + image.affine[:3, 3]
    )
    write_nifti(image_path(out, case.case_id), scaled, affine)
    write_nifti(label_path(out, case.case_id), crop_pad(label, box, fill=0), affine, label=True)
    return {
        "source_image": str(case.image),
        "source_label": str(case.label),
        "roi_center": [round(float(c), 2) for c in center],
        "center_from": center_source,
        "crop_box": [[a, b] for a, b in box],
        "warnings": warnings,
    }


def _prepare_cases(
    cases: list[Case], recipe: _Recipe, out: Path, skip_invalid: bool, progress: bool
) -> tuple[dict[str, dict], dict[str, str]]:
    """Prepare every case into ``out``: (records of the prepared cases, case id -> why it was skipped)."""
    from foscu.engine.tracking import progress_bar

    records: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    with progress_bar("prepare", total=len(cases), enabled=progress) as advance:
        for case in cases:
            try:
                records[case.case_id] = _prepare_case(case, recipe, out)
            except InputError as err:
                if not skip_invalid:
                    raise
                skipped[case.case_id] = str(err)
            advance()
    return records, skipped


def _recipe(
    raw: Path, raw_labels: dict[str, int], task: Task, rename: dict[str, str] | None, center: str, roi: tuple
) -> _Recipe:
    """The label tables and ROI centres of ``prepare_dataset``'s arguments (refusing bad ones)."""
    table = label_lookup(raw_labels, raw / "dataset.json", task, rename)
    center_table = label_lookup(raw_labels, raw / "dataset.json", "multiclass", rename)
    if center == "liver":
        center_table = _liver_only_table(center_table)
    centers = None if center in ("tumor", "liver") else read_centers_csv(Path(center))
    return _Recipe(table, center_table, tuple(roi), centers)  # type: ignore[arg-type]


def _label_map_record(rules: list[str], rename: dict[str, str], raw_labels: dict[str, int]) -> dict:
    return {
        "rules": list(rules),
        "mapping": rename,
        "unmapped_to_background": sorted(set(raw_labels) - set(rename)),
    }


def _write_set(
    out: Path,
    meta: dict,
    raw: Path,
    task: Task,
    settings: dict,
    records: dict[str, dict],
    skipped: dict[str, str],
    splits: dict[str, list[str]],
) -> dict:
    """dataset.json, datalist.json and preparation.json of a prepared set; returns preparation.json."""
    name = f"{meta.get('name', raw.name)} (prepared)"
    write_dataset_json(out, name, len(records), labels=labels_for_task(task), foscu_prepare=settings)
    write_json_atomic(out / "datalist.json", {k: [case_entry(c) for c in ids] for k, ids in splits.items()})
    record = {
        "settings": settings,
        "label_import": meta.get("foscu_import"),
        "cases": records,
        "skipped": skipped,
        "counts": {k: len(v) for k, v in splits.items()},
    }
    write_json_atomic(out / "preparation.json", record)
    return record


def prepare_dataset(
    raw: Path,
    out: Path,
    roi: tuple[int, int, int] = (160, 160, 64),
    center: str = "tumor",
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    labels: Task = "multiclass",
    skip_invalid: bool = False,
    progress: bool = True,
    label_map: list[str] | None = None,
) -> dict:
    """Prepare a raw nnU-Net set into ``out`` (written whole or not at all); returns preparation.json.

    Args:
        center: "tumor" (lesion centroid, liver where tumor-free), "liver", or a CSV path of voxel centres.
        labels: "multiclass" (FOSCU's five classes) or "binary" (all foreground -> liver).
        skip_invalid: record invalid cases in preparation.json instead of stopping at the first.
        label_map: ``SOURCE=TARGET`` rules (``--map``) for a raw set with foreign label names or values;
            unnamed labels become background (``foscu.data.label_import.resolve_rules``).
    """
    from foscu.data.label_import import resolve_rules

    raw, out = Path(raw), Path(out)
    task = check_task(labels, "labels")
    if min(roi) < 1:
        raise InputError("--roi", f"every axis must be >= 1, got {roi}")
    meta = read_dataset_json(raw)
    raw_labels = {str(k): int(v) for k, v in meta["labels"].items()}
    rename = resolve_rules(raw_labels, label_map) if label_map else None
    recipe = _recipe(raw, raw_labels, task, rename, center, roi)
    cases = list_cases(raw)
    with atomic_folder(out) as tmp:
        records, skipped = _prepare_cases(cases, recipe, tmp, skip_invalid, progress)
        if not records:
            raise InputError(raw, "no valid case to prepare")
        splits = split_patients(list(records), split, seed)
        spacing = read_nifti(image_path(tmp, next(iter(records)))).spacing
        settings = {
            "raw": str(raw),
            "roi": list(roi),
            "spacing": [round(s, 4) for s in spacing],
            "center": center,
            "split": list(split),
            "seed": seed,
            "labels": task,
        }
        if rename is not None:
            settings["label_map"] = _label_map_record(label_map or [], rename, raw_labels)
        record = _write_set(tmp, meta, raw, task, settings, records, skipped, splits)
    return record


def read_prepared(root: Path) -> PreparedSet:
    """Open a prepared set: the one loader every later stage reads it through."""
    root = Path(root)
    meta = read_dataset_json(root)
    settings = meta.get("foscu_prepare")
    if not isinstance(settings, dict) or "roi" not in settings:
        raise InputError(root / "dataset.json", "not a prepared set (run `foscu prepare` first)")
    path = root / "datalist.json"
    if not path.is_file():
        raise InputError(path, "missing datalist.json (run `foscu prepare` first)")
    datalist = json.loads(path.read_text())
    for name in SPLITS:
        for item in datalist.get(name, []):
            item["image"] = str(root / item["image"])
            item["label"] = str(root / item["label"])
    return PreparedSet(
        root=root,
        roi=tuple(int(r) for r in settings["roi"]),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in settings["spacing"]),  # type: ignore[arg-type]
        labels={str(k): int(v) for k, v in meta["labels"].items()},
        datalist={name: datalist.get(name, []) for name in SPLITS},
    )
