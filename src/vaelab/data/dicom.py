"""`--dataset dicom`: DICOM files read with pydicom, grouped into series, one image per slice or frame.

Every non-hidden file under `--data-dir` is tried (DICOM files often have no extension); one
that is not DICOM is skipped and counted, unless it is named `.dcm` / `.dicom`, which is an error.
Objects without pixel data (structured reports, RT plans and structures, presentation states,
key-object notes) and pixel objects that are not images of the patient (segmentations, RT dose
grids) are skipped and counted in one summary line. Files are grouped into series by
SeriesInstanceUID, ordered along the slice normal by ImagePositionPatient (InstanceNumber where
positions are missing), and each frame goes through the modality transform (RescaleSlope /
RescaleIntercept, or a Modality LUT -> Hounsfield units for CT) and the window of `medical.py`.

pydicom's warnings and log lines are silenced while it reads: they can quote header values
(names, dates), and no header value other than geometry and intensity parameters may reach any
output. Messages name files by their path relative to `--data-dir`, never by a header value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData
from vaelab.data.dicom_pixels import decode_frames
from vaelab.data.medical import (
    MAX_SLICE_PIXELS,
    MAX_VOXELS,
    Slice,
    Unit,
    load_units,
    quiet,
    relative,
    require,
    scan_tree,
)
from vaelab.errors import ConfigError, DataError

DICOM_SUFFIXES = (".dcm", ".dicom")  # a file named so must be DICOM
# Pixel-bearing objects that are not images of the patient: segmentations, dose grids, raw data.
NON_IMAGE_MODALITIES = {"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC",
                        "FID", "RWV", "PLAN", "ECG", "HD", "AU", "RAW"}
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
MODALITY = re.compile(r"[A-Z0-9_]{1,16}")  # a DICOM code string: safe to name in a message


def is_dicom(path: Path) -> bool:
    """Whether `path` starts with the DICOM preamble (128 bytes + 'DICM')."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


@dataclass
class Header:
    """What vaelab keeps of one file's header: geometry, intensity and grouping keys.

    `series` and `patient` are only compared in memory to group and split the files; like every
    other identifying value they are never written or printed.
    """

    path: Path
    rel: str
    series: str
    patient: Optional[str]
    modality: str
    rows: int
    cols: int
    frames: int
    samples: int
    instance: Optional[int] = None
    position: Optional[np.ndarray] = None  # ImagePositionPatient of the first frame (3,), mm, LPS
    frame_positions: Optional[np.ndarray] = None  # (frames, 3) for enhanced multi-frame files
    orientation: Optional[np.ndarray] = None  # ImageOrientationPatient (6,): row and column directions
    spacing: Optional[tuple[float, float]] = None  # PixelSpacing: between rows, between columns (mm)
    slice_spacing: Optional[float] = None  # SpacingBetweenSlices or SliceThickness (mm)
    label: Optional[int] = None

    @property
    def positions(self) -> Optional[np.ndarray]:
        """(frames, 3) position of every frame, where the header gives them."""
        if self.frame_positions is not None:
            return self.frame_positions
        if self.position is not None and self.frames == 1:
            return self.position[None]
        return None


def _floats(value: Any, n: int) -> Optional[np.ndarray]:
    """A multi-valued DS element as n finite floats, or None when absent or malformed."""
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.isfinite(out).all() else None


def _first(ds: Any, *path: str) -> Any:
    """ds.A[0].B[0].C...: a nested functional-group attribute, or None."""
    node = ds
    for i, name in enumerate(path):
        node = getattr(node, name, None)
        if node is None:
            return None
        if i < len(path) - 1:
            if len(node) == 0:
                return None
            node = node[0]
    return node


