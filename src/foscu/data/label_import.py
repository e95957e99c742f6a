"""``foscu import`` and ``foscu prepare --map``: label maps from elsewhere onto FOSCU's five classes.

A rule ``SOURCE=TARGET`` maps a foreign structure, by name (shell pattern, case-insensitive, e.g.
``livertumor*``) or by value (``2``), onto a FOSCU label name; whatever no rule names becomes background.
Where structures overlap, the higher FOSCU value wins (tumor over vessels over liver).

Formats, each read in its published layout (``FORMATS``):
- ``msd``: Medical Segmentation Decathlon Task03_Liver / Task08_HepaticVessel (dataset.json names);
- ``totalsegmentator``: case folders with an image and ``segmentations/<structure>.nii.gz`` masks, or a
  multi-label ``segmentations.nii.gz`` named by the label table in its header (``totalseg_table``) or,
  without one, by a class map (``--classes``);
- ``ircadb``: 3D-IRCADb ``3Dircadb1.N/PATIENT_DICOM`` + ``MASKS_DICOM/<structure>/`` DICOM masks;
- ``chaos``: CHAOS MR ``<patient>/T2SPIR/DICOM_anon`` + one ``Ground/*.png`` mask per slice.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foscu.data.layout import image_path, label_path, write_dataset_json
from foscu.data.nifti import read_nifti, write_nifti
from foscu.data.totalseg_table import check_agreement, read_label_table
from foscu.errors import InputError
from foscu.labels import LABELS
from foscu.runs import atomic_folder, write_json_atomic

# default rules per format; a default that names no structure of the data is dropped silently
DEFAULT_RULES: dict[str, list[str]] = {
    "msd": ["liver=liver", "cancer=tumor", "tumour=tumor", "tumor=tumor"],
    "totalsegmentator": ["liver=liver", "portal_vein_and_splenic_vein=portal_vein", "liver_tumor=tumor"],
    "ircadb": ["liver=liver", "portalvein=portal_vein", "venoussystem=hepatic_vein", "livertumor*=tumor"],
    "chaos": ["liver=liver"],
}
CHAOS_BANDS = {"liver": (55, 70), "right_kidney": (110, 135), "left_kidney": (175, 200), "spleen": (240, 255)}
CHAOS_SEQUENCES = ("T2SPIR", "T1DUAL/InPhase", "T1DUAL/OutPhase")
MULTILABEL_NAMES = ("segmentations.nii.gz", "segmentations.nii")  # TotalSegmentator --ml -o segmentations...


@dataclass
class ForeignCase:
    """One case as a format delivers it: image grid and one boolean mask per foreign structure."""

    case_id: str
    image: np.ndarray
    affine: np.ndarray
    masks: dict[str, np.ndarray]  # structure name -> bool (X, Y, Z) on the image grid
    source: str
    label_table: str | None = None  # where the structure names came from, for formats that vary


def parse_rules(rules: list[str], option: str = "--map") -> list[tuple[str, str]]:
    """``["liver=liver", "2=tumor"]`` -> [(source, FOSCU name)]; refuses a target FOSCU does not have."""
    parsed = []
    for rule in rules:
        source, sep, target = rule.partition("=")
        source, target = source.strip(), target.strip().lower()
        if not sep or not source or not target:
            raise InputError(option, f"expected SOURCE=TARGET, got {rule!r}")
        if target not in LABELS:
            raise InputError(option, f"{rule!r}: {target!r} is not a FOSCU label ({', '.join(LABELS)})")
        parsed.append((source, target))
    return parsed


def resolve_rules(
    structures: dict[str, int], rules: list[str], defaults: list[str] | None = None, option: str = "--map"
) -> dict[str, str]:
    """Foreign structure name -> FOSCU label name, for every structure a rule names (first rule wins).

    ``structures`` maps names to values (a value may be matched as ``2=tumor``). A user rule that matches
    no structure is refused (a typo must not silently drop a class); unmatched defaults are dropped.
    """
    mapping: dict[str, str] = {}
    for strict, rule_list in ((True, rules), (False, defaults or [])):
        for source, target in parse_rules(rule_list, option):
            hits = [
                name
                for name, value in structures.items()
                if fnmatch.fnmatch(name.lower(), source.lower()) or source == str(value)
            ]
            if not hits and strict:
                known = ", ".join(f"{n}={v}" for n, v in structures.items())
                raise InputError(option, f"{source!r} names no structure of the data (it has {known})")
            for name in hits:
                mapping.setdefault(name, target)
    return mapping


def paint(masks: dict[str, np.ndarray], mapping: dict[str, str], shape: tuple[int, ...]) -> np.ndarray:
    """FOSCU label volume from foreign masks: lowest FOSCU value first, so tumor ends on top."""
    label = np.zeros(shape, np.uint8)
    for name in sorted(mapping, key=lambda n: LABELS[mapping[n]]):
        if name in masks:
            label[masks[name]] = LABELS[mapping[name]]
    return label


def _masks_from_multilabel(array: np.ndarray, classes: dict[str, int]) -> dict[str, np.ndarray]:
    return {name: array == value for name, value in classes.items() if value != 0}


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files in a folder, without macOS ``._`` shadow files (shipped inside the MSD tarballs)."""
    files = [*folder.glob("*.nii.gz"), *folder.glob("*.nii")]
    return sorted(p for p in files if not p.name.startswith("._"))


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def _on_grid(mask_path: Path, image_affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    vol = read_nifti(mask_path, label=True)
    if vol.array.shape != shape or not np.allclose(vol.affine, image_affine, atol=1e-3):
        raise InputError(mask_path, "not on its image's grid (shape or affine differs)")
    return vol.array


def read_msd(root: Path) -> tuple[Iterator[ForeignCase], dict[str, int]]:
    """MSD layout: dataset.json {"labels": {"0": "background", "1": "liver", ...}}, imagesTr, labelsTr."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(meta_path, "missing (expected a Medical Segmentation Decathlon task folder)")
    labels = json.loads(meta_path.read_text()).get("labels")
    if not isinstance(labels, dict):
        raise InputError(meta_path, "has no 'labels' mapping")
    structures = {str(name).lower(): int(value) for value, name in labels.items()}
    return _msd_cases(root, structures), structures


def _msd_cases(root: Path, structures: dict[str, int]) -> Iterator[ForeignCase]:
    for image_file in _nifti_files(root / "imagesTr"):
        label_file = root / "labelsTr" / image_file.name
        if not label_file.is_file():
            raise InputError(image_file, f"has no label file labelsTr/{image_file.name}")
        image = read_nifti(image_file)
        array = _on_grid(label_file, image.affine, image.array.shape)
        bad = sorted(set(np.unique(array).tolist()) - set(structures.values()))
        if bad:
            raise InputError(label_file, f"label values {bad} are not in dataset.json's labels")
        masks = _masks_from_multilabel(array, structures)
        yield ForeignCase(_stem(image_file), image.array, image.affine, masks, str(image_file))


def _read_classes(path: Path) -> dict[str, int]:
    """A class map file: {"1": "liver", ...} or {"liver": 1, ...} -> {name: value}."""
    if not path.is_file():
        raise InputError(path, "class map not found")
    try:
        raw = json.loads(path.read_text())
        if all(str(k).isdigit() for k in raw):
            return {str(v).lower(): int(k) for k, v in raw.items()}
        return {str(k).lower(): int(v) for k, v in raw.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise InputError(path, f"not a JSON class map value -> name ({err})") from None


def read_totalsegmentator(root: Path, classes: Path | None) -> tuple[Iterator[ForeignCase], dict[str, int]]:
    """Case folders: one image NIfTI + ``segmentations/*.nii.gz`` or a multi-label ``segmentations.nii.gz``.

    A multi-label file's classes come from its own header table (``totalseg_table``), checked against
    ``classes`` where both exist, else from ``classes``; each file is read with its own table, so files of
    different TotalSegmentator versions or tasks import together. Structures map name -> value (-1 where
    masks are per structure or where tables give one name different values).
    """
    class_map = _read_classes(classes) if classes is not None else None
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    tables: dict[Path, tuple[Path, dict[str, int], str]] = {}  # folder -> (file, table, source)
    structures: dict[str, int] = {}
    for folder in folders:
        if (folder / "segmentations").is_dir():
            structures.update({_stem(m).lower(): -1 for m in _nifti_files(folder / "segmentations")})
        elif (multi := _multilabel_file(folder)) is not None:
            table, source = _multilabel_table(multi, class_map, classes)
            tables[folder] = (multi, table, source)
            for name, value in table.items():
                structures[name] = value if structures.get(name, value) == value else -1
    if classes is not None and not tables:
        raise InputError(classes, "--classes given, but no case has a multi-label segmentations file")
    return _totalsegmentator_cases(folders, tables), structures


def _multilabel_file(folder: Path) -> Path | None:
    found = [folder / name for name in MULTILABEL_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        raise InputError(folder, f"both {found[0].name} and {found[1].name}; expected one multi-label file")
    return found[0] if found else None


def _multilabel_table(
    path: Path, class_map: dict[str, int] | None, classes: Path | None
) -> tuple[dict[str, int], str]:
    """A multi-label file's class table and its source: ``header`` or ``--classes``."""
    table = read_label_table(path)
    if table is None:
        if class_map is None:
            raise InputError(path, "a multi-label file needs --classes (its header holds no label table)")
        return class_map, "--classes"
    if class_map is not None and classes is not None:
        check_agreement(table, class_map, path, classes)
    return table, "header"


def _totalsegmentator_cases(
    folders: list[Path], tables: dict[Path, tuple[Path, dict[str, int], str]]
) -> Iterator[ForeignCase]:
    for folder in folders:
        images = [p for p in _nifti_files(folder) if not _stem(p).startswith("segmentations")]
        if len(images) != 1:
            raise InputError(
                folder, f"expected one image NIfTI beside the segmentations, found {len(images)}"
            )
        image = read_nifti(images[0])
        masks: dict[str, np.ndarray] = {}
        if (folder / "segmentations").is_dir():
            table_source = "per-structure files"
            for mask_file in _nifti_files(folder / "segmentations"):
                masks[_stem(mask_file).lower()] = _on_grid(mask_file, image.affine, image.array.shape) > 0
        elif folder in tables:
            multi, table, table_source = tables[folder]
            array = _on_grid(multi, image.affine, image.array.shape)
            bad = sorted(set(np.unique(array).tolist()) - {0, *table.values()})
            if bad and table_source == "header":
                raise InputError(multi, f"label values {bad} are not in its header's label table")
            masks = _masks_from_multilabel(array, table)
        else:
            raise InputError(folder, "no segmentations/ folder and no segmentations.nii.gz")
        yield ForeignCase(folder.name, image.array, image.affine, masks, str(folder), table_source)


def read_ircadb(root: Path) -> tuple[Iterator[ForeignCase], dict[str, int]]:
    """3D-IRCADb: ``3Dircadb1.N/PATIENT_DICOM`` and ``MASKS_DICOM/<structure>/`` (0 / 255 DICOM masks)."""
    found = (
        [root / "PATIENT_DICOM"]
        if (root / "PATIENT_DICOM").is_dir()
        else sorted(root.glob("*/PATIENT_DICOM"))
    )
    patients = [p.parent for p in found]
    structures = {m.name.lower(): -1 for p in patients for m in (p / "MASKS_DICOM").glob("*") if m.is_dir()}
    return _ircadb_cases(patients), structures


