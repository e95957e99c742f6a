"""The slices of a DICOM series as ``foscu convert`` sees them: classic single-frame files and the frames
of enhanced (multi-frame) MR, plus pixel decoding through pydicom's plugins.

Enhanced MR (PS3.3 C.7.6.16) keeps each frame's geometry in the functional groups: position and
orientation per frame (PlanePositionSequence, PlaneOrientationSequence), pixel spacing and rescale
either per frame or shared. Every frame becomes a :class:`Slice` whose ``ds`` carries those values under
the classic keywords, so one geometry check serves both kinds of file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# decoders in order of preference; python-gdcm is never used (it crashed beside this code)
DECODER_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow")

# (functional group, attribute inside it, classic keyword of the per-frame view)
_FRAME_ATTRIBUTES = (
    ("PlanePositionSequence", "ImagePositionPatient", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness", "SliceThickness"),
    ("PixelValueTransformationSequence", "RescaleSlope", "RescaleSlope"),
    ("PixelValueTransformationSequence", "RescaleIntercept", "RescaleIntercept"),
    ("PixelValueTransformationSequence", "RescaleType", "RescaleType"),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime"),
    ("MRDiffusionSequence", "DiffusionBValue", "DiffusionBValue"),
    ("FrameContentSequence", "TemporalPositionIndex", "TemporalPositionIdentifier"),
    ("FrameContentSequence", "StackID", "StackID"),
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime", "TriggerTime"),
)

# what may tell frames at one position apart, and how a refusal names it
VOLUME_DIMENSIONS = (
    ("EchoTime", "several echoes (EchoTime {} ms)"),
    ("EchoNumbers", "several echoes (EchoNumbers {})"),
    ("DiffusionBValue", "several b-values ({} s/mm2)"),
    ("TemporalPositionIdentifier", "several phases / time points (TemporalPositionIdentifier {})"),
    ("TriggerTime", "several phases (TriggerTime {} ms)"),
    ("StackID", "several stacks (StackID {})"),
    ("AcquisitionNumber", "several acquisitions (AcquisitionNumber {})"),
)


class SeriesRefused(Exception):
    """A series that cannot become one correct volume; the message says why."""


@dataclass
class Slice:
    """One 2D image of a series: a single-frame file (``frame`` None) or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    ds: Any  # pydicom Dataset: the file's header, or the frame's values under classic keywords

    @property
    def key(self) -> str:
        """Identity for duplicate detection: SOPInstanceUID (+ frame); the path where the UID is blank."""
        sop = str(self.ds.get("SOPInstanceUID", "") or "") or str(self.path)
        return sop if self.frame is None else f"{sop}#{self.frame}"


def fmt(values: Any) -> str:
    """Numbers as messages print them: ``[1, 0, 0.0158]``, never ``np.float64(...)``."""
    if np.ndim(values) == 0:
        return f"{float(values):.6g}"
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def is_mosaic(ds: Any) -> bool:
    """Siemens mosaic: several slices tiled into one image (ImageType MOSAIC or NumberOfImagesInMosaic)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "MOSAIC" in image_type or (0x0019, 0x100A) in ds


def _group_value(ds: Any, frame_groups: Any, sequence: str, attribute: str) -> Any:
    """A functional-group attribute for one frame: per-frame first, then shared."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    for groups in (frame_groups, shared[0] if shared else None):
        if groups is None or sequence not in groups:
            continue
        items = groups[sequence].value
        if items and attribute in items[0]:
            return items[0][attribute].value
    return None


def frame_slices(path: Path, ds: Any, where: str) -> list[Slice]:
    """The slices of one file: itself, or each frame of an enhanced multi-frame file.

    Raises SeriesRefused for a mosaic and for a multi-frame file without per-frame functional groups.
    """
    from pydicom.dataset import Dataset

    if is_mosaic(ds):
        raise SeriesRefused(
            f"{where} is a Siemens mosaic (several slices tiled in each image), not supported: "
            "convert it with dcm2niix"
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if n_frames > 1:
            raise SeriesRefused(f"{where} has {n_frames} frames but no per-frame functional groups")
        return [Slice(path, None, ds)]
    if len(per_frame) != n_frames:
        raise SeriesRefused(f"{where}: {len(per_frame)} per-frame groups for {n_frames} frames")
    slices = []
    for f in range(n_frames):
        view = Dataset()
        for keyword in ("SOPInstanceUID", "Rows", "Columns", "SamplesPerPixel"):
            if keyword in ds:
                setattr(view, keyword, ds[keyword].value)
        for sequence, attribute, keyword in _FRAME_ATTRIBUTES:
            value = _group_value(ds, per_frame[f], sequence, attribute)
            if value is None and keyword in ds:  # some writers keep it at the top level
                value = ds[keyword].value
            if value is not None:
                setattr(view, keyword, value)
        slices.append(Slice(path, f, view))
    return slices


def what_differs(slices: list[Slice]) -> str | None:
    """Name the attribute that tells frames at one position apart (echo, b-value, phase...), if any."""
    for keyword, message in VOLUME_DIMENSIONS:
        values = {str(s.ds.get(keyword)) for s in slices if s.ds.get(keyword) is not None}
        if len(values) > 1:
            try:
                shown = fmt(sorted(float(v) for v in values))
            except ValueError:
                shown = str(sorted(values))
            return message.format(shown)
    return None


def decode_pixels(path: Path, where: str) -> tuple[Any, np.ndarray]:
    """Read one file's pixels: (dataset, (frames, rows, columns)), through a preferred pydicom plugin."""
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)  # already known as DICOM, perhaps without the preamble
    if "PixelData" not in ds:
        raise SeriesRefused(f"{where} has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:  # no file meta: the uncompressed encoding pydicom found while reading
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if not little:
            syntax = ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = syntax
    plugin = ""
    if syntax.is_compressed:
        try:
            available = get_decoder(syntax).available_plugins
        except NotImplementedError:
            raise SeriesRefused(f"{where}: transfer syntax {syntax.name} has no decoder in pydicom") from None
        usable = [p for p in DECODER_PREFERENCE if p in available]
        if not usable:
            raise SeriesRefused(
                f"{where}: no decoder installed for {syntax.name} "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle)"
            )
        plugin = usable[0]
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        pixels = ds.pixel_array
    except Exception as err:  # corrupt data and decoder failures raise many types
        raise SeriesRefused(
            f"cannot decode the pixel data of {where} ({type(err).__name__}: {err})"
        ) from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    return ds, pixels.reshape(n_frames, *pixels.shape[-2:]) if pixels.ndim >= 2 else pixels
