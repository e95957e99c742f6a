"""``foscu convert``: DICOM series -> one NIfTI each, with anonymous case ids and ``conversion.json``.

Hand-written on pydicom rather than handed to SimpleITK/GDCM because those silently return a wrong volume
for unsorted files, two series in one folder, a missing slice or a gantry tilt. Here every series is
checked first: slices ordered by ImagePositionPatient projected on the slice normal (never by file name
or InstanceNumber), one orientation and one matrix size, even steps with no gap, positions along the
normal. A series that fails is refused with its reason in ``conversion.json``; the others still convert.

Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg, pyjpegls); enhanced multi-frame
files become one slice per frame (``dicom_frames``). Files whose SeriesInstanceUID was blanked by a
de-identification tool are grouped the way dcm2niix does: by series number, description, acquisition,
orientation, matrix size and pixel spacing.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foscu.data.dicom_frames import SeriesRefused, Slice, decode_pixels, fmt, frame_slices, what_differs
from foscu.data.layout import image_path, write_dataset_json
from foscu.data.nifti import write_nifti
from foscu.errors import InputError
from foscu.runs import atomic_folder, write_json_atomic

CASE_PREFIX = "FOSCU"
GAP_FACTOR = 1.5  # a step above 1.5x the median step means missing slice(s)
ORIENTATION_TOL = 1e-4  # direction cosines that differ by more are "mixed orientations"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
REDACTED = "<redacted>"
NO_UID_PREFIX = "no-uid-"  # series keys made up for files whose SeriesInstanceUID is blank
__all__ = ["SeriesRefused", "convert_dicom", "scan_dicom_tree", "series_geometry", "read_series_volume"]


@dataclass
class Series:
    """The headers (read without pixels) of one series, in file-walk order.

    ``uid`` is the SeriesInstanceUID, or ``no-uid-<hash of the grouping values>`` where it was blank.
    """

    uid: str
    root: Path
    headers: list[tuple[Path, Any]] = field(default_factory=list)  # (file, pydicom Dataset)

    def name(self, path: Path) -> str:
        """A file as messages name it: its path relative to the DICOM root."""
        return str(path.relative_to(self.root))

    @property
    def description(self) -> str:
        return str(self.headers[0][1].get("SeriesDescription", ""))

    @property
    def study_uid(self) -> str:
        return str(self.headers[0][1].get("StudyInstanceUID", ""))

    @property
    def has_uid(self) -> bool:
        return not self.uid.startswith(NO_UID_PREFIX)

    @property
    def label(self) -> str:
        return f"series {self.uid} ({self.description!r})"

    def where(self, piece: Slice) -> str:
        """A slice as messages name it: its file, and its frame for a multi-frame file."""
        name = self.name(piece.path)
        return name if piece.frame is None else f"{name} frame {piece.frame}"


@dataclass
class Geometry:
    """A checked series: slices in order, voxel (i=column, j=row, k=slice) -> RAS mm affine."""

    slices: list[Slice]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    warnings: list[str]


def _read_header(path: Path) -> tuple[Any, str | None]:
    """(dataset, None) for a DICOM file, (None, reason) otherwise; files without the preamble are read too."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True), None
    except InvalidDicomError:
        pass
    except Exception as err:  # truncated or corrupt headers raise many types
        return None, f"unreadable DICOM ({type(err).__name__}: {err})"
    try:  # old archives and some exporters write no 128-byte preamble / "DICM" prefix
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns while guessing the VR of a non-DICOM file
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None, "not a DICOM file"
    if "SOPClassUID" in ds and "Modality" in ds:
        return ds, None
    return None, "not a DICOM file"


def _no_uid_key(ds: Any) -> str:
    """A series key for a file without SeriesInstanceUID, from what dcm2niix groups by.

    Series number, description, acquisition number, orientation (to 1e-3), matrix size and pixel spacing:
    no file name and no patient identifier, so the key (and the case id) is stable and anonymous.
    """
    orientation = [round(float(v), 3) + 0.0 for v in ds.get("ImageOrientationPatient") or []]
    spacing = [round(float(v), 4) for v in ds.get("PixelSpacing") or []]
    values = [
        ds.get("StudyInstanceUID", ""),
        ds.get("SeriesNumber", ""),
        ds.get("SeriesDescription", ""),
        ds.get("AcquisitionNumber", ""),
        orientation,
        ds.get("Rows", ""),
        ds.get("Columns", ""),
        spacing,
    ]
    digest = hashlib.sha256(repr([str(v) for v in values]).encode()).hexdigest()
    return NO_UID_PREFIX + digest[:16]