def _geometry(ds: Any, header: Header) -> None:
    """Fill position, orientation and spacing from the classic or the enhanced (functional group) layout."""
    header.position = _floats(ds.get("ImagePositionPatient"), 3)
    header.orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if shared:
        if header.orientation is None:
            header.orientation = _floats(_first(shared[0], "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        if spacing is None:
            spacing = _floats(_first(shared[0], "PixelMeasuresSequence", "PixelSpacing"), 2)
        thickness = thickness or _first(shared[0], "PixelMeasuresSequence", "SpacingBetweenSlices") \
            or _first(shared[0], "PixelMeasuresSequence", "SliceThickness")
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame and len(per_frame) == header.frames:
        positions = [_floats(_first(f, "PlanePositionSequence", "ImagePositionPatient"), 3) for f in per_frame]
        if all(p is not None for p in positions):
            header.frame_positions = np.stack(positions)
            header.position = header.frame_positions[0]
    header.spacing = None if spacing is None or (spacing <= 0).any() else (float(spacing[0]), float(spacing[1]))
    try:
        header.slice_spacing = float(thickness) if thickness and float(thickness) > 0 else None
    except (TypeError, ValueError):
        header.slice_spacing = None


def read_header(path: Path, root: Path) -> tuple[Optional[Header], str]:
    """One file's header -> (Header, "image"), or (None, why skipped): "not DICOM" / "non-image object(s)".

    Large values (the pixel data) are not read. A file named .dcm that is not DICOM, or a DICOM
    file whose header cannot be parsed, is one DataError naming the file.
    """
    pydicom = require("pydicom", "dicom")
    rel = relative(path, root)
    if not is_dicom(path):
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise DataError(f"{rel}: not a DICOM file (no DICM preamble; truncated, or another format)")
        return None, "file(s) that are not DICOM"
    try:
        with quiet("pydicom"):
            ds = pydicom.dcmread(path, defer_size=1024)
            if not any(tag in ds for tag in PIXEL_TAGS):
                # An image class without pixels is a file cut short, not a report to skip.
                sop = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
                if sop is None or "Image Storage" in getattr(sop, "name", ""):
                    raise DataError(f"{rel}: an image object without its pixel data (truncated or corrupt)")
                return None, "non-image object(s)"
            modality = str(ds.get("Modality", "") or "OT").strip().upper()
            modality = modality if MODALITY.fullmatch(modality) else "OT"
            if modality in NON_IMAGE_MODALITIES:
                return None, "non-image object(s)"
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            series = str(ds.get("SeriesInstanceUID", "") or "")
            patient = str(ds.get("PatientID", "") or "").strip() or None
            instance = ds.get("InstanceNumber")
            header = Header(path, rel, series or f"file:{rel}", patient, modality, rows, cols, frames, samples,
                            int(instance) if instance not in (None, "") else None)
            _geometry(ds, header)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a parser fed hostile bytes can raise anything; one line each
        raise DataError(f"{rel}: not a readable DICOM file ({type(exc).__name__}; truncated or corrupt)") from None
    _check_size(header)
    return header, "image"


def _check_size(h: Header) -> None:
    """Refuse absurd dimensions from the header, before any pixel memory is allocated."""
    if h.rows < 1 or h.cols < 1 or h.frames < 1 or h.samples not in (1, 3):
        raise DataError(f"{h.rel}: invalid image dimensions ({h.rows}×{h.cols}, {h.frames} frame(s), "
                        f"{h.samples} sample(s) per pixel)")
    if h.rows * h.cols > MAX_SLICE_PIXELS or h.rows * h.cols * h.frames > MAX_VOXELS:
        raise DataError(f"{h.rel}: claims {h.frames} frame(s) of {h.rows}×{h.cols} pixels, more than the "
                        f"{MAX_VOXELS} voxels vaelab reads from one file")


# ---- series -----------------------------------------------------------------------------------


@dataclass
class Series:
    """The files of one series in slice order; every frame of every file is one slice."""

    headers: list[Header] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.headers[0].rows

    @property
    def cols(self) -> int:
        return self.headers[0].cols

    def slices(self) -> Iterator[Slice]:
        """Decode the files one by one (never the whole series at once) and yield their frames in order."""
        for h in self.headers:
            frames = decode_frames(h)
            order = _frame_order(h)
            for i in order:
                yield frames[i]

    def volume(self) -> tuple[np.ndarray, list[bool]]:
        """The whole series as one float32 volume (columns, rows, slices) in modality units, NIfTI's
        voxel order for `affine()`, and each slice's MONOCHROME1 flag: what a 3-D loader starts from."""
        frames = list(self.slices())
        if any(s.colour for s in frames):
            raise DataError(f"{self.headers[0].rel}: a colour series is not a volume")
        return np.stack([s.values for s in frames]).transpose(2, 1, 0), [s.invert for s in frames]

    def normal(self) -> Optional[np.ndarray]:
        """The slice normal (row direction × column direction), where the orientation is known."""
        o = self.headers[0].orientation
        if o is None:
            return None
        n = np.cross(o[:3], o[3:])
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else None

    def affine(self) -> np.ndarray:
        """Voxel (column, row, slice) -> world RAS mm, as NIfTI stores it (DICOM's LPS with x, y negated).

        Without geometry in the headers: the identity scaled by the pixel spacing (1 mm if unknown).
        """
        first = self.headers[0]
        n_slices = sum(h.frames for h in self.headers)
        row_spacing, col_spacing = first.spacing or (1.0, 1.0)
        o = first.orientation if first.orientation is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
        normal = self.normal()
        positions = self.frame_positions()
        lps = np.eye(4)
        lps[:3, 0] = o[:3] * col_spacing  # along a row: the column index grows
        lps[:3, 1] = o[3:] * row_spacing  # down a column: the row index grows
        if positions is not None and n_slices > 1:
            lps[:3, 2] = (positions[-1] - positions[0]) / (n_slices - 1)
        else:
            lps[:3, 2] = (normal if normal is not None else np.array([0, 0, 1.0])) * (first.slice_spacing or 1.0)
        lps[:3, 3] = positions[0] if positions is not None else np.zeros(3)
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def frame_positions(self) -> Optional[np.ndarray]:
        """(slices, 3) positions in slice order, or None when any is missing."""
        parts = []
        for h in self.headers:
            p = h.positions
            if p is None:
                return None
            parts.append(p[_frame_order(h)])
        return np.concatenate(parts)


def _frame_order(h: Header) -> list[int]:
    """A multi-frame file's frames along the slice normal (stored order when positions are unknown)."""
    if h.frame_positions is None or h.orientation is None:
        return list(range(h.frames))
    normal = np.cross(h.orientation[:3], h.orientation[3:])
    return list(np.argsort(h.frame_positions @ normal, kind="stable"))


def order_series(headers: list[Header]) -> Series:
    """Sort one series' files along the slice normal (ImagePositionPatient), else by InstanceNumber.

    Every file of a series must have the same size: slices of mixed sizes are one DataError.
    """
    first = headers[0]
    for h in headers[1:]:
        if (h.rows, h.cols, h.samples) != (first.rows, first.cols, first.samples):
            raise DataError(f"slices of mixed sizes in one series: {first.rel} is {first.rows}×{first.cols} but "
                            f"{h.rel} is {h.rows}×{h.cols}")
    same_orientation = all(h.orientation is not None and first.orientation is not None
                           and np.allclose(h.orientation, first.orientation, atol=1e-4) for h in headers)
    if same_orientation and all(h.position is not None for h in headers):
        normal = np.cross(first.orientation[:3], first.orientation[3:])
        key = {id(h): float(h.position @ normal) for h in headers}
        headers = sorted(headers, key=lambda h: (key[id(h)], h.instance if h.instance is not None else 0, h.rel))
    else:
        headers = sorted(headers, key=lambda h: (h.instance is None, h.instance or 0, h.rel))
    return Series(headers)


def scan_dicom(root: Path, files: list[Path], labels: list[Optional[int]],
               allow_mixed: bool) -> tuple[list[tuple[Series, Optional[str], Optional[int]]], dict[str, int]]:
    """Read every header under `root` -> ([(series, patient, label)], skipped counts)."""
    skipped: dict[str, int] = {}
    images: list[Header] = []
    for path, label in zip(files, labels):
        header, kind = read_header(path, root)
        if header is None:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        header.label = label
        images.append(header)
    if not images:
        what = ", ".join(f"{v} {k}" for k, v in skipped.items()) or "no files"
        raise DataError(f"--data-dir holds no DICOM images ({what} skipped)")
    modalities: dict[str, str] = {}
    for h in images:
        modalities.setdefault(h.modality, h.rel)
    if len(modalities) > 1 and not allow_mixed:
        found = ", ".join(f"{m} in {rel}" for m, rel in sorted(modalities.items()))
        raise DataError(f"--data-dir mixes modalities ({found}); train on one, or pass --allow-mixed")
    grouped: dict[tuple[Optional[int], str], list[Header]] = {}
    for h in images:
        grouped.setdefault((h.label, h.series), []).append(h)
    series = []
    for (label, _), members in grouped.items():
        patients = {h.patient for h in members}
        series.append((order_series(members), patients.pop() if len(patients) == 1 else None, label))
    return series, skipped


def load_dicom(cfg: DataConfig) -> ImageData:
    """The DICOM files under `data_dir`: one image per slice / frame, split by patient (else series)."""
    if cfg.data_dir is None:
        raise DataError("--dataset dicom needs --data-dir DIR (a folder of DICOM files, searched recursively)")
    if cfg.slice_axis is not None:
        raise ConfigError("--slice-axis is for --dataset nifti (DICOM images are their stored slices and frames)")
    pydicom = require("pydicom", "dicom")
    root = Path(cfg.data_dir).expanduser()
    files, labels, class_names = scan_tree(root, "dicom", cfg.class_folders)

    def scan() -> tuple[list[Unit], list[str], dict[str, int]]:
        found, skipped = scan_dicom(root, files, labels, cfg.allow_mixed)
        units = []
        for i, (series, patient, label) in enumerate(found):
            group = f"patient:{patient}" if patient else f"series:{i}"
            units.append(Unit(series.slices, group, label))
        return units, class_names, skipped

    params = {"allow_mixed": cfg.allow_mixed, "pydicom": pydicom.__version__}
    return load_units("dicom", cfg, root, files, params, scan)
