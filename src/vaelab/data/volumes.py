"""`--dimensions 3`: every NIfTI volume (every time point of a 4-D file) or DICOM series is one sample.

A volume reaches a 3-D model in four steps, the 2-D path's (`medical.py`) one dimension up:

1. its voxels in modality units (HU for CT), as `nifti.read_volumes` / `dicom.Series.volume` give them;
2. the intensity window -> 0..255 (clipped): `--intensity-window LOW,HIGH`, or the robust
   percentiles `medical.PERCENTILES` (0.5th, 99.5th) of this volume's voxels (every s-th voxel
   along each axis, at most SAMPLE_VOXELS of them); MONOCHROME1 series inverted;
3. reoriented (`orientation.VolumeView`): D along the voxel axis closest to axial, superior
   first, each (H, W) plane an axial slice in the radiological view;
4. resampled to `--volume-size D,H,W` (default 32,32,32): each plane resized bilinearly to H × W
   exactly as a 2-D slice is (PIL, on the windowed values), then the stack resized bilinearly
   along D; each axis independently, so the aspect ratio is not kept (the volume is stretched to
   the grid, as 2-D slices are stretched to squares); rounded to uint8 (1, D, H, W).

A volume that is one constant value after windowing is skipped and counted; a DICOM series of
one slice, or a 2-D NIfTI file, is not a volume and is skipped and counted too. Splits are by
patient (PatientID, BIDS `sub-<label>`), else by series / file, as in 2-D: the time points of a
4-D file stay together. The decoded volumes go through the decoded-image cache (`cache.py`),
keyed by every parameter above. `to_model` / `from_model` are the forward map and its inverse,
which `vaelab reconstruct` uses to give a volume back on its input's grid and in its units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData
from vaelab.data.cache import CacheKey, SplitWriter
from vaelab.data.medical import (
    DECODER_VERSION,
    PERCENTILES,
    TEST_FRACTION,
    Window,
    bids_subject,
    cached_units,
    check_finite,
    fixed_window,
    relative,
    require,
    resize_float,
    robust_window,
    scan_tree,
    split_units,
    to_uint8,
)
from vaelab.data.orientation import VolumeView, take_slice, volume_view_for
from vaelab.errors import DataError

SAMPLE_VOXELS = 2**20  # per volume, for the percentiles
VOLUME_VERSION = "volumes-1"  # bump when a change here changes the decoded volumes (invalidates caches)


@dataclass
class Volume:
    """One volume as read: modality values (I, J, K) float32 in the file's voxel order, and its geometry."""

    values: np.ndarray
    affine: np.ndarray  # voxel -> world RAS mm
    invert: bool = False  # MONOCHROME1: low values are shown white
    where: str = ""  # the file or series, relative to --data-dir, for messages


def volume_window(values: np.ndarray, window: Optional[Window], where: str = "") -> Window:
    """The fixed window, or this volume's robust percentiles (NaN / Inf refused first)."""
    check_finite(values, where)
    if window is not None:
        return window
    stride = max(1, math.ceil((values.size / SAMPLE_VOXELS) ** (1 / 3)))
    return robust_window([np.asarray(values[::stride, ::stride, ::stride], dtype=np.float32)])


def resample_depth(planes: np.ndarray, depth: int) -> np.ndarray:
    """(n, H, W) float -> (depth, H, W): bilinear along the first axis only (PIL, as 2-D slices)."""
    n, h, w = planes.shape
    if n == depth:
        return planes
    return resize_float(planes.reshape(n, h * w), (depth, h * w)).reshape(depth, h, w)


def to_model(values: np.ndarray, view: VolumeView, window: Window, size: tuple[int, int, int],
             invert: bool = False) -> np.ndarray:
    """Modality values (I, J, K) -> windowed, reoriented, resampled grey values (D, H, W) float32 in [0, 255]."""
    d, h, w = size
    planes = []
    for k in range(values.shape[view.axis]):  # one plane at a time: the volume is never copied whole as floats
        grey = window.apply(take_slice(values, view.axis, k)).astype(np.float32)
        planes.append(resize_float(view.display.forward(grey), (h, w)))
    stack = np.stack(planes)
    if view.flip_depth:
        stack = stack[::-1]
    out = np.clip(resample_depth(np.ascontiguousarray(stack), d), 0.0, 255.0)
    return 255.0 - out if invert else out


