"""``foscu convert``: DICOM series -> one NIfTI each, with anonymous case ids and ``conversion.json``.

Hand-written on pydicom rather than handed to SimpleITK/GDCM because those silently return a wrong volume
for unsorted files, two series in one folder, a missing slice or a gantry tilt. Here every series is
checked first: slices ordered by ImagePositionPatient projected on the slice normal (never by file name
or InstanceNumber), one orientation and one matrix size, even steps with no gap, positions along the
normal. A series that fails is refused with its reason in ``conversion.json``; the others still convert.

Files are read and grouped into series, and case ids and messages anonymised, in ``dicom_files``;
compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg, pyjpegls) and enhanced
multi-frame files become one slice per frame in ``dicom_frames``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foscu.data.dicom_files import Series, anonymous_case_ids, patient_identifiers, redact, scan_dicom_tree
from foscu.data.dicom_frames import SeriesRefused, Slice, decode_pixels, fmt, frame_slices, what_differs
from foscu.data.layout import image_path, write_dataset_json
from foscu.data.nifti import write_nifti
from foscu.errors import InputError
from foscu.runs import atomic_folder, write_json_atomic

GAP_FACTOR = 1.5  # a step above 1.5x the median step means missing slice(s)
ORIENTATION_TOL = 1e-4  # direction cosines that differ by more are "mixed orientations"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Geometry:
    """A checked series: slices in order, voxel (i=column, j=row, k=slice) -> RAS mm affine."""

    slices: list[Slice]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    warnings: list[str]


def _floats(piece: Slice, keyword: str, count: int, series: Series) -> np.ndarray:
    label, where = series.label, series.where(piece)
    value = piece.ds.get(keyword)
    if value is None:
        raise SeriesRefused(f"{label}: {where} has no {keyword}")
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise SeriesRefused(f"{label}: {where} has non-numeric {keyword} {value!r}") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise SeriesRefused(f"{label}: {where} has {keyword} {fmt(values)}, not {count} numbers")
    return values


def series_slices(series: Series) -> tuple[list[Slice], int]:
    """Every slice (frame) of a series, duplicates dropped; refuses what one volume cannot hold.

    Refused: mosaics, multi-frame files without functional groups, colour, mixed matrix sizes, < 3 slices.
    Returns the slices and the number of duplicate files/frames dropped.
    """
    label = series.label
    unique: dict[str, Slice] = {}
    total = 0
    for path, ds in series.headers:
        where = series.name(path)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise SeriesRefused(f"{label}: {where} is not greyscale (SamplesPerPixel != 1)")
        try:
            pieces = frame_slices(path, ds, where)
        except SeriesRefused as err:
            raise SeriesRefused(f"{label}: {err}") from None
        total += len(pieces)
        for piece in pieces:
            unique.setdefault(piece.key, piece)
    slices = list(unique.values())
    first = slices[0].ds
    for piece in slices:
        size, size0 = (
            (piece.ds.get("Rows"), piece.ds.get("Columns")),
            (first.get("Rows"), first.get("Columns")),
        )
        if None in size or size != size0:
            raise SeriesRefused(
                f"{label}: mixed dimensions, rows x columns {size0} and {size} ({series.where(piece)})"
            )
    if len(slices) < 3:
        raise SeriesRefused(f"{label}: only {len(slices)} slice(s), a volume needs at least 3")
    return slices, total - len(slices)


def _check_steps(series: Series, along: np.ndarray, slices: list[Slice]) -> None:
    """Refuse repeated positions (naming what differs there), gaps and uneven spacing; ``along`` sorted."""
    label = series.label
    steps = np.diff(along)
    if np.min(steps) < 1e-3:
        k = int(np.argmin(steps))
        differs = what_differs(slices)
        why = (
            f"{differs} in one series" if differs else "several echoes, phases or time points in one series?"
        )
        raise SeriesRefused(
            f"{label}: slices {k} and {k + 1} share a position ({along[k]:.3f} mm along the normal); {why}"
        )
    median = float(np.median(steps))
    if np.max(steps) > GAP_FACTOR * median:
        k = int(np.argmax(steps))
        raise SeriesRefused(
            f"{label}: missing slice(s), gap of {steps[k]:.3f} mm between slices {k} and {k + 1} "
            f"(median step {median:.3f} mm)"
        )
    if np.max(np.abs(steps - median)) > max(0.01, 0.01 * median):
        raise SeriesRefused(
            f"{label}: uneven slice spacing, steps from {steps.min():.3f} to {steps.max():.3f} mm"
        )


def _plane(series: Series, first: Slice) -> tuple[np.ndarray, np.ndarray]:
    """The slice plane from ``first``: direction cosines (checked orthonormal) and pixel spacing (> 0)."""
    label = series.label
    cosines = _floats(first, "ImageOrientationPatient", 6, series)
    row_dir, col_dir = cosines[:3], cosines[3:]
    lengths = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if max(abs(lengths[0] - 1), abs(lengths[1] - 1), abs(row_dir @ col_dir)) > 1e-3:
        raise SeriesRefused(f"{label}: ImageOrientationPatient {fmt(cosines)} is not orthonormal")
    pixel_spacing = _floats(first, "PixelSpacing", 2, series)  # (between rows, between columns)
    if np.any(pixel_spacing <= 0):
        raise SeriesRefused(f"{label}: {series.where(first)} has PixelSpacing {fmt(pixel_spacing)} <= 0")
    return cosines, pixel_spacing


def _slice_positions(
    series: Series, slices: list[Slice], cosines: np.ndarray, pixel_spacing: np.ndarray
) -> np.ndarray:
    """ImagePositionPatient of every slice (N, 3), refusing a slice of another orientation or spacing."""
    positions = []
    for piece in slices:
        other, where = _floats(piece, "ImageOrientationPatient", 6, series), series.where(piece)
        if np.max(np.abs(other - cosines)) > ORIENTATION_TOL:
            raise SeriesRefused(
                f"{series.label}: mixed orientations, {fmt(cosines)} and {fmt(other)} ({where})"
            )
        if np.max(np.abs(_floats(piece, "PixelSpacing", 2, series) - pixel_spacing)) > 1e-4:
            raise SeriesRefused(f"{series.label}: mixed PixelSpacing ({where})")
        positions.append(_floats(piece, "ImagePositionPatient", 3, series))
    return np.stack(positions)


def _check_on_normal(series: Series, positions_lps: np.ndarray, normal: np.ndarray) -> None:
    """Refuse a gantry tilt: slice positions (ordered) that leave the line along the slice normal."""
    offsets = positions_lps - positions_lps[0]  # (N, 3)
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if np.any(in_plane > 0.01 + 1e-3 * np.abs(offsets @ normal)):
        angle = np.degrees(np.arctan2(in_plane[-1], abs(offsets[-1] @ normal)))
        raise SeriesRefused(
            f"{series.label}: gantry tilt, slice positions leave the slice normal (about {angle:.2f} degrees)"
        )


def _header_warnings(series: Series, first: Slice, step: float) -> list[str]:
    """What the headers say a reader should know: thickness beside the step, private scaling, lossy data."""
    warnings = []
    thickness = first.ds.get("SliceThickness")
    if thickness is not None and abs(float(thickness) - step) > 0.01 * step:
        warnings.append(f"SliceThickness {float(thickness):g} mm differs from the slice step {step:.4g} mm")
    header0 = series.headers[0][1]
    if (0x2005, 0x100E) in header0:
        warnings.append("Philips private scale slope present: values are RescaleSlope/Intercept values")
    if str(header0.get("LossyImageCompression", "")) == "01":
        warnings.append(
            "lossy compressed pixel data (LossyImageCompression 01): voxel values are approximate"
        )
    return warnings


def series_geometry(series: Series) -> Geometry:
    """Check a series and order its slices along the normal; raise SeriesRefused with the reason."""
    slices, n_dupes = series_slices(series)
    warnings: list[str] = []
    if n_dupes:
        warnings.append(f"{n_dupes} duplicate file(s) or frame(s) (same SOPInstanceUID) ignored")
    if not series.has_uid:
        warnings.append(
            "no SeriesInstanceUID: files grouped by series number, description, acquisition, "
            "orientation, matrix size and pixel spacing (as dcm2niix does)"
        )
    first = slices[0]
    cosines, pixel_spacing = _plane(series, first)
    row_dir, col_dir = cosines[:3], cosines[3:]  # LPS directions of increasing column / increasing row
    normal = np.cross(row_dir, col_dir)
    positions_lps = _slice_positions(series, slices, cosines, pixel_spacing)  # (N, 3)

    # Slice order: position projected on the normal, never file name or InstanceNumber.
    along = positions_lps @ normal
    order = np.argsort(along, kind="stable")
    positions_lps, along = positions_lps[order], along[order]
    _check_steps(series, along, slices)
    _check_on_normal(series, positions_lps, normal)

    # voxel (i=column, j=row, k=slice) -> LPS mm; the slice axis from the measured positions
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * pixel_spacing[1]
    affine_lps[:3, 1] = col_dir * pixel_spacing[0]
    affine_lps[:3, 2] = (positions_lps[-1] - positions_lps[0]) / (len(slices) - 1)
    affine_lps[:3, 3] = positions_lps[0]
    step = float(np.linalg.norm(affine_lps[:3, 2]))
    warnings += _header_warnings(series, first, step)
    ordered = [slices[i] for i in order]
    shape = (int(first.ds.Columns), int(first.ds.Rows), len(ordered))
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), step)
    return Geometry(ordered, LPS_TO_RAS @ affine_lps, spacing, shape, warnings)


def read_series_volume(geometry: Geometry, series: Series) -> np.ndarray:
    """Read the pixels in geometry order, rescaled (RescaleSlope/Intercept or Modality LUT) per slice."""
    from pydicom.pixels import apply_modality_lut

    label = series.label
    volume = np.empty(geometry.shape, dtype=np.float64)  # (columns, rows, slices)
    decoded: dict[Path, tuple[Any, np.ndarray]] = {}  # file -> (dataset, (frames, rows, columns))
    for k, piece in enumerate(geometry.slices):
        if piece.path not in decoded:
            try:
                decoded[piece.path] = decode_pixels(piece.path, series.name(piece.path))
            except SeriesRefused as err:
                raise SeriesRefused(f"{label}: {err}") from None
        _, frames = decoded[piece.path]
        pixels = frames[piece.frame or 0]  # (rows, columns)
        if pixels.shape != geometry.shape[1::-1]:
            raise SeriesRefused(
                f"{label}: {series.where(piece)} has pixels of shape {pixels.shape}, not rows x columns"
            )
        volume[:, :, k] = np.asarray(apply_modality_lut(pixels, piece.ds), dtype=np.float64).T
    return volume


def read_dicom_folder(folder: Path) -> tuple[np.ndarray, Geometry]:
    """All DICOM images in ``folder`` as ONE volume, whatever their UIDs (public sets' image/mask folders).

    Returns the (columns, rows, slices) volume and its geometry. Raises InputError naming the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found")
    series, _ = scan_dicom_tree(folder)
    if not series:
        raise InputError(folder, "no DICOM images in the folder")
    merged = Series(next(iter(series)), folder)
    for s in series.values():
        merged.headers.extend(s.headers)
    try:
        geometry = series_geometry(merged)
        return read_series_volume(geometry, merged), geometry
    except SeriesRefused as err:
        raise InputError(folder, str(err).split(": ", 1)[-1]) from None


def _no_series_found(root: Path, skipped: list[dict[str, str]]) -> InputError:
    """The error for a tree with files but no image series: how many files were skipped, per reason."""
    per_reason: dict[str, int] = {}
    for item in skipped:
        reason = item["reason"].split(" (")[0]
        per_reason[reason] = per_reason.get(reason, 0) + 1
    why = ", ".join(f"{n} {reason}" for reason, n in per_reason.items())
    return InputError(root, f"no DICOM image series found ({len(skipped)} file(s) skipped: {why})")


def _convert_series(series: Series, case_id: str, out: Path, identifiers: set[str]) -> tuple[dict, bool]:
    """Write one series as ``out``'s NIfTI for ``case_id``; (its conversion.json entry, whether it converted).

    A refused series writes nothing; its entry carries the file count and the (redacted) reason.
    """
    entry = {
        "case_id": case_id,
        "series_uid": series.uid if series.has_uid else None,
        "study_uid": series.study_uid,
        "description": redact(series.description, identifiers),
    }
    try:
        geometry = series_geometry(series)
        volume = read_series_volume(geometry, series)
    except SeriesRefused as err:
        return {**entry, "files": len(series.headers), "reason": redact(str(err), identifiers)}, False
    output = image_path(out, case_id)
    write_nifti(output, volume, geometry.affine)
    converted = {
        **entry,
        "slices": geometry.shape[2],
        "shape": list(geometry.shape),
        "spacing": [round(v, 6) for v in geometry.spacing],
        "output": str(output.relative_to(out)),
        "warnings": [redact(w, identifiers) for w in geometry.warnings],
    }
    return converted, True


def _series_pattern(series_regex: str | None) -> re.Pattern | None:
    try:
        return re.compile(series_regex, re.IGNORECASE) if series_regex is not None else None
    except re.error as err:
        raise InputError("--series", f"invalid regular expression {series_regex!r} ({err})") from None


def _not_selected(
    series: dict[str, Series], case_ids: dict[str, str], selected: set[str], identifiers: set[str]
) -> list[dict]:
    """conversion.json's entries of the series the filter left out, in case id order."""
    return [
        {
            "case_id": case_ids[uid],
            "series_uid": uid if s.has_uid else None,
            "description": redact(s.description, identifiers),
        }
        for uid, s in sorted(series.items(), key=lambda item: case_ids[item[0]])
        if uid not in selected
    ]


def convert_dicom(
    dicom_root: str | Path, out: str | Path, series_regex: str | None = None, progress: bool = True
) -> dict:
    """Convert every DICOM series under ``dicom_root`` into ``out`` (nnU-Net raw layout, written whole).

    Args:
        series_regex: keep only series whose SeriesDescription matches (``re.search``, case-insensitive).
    Returns the ``conversion.json`` record. Raises InputError if the folder is missing or empty, the regex
    is invalid, or no series converts.
    """
    from foscu.engine.tracking import progress_bar

    root, out = Path(dicom_root), Path(out)
    if not root.is_dir():
        raise InputError(root, "DICOM folder not found")
    pattern = _series_pattern(series_regex)
    if not any(p.is_file() for p in root.rglob("*")):
        raise InputError(root, "folder is empty (no files)")
    series, skipped = scan_dicom_tree(root)
    if not series:
        raise _no_series_found(root, skipped)
    case_ids = anonymous_case_ids(series)
    identifiers = patient_identifiers(series)
    selected = [s for s in series.values() if pattern is None or pattern.search(s.description)]
    selected.sort(key=lambda s: case_ids[s.uid])
    converted: list[dict] = []
    refused: list[dict] = []
    with atomic_folder(out) as tmp, progress_bar("convert", total=len(selected), enabled=progress) as advance:
        for s in selected:
            entry, ok = _convert_series(s, case_ids[s.uid], tmp, identifiers)
            (converted if ok else refused).append(entry)
            advance()
        if not converted:
            reasons = [r["reason"] for r in refused] or [f"no SeriesDescription matches {series_regex!r}"]
            more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
            raise InputError(root, "no series converted: " + "; ".join(reasons[:3]) + more)
        record = {
            "dicom_root": redact(str(root.resolve()), identifiers),
            "series_filter": series_regex,
            "series": converted,
            "refused": refused,
            "not_selected": _not_selected(series, case_ids, {s.uid for s in selected}, identifiers),
            "skipped_files": [{**f, "file": redact(f["file"], identifiers)} for f in skipped],
        }
        write_dataset_json(
            tmp,
            name="FOSCU DICOM conversion",
            num_training=len(converted),
            foscu_convert={"series_filter": series_regex, "series": len(converted)},
        )
        write_json_atomic(tmp / "conversion.json", record)
    return record
