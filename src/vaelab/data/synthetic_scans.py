"""Synthetic scans written with pydicom's and nibabel's writers: a CT-like phantom as DICOM or NIfTI.

For tests, benchmarks and fuzzing seeds (`seed_files`): nothing here comes from a patient. The
phantom is a body ellipse of soft tissue (40 HU) with two lungs (-800 HU) and a bone ring
(700 HU) in air (-1000 HU), plus a little noise; its extent shrinks towards both ends, so the
first and last slices are pure air (empty after any window).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SOP_CLASSES = {"CT": CT_IMAGE, "MR": MR_IMAGE}


def phantom(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A CT-like volume (slices, rows, cols) float32 in HU; the outermost slices are all air."""
    k, r, c = (int(v) for v in shape)
    rng = np.random.default_rng(seed)
    z = np.linspace(-1.0, 1.0, k)[:, None, None]
    y = np.linspace(-1.0, 1.0, r)[None, :, None]
    x = np.linspace(-1.0, 1.0, c)[None, None, :]
    scale = np.clip(1.0 - z**2, 0.0, 1.0) * (np.abs(z) < 0.95)  # the body's radius along the slices
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < scale
    lungs = ((np.abs(x) - 0.35) / 0.22) ** 2 + (y / 0.35) ** 2 < scale
    ring = body & ((x / 0.8) ** 2 + (y / 0.6) ** 2 > 0.8 * scale)
    hu = np.full((k, r, c), -1000.0)
    hu[body] = 40.0
    hu[lungs & body] = -800.0
    hu[ring] = 700.0
    hu[body] += rng.normal(0.0, 15.0, int(body.sum()))
    return hu.astype(np.float32)


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def dicom_dataset(pixels: np.ndarray, *, sop_class: str, modality: str, series_uid: str, instance: int,
                  slope: float = 1.0, intercept: float = 0.0, photometric: str = "MONOCHROME2",
                  position: Optional[Sequence[float]] = None, orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
                  spacing: Sequence[float] = (0.8, 0.8), slice_spacing: float = 2.5,
                  identity: Optional[dict[str, str]] = None) -> Any:
    """One DICOM dataset holding `pixels` (rows, cols) or (frames, rows, cols), int16 or uint16."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _uid(series_uid, instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, _uid("study", series_uid)
    ds.InstanceNumber = instance
    ds.PatientID = "SYNTHETIC"
    for key, value in (identity or {}).items():
        setattr(ds, key, value)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    if pixels.ndim == 3:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.PixelSpacing = [f"{v:g}" for v in spacing]
    ds.SliceThickness = f"{slice_spacing:g}"
    ds.PixelData = np.ascontiguousarray(pixels.astype("<i2" if pixels.dtype == np.int16 else "<u2")).tobytes()
    return ds


def stored_values(hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """The integers a scanner stores for `hu` (stored · slope + intercept = HU), int16 or uint16."""
    raw = np.round((hu.astype(np.float64) - intercept) / slope)
    if raw.min() >= 0 and raw.max() <= 65535:
        return raw.astype(np.uint16)
    return np.clip(raw, -32768, 32767).astype(np.int16)


def write_dicom_series(folder: str | Path, hu: np.ndarray, *, modality: str = "CT", slope: float = 1.0,
                       intercept: float = -1024.0, photometric: str = "MONOCHROME2",
                       orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), origin: Sequence[float] = (0, 0, 0),
                       spacing: Sequence[float] = (0.8, 0.8), slice_spacing: float = 2.5, series: str = "s1",
                       identity: Optional[dict[str, str]] = None, names: Optional[Sequence[str]] = None,
                       multi_frame: bool = False) -> list[Path]:
    """Write `hu` (slices, rows, cols) as one DICOM series: a file per slice, or one multi-frame file.

    Slice i lies at origin + i · slice_spacing along the normal of `orientation`; `names` gives
    the file names (default s1_000.dcm, ...), e.g. shuffled to test the ordering. A multi-frame
    file is an Enhanced CT object with per-frame positions in its functional groups.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    o = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    positions = [np.asarray(origin, dtype=np.float64) + i * slice_spacing * normal for i in range(len(hu))]
    raw = stored_values(hu, slope, intercept)
    series_uid = _uid("series", series)
    common = dict(modality=modality, series_uid=series_uid, slope=slope, intercept=intercept,
                  photometric=photometric, orientation=orientation, spacing=spacing, slice_spacing=slice_spacing,
                  identity=identity)
    if multi_frame:
        ds = dicom_dataset(raw, sop_class=ENHANCED_CT_IMAGE, instance=1, position=positions[0], **common)
        frames = []
        for p in positions:
            item, plane = Dataset(), Dataset()
            plane.ImagePositionPatient = [f"{v:.6g}" for v in p]
            item.PlanePositionSequence = DicomSequence([plane])
            frames.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
        path = folder / (names[0] if names else f"{series}_multiframe.dcm")
        ds.save_as(path, enforce_file_format=True)
        return [path]
    paths = []
    for i, p in enumerate(positions):
        ds = dicom_dataset(raw[i], sop_class=SOP_CLASSES.get(modality, CT_IMAGE), instance=i + 1, position=p,
                           **common)
        path = folder / (names[i] if names else f"{series}_{i:03d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_structured_report(path: str | Path, identity: Optional[dict[str, str]] = None) -> Path:
    """A DICOM object without pixel data (a Basic Text SR), to be skipped and counted."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = _uid("sr", path)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = _uid("sr-series", path)
    for key, value in (identity or {}).items():
        setattr(ds, key, value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: str | Path, volume: np.ndarray, affine: Optional[np.ndarray] = None) -> Path:
    """`volume` (I, J, K) or (I, J, K, T) as a NIfTI-1 file (.nii or .nii.gz) with `affine`."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(volume), np.eye(4) if affine is None else np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def oblique_affine(spacing: Sequence[float] = (1.0, 1.2, 2.0), degrees: float = 20.0,
                   origin: Sequence[float] = (-30.0, 12.0, 5.0)) -> np.ndarray:
    """A voxel -> RAS affine rotated about x and z (not axis-aligned), with anisotropic spacing."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def seed_files(folder: str | Path) -> list[Path]:
    """Small valid DICOM and NIfTI files, one of each kind the readers handle: seeds for fuzzing.

    A CT series (3 slices, signed, slope/intercept), an MR slice, a MONOCHROME1 slice, an
    Enhanced CT multi-frame file, a structured report, a 3-D .nii, a 4-D .nii.gz with an oblique
    affine. All 16×16 or smaller, a few kB each.
    """
    folder = Path(folder)
    hu = phantom((5, 16, 16), seed=1)[1:4]
    files = write_dicom_series(folder / "ct", hu, slope=0.5, intercept=-1024.0, series="ct")
    files += write_dicom_series(folder / "mr", hu[:1] + 1000.0, modality="MR", intercept=0.0, series="mr")
    files += write_dicom_series(folder / "mono1", hu[:1], photometric="MONOCHROME1", series="mono1")
    files += write_dicom_series(folder / "multiframe", hu, series="mf", multi_frame=True)
    files.append(write_structured_report(folder / "report" / "sr.dcm"))
    volume = phantom((8, 12, 10), seed=2).transpose(2, 1, 0)  # (I, J, K) = (x, y, z)
    files.append(write_nifti(folder / "nifti" / "volume.nii", volume.astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0])))
    series_4d = np.stack([volume, volume + 10.0], axis=-1).astype(np.float32)
    files.append(write_nifti(folder / "nifti" / "series4d.nii.gz", series_4d, oblique_affine()))
    return files