def scan_dicom_tree(root: Path) -> tuple[dict[str, Series], list[dict[str, str]]]:
    """Read every file's header (no pixels) under ``root``; group by SeriesInstanceUID.

    Files with a blank SeriesInstanceUID are grouped by :func:`_no_uid_key`. Returns the series and the
    skipped files, each ``{"file": relative path, "reason": ...}``; a DICOM file is never called "not DICOM".
    """
    series: dict[str, Series] = {}
    skipped: list[dict[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        ds, reason = _read_header(path)
        if ds is None:
            skipped.append({"file": rel, "reason": str(reason)})
            continue
        if "DirectoryRecordSequence" in ds:
            skipped.append({"file": rel, "reason": "DICOMDIR (an index of the other files, no image)"})
            continue
        if "Rows" not in ds or "Columns" not in ds:
            sop_class = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
            skipped.append({"file": rel, "reason": f"DICOM without an image ({sop_class})"})
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or _no_uid_key(ds)
        series.setdefault(uid, Series(uid, root)).headers.append((path, ds))
    return series, skipped


def anonymous_case_ids(series: dict[str, Series]) -> dict[str, str]:
    """FOSCU_0000, FOSCU_0001, ... in the order of sha256(StudyInstanceUID, SeriesInstanceUID).

    Deterministic for a given set of series, independent of file names, and free of patient identifiers.
    """
    digest = {uid: hashlib.sha256(f"{s.study_uid}\0{uid}".encode()).hexdigest() for uid, s in series.items()}
    return {uid: f"{CASE_PREFIX}_{n:04d}" for n, uid in enumerate(sorted(series, key=lambda u: digest[u]))}


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


def series_geometry(series: Series) -> Geometry:
    """Check a series and order its slices along the normal; raise SeriesRefused with the reason."""
    label = series.label
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
    cosines = _floats(first, "ImageOrientationPatient", 6, series)
    row_dir, col_dir = cosines[:3], cosines[3:]  # LPS directions of increasing column / increasing row
    lengths = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if max(abs(lengths[0] - 1), abs(lengths[1] - 1), abs(row_dir @ col_dir)) > 1e-3:
        raise SeriesRefused(f"{label}: ImageOrientationPatient {fmt(cosines)} is not orthonormal")
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = _floats(first, "PixelSpacing", 2, series)  # (between rows, between columns)
    if np.any(pixel_spacing <= 0):
        raise SeriesRefused(f"{label}: {series.where(first)} has PixelSpacing {fmt(pixel_spacing)} <= 0")
    positions = []
    for piece in slices:
        other, where = _floats(piece, "ImageOrientationPatient", 6, series), series.where(piece)
        if np.max(np.abs(other - cosines)) > ORIENTATION_TOL:
            raise SeriesRefused(f"{label}: mixed orientations, {fmt(cosines)} and {fmt(other)} ({where})")
        if np.max(np.abs(_floats(piece, "PixelSpacing", 2, series) - pixel_spacing)) > 1e-4:
            raise SeriesRefused(f"{label}: mixed PixelSpacing ({where})")
        positions.append(_floats(piece, "ImagePositionPatient", 3, series))

    # Slice order: position projected on the normal, never file name or InstanceNumber.
    positions_lps = np.stack(positions)  # (N, 3)
    along = positions_lps @ normal
    order = np.argsort(along, kind="stable")
    positions_lps, along = positions_lps[order], along[order]
    _check_steps(series, along, slices)
    offsets = positions_lps - positions_lps[0]  # (N, 3)
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if np.any(in_plane > 0.01 + 1e-3 * np.abs(offsets @ normal)):
        angle = np.degrees(np.arctan2(in_plane[-1], abs(offsets[-1] @ normal)))
        raise SeriesRefused(
            f"{label}: gantry tilt, slice positions leave the slice normal (about {angle:.2f} degrees)"
        )

    # voxel (i=column, j=row, k=slice) -> LPS mm; the slice axis from the measured positions
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * pixel_spacing[1]
    affine_lps[:3, 1] = col_dir * pixel_spacing[0]
    affine_lps[:3, 2] = (positions_lps[-1] - positions_lps[0]) / (len(slices) - 1)
    affine_lps[:3, 3] = positions_lps[0]
    step = float(np.linalg.norm(affine_lps[:3, 2]))
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


def _identifiers(series: dict[str, Series]) -> set[str]:
    """Patient names (and their parts) and IDs seen in the headers: never to appear in conversion.json."""
    found: set[str] = set()
    for s in series.values():
        for _, ds in s.headers:
            name, pid = str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))
            found.update(x for x in [name, pid, *re.split(r"[\^\s=,]+", name)] if x.strip())
    return found


