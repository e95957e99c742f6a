"""``foscu convert``: DICOM series -> one NIfTI each, with anonymous case ids and ``conversion.json``.

Hand-written on pydicom rather than handed to SimpleITK/GDCM because those silently return a wrong volume
for unsorted files, two series in one folder, a missing slice or a gantry tilt. Here every series is
checked first: slices ordered by ImagePositionPatient projected on the slice normal (never by file name
or InstanceNumber), one orientation and one matrix size, even steps with no gap, positions along the
normal. A series that fails is refused with its reason in ``conversion.json``; the others still convert.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foscu.data.layout import image_path, write_dataset_json
from foscu.data.nifti import write_nifti
from foscu.errors import InputError
from foscu.runs import atomic_folder, write_json_atomic

CASE_PREFIX = "FOSCU"
GAP_FACTOR = 1.5  # a step above 1.5x the median step means missing slice(s)
ORIENTATION_TOL = 1e-4  # direction cosines that differ by more are "mixed orientations"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
REDACTED = "<redacted>"


class SeriesRefused(Exception):
    """A series that cannot become one correct volume; the message says why."""


@dataclass
class Series:
    """The headers (read without pixels) of one SeriesInstanceUID, in file-walk order."""

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
    def label(self) -> str:
        return f"series {self.uid} ({self.description!r})"


@dataclass
class Geometry:
    """A checked series: files in slice order, voxel (i=column, j=row, k=slice) -> RAS mm affine."""

    files: list[Path]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    warnings: list[str]


def scan_dicom_tree(root: Path) -> tuple[dict[str, Series], list[dict[str, str]]]:
    """Read every file's header (no pixels) under ``root``; group by SeriesInstanceUID.

    Returns the series and the skipped files, each ``{"file": relative path, "reason": ...}``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, Series] = {}
    skipped: list[dict[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append({"file": rel, "reason": "not a DICOM file"})
            continue
        except Exception as err:  # truncated or corrupt headers raise many types
            skipped.append({"file": rel, "reason": f"unreadable DICOM ({type(err).__name__}: {err})"})
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            skipped.append({"file": rel, "reason": "DICOM without SeriesInstanceUID (e.g. a DICOMDIR)"})
            continue
        series.setdefault(uid, Series(uid, root)).headers.append((path, ds))
    return series, skipped


def anonymous_case_ids(series: dict[str, Series]) -> dict[str, str]:
    """FOSCU_0000, FOSCU_0001, ... in the order of sha256(StudyInstanceUID, SeriesInstanceUID).

    Deterministic for a given set of series, independent of file names, and free of patient identifiers.
    """
    digest = {uid: hashlib.sha256(f"{s.study_uid}\0{uid}".encode()).hexdigest() for uid, s in series.items()}
    return {uid: f"{CASE_PREFIX}_{n:04d}" for n, uid in enumerate(sorted(series, key=lambda u: digest[u]))}


def _floats(ds: Any, keyword: str, count: int, series: Series, path: Path) -> np.ndarray:
    label = series.label
    value = ds.get(keyword)
    if value is None:
        raise SeriesRefused(f"{label}: {series.name(path)} has no {keyword}")
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise SeriesRefused(f"{label}: {series.name(path)} has non-numeric {keyword} {value!r}") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise SeriesRefused(f"{label}: {series.name(path)} has {keyword} {list(values)}, not {count} numbers")
    return values


def _check_uniform_headers(series: Series) -> list[tuple[Path, Any]]:
    """Refuse what one volume cannot hold: < 3 slices, multi-frame, colour, mixed sizes or orientations."""
    label = series.label
    unique: dict[str, tuple[Path, Any]] = {}
    for path, ds in series.headers:
        sop = str(ds.get("SOPInstanceUID", path))
        unique.setdefault(sop, (path, ds))
    headers = list(unique.values())
    if len(headers) < 3:
        raise SeriesRefused(f"{label}: only {len(headers)} slice(s), a volume needs at least 3")
    first = headers[0][1]
    for path, ds in headers:
        where = series.name(path)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise SeriesRefused(f"{label}: {where} is multi-frame (enhanced) DICOM, not supported")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise SeriesRefused(f"{label}: {where} is not greyscale (SamplesPerPixel != 1)")
        size, size0 = (ds.get("Rows"), ds.get("Columns")), (first.get("Rows"), first.get("Columns"))
        if None in size or size != size0:
            raise SeriesRefused(f"{label}: mixed dimensions, rows x columns {size0} and {size} ({where})")
    return headers


def series_geometry(series: Series) -> Geometry:
    """Check a series and order its slices along the normal; raise SeriesRefused with the reason."""
    label = series.label
    headers = _check_uniform_headers(series)
    warnings: list[str] = []
    if len(headers) < len(series.headers):
        n_dupes = len(series.headers) - len(headers)
        warnings.append(f"{n_dupes} duplicate file(s) (same SOPInstanceUID) ignored")
    path0, ds0 = headers[0]
    cosines = _floats(ds0, "ImageOrientationPatient", 6, series, path0)
    row_dir, col_dir = cosines[:3], cosines[3:]  # LPS directions of increasing column / increasing row
    lengths = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if max(abs(lengths[0] - 1), abs(lengths[1] - 1), abs(row_dir @ col_dir)) > 1e-3:
        raise SeriesRefused(f"{label}: ImageOrientationPatient {list(cosines)} is not orthonormal")
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = _floats(ds0, "PixelSpacing", 2, series, path0)  # (between rows, between columns)
    if np.any(pixel_spacing <= 0):
        raise SeriesRefused(f"{label}: {series.name(path0)} has PixelSpacing {list(pixel_spacing)} <= 0")
    positions = []
    for path, ds in headers:
        other, where = _floats(ds, "ImageOrientationPatient", 6, series, path), series.name(path)
        if np.max(np.abs(other - cosines)) > ORIENTATION_TOL:
            raise SeriesRefused(f"{label}: mixed orientations, {list(cosines)} and {list(other)} ({where})")
        if np.max(np.abs(_floats(ds, "PixelSpacing", 2, series, path) - pixel_spacing)) > 1e-4:
            raise SeriesRefused(f"{label}: mixed PixelSpacing ({where})")
        positions.append(_floats(ds, "ImagePositionPatient", 3, series, path))

    # Slice order: position projected on the normal, never file name or InstanceNumber.
    positions_lps = np.stack(positions)  # (N, 3)
    along = positions_lps @ normal
    order = np.argsort(along, kind="stable")
    positions_lps, along = positions_lps[order], along[order]
    steps = np.diff(along)
    if np.min(steps) < 1e-3:
        k = int(np.argmin(steps))
        raise SeriesRefused(
            f"{label}: slices {k} and {k + 1} share a position ({along[k]:.3f} mm along the normal); "
            "several echoes, phases or time points in one series?"
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
    affine_lps[:3, 2] = (positions_lps[-1] - positions_lps[0]) / (len(headers) - 1)
    affine_lps[:3, 3] = positions_lps[0]
    step = float(np.linalg.norm(affine_lps[:3, 2]))
    thickness = ds0.get("SliceThickness")
    if thickness is not None and abs(float(thickness) - step) > 0.01 * step:
        warnings.append(f"SliceThickness {float(thickness):g} mm differs from the slice step {step:.4g} mm")
    if (0x2005, 0x100E) in ds0:
        warnings.append("Philips private scale slope present: values are RescaleSlope/Intercept values")
    files = [headers[i][0] for i in order]
    shape = (int(ds0.Columns), int(ds0.Rows), len(files))
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), step)
    return Geometry(files, LPS_TO_RAS @ affine_lps, spacing, shape, warnings)


def read_series_volume(geometry: Geometry, series: Series) -> np.ndarray:
    """Read the pixels slice by slice in geometry order, rescaled (RescaleSlope/Intercept or Modality LUT)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    label = series.label
    volume = np.empty(geometry.shape, dtype=np.float64)  # (columns, rows, slices)
    for k, path in enumerate(geometry.files):
        ds, where = pydicom.dcmread(path), series.name(path)
        if "PixelData" not in ds:
            raise SeriesRefused(f"{label}: {where} has no pixel data")
        try:
            pixels = ds.pixel_array  # (rows, columns)
        except Exception as err:  # missing decoders and corrupt data raise many types
            raise SeriesRefused(f"{label}: cannot decode the pixel data of {where} ({err})") from None
        if pixels.shape != geometry.shape[1::-1]:
            raise SeriesRefused(f"{label}: {where} has pixels of shape {pixels.shape}, not rows x columns")
        volume[:, :, k] = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64).T
    return volume


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
        raise InputError(root, f"no DICOM series found ({len(skipped)} file(s) skipped, not DICOM)")
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
                "series_uid": s.uid,
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
                    "series_uid": uid,
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
