"""The slices foscu convert reads from what hospitals export: compressed transfer syntaxes (decoding),
enhanced multi-frame MR, mosaics. Every file is written here; each result is compared voxel by voxel and
affine by affine with the same volume written as uncompressed single frames."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from test_dicom import (
    AXIAL,
    COL_SPACING,
    INTERCEPT,
    OBLIQUE,
    OBLIQUE_R,
    ROW_SPACING,
    SLOPE,
    _positions,
    _write_series,
)

from foscu.data.dicom import convert_dicom

SHAPE = (32, 36, 6)  # columns, rows, slices (JPEG 2000 needs >= 32 for its 6 resolutions)
POSITIONS = _positions((-40, 5, 60), OBLIQUE_R[:, 2], 3.0, SHAPE[2])


def _convert(root: Path, out: Path) -> tuple[dict, dict[str, nib.Nifti1Image]]:
    record = convert_dicom(root, out, progress=False)
    images = {s["description"]: nib.load(out / s["output"]) for s in record["series"]}
    return record, images


def _reference(tmp: Path, raw: np.ndarray, orientation=OBLIQUE, positions=POSITIONS) -> nib.Nifti1Image:
    """The volume written as uncompressed single frames and converted: what every variant must equal."""
    _write_series(tmp / "ref_dicom", raw, positions, orientation, "1.2.3.999", names="sorted")
    record = convert_dicom(tmp / "ref_dicom", tmp / "ref_out", progress=False)
    return nib.load(tmp / "ref_out" / record["series"][0]["output"])


def _assert_same(image: nib.Nifti1Image, reference: nib.Nifti1Image, atol: float = 0.0) -> None:
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(image.dataobj), np.asarray(reference.dataobj), atol=atol, rtol=0)


# ---- 1. compressed transfer syntaxes ---------------------------------------------------------------------


def _encapsulate(ds: Dataset, syntax, frames: list[bytes], lossy: bool = False) -> None:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    if lossy:
        ds.LossyImageCompression = "01"


def _compress(ds: Dataset, syntax) -> None:
    """Encode one slice with ``syntax``: pydicom's own encoders, else imagecodecs (JPEG processes 1/4/14)."""
    import imagecodecs

    pixels = ds.pixel_array
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax)  # pydicom (RLE), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000)
    elif syntax == JPEGLosslessSV1:  # process 14, first-order prediction: the archives' usual lossless JPEG
        _encapsulate(ds, syntax, [imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1)])
    elif syntax == JPEGLossless:  # process 14 with predictor 6
        _encapsulate(ds, syntax, [imagecodecs.ljpeg_encode(pixels, bitspersample=12)])
    elif syntax == JPEGExtended12Bit:
        ds.BitsStored, ds.HighBit = 12, 11
        _encapsulate(ds, syntax, [imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=12)], lossy=True)
    else:
        raise AssertionError(syntax)


LOSSLESS = {
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
    "jpeg-lossless-p6": JPEGLossless,
}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("compressed")
    raw = np.random.default_rng(5).integers(0, 4000, SHAPE)
    reference = _reference(tmp, raw)
    root = tmp / "dicom"
    for n, (name, syntax) in enumerate({**LOSSLESS, "jpeg-extended-12bit": JPEGExtended12Bit}.items()):
        folder = root / name
        _write_series(folder, raw, POSITIONS, OBLIQUE, f"1.2.3.{n}", seed=n, description=name)
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            _compress(ds, syntax)
            ds.save_as(path, enforce_file_format=True)
            assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    record, images = _convert(root, tmp / "out")
    return {"record": record, "images": images, "reference": reference, "raw": raw}


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_syntaxes_equal_the_uncompressed_series(compressed, name):
    assert compressed["record"]["refused"] == []
    _assert_same(compressed["images"][name], compressed["reference"])


def test_lossy_jpeg_is_close_and_says_so(compressed):
    image, reference = compressed["images"]["jpeg-extended-12bit"], compressed["reference"]
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
    error = np.abs(np.asarray(image.dataobj) - np.asarray(reference.dataobj)) / SLOPE  # in stored units
    assert 0 < error.max() < 200 and error.mean() < 20
    entry = next(s for s in compressed["record"]["series"] if s["description"] == "jpeg-extended-12bit")
    assert any("lossy" in w for w in entry["warnings"])


def test_jpeg_baseline_8bit_matches_an_independent_decoder(tmp_path):
    import imagecodecs

    raw = np.random.default_rng(2).integers(0, 255, SHAPE).astype(np.uint8)
    folder = tmp_path / "dicom"
    _write_series(folder, raw, POSITIONS, OBLIQUE, "1.2.3.8", names="sorted")
    expected = np.empty(SHAPE)
    for k in range(SHAPE[2]):
        path = folder / f"slice_{k:03d}.dcm"
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        pixels = raw[:, :, k].T.copy()  # (rows, columns)
        encoded = imagecodecs.jpeg8_encode(pixels, level=90)
        expected[:, :, k] = imagecodecs.jpeg8_decode(encoded).T * SLOPE + INTERCEPT
        ds.PhotometricInterpretation = "MONOCHROME2"
        _encapsulate(ds, JPEGBaseline8Bit, [encoded], lossy=True)
        ds.save_as(path, enforce_file_format=True)
    record, images = _convert(folder, tmp_path / "out")
    # two IDCT implementations may round one grey level apart
    np.testing.assert_allclose(np.asarray(images[""].dataobj), expected, atol=SLOPE, rtol=0)


