"""Scans reconstructed by a 2-D or 3-D run, given back in the scanner's geometry.

`vaelab reconstruct RUN --images SCAN --out OUT.nii.gz` (SCAN: a .nii / .nii.gz file, a DICOM
file or a folder holding one DICOM series) cuts the scan into slices exactly as the run's loader
does (slice axis, display orientation, intensity window, resize), reconstructs every slice
(decode(E_q[z]), the likelihood's mean), resizes it back to the slice's own grid and maps it back
through the inverse of the window, in modality units (HU for CT). The NIfTI written has the
input's shape and affine (a DICOM series: (columns, rows, slices) with the affine of its
ImagePositionPatient / ImageOrientationPatient / PixelSpacing in RAS), so a viewer overlays it on
the input. Slices the run's loader skips as empty are written as the input clipped to the window.
Values outside the window were clipped on the way in and come back clipped. The header written
carries geometry only: no description, names or other text of the input header.

A 3-D run (`--dimensions 3`) reconstructs each volume of the scan whole: windowed, reoriented and
resampled to the run's --volume-size exactly as its loader does (data/volumes.py), reconstructed,
then resampled back to the input's voxel grid and mapped back through the inverse window
(`reconstruct_volumes`). Its samples are written by `write_samples_nifti`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.data.medical import (
    Slice,
    Window,
    fixed_window,
    grey_slice,
    is_empty,
    resize_float,
    robust_window,
    sample_for_percentiles,
    walk_files,
)
from vaelab.data.orientation import Display, display_for, take_slice
from vaelab.errors import ConfigError, DataError, RunError

BATCH = 256  # slices per forward pass


def scan_kind(path: Path) -> Optional[str]:
    """'nifti' or 'dicom' when `path` is a scan (a DICOM folder counts), else None (an ordinary image)."""
    from vaelab.data.dicom import DICOM_SUFFIXES, is_dicom
    from vaelab.data.nifti import is_nifti_name

    if is_nifti_name(path):
        return "nifti"
    if path.is_dir() or path.suffix.lower() in DICOM_SUFFIXES or (path.is_file() and is_dicom(path)):
        return "dicom"
    return None


def is_nifti_output(path: Optional[str]) -> bool:
    """Whether --out names a NIfTI file."""
    return path is not None and (path.lower().endswith(".nii") or path.lower().endswith(".nii.gz"))


@dataclass
class Scan:
    """One scan in the voxel order of the file it came from (a DICOM series: columns, rows, slices)."""

    volumes: list[np.ndarray]  # one float32 (I, J, K) array per time point, in modality units
    affine: np.ndarray  # voxel -> world RAS mm
    shape: tuple[int, ...]  # the shape to write (the input file's own)
    axis: int  # the voxel axis the slices are cut along
    display: Display  # voxel slice -> image as the run's loader shows it
    invert: list[bool] = field(default_factory=list)  # per slice along `axis` (MONOCHROME1)
    qform_code: int = 1
    sform_code: int = 1

    def slices(self) -> list[tuple[int, int, Slice]]:
        """(time point, index along the axis, slice) for every slice, in order."""
        out = []
        for t, volume in enumerate(self.volumes):
            for k in range(volume.shape[self.axis]):
                values = self.display.forward(take_slice(volume, self.axis, k))
                out.append((t, k, Slice(values, bool(self.invert[k]) if self.invert else False)))
        return out


def read_scan(path: Path, slice_axis: Optional[int]) -> Scan:
    """A NIfTI file or one DICOM series (a file, or a folder of one series) as a Scan."""
    kind = scan_kind(path)
    if kind == "nifti":
        return _read_nifti(path, slice_axis)
    if kind == "dicom":
        return _read_dicom(path)
    raise DataError(f"{path.name}: not a scan (.nii, .nii.gz, a DICOM file or a folder of one DICOM series)")


def _read_nifti(path: Path, slice_axis: Optional[int]) -> Scan:
    from vaelab.data.nifti import open_nifti, read_volumes, slice_axis_for

    if not path.is_file():
        raise DataError(f"scan not found: {path}")
    img = open_nifti(path, path.name)
    vols = read_volumes(path, path.name)
    axis = slice_axis_for(vols.affine, slice_axis)
    return Scan(vols.arrays, vols.affine, vols.shape, axis, display_for(vols.affine, axis),
                qform_code=int(img.header["qform_code"]) or 1, sform_code=int(img.header["sform_code"]) or 1)


def _read_dicom(path: Path) -> Scan:
    from vaelab.data.dicom import order_series, read_header

    if not path.exists():
        raise DataError(f"scan not found: {path}")
    root = path if path.is_dir() else path.parent
    headers = [h for h, _ in (read_header(f, root) for f in (walk_files(path) if path.is_dir() else [path]))
               if h is not None]
    if not headers:
        raise DataError(f"{path.name}: holds no DICOM image")
    if len({h.series for h in headers}) > 1:
        raise DataError(f"{path.name}: holds {len({h.series for h in headers})} DICOM series; give the file or "
                        "folder of one series")
    series = order_series(headers)
    volume, invert = series.volume()  # (columns, rows, slices), as NIfTI stores it
    # A voxel slice (C, R) shows as the stored frame (R, C): transpose, no flips.
    return Scan([volume], series.affine(), volume.shape, 2, Display(True, False, False), invert)


def _window(scan: Scan, data_cfg: Any) -> Window:
    """The run's fixed window, or the scan's own robust percentiles as its loader computes them."""
    window = fixed_window(data_cfg)
    if window is None:
        window = robust_window([sample_for_percentiles(s.values) for _, _, s in scan.slices()])
    return window


def _model_size(model) -> tuple[int, int]:
    if is_volume_model(model):
        raise ConfigError("this run models volumes: reconstruct its scans with reconstruct_volumes")
    c, h, w = model.image_shape
    if h != w:
        raise DataError(f"scans can only be fed to models of square images; this one is {h}×{w}")
    return int(c), int(h)


def model_inputs(model, data_cfg: Any, scan: Scan) -> tuple[np.ndarray, np.ndarray, Window]:
    """Every slice as the model sees it -> (uint8 (N, C, S, S), empty mask (N,), window)."""
    channels, size = _model_size(model)
    window = _window(scan, data_cfg)
    images = np.stack([grey_slice(s, window, size) for _, _, s in scan.slices()])  # (N, S, S) uint8
    empty = np.array([is_empty(im) for im in images]) if not data_cfg.keep_empty_slices else np.zeros(len(images), bool)
    return np.repeat(images[:, None], channels, axis=1), empty, window


def _reconstruct(model, x_uint8: np.ndarray, y: Optional[int]) -> np.ndarray:
    """uint8 (N, C, S, S) -> the model's reconstructions, grey (N, S, S) in [0, 255]."""
    import torch

    from vaelab.data.batches import to_float

    out = []
    for i in range(0, len(x_uint8), BATCH):
        x = to_float(torch.from_numpy(x_uint8[i : i + BATCH])).to(model.device)
        cond = None if y is None else torch.full((len(x),), y, device=model.device)
        out.append(model.reconstruct(x, cond).float().mean(1).clamp(0.0, 1.0).cpu().numpy() * 255.0)
    return np.concatenate(out) if out else np.zeros((0,) + x_uint8.shape[2:], np.float32)


