"""`--dataset nifti`: `.nii` / `.nii.gz` volumes read with nibabel, cut into 2-D slices.

Each 3-D volume is cut along `--slice-axis` (default: the voxel axis closest to axial in its
affine), a 4-D file into one volume per time point; slices are shown radiologically (see
`medical.display_for`). The header is checked before any voxel is read: a corrupt header, a shape
of more than MAX_VOXELS voxels (a header can claim 100000³), or an uncompressed file shorter
than its header says is one DataError naming the file; NaN / Inf voxels are refused too.
Files that are not NIfTI (JSON sidecars, .bval / .bvec) are skipped and counted; splits are by
BIDS subject (`sub-<label>` folders) where there is one, else by file.

`read_volumes` returns a file's windowable volumes with their affine before any slicing: what
a 3-D (one volume per sample) loader needs as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData
from vaelab.data.medical import (
    MAX_VOXELS,
    Slice,
    Unit,
    bids_subject,
    check_finite,
    load_units,
    quiet,
    relative,
    require,
    scan_tree,
)
from vaelab.data.orientation import Display, closest_axial_axis, display_for, take_slice
from vaelab.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NIFTI_MAGIC = (b"n+1", b"ni1", b"n+2", b"ni2")  # single-file and pair, NIfTI-1 and NIfTI-2


def is_nifti_name(path: Path) -> bool:
    """Whether the file is named like a NIfTI file (.nii or .nii.gz)."""
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def open_nifti(path: Path, rel: str) -> Any:
    """nibabel's image for `path` with its header checked; no voxel has been read yet."""
    nib = require("nibabel", "nifti")
    _check_raw_header(path, rel)
    try:
        with quiet("nibabel"):
            img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel on hostile bytes raises many types; one line each
        raise DataError(f"{rel}: not a readable NIfTI file ({type(exc).__name__}; corrupt header)") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{rel}: not a NIfTI-1 or NIfTI-2 image")
    shape = tuple(int(v) for v in img.shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise DataError(f"{rel}: a {len(shape)}-D image of shape {shape}; vaelab reads 2-D, 3-D and 4-D NIfTI")
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise DataError(f"{rel}: its header claims a {'×'.join(map(str, shape))} image ({voxels:.3g} voxels), "
                        f"more than the {MAX_VOXELS} vaelab reads from one file")
    if not path.name.lower().endswith(".gz"):  # uncompressed: the file must hold every voxel it declares
        try:
            needed = int(img.dataobj.offset) + voxels * img.get_data_dtype().itemsize
        except (AttributeError, TypeError, ValueError):
            needed = 0
        if path.stat().st_size < needed:
            raise DataError(f"{rel}: truncated ({path.stat().st_size} bytes; its header needs {needed})")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{rel}: its affine (voxel -> world) is not a finite, invertible matrix")
    return img


def _check_raw_header(path: Path, rel: str) -> None:
    """sizeof_hdr and magic as stored (nibabel silently repairs some damage; vaelab refuses it)."""
    import gzip
    import zlib

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(548)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{rel}: not a readable NIfTI file ({type(exc).__name__}; corrupt header)") from None
    sizes = {int.from_bytes(head[:4], order) for order in ("little", "big")} if len(head) >= 4 else set()
    magic = head[344:348].rstrip(b"\0") if 348 in sizes else head[4:8].rstrip(b"\0")
    if not sizes & {348, 540} or magic not in NIFTI_MAGIC:
        raise DataError(f"{rel}: not a readable NIfTI file (corrupt header: bad size or magic)")


@dataclass
class Volumes:
    """A NIfTI file's voxels: `arrays` one float32 (I, J, K) array per time point, and their affine."""

    arrays: list[np.ndarray]
    affine: np.ndarray  # voxel (i, j, k) -> world RAS mm
    shape: tuple[int, ...]  # the file's own shape (2-D, 3-D or 4-D)


def read_volumes(path: Path, rel: str) -> Volumes:
    """Every volume of a NIfTI file in its own voxel order, in the file's units (scl_slope applied)."""
    img = open_nifti(path, rel)
    try:
        with quiet("nibabel"):
            data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short file, bad dtype: one line each
        raise DataError(f"{rel}: its voxel data is truncated or corrupt ({type(exc).__name__})") from None
    check_finite(data, rel)
    shape = tuple(int(v) for v in img.shape)
    if data.ndim == 2:
        data = data[:, :, None]
    arrays = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    return Volumes(arrays, np.asarray(img.affine, dtype=np.float64), shape)


def slice_axis_for(affine: np.ndarray, requested: Optional[int]) -> int:
    """`--slice-axis` if given, else the voxel axis closest to axial."""
    return closest_axial_axis(affine) if requested is None else requested


class NiftiUnit:
    """One NIfTI file as a unit: its slices along the axis, every time point, read on first use."""

    def __init__(self, path: Path, rel: str, slice_axis: Optional[int]) -> None:
        self.path, self.rel, self.requested_axis = path, rel, slice_axis
        self._volumes: Optional[Volumes] = None

    def volumes(self) -> Volumes:
        if self._volumes is None:
            self._volumes = read_volumes(self.path, self.rel)
        return self._volumes

    def geometry(self) -> tuple[int, Display]:
        vols = self.volumes()
        axis = slice_axis_for(vols.affine, self.requested_axis)
        return axis, display_for(vols.affine, axis)

    def slices(self) -> Iterator[Slice]:
        vols = self.volumes()
        axis, display = self.geometry()
        for volume in vols.arrays:
            for k in range(volume.shape[axis]):
                yield Slice(display.forward(take_slice(volume, axis, k)), False, self.rel)

    def release(self) -> None:
        self._volumes = None


def load_nifti(cfg: DataConfig) -> ImageData:
    """The NIfTI files under `data_dir`: 2-D slices along the slice axis, split by subject (else file)."""
    if cfg.data_dir is None:
        raise DataError("--dataset nifti needs --data-dir DIR (a folder of .nii / .nii.gz files, searched recursively)")
    nib = require("nibabel", "nifti")
    root = Path(cfg.data_dir).expanduser()
    files, labels, class_names = scan_tree(root, "nifti", cfg.class_folders)

    def scan() -> tuple[list[Unit], list[str], dict[str, int]]:
        units, skipped = [], {}
        for path, label in zip(files, labels):
            if not is_nifti_name(path):
                skipped["file(s) that are not NIfTI"] = skipped.get("file(s) that are not NIfTI", 0) + 1
                continue
            rel = relative(path, root)
            open_nifti(path, rel)  # every header checked before any volume is decoded
            nifti = NiftiUnit(path, rel, cfg.slice_axis)
            subject = bids_subject(Path(rel))
            units.append(Unit(nifti.slices, f"subject:{subject}" if subject else f"file:{rel}", label,
                              nifti.release))
        if not units:
            raise DataError("--data-dir holds no NIfTI files (.nii, .nii.gz)")
        return units, class_names, skipped

    params = {"slice_axis": cfg.slice_axis, "nibabel": nib.__version__}
    return load_units("nifti", cfg, root, files, params, scan)

