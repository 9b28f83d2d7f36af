"""`--dataset nifti`: slices of nibabel's shipped example volumes and of generated ones (4-D, oblique
affines, every slice axis), against numpy; the shown orientation does not depend on how the voxels
are stored; splits keep a BIDS subject together; empty slices are skipped unless kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

nib = pytest.importorskip("nibabel")

from vaelab.cli import main  # noqa: E402
from vaelab.config import DataConfig  # noqa: E402
from vaelab.data import load_data  # noqa: E402
from vaelab.data.medical import PERCENTILES, Window, window_series  # noqa: E402
from vaelab.data.nifti import NiftiUnit  # noqa: E402
from vaelab.data.orientation import closest_axial_axis  # noqa: E402
from vaelab.data.synthetic_scans import oblique_affine, phantom, write_nifti  # noqa: E402

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def shipped(name: str) -> Path:
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"{name} is not inside this nibabel wheel")
    return path


def expected(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.round(np.clip((values.astype(np.float64) - low) * 255.0 / (high - low), 0, 255)).astype(np.uint8)


def unit_images(path: Path, window, size: int, axis=None, keep_empty: bool = True) -> np.ndarray:
    images, _ = window_series(NiftiUnit(path, path.name, axis).slices, window, size, 1, keep_empty)
    return images[:, 0]


def all_images(data) -> torch.Tensor:
    return torch.cat([data.train.images, data.val.images, data.test.images])


def test_real_anatomical_volume_is_cut_into_radiological_axial_slices():
    path = shipped("anatomical.nii")
    img = nib.load(path)
    assert img.shape == (33, 41, 25) and np.allclose(np.diag(img.affine)[:3], [-2, 2, 2])
    voxels = img.get_fdata()
    assert closest_axial_axis(img.affine) == 2
    # x runs toward the patient's left (already the image's left-to-right), y toward anterior: the
    # shown image is each z-slice transposed (rows = y) and flipped so that anterior is at the top.
    shown = [np.flipud(voxels[:, :, k].T) for k in range(25)]  # (41, 33) each
    low, high = np.percentile(np.concatenate([s.ravel() for s in shown]), PERCENTILES)
    # Resized like every image: the windowed values, bilinear (PIL), then rounded.
    want = np.stack([np.round(np.asarray(Image.fromarray(np.clip((s - low) * 255.0 / (high - low), 0, 255)
                                                         .astype(np.float32)).resize((32, 32), Image.BILINEAR)))
                     for s in shown]).astype(np.uint8)
    got = unit_images(path, None, 32)
    assert got.shape == (25, 32, 32)
    assert np.abs(got.astype(int) - want).max() <= 1 and (got == want).mean() > 0.99  # float32 vs float64 edges


def test_real_4d_file_gives_every_time_point_along_the_oblique_axial_axis(tmp_path):
    source = shipped("example4d.nii.gz")
    img = nib.load(source)
    assert img.shape == (128, 96, 24, 2) and not np.allclose(img.affine[:3, :3], np.diag(np.diag(img.affine)[:3]))
    for name in ("a", "b", "c"):  # three files: the splits are by file
        shutil.copy(source, tmp_path / f"{name}.nii.gz")
    data = load_data(DataConfig(dataset="nifti", data_dir=str(tmp_path), image_size=16, keep_empty_slices=True))
    assert len(all_images(data)) == 3 * 2 * 24
    images = unit_images(tmp_path / "a.nii.gz", Window(0.0, 1000.0), 32, keep_empty=True)
    voxels = img.get_fdata()
    # Axis 2 is closest to axial; x already runs toward the left; y runs toward anterior: flip the rows.
    shown = [np.flipud(voxels[:, :, k, t].T) for t in range(2) for k in range(24)]  # (96, 128) each
    want = np.stack([np.round(np.asarray(Image.fromarray(np.clip(s * 255.0 / 1000.0, 0, 255).astype(np.float32))
                                         .resize((32, 32), Image.BILINEAR))) for s in shown]).astype(np.uint8)
    assert images.shape == (48, 32, 32)
    assert np.abs(images.astype(int) - want).max() <= 1 and (images == want).mean() > 0.99


def test_every_slice_axis_and_the_default_axial_one(tmp_path):
    volume = phantom((10, 12, 14), seed=0)  # (z, y, x)
    xyz = volume.transpose(2, 1, 0)  # (x, y, z): axis 2 is axial
    write_nifti(tmp_path / "a.nii", xyz, np.diag([1.0, 1.0, 2.0, 1.0]))
    zyx_affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    write_nifti(tmp_path / "b.nii", volume, zyx_affine)  # the same scan stored (z, y, x): axis 0 is axial
    for name, axial in (("a.nii", 2), ("b.nii", 0)):
        assert closest_axial_axis(nib.load(tmp_path / name).affine) == axial
        assert len(unit_images(tmp_path / name, Window(-1000, 1000), 8)) == 10
        shape = nib.load(tmp_path / name).shape
        for axis in range(3):
            assert len(unit_images(tmp_path / name, Window(-1000, 1000), 8, axis)) == shape[axis]
    # Both storage orders show the same axial images in the same order.
    assert np.array_equal(unit_images(tmp_path / "a.nii", None, 12), unit_images(tmp_path / "b.nii", None, 12))


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("S", "R", "A"), ("A", "I", "L")])
def test_shown_slices_do_not_depend_on_how_the_voxels_are_stored(tmp_path, codes):
    base = nib.Nifti1Image(phantom((9, 12, 12), seed=3).transpose(2, 1, 0) + np.arange(12)[:, None, None] * 5.0,
                           np.diag([1.0, 1.0, 2.0, 1.0]))
    nib.save(base, tmp_path / "ras.nii")
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(base.affine),
                                           nib.orientations.axcodes2ornt(codes))
    other = base.as_reoriented(ornt)  # nibabel's own reorientation: voxels permuted and flipped, affine to match
    assert nib.aff2axcodes(other.affine) == codes
    nib.save(other, tmp_path / "other.nii")
    a = unit_images(tmp_path / "ras.nii", Window(-1000, 1000), 12)
    b = unit_images(tmp_path / "other.nii", Window(-1000, 1000), 12)
    # The same axial images, shown the same way; the slice order may run the other way.
    assert np.array_equal(a, b) or np.array_equal(a, b[::-1])


def test_four_d_files_give_one_volume_per_time_point(tmp_path):
    xyz = phantom((6, 10, 10), seed=1).transpose(2, 1, 0)
    for name in ("a", "b", "c"):
        write_nifti(tmp_path / f"{name}.nii.gz", np.stack([xyz + 100.0 * t for t in range(3)], -1), oblique_affine())
    data = load_data(DataConfig(dataset="nifti", data_dir=str(tmp_path), image_size=10, keep_empty_slices=True,
                                intensity_window=[-1000.0, 1000.0]))
    assert len(all_images(data)) == 3 * 3 * 6


def test_empty_slices_are_skipped_unless_kept(tmp_path, capsys):
    for name in ("a", "b", "c"):
        write_nifti(tmp_path / f"{name}.nii", phantom((8, 10, 10)).transpose(2, 1, 0), np.eye(4))
    base = dict(dataset="nifti", data_dir=str(tmp_path), image_size=10, intensity_window=[-1000.0, 1000.0])
    kept = load_data(DataConfig(**base, keep_empty_slices=True))
    skipped = load_data(DataConfig(**base))
    images = all_images(skipped)
    assert len(all_images(kept)) == 24 and len(images) == 18  # the phantom's first and last slices are air
    assert (images.flatten(1).max(1).values > images.flatten(1).min(1).values).all()
    assert capsys.readouterr().err.strip().splitlines()[-1] == "vaelab: nifti: skipped 6 empty slice(s)"


def test_splits_keep_a_bids_subject_together(tmp_path, capsys):
    for subject in range(5):
        for session in (1, 2):
            xyz = np.full((6, 6, 3), 30.0 * subject + 10.0, np.float32)
            xyz[0, 0] = 0.0
            write_nifti(tmp_path / f"sub-{subject:02d}" / f"ses-{session}" / "anat" / "T1w.nii.gz", xyz, np.eye(4))
            (tmp_path / f"sub-{subject:02d}" / f"ses-{session}" / "anat" / "T1w.json").write_text("{}")
    data = load_data(DataConfig(dataset="nifti", data_dir=str(tmp_path), image_size=6, class_folders=False,
                                intensity_window=[0.0, 255.0]))
    owner: dict[int, set[str]] = {}
    for split in ("train", "val", "test"):
        for value in data.split(split).images[:, 0, 3, 3].tolist():
            owner.setdefault(round((value - 10) / 30), set()).add(split)
    assert set(owner) == set(range(5)) and all(len(s) == 1 for s in owner.values())
    assert "skipped 10 file(s) that are not NIfTI" in capsys.readouterr().err


def test_train_on_a_nifti_folder_with_labels(tmp_path):
    for label in ("control", "patient"):
        for i in range(2):
            write_nifti(tmp_path / "data" / label / f"{i}.nii.gz", phantom((5, 12, 12), seed=i).transpose(2, 1, 0),
                        oblique_affine())
    out = tmp_path / "run"
    assert main(["train", "--dataset", "nifti", "--data-dir", str(tmp_path / "data"), "--image-size", "12",
                 "--hidden", "16", "--epochs", "1", "--batch-size", "2", "--slice-axis", "2", "--out", str(out),
                 "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["slice_axis"] == 2 and cfg["model"]["num_classes"] == 2


def test_slice_axis_is_refused_for_dicom(tmp_path, capsys):
    assert main(["train", "--dataset", "dicom", "--data-dir", str(tmp_path), "--slice-axis", "1",
                 "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slice-axis is for --dataset nifti" in err[0] and not (tmp_path / "run").exists()
    assert main(["config", "--dataset", "nifti", "--slice-axis", "3"]) != 0