def from_model(grey: np.ndarray, view: VolumeView, shape: tuple[int, int, int], window: Window,
               invert: bool = False) -> np.ndarray:
    """The inverse of `to_model`: grey values (D, H, W) in [0, 255] -> modality values on the input's
    voxel grid `shape` (I, J, K), float32 (within the window: clipped values cannot come back)."""
    grey = np.clip(np.asarray(grey, dtype=np.float32), 0.0, 255.0)
    if invert:
        grey = 255.0 - grey
    n = shape[view.axis]
    rest = [s for a, s in enumerate(shape) if a != view.axis]  # the voxel plane (p, q)
    shown = tuple(reversed(rest)) if view.display.transpose else tuple(rest)  # the displayed plane (rows, cols)
    stack = resample_depth(grey, n)
    if view.flip_depth:
        stack = stack[::-1]
    planes = [view.display.backward(resize_float(np.ascontiguousarray(p), shown)) for p in stack]
    return window.inverse(np.stack(planes, axis=view.axis))


def volume_sample(vol: Volume, window: Optional[Window], size: tuple[int, int, int]) -> Optional[np.ndarray]:
    """One volume -> uint8 (1, D, H, W), or None when it is one constant value after windowing."""
    win = volume_window(vol.values, window, vol.where)
    grey = to_uint8(to_model(vol.values, volume_view_for(vol.affine), win, size, vol.invert))
    return None if grey.min() == grey.max() else grey[None]


@dataclass
class VolumeUnit:
    """One NIfTI file or DICOM series: its volumes, read on use; units of one group share a split."""

    volumes: Callable[[], Iterator[Volume]]
    group: str  # patient, subject, series or file: compared in memory only, never written
    label: Optional[int]


Scan = Callable[[], tuple[list[VolumeUnit], list[str], dict[str, int]]]


def load_volume_units(kind: str, cfg: DataConfig, root: Path, files: list[Path], params: dict[str, Any],
                      scan: Scan) -> ImageData:
    """Decode the units `scan()` finds into (N, 1, D, H, W) uint8 splits, through the decoded-image cache."""
    size = cfg.resolved_volume_size()
    window = fixed_window(cfg)

    def build(writer: SplitWriter) -> tuple[list[str], dict[str, Any]]:
        units, class_names, skipped = scan()
        unit_word = "series" if kind == "dicom" else "volume files"
        groups = {u.group for u in units}
        if len(groups) < 3:
            raise DataError(f"--dataset {kind} --dimensions 3: found {len(units)} {unit_word} of {len(groups)} "
                            "patient(s); splits are made by patient (or by series / file), so train/validation/test "
                            "need at least 3")
        plan = split_units([u.group for u in units], cfg, f"patients or {unit_word}")
        empty = 0
        for split, members in plan.items():
            for i in members:
                for vol in units[i].volumes():
                    grey = volume_sample(vol, window, size)
                    if grey is None:
                        empty += 1
                        continue
                    label = units[i].label
                    writer.add(split, grey[None], None if label is None else np.full(1, label, np.int64))
        skipped = dict(skipped)
        if empty:
            skipped["empty volume(s)"] = empty
        return class_names, {"skipped": skipped, "units": len(units)}

    key = CacheKey(f"{kind}-3d", root, files, {
        **params, "dimensions": 3, "volume_size": list(size),
        "window": None if window is None else [window.low, window.high], "percentiles": list(PERCENTILES),
        "sample_voxels": SAMPLE_VOXELS, "class_folders": cfg.class_folders, "split_seed": cfg.split_seed,
        "val_fraction": cfg.val_fraction, "test_fraction": TEST_FRACTION, "decoder": DECODER_VERSION,
        "volumes": VOLUME_VERSION})
    return cached_units(kind, key, build, f"--dataset {kind} --dimensions 3", cfg.cache)