def reconstruct_scan(model, data_cfg: Any, scan: Scan, label: Optional[int] = None) -> list[np.ndarray]:
    """Every volume of `scan` reconstructed slice by slice, in modality units, on the input's grid."""
    if model.conditional and label is None:
        raise ConfigError("this run is conditional; give the scan's label with --label")
    x, empty, window = model_inputs(model, data_cfg, scan)
    recon = np.zeros(x.shape[:1] + x.shape[2:], np.float32)
    chosen = np.flatnonzero(~empty)
    recon[chosen] = _reconstruct(model, x[chosen], label if model.conditional else None)
    outputs = [np.zeros_like(v) for v in scan.volumes]
    for n, (t, k, s) in enumerate(scan.slices()):
        if empty[n]:  # the run never saw such a slice: give back the input, clipped to the window
            values = window.inverse(window.apply(s.values))
        else:
            grey = resize_float(recon[n], s.values.shape)
            values = window.inverse(255.0 - grey if s.invert else grey)
        index = [slice(None)] * 3
        index[scan.axis] = k
        outputs[t][tuple(index)] = scan.display.backward(values)
    return outputs


def write_nifti(out: Path, scan: Scan, volumes: list[np.ndarray]) -> Path:
    """The reconstructed volumes as NIfTI with the input's shape and affine (and nothing else of its header)."""
    import nibabel as nib

    data = np.stack(volumes, axis=-1) if len(scan.shape) == 4 and len(volumes) > 1 else volumes[0]
    data = data.reshape(scan.shape).astype(np.float32)
    img = nib.Nifti1Image(data, None)
    img.set_qform(scan.affine, code=scan.qform_code)
    img.set_sform(scan.affine, code=scan.sform_code)
    img.header.set_xyzt_units("mm", "sec")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{''.join(out.suffixes)}")
        nib.save(img, str(tmp))  # written whole, then renamed: never a half-written volume at `out`
        tmp.replace(out)
    except OSError as exc:
        raise RunError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def scan_table(model, data_cfg: Any, scan: Scan, label: Optional[int] = None, max_slices: int = 10):
    """Up to `max_slices` evenly spaced non-empty slices above their reconstructions (an ImageTable)."""
    import torch

    from vaelab.data.batches import to_float
    from vaelab.latent import reconstruct_images

    x, empty, _ = model_inputs(model, data_cfg, scan)
    chosen = np.flatnonzero(~empty)
    if len(chosen) == 0:
        raise DataError("every slice of this scan is empty after windowing")
    picks = chosen[np.unique(np.linspace(0, len(chosen) - 1, min(max_slices, len(chosen))).round().astype(int))]
    y = None
    if model.conditional:
        if label is None:
            raise ConfigError("this run is conditional; give the scan's label with --label")
        y = torch.full((len(picks),), label)
    return reconstruct_images(model, to_float(torch.from_numpy(x[picks])), y)