def _ircadb_cases(patients: list[Path]) -> Iterator[ForeignCase]:
    from foscu.data.dicom import read_dicom_folder

    for patient in patients:
        image, geometry = read_dicom_folder(patient / "PATIENT_DICOM")
        masks = {}
        for mask_dir in sorted(p for p in (patient / "MASKS_DICOM").glob("*") if p.is_dir()):
            mask, mask_geometry = read_dicom_folder(mask_dir)
            if mask.shape != image.shape or not np.allclose(mask_geometry.affine, geometry.affine, atol=1e-3):
                raise InputError(mask_dir, "mask slices are not on the patient series' grid")
            masks[mask_dir.name.lower()] = mask > 0
        case_id = "ircadb_" + patient.name.rsplit(".", 1)[-1]
        yield ForeignCase(case_id, image, geometry.affine, masks, str(patient))


def read_chaos(root: Path, sequence: str = "T2SPIR") -> tuple[Iterator[ForeignCase], dict[str, int]]:
    """CHAOS MR: ``<patient>/<sequence>/DICOM_anon`` + ``Ground/<same stem>.png`` (liver band 55-70)."""
    if sequence not in CHAOS_SEQUENCES:
        raise InputError("--sequence", f"expected one of {', '.join(CHAOS_SEQUENCES)}, got {sequence!r}")
    return _chaos_cases(root, sequence), {name: -1 for name in CHAOS_BANDS}


