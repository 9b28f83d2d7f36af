"""Scans (NIfTI volumes, DICOM files) as image-to-image inputs and targets, and results written back
into the scan's geometry.

- `read_scan_images(path, size, channels, data_cfg)`: every 2-D slice of the scan as the medical
  loaders cut it (vaelab/volume_reconstruct.py: the slice axis of `--slice-axis` or the one closest
  to axial, the radiological display orientation, MONOCHROME1 inverted), windowed by
  `--intensity-window` or the scan's own robust percentiles (data/medical.py), resized -> uint8
  (n, C, S, S). No slice is skipped as empty: an input and its target keep one slice each, in step.
  This is the `READERS` entry of `.nii`, `.nii.gz`, `.dcm` and `.dicom` (data/pairs.py).
- `ScanWriter`: the mean, the samples and the std map as NIfTI files with the input's shape and
  affine (nothing else of its header), slice by slice resized back to the slice's own grid and
  mapped back through the inverse of the window: the images in modality units (HU for CT), the std
  as a standard deviation in those units (the window's scale times the std on [0, 1]).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

SCAN_EXTENSIONS = (".nii", ".nii.gz", ".dcm", ".dicom")


def _window_for(scan, data_cfg: Any):
    from vaelab.volume_reconstruct import _window

    return _window(scan, data_cfg)


@lru_cache(maxsize=4)
def _scan(path: str, mtime: float, slice_axis: Optional[int]):
    from vaelab.volume_reconstruct import read_scan

    return read_scan(Path(path), slice_axis)


def open_scan(path: Path, data_cfg: Any):
    """The scan at `path` (a NIfTI file or a DICOM file), read once per modification."""
    return _scan(str(path), path.stat().st_mtime, getattr(data_cfg, "slice_axis", None))


def scan_slice_size(path: Path, data_cfg: Any = None) -> tuple[int, int]:
    """The (rows, columns) of the scan's slices as displayed."""
    scan = open_scan(path, data_cfg)
    return tuple(int(v) for v in scan.slices()[0][2].values.shape[:2])


def read_scan_images(path: Path, size: int, channels: int, data_cfg: Any = None) -> np.ndarray:
    """Every slice of the scan at `path` -> uint8 (n, C, size, size) (see the module docstring)."""
    from vaelab.data.medical import colour_slice, grey_slice

    scan = open_scan(path, data_cfg)
    window = _window_for(scan, data_cfg)
    images = []
    for _, _, s in scan.slices():
        image = colour_slice(s, size, channels) if s.colour else grey_slice(s, window, size)
        images.append(np.repeat(image[None], channels, axis=0) if image.ndim == 2 else image)
    return np.stack(images)


class ScanWriter:
    """Writes results for the slices of one scan as NIfTI volumes in its geometry."""

    def __init__(self, source: Path, data_cfg: Any) -> None:
        from vaelab.volume_reconstruct import require_nibabel

        require_nibabel()
        self.scan = open_scan(source, data_cfg)
        self.window = _window_for(self.scan, data_cfg)

    def _volumes(self, grey: np.ndarray, as_std: bool) -> list[np.ndarray]:
        """Per-slice maps (n, S, S) in [0, 1] -> volumes on the scan's grid, in modality units."""
        from vaelab.data.medical import resize_float

        scale = (self.window.high - self.window.low)
        outputs = [np.zeros_like(v) for v in self.scan.volumes]
        for n, (t, k, s) in enumerate(self.scan.slices()):
            resized = resize_float(grey[n].astype(np.float32), s.values.shape[:2])  # on the slice's own grid
            if as_std:
                values = resized * scale
            else:
                values = self.window.inverse(255.0 * (1.0 - resized if s.invert else resized))
            index = [slice(None)] * 3
            index[self.scan.axis] = k
            outputs[t][tuple(index)] = self.scan.display.backward(values)
        return outputs

    def write(self, stem: Path, images: torch.Tensor) -> list[Path]:
        """Images (n, C, S, S) in [0, 1] (grey: the mean over channels) -> stem.nii.gz."""
        from vaelab.volume_reconstruct import write_nifti

        grey = images.float().clamp(0, 1).mean(1).numpy()
        return [write_nifti(stem.with_name(stem.name + ".nii.gz"), self.scan, self._volumes(grey, False))]

    def write_std(self, stem: Path, std: torch.Tensor) -> list[Path]:
        """The per-pixel std (n, C, S, S) (RMS over channels) -> stem.nii.gz, in modality units."""
        from vaelab.translate.figures import std_map
        from vaelab.volume_reconstruct import write_nifti

        maps = std_map(std.float()).numpy()
        return [write_nifti(stem.with_name(stem.name + ".nii.gz"), self.scan, self._volumes(maps, True))]