# ---- 3-D runs (--dimensions 3): the scan's volumes as samples ---------------------------------


def is_volume_model(model) -> bool:
    """Whether the model was trained on volumes (C, D, H, W)."""
    return len(model.image_shape) == 4


def _uniform_invert(scan: Scan) -> bool:
    if any(scan.invert) and not all(scan.invert):
        raise DataError("this series mixes MONOCHROME1 and MONOCHROME2 slices; it is not one volume")
    return bool(scan.invert and scan.invert[0])


def volume_inputs(model, data_cfg: Any, scan: Scan) -> list[tuple[np.ndarray, Window]]:
    """Every volume of `scan` as a 3-D run's loader makes it -> [(uint8 (1, D, H, W), its window)]."""
    from vaelab.data.medical import to_uint8
    from vaelab.data.orientation import volume_view_for
    from vaelab.data.volumes import to_model, volume_window

    size = tuple(int(v) for v in model.image_shape[1:])
    view, invert = volume_view_for(scan.affine), _uniform_invert(scan)
    out = []
    for values in scan.volumes:
        window = volume_window(values, fixed_window(data_cfg), "the scan")
        out.append((to_uint8(to_model(values, view, window, size, invert))[None], window))
    return out


def reconstruct_volumes(model, data_cfg: Any, scan: Scan, label: Optional[int] = None) -> list[np.ndarray]:
    """Every volume of `scan` reconstructed whole by a 3-D run (decode(E_q[z]), the likelihood's mean),
    resampled back to the input's voxel grid and mapped back through the inverse window (modality units)."""
    from vaelab.data.orientation import volume_view_for
    from vaelab.data.volumes import from_model

    if model.conditional and label is None:
        raise ConfigError("this run is conditional; give the scan's label with --label")
    view, invert = volume_view_for(scan.affine), _uniform_invert(scan)
    outputs = []
    for (x, window), values in zip(volume_inputs(model, data_cfg, scan), scan.volumes):
        grey = _reconstruct(model, x[None], label if model.conditional else None)[0]  # (D, H, W) in [0, 255]
        outputs.append(from_model(grey, view, values.shape, window, invert))
    return outputs


def volume_table(model, data_cfg: Any, scan: Scan, label: Optional[int] = None):
    """The scan's volumes (their mid-slices) above their reconstructions (an ImageTable)."""
    import torch

    from vaelab.data.batches import to_float
    from vaelab.latent import reconstruct_images

    if model.conditional and label is None:
        raise ConfigError("this run is conditional; give the scan's label with --label")
    x = to_float(torch.from_numpy(np.stack([v for v, _ in volume_inputs(model, data_cfg, scan)])))
    y = torch.full((len(x),), label) if model.conditional else None
    return reconstruct_images(model, x, y)


def volume_scan_for_model(model, scan: Scan) -> None:
    """A 3-D run takes a 3-D or 4-D scan with at least 2 slices along every axis."""
    if any(v.ndim != 3 or min(v.shape) < 2 for v in scan.volumes):
        raise DataError(f"this run models volumes; the scan is {'×'.join(map(str, scan.shape))}, not a volume")


def sample_affine(size: tuple[int, int, int]) -> np.ndarray:
    """Voxel (w, h, d) of a model volume (D, H, W) -> world RAS mm at 1 mm per voxel: the model's
    (H, W) planes are radiological axial slices and D runs superior to inferior (data/volumes.py), so
    w runs toward the patient's left (-x), h toward posterior (-y), d toward inferior (-z)."""
    d, h, w = size
    affine = np.diag([-1.0, -1.0, -1.0, 1.0])
    affine[:3, 3] = [(w - 1) / 2.0, (h - 1) / 2.0, (d - 1) / 2.0]  # centred on the origin
    return affine


def write_samples_nifti(out: Path, samples: np.ndarray, window: Optional[Window]) -> Path:
    """Samples (N, D, H, W) in [0, 1] of a 3-D run as one NIfTI: 3-D for one sample, 4-D (one volume per
    sample) for more, on the model's grid (`sample_affine`); in modality units through the run's fixed
    --intensity-window, else as grey values 0..255 (the run's windows were each volume's own)."""
    grey = np.clip(samples.astype(np.float32), 0.0, 1.0) * 255.0  # (N, D, H, W)
    values = window.inverse(grey) if window is not None else grey
    data = values.transpose(3, 2, 1, 0)  # (W, H, D, N): NIfTI's voxel order (i, j, k, t)
    data = data[..., 0] if data.shape[-1] == 1 else data
    scan = Scan([], sample_affine(tuple(samples.shape[1:])), tuple(data.shape), 2, Display(False, False, False))
    return write_nifti(out, scan, [data])


def require_nibabel() -> None:
    """NIfTI output needs nibabel even for a DICOM input: one line naming the install."""
    from vaelab.data.medical import require

    require("nibabel", "nifti")