def _chaos_cases(root: Path, sequence: str) -> Iterator[ForeignCase]:
    from PIL import Image

    from foscu.data.dicom import read_dicom_folder

    for patient in sorted(p for p in root.iterdir() if (p / sequence.split("/")[0]).is_dir()):
        seq_dir = patient / sequence.split("/")[0]
        image, geometry = read_dicom_folder(seq_dir / "DICOM_anon" / sequence.partition("/")[2])
        pngs = {p.stem: p for p in sorted((seq_dir / "Ground").glob("*.png"))}
        grey = np.zeros(image.shape, np.uint8)  # (columns, rows, slices)
        for k, piece in enumerate(geometry.slices):  # each mask takes its DICOM slice's position
            png = pngs.pop(piece.path.stem, None)
            if png is None:
                raise InputError(piece.path, f"has no mask Ground/{piece.path.stem}.png")
            pixels = np.asarray(Image.open(png).convert("L"))  # (rows, columns)
            if pixels.shape != image.shape[1::-1]:
                raise InputError(png, f"mask of {pixels.shape} pixels, its slice has {image.shape[1::-1]}")
            grey[:, :, k] = pixels.T
        if pngs:
            raise InputError(seq_dir / "Ground", f"masks without a DICOM slice: {sorted(pngs)[:3]}")
        masks = {name: (grey >= lo) & (grey <= hi) for name, (lo, hi) in CHAOS_BANDS.items()}
        yield ForeignCase(f"chaos_{patient.name}", image, geometry.affine, masks, str(patient))


