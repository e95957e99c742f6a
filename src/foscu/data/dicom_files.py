"""DICOM files as ``foscu convert`` groups them, and the anonymisation of what it records.

Headers are read without pixels, files without the 128-byte preamble included. Files are grouped into
series by SeriesInstanceUID; files whose SeriesInstanceUID was blanked by a de-identification tool are
grouped the way dcm2niix does (series number, description, acquisition, orientation, matrix size, pixel
spacing). Case ids are anonymous (``FOSCU_0000``, ...), and every text written to ``conversion.json``
goes through :func:`redact`, which blanks patient names and IDs seen in the headers.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foscu.data.dicom_frames import Slice

CASE_PREFIX = "FOSCU"
REDACTED = "<redacted>"
NO_UID_PREFIX = "no-uid-"  # series keys made up for files whose SeriesInstanceUID is blank


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


def patient_identifiers(series: dict[str, Series]) -> set[str]:
    """Patient names (and their parts) and IDs seen in the headers: never to appear in conversion.json."""
    found: set[str] = set()
    for s in series.values():
        for _, ds in s.headers:
            name, pid = str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))
            found.update(x for x in [name, pid, *re.split(r"[\^\s=,]+", name)] if x.strip())
    return found


def redact(text: str, identifiers: set[str]) -> str:
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