# ---- the two formats --------------------------------------------------------------------------


def load_nifti_volumes(cfg: DataConfig) -> ImageData:
    """`--dataset nifti --dimensions 3`: every 3-D volume (every time point of a 4-D file) one sample."""
    from vaelab.data.nifti import is_nifti_name, open_nifti, read_volumes

    if cfg.data_dir is None:
        raise DataError("--dataset nifti needs --data-dir DIR (a folder of .nii / .nii.gz files, searched recursively)")
    nib = require("nibabel", "nifti")
    root = Path(cfg.data_dir).expanduser()
    files, labels, class_names = scan_tree(root, "nifti", cfg.class_folders)

    def scan() -> tuple[list[VolumeUnit], list[str], dict[str, int]]:
        units: list[VolumeUnit] = []
        skipped: dict[str, int] = {}
        for path, label in zip(files, labels):
            if not is_nifti_name(path):
                skipped["file(s) that are not NIfTI"] = skipped.get("file(s) that are not NIfTI", 0) + 1
                continue
            rel = relative(path, root)
            img = open_nifti(path, rel)  # every header checked before any volume is decoded
            if len(img.shape) < 3 or img.shape[2] < 2:
                skipped["2-D NIfTI file(s) (not volumes)"] = skipped.get("2-D NIfTI file(s) (not volumes)", 0) + 1
                continue

            def volumes(path: Path = path, rel: str = rel) -> Iterator[Volume]:
                vols = read_volumes(path, rel)
                for t, values in enumerate(vols.arrays):
                    yield Volume(values, vols.affine, False, rel if len(vols.arrays) == 1 else f"{rel} (volume {t})")

            subject = bids_subject(Path(rel))
            units.append(VolumeUnit(volumes, f"subject:{subject}" if subject else f"file:{rel}", label))
        if not units:
            raise DataError("--data-dir holds no NIfTI volumes (.nii, .nii.gz of 3 or 4 dimensions)")
        return units, class_names, skipped

    return load_volume_units("nifti", cfg, root, files, {"nibabel": nib.__version__}, scan)


def load_dicom_volumes(cfg: DataConfig) -> ImageData:
    """`--dataset dicom --dimensions 3`: every series (of at least 2 slices) one sample."""
    from vaelab.data.dicom import scan_dicom

    if cfg.data_dir is None:
        raise DataError("--dataset dicom needs --data-dir DIR (a folder of DICOM files, searched recursively)")
    pydicom = require("pydicom", "dicom")
    root = Path(cfg.data_dir).expanduser()
    files, labels, class_names = scan_tree(root, "dicom", cfg.class_folders)

    def scan() -> tuple[list[VolumeUnit], list[str], dict[str, int]]:
        found, skipped = scan_dicom(root, files, labels, cfg.allow_mixed)
        units: list[VolumeUnit] = []
        for i, (series, patient, label) in enumerate(found):
            if sum(h.frames for h in series.headers) < 2:
                skipped["series of one slice (not volumes)"] = skipped.get("series of one slice (not volumes)", 0) + 1
                continue

            def volumes(series=series) -> Iterator[Volume]:
                yield series_volume(series)

            units.append(VolumeUnit(volumes, f"patient:{patient}" if patient else f"series:{i}", label))
        if not units:
            raise DataError("--data-dir holds no DICOM series of 2 or more slices to use as volumes")
        return units, class_names, skipped

    params = {"allow_mixed": cfg.allow_mixed, "pydicom": pydicom.__version__}
    return load_volume_units("dicom", cfg, root, files, params, scan)


def series_volume(series: Any) -> Volume:
    """A DICOM series as one Volume (columns, rows, slices) with its affine."""
    values, invert = series.volume()
    if any(invert) and not all(invert):
        raise DataError(f"{series.headers[0].rel}: its series mixes MONOCHROME1 and MONOCHROME2 slices; it is not "
                        "one volume")
    return Volume(values, series.affine(), bool(invert and invert[0]), series.headers[0].rel)