FORMATS = ("msd", "totalsegmentator", "ircadb", "chaos")


def _read(fmt: str, root: Path, classes: Path | None, sequence: str) -> tuple[Iterator[ForeignCase], dict]:
    """The cases and structure names (name -> value, -1 where masks are per structure) of a format."""
    if fmt == "msd":
        return read_msd(root)
    if fmt == "totalsegmentator":
        return read_totalsegmentator(root, classes)
    if fmt == "ircadb":
        return read_ircadb(root)
    if fmt == "chaos":
        return read_chaos(root, sequence)
    raise InputError("FORMAT", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")


def _iter_written(
    cases: Iterator[ForeignCase], mapping: dict[str, str], out: Path
) -> Iterator[tuple[str, dict]]:
    for case in cases:
        label = paint(case.masks, mapping, case.image.shape)
        write_nifti(image_path(out, case.case_id), case.image, case.affine)
        write_nifti(label_path(out, case.case_id), label, case.affine, label=True)
        counts = {name: int((label == value).sum()) for name, value in LABELS.items() if value}
        yield (
            case.case_id,
            {
                "source": case.source,
                "structures": sorted(case.masks),
                "voxels": counts,
                "classes_absent": [name for name, n in counts.items() if n == 0],
                **({"label_table": case.label_table} if case.label_table else {}),
            },
        )


def _table_sources(per_case: dict[str, dict], classes: str | Path | None) -> dict:
    """``label_tables``: cases per source of structure names (header, --classes, per-structure files)."""
    sources = [record["label_table"] for record in per_case.values() if "label_table" in record]
    if not sources:
        return {}
    counts = {source: sources.count(source) for source in sorted(set(sources))}
    return {"label_tables": counts, "classes_file": str(classes) if classes is not None else None}


def import_labels(
    fmt: str,
    source: str | Path,
    out: str | Path,
    rules: list[str] | None = None,
    classes: str | Path | None = None,
    sequence: str = "T2SPIR",
) -> dict:
    """Read a public/foreign set in its layout, map its structures onto FOSCU's labels, write a raw set.

    Args:
        fmt: msd | totalsegmentator | ircadb | chaos.
        rules: ``SOURCE=TARGET`` rules, tried before the format's defaults (``DEFAULT_RULES``).
        classes: class map JSON (value -> name) of TotalSegmentator multi-label files whose header holds
            no label table; where it does, the map is checked against the table.
        sequence: CHAOS sequence (T2SPIR, T1DUAL/InPhase, T1DUAL/OutPhase).
    Returns the import record, also in ``import.json`` and dataset.json's ``foscu_import``.
    """
    root, out = Path(source), Path(out)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    cases, structures = _read(fmt, root, Path(classes) if classes is not None else None, sequence)
    mapping = resolve_rules(structures, list(rules or []), DEFAULT_RULES.get(fmt, []))
    with atomic_folder(out) as tmp:
        per_case = dict(_iter_written(cases, mapping, tmp))  # one case in memory at a time
        if not per_case:
            raise InputError(root, f"no {fmt} cases found (see the README for the expected layout)")
        record = {
            "format": fmt,
            "source": str(root),
            "rules": list(rules or []),
            "mapping": mapping,
            "unmapped_to_background": sorted(set(structures) - set(mapping)),
            **_table_sources(per_case, classes),
            "cases": per_case,
        }
        summary = {k: v for k, v in record.items() if k != "cases"}
        write_dataset_json(tmp, f"{fmt} import of {root.name}", len(per_case), foscu_import=summary)
        write_json_atomic(tmp / "import.json", record)
    return record