def test_missing_decoder_is_named(tmp_path, monkeypatch):
    import foscu.data.dicom_frames as frames

    raw = np.random.default_rng(1).integers(0, 4000, SHAPE)
    _write_series(tmp_path / "d", raw, POSITIONS, OBLIQUE, "1.2.3.7", names="sorted")
    for path in (tmp_path / "d").iterdir():
        ds = pydicom.dcmread(path)
        _compress(ds, JPEGLosslessSV1)
        ds.save_as(path, enforce_file_format=True)
    monkeypatch.setattr(frames, "DECODER_PREFERENCE", ("gdcm",))
    with pytest.raises(Exception, match="no decoder installed for JPEG Lossless.*pip install pylibjpeg"):
        convert_dicom(tmp_path / "d", tmp_path / "out", progress=False)


# ---- 2. enhanced multi-frame MR, mosaic ------------------------------------------------------------------


def _item(**values) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _write_enhanced(
    path: Path, raw: np.ndarray, positions, orientation, echo_times=None, b_values=None, seed=0
) -> None:
    """raw (columns, rows, frames) -> one Enhanced MR Image Storage file, frames in shuffled order."""
    n = raw.shape[2]
    order = np.random.default_rng(seed).permutation(n)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedMRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "MR", "DOE^JANE", "PID4711"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesDescription = "enhanced"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, raw.shape[1], raw.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = _item(
        PixelMeasuresSequence=[_item(PixelSpacing=[ROW_SPACING, COL_SPACING], SliceThickness=3.0)],
        PlaneOrientationSequence=[_item(ImageOrientationPatient=[f"{v:.6f}" for v in orientation])],
        PixelValueTransformationSequence=[
            _item(RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, RescaleType="US")
        ],
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    groups = []
    for f in order:
        item = _item(
            PlanePositionSequence=[_item(ImagePositionPatient=[f"{v:.5f}" for v in positions[f]])],
            FrameContentSequence=[_item(InStackPositionNumber=int(f) + 1)],
        )
        if echo_times is not None:
            item.MREchoSequence = [_item(EffectiveEchoTime=echo_times[f])]
        if b_values is not None:
            item.MRDiffusionSequence = [_item(DiffusionBValue=b_values[f])]
        groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = groups
    frames = np.stack([raw[:, :, f].T for f in order])  # (frames, rows, columns)
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_equals_single_frames(tmp_path):
    raw = np.random.default_rng(6).integers(0, 4000, SHAPE)
    reference = _reference(tmp_path, raw)
    (tmp_path / "mf").mkdir()
    _write_enhanced(tmp_path / "mf" / "enhanced.dcm", raw, POSITIONS, OBLIQUE)
    record, images = _convert(tmp_path / "mf", tmp_path / "out")
    assert record["series"][0]["slices"] == SHAPE[2]
    _assert_same(images["enhanced"], reference)
    # the same file with JPEG 2000 frames (one encapsulated fragment per frame)
    ds = pydicom.dcmread(tmp_path / "mf" / "enhanced.dcm")
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "mf" / "enhanced.dcm", enforce_file_format=True)
    _, images = _convert(tmp_path / "mf", tmp_path / "out_j2k")
    _assert_same(images["enhanced"], reference)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("echoes", r"several echoes \(EchoTime \[2\.46, 4\.92\] ms\)"),
        ("b-values", r"several b-values \(\[0, 800\]"),
    ],
)
def test_enhanced_with_several_volumes_is_refused_by_name(tmp_path, kind, reason):
    raw = np.random.default_rng(6).integers(0, 4000, (8, 10, 6))
    positions = _positions((0, 0, 0), (0, 0, 1), 3.0, 3) * 2  # two volumes of 3 frames at the same places
    values = [2.46] * 3 + [4.92] * 3 if kind == "echoes" else [0] * 3 + [800] * 3
    options = {"echo_times": values} if kind == "echoes" else {"b_values": values}
    (tmp_path / "mf").mkdir()
    _write_enhanced(tmp_path / "mf" / "x.dcm", raw, positions, AXIAL, **options)
    with pytest.raises(Exception, match=reason):
        convert_dicom(tmp_path / "mf", tmp_path / "out", progress=False)


def test_mosaic_is_refused_as_mosaic(tmp_path):
    raw = np.random.default_rng(6).integers(0, 4000, (8, 10, 2))  # two volumes, one mosaic file each
    _write_series(tmp_path / "m", raw, _positions((0, 0, 0), (0, 0, 1), 3.0, 2), AXIAL, "1.2.3.5")
    for path in (tmp_path / "m").iterdir():
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(Exception, match="Siemens mosaic") as err:
        convert_dicom(tmp_path / "m", tmp_path / "out", progress=False)
    assert "slice(s)" not in str(err.value)
