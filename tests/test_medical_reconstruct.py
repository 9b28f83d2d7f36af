"""`vaelab reconstruct RUN --images SCAN --out OUT.nii.gz`: the volume written has the input's shape
and affine (a DICOM series: the affine of the DICOM standard's geometry, in RAS), and a model that
gives back its input yields the input's intensities (HU), clipped to the window, within half a grey
level: the window, orientation and resizing are inverted exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from vaelab.cli import main  # noqa: E402
from vaelab.config import DataConfig  # noqa: E402
from vaelab.data.synthetic_scans import oblique_affine, phantom, write_dicom_series, write_nifti  # noqa: E402
from vaelab.volume_reconstruct import read_scan, reconstruct_scan  # noqa: E402
from vaelab.volume_reconstruct import write_nifti as write_output  # noqa: E402

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


class GivesBackItsInput:
    """A stand-in for a perfect autoencoder (decode(E_q[z]) = x): isolates the geometry and intensity path."""

    conditional = False
    device = torch.device("cpu")

    def __init__(self, size: int) -> None:
        self.image_shape = (1, size, size)

    def reconstruct(self, x: torch.Tensor, y=None) -> torch.Tensor:
        return x


def round_trip(path: Path, out: Path, size: int, window=(-1000.0, 1000.0), axis=None):
    cfg = DataConfig(dataset="nifti", intensity_window=list(window), slice_axis=axis, keep_empty_slices=True)
    scan = read_scan(path, axis)
    write_output(out, scan, reconstruct_scan(GivesBackItsInput(size), cfg, scan))
    return nib.load(out)


def half_step(window) -> float:
    return (window[1] - window[0]) / 255.0 / 2 + 1e-3


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_oblique_nifti_comes_back_in_its_shape_affine_and_units(tmp_path, axis):
    hu = phantom((12, 12, 12), seed=4).transpose(2, 1, 0)  # (x, y, z), cubic: square slices along any axis
    affine = oblique_affine()
    write_nifti(tmp_path / "in.nii.gz", hu, affine)
    out = round_trip(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", 12, (-900.0, 600.0), axis)
    assert out.shape == hu.shape and np.allclose(out.affine, affine, atol=1e-5)
    assert int(out.header["sform_code"]) > 0 and int(out.header["qform_code"]) > 0
    err = np.abs(out.get_fdata() - np.clip(hu, -900.0, 600.0))
    assert err.max() <= half_step((-900.0, 600.0))
    assert (hu < -900).any() and (hu > 600).any()  # the window clips: the comparison is with the clipped input


def test_four_d_volume_comes_back_four_d(tmp_path):
    xyz = phantom((6, 10, 10), seed=1).transpose(2, 1, 0)
    series = np.stack([xyz, xyz + 50.0, xyz - 50.0], axis=-1)
    write_nifti(tmp_path / "in.nii", series, np.diag([2.0, 2.0, 3.0, 1.0]))
    out = round_trip(tmp_path / "in.nii", tmp_path / "out.nii", 10)
    assert out.shape == (10, 10, 6, 3)
    assert np.abs(out.get_fdata() - np.clip(series, -1000, 1000)).max() <= half_step((-1000, 1000))


def test_real_nibabel_volume_keeps_its_geometry(tmp_path):
    source = NIBABEL_DATA / "anatomical.nii"
    if not source.is_file():
        pytest.skip("anatomical.nii is not inside this nibabel wheel")
    img = nib.load(source)
    voxels = img.get_fdata()
    window = (float(voxels.min()), float(voxels.max()))
    out = round_trip(source, tmp_path / "out.nii.gz", 41, window)  # its axial slices are 41×33: resized both ways
    assert out.shape == img.shape and np.allclose(out.affine, img.affine)
    # The same path by hand: each axial slice shown (transposed, anterior up), windowed, resized to
    # 41×41 and rounded to 8 bits, resized back to 41×33, un-windowed and put back in voxel order.
    from PIL import Image

    low, high = window
    want = np.zeros_like(voxels)
    for k in range(voxels.shape[2]):
        shown = np.flipud(voxels[:, :, k].T)
        windowed = ((shown - low) * 255.0 / (high - low)).astype(np.float32)
        grey = np.round(np.asarray(Image.fromarray(windowed).resize((41, 41), Image.BILINEAR)))
        back = np.asarray(Image.fromarray(grey.astype(np.float32)).resize((33, 41), Image.BILINEAR))
        want[:, :, k] = np.flipud(low + back * (high - low) / 255.0).T
    assert np.abs(out.get_fdata() - want).max() < 1e-3 * (high - low)
    assert np.corrcoef(out.get_fdata().ravel(), voxels.ravel())[0, 1] > 0.95


def dicom_affine(origin, orientation, spacing, slice_spacing) -> np.ndarray:
    """Voxel (column i, row j, slice k) -> RAS mm, from the DICOM standard's equation (C.7.6.2.1-1):
    P = S + X Δi i + Y Δj j, with X the row and Y the column direction cosines, Δi the column and
    Δj the row spacing (PixelSpacing = [Δj, Δi]), and slices stepped along X × Y; then LPS -> RAS."""
    x, y = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = x * spacing[1], y * spacing[0]
    lps[:3, 2] = np.cross(x, y) * slice_spacing
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_series_becomes_a_nifti_in_the_scanner_geometry(tmp_path, photometric):
    hu = phantom((7, 14, 14), seed=2)  # (slices, rows, columns)
    c, s = np.cos(0.3), np.sin(0.3)
    geometry = dict(origin=(-40.0, 25.0, 110.0), orientation=(c, s, 0.0, 0.0, 0.0, -1.0), spacing=(0.6, 0.9),
                    slice_spacing=3.0)
    names = [f"{i}.dcm" for i in np.random.default_rng(0).permutation(7)]  # stored in no particular order
    write_dicom_series(tmp_path / "series", hu, slope=0.5, intercept=-1024.0, photometric=photometric,
                       names=names, **geometry)
    out = round_trip(tmp_path / "series", tmp_path / "out.nii.gz", 14)
    assert out.shape == (14, 14, 7)  # (columns, rows, slices)
    want = dicom_affine(**geometry)
    assert np.allclose(out.affine, want, atol=1e-4)
    # Voxel (i, j, k) is the pixel in column i, row j of slice k, in HU (stored · 0.5 - 1024), within the window.
    stored = np.round((hu.astype(np.float64) + 1024.0) / 0.5) * 0.5 - 1024.0
    err = np.abs(out.get_fdata() - np.clip(stored.transpose(2, 1, 0), -1000.0, 1000.0))
    assert err.max() <= half_step((-1000.0, 1000.0))
    first = pydicom.dcmread(tmp_path / "series" / names[0])
    k = int(first.InstanceNumber) - 1  # check one slice's world position through nibabel's affine
    assert np.allclose(nib.affines.apply_affine(out.affine, [0, 0, k]) * [-1, -1, 1],
                       [float(v) for v in first.ImagePositionPatient], atol=1e-3)


def test_dicom_and_nifti_of_one_scan_show_the_same_slices(tmp_path):
    from vaelab.data.medical import Window, window_series
    from vaelab.data.nifti import NiftiUnit

    hu = np.round(phantom((6, 10, 10), seed=5))  # whole HU: stored exactly
    hu += np.arange(10)[None, None, :] * 20.0  # asymmetric left-right: a flip would show
    write_dicom_series(tmp_path / "series", hu, orientation=(1, 0, 0, 0, 1, 0))
    scan = read_scan(tmp_path / "series", None)
    write_nifti(tmp_path / "same.nii", scan.volumes[0], scan.affine)  # the scan as a converter would store it
    window = Window(-1000.0, 1000.0)
    from_dicom = np.stack([s.values for _, _, s in scan.slices()])
    assert np.array_equal(from_dicom, hu)  # DICOM frames are shown as stored
    from_nifti, _ = window_series(NiftiUnit(tmp_path / "same.nii", "same.nii", None).slices, window, 10, 1, True)
    assert np.array_equal(from_nifti[:, 0], np.round(np.clip((hu + 1000.0) * 255.0 / 2000.0, 0, 255)))


def test_cli_reconstructs_a_scan_to_nifti_and_png_and_keeps_png_for_images(tmp_path, capsys):
    data = tmp_path / "scans"
    for i in range(3):
        write_nifti(data / f"{i}.nii.gz", phantom((6, 12, 12), seed=i).transpose(2, 1, 0), oblique_affine())
    run = tmp_path / "run"
    assert main(["train", "--dataset", "nifti", "--data-dir", str(data), "--image-size", "12", "--hidden", "16",
                 "--epochs", "1", "--batch-size", "4", "--intensity-window=-1000,800", "--out", str(run),
                 "--quiet"]) == 0
    source = data / "1.nii.gz"
    assert main(["reconstruct", str(run), "--images", str(source), "--out", str(tmp_path / "r.nii.gz")]) == 0
    out, img = nib.load(tmp_path / "r.nii.gz"), nib.load(source)
    assert out.shape == img.shape and np.allclose(out.affine, img.affine)
    values = out.get_fdata()
    assert np.isfinite(values).all() and values.min() >= -1000.0 - 1e-3 and values.max() <= 800.0 + 1e-3
    assert main(["reconstruct", str(run), "--images", str(source), "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = tmp_path / "dicom"
    write_dicom_series(series, phantom((5, 12, 12), seed=7))
    assert main(["reconstruct", str(run), "--images", str(series), "--out", str(tmp_path / "d.nii.gz")]) == 0
    assert nib.load(tmp_path / "d.nii.gz").shape == (12, 12, 5)
    capsys.readouterr()
    # A NIfTI output needs a scan as input: one line.
    from PIL import Image

    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "plain.png")
    assert main(["reconstruct", str(run), "--images", str(tmp_path / "plain.png"), "--out",
                 str(tmp_path / "x.nii.gz")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give one scan" in err[0] and not (tmp_path / "x.nii.gz").exists()
    assert main(["reconstruct", str(run), "--images", str(tmp_path / "plain.png"), "--out",
                 str(tmp_path / "plain-recon.png")]) == 0  # ordinary images: the PNG figure as before