def _redact(text: str, identifiers: set[str]) -> str:
    """Replace each word or path part that is, or holds, a patient name or ID seen in the headers.

    A part that merely contains an identifier of 1-2 characters, or a UID-like part (digits and dots)
    that merely contains one, is kept: otherwise every UID would be redacted for a short PatientID.
    """
    lowered = [x.lower() for x in identifiers]

    def private(part: str) -> bool:
        low = part.lower()
        uid_like = re.fullmatch(r"[\d.]+", part) is not None
        return any(low == x or (len(x) >= 3 and x in low and not uid_like) for x in lowered)

    parts = re.split(r"""([\s/\\()'",:;]+)""", text)
    return "".join(REDACTED if part and private(part) else part for part in parts)


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
    try:
        pattern = re.compile(series_regex, re.IGNORECASE) if series_regex is not None else None
    except re.error as err:
        raise InputError("--series", f"invalid regular expression {series_regex!r} ({err})") from None
    if not any(p.is_file() for p in root.rglob("*")):
        raise InputError(root, "folder is empty (no files)")
    series, skipped = scan_dicom_tree(root)
    if not series:
        per_reason: dict[str, int] = {}
        for item in skipped:
            reason = item["reason"].split(" (")[0]
            per_reason[reason] = per_reason.get(reason, 0) + 1
        why = ", ".join(f"{n} {reason}" for reason, n in per_reason.items())
        raise InputError(root, f"no DICOM image series found ({len(skipped)} file(s) skipped: {why})")
    case_ids = anonymous_case_ids(series)
    identifiers = _identifiers(series)
    selected = [s for s in series.values() if pattern is None or pattern.search(s.description)]
    selected.sort(key=lambda s: case_ids[s.uid])
    selected_uids = {s.uid for s in selected}
    converted: list[dict] = []
    refused: list[dict] = []
    with atomic_folder(out) as tmp, progress_bar("convert", total=len(selected), enabled=progress) as advance:
        for s in selected:
            case_id = case_ids[s.uid]
            entry = {
                "case_id": case_id,
                "series_uid": s.uid if s.has_uid else None,
                "study_uid": s.study_uid,
                "description": _redact(s.description, identifiers),
            }
            try:
                geometry = series_geometry(s)
                volume = read_series_volume(geometry, s)
            except SeriesRefused as err:
                refused.append({**entry, "files": len(s.headers), "reason": _redact(str(err), identifiers)})
                advance()
                continue
            output = image_path(tmp, case_id)
            write_nifti(output, volume, geometry.affine)
            converted.append(
                {
                    **entry,
                    "slices": geometry.shape[2],
                    "shape": list(geometry.shape),
                    "spacing": [round(v, 6) for v in geometry.spacing],
                    "output": str(output.relative_to(tmp)),
                    "warnings": [_redact(w, identifiers) for w in geometry.warnings],
                }
            )
            advance()
        if not converted:
            reasons = [r["reason"] for r in refused] or [f"no SeriesDescription matches {series_regex!r}"]
            more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
            raise InputError(root, "no series converted: " + "; ".join(reasons[:3]) + more)
        record = {
            "dicom_root": _redact(str(root.resolve()), identifiers),
            "series_filter": series_regex,
            "series": converted,
            "refused": refused,
            "not_selected": [
                {
                    "case_id": case_ids[uid],
                    "series_uid": uid if s.has_uid else None,
                    "description": _redact(s.description, identifiers),
                }
                for uid, s in sorted(series.items(), key=lambda item: case_ids[item[0]])
                if uid not in selected_uids
            ],
            "skipped_files": [{**f, "file": _redact(f["file"], identifiers)} for f in skipped],
        }
        write_dataset_json(
            tmp,
            name="FOSCU DICOM conversion",
            num_training=len(converted),
            foscu_convert={"series_filter": series_regex, "series": len(converted)},
        )
        write_json_atomic(tmp / "conversion.json", record)
    return record
