"""`--dimensions 3`: NIfTI volumes and DICOM series as samples (1, D, H, W), the conv3d model on them,
and every command on a 3-D run: the reorientation against nibabel's own orientation tools, the
window and resampling against numpy, the inverse map that gives a volume back in its input's grid
and units, training from generated and shipped files, eval, sample and reconstruct to NIfTI, the
figures and report, the latent tools, and one-line refusals (absurd sizes, NaN voxels, 2-D data,
2-D architectures)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

from vaelab.cli import main  # noqa: E402
from vaelab.config import DataConfig  # noqa: E402
from vaelab.data import load_data  # noqa: E402
from vaelab.data.medical import Window  # noqa: E402
from vaelab.data.orientation import volume_view_for  # noqa: E402
from vaelab.data.synthetic_scans import oblique_affine, phantom, write_nifti  # noqa: E402
from vaelab.data.volumes import from_model, resample_depth, to_model  # noqa: E402

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
TINY = ["--volume-size", "8,8,8", "--arch", "conv3d", "--hidden", "4,8", "--latent-dim", "2", "--epochs", "1",
        "--batch-size", "2", "--quiet"]
# What the model's (D, H, W) axes point to (data/volumes.py): inferior, posterior, the patient's left.
MODEL_AXES = ("I", "P", "L")


def shipped(name: str) -> Path:
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"{name} is not inside this nibabel wheel")
    return path


def reference_orientation(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """nibabel's reorientation of a volume to MODEL_AXES (an independent reference for VolumeView)."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt(MODEL_AXES))
    return nib.orientations.apply_orientation(volume, transform)


def nifti_folder(root: Path, n: int = 4, shape=(12, 14, 10), fourd: bool = True) -> Path:
    """n phantom volumes (the first with an oblique affine, the last 4-D with 2 time points)."""
    for i in range(n):
        volume = phantom(shape[::-1], seed=i).transpose(2, 1, 0)  # (I, J, K) with K along the slices
        if fourd and i == n - 1:  # brighter than the others, so a test can tell its volumes apart
            volume = np.stack([volume + 600.0, volume + 650.0], axis=-1)
        write_nifti(root / f"vol{i}.nii.gz", volume, oblique_affine() if i == 0 else np.diag([1.5, 1.0, 2.0, 1.0]))
    return root


AFFINES = {
    "ras": np.diag([1.0, 1.0, 1.0, 1.0]),
    "las-spacing": np.diag([-2.0, 1.5, 3.0, 1.0]),
    "permuted": np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]]),
    "oblique": oblique_affine(),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_volume_view_matches_nibabels_reorientation_and_inverts(name):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(5, 6, 7)).astype(np.float32)
    view = volume_view_for(AFFINES[name])
    shown = view.forward(volume)
    np.testing.assert_array_equal(shown, reference_orientation(volume, AFFINES[name]))
    np.testing.assert_array_equal(view.backward(shown), volume)


def test_window_and_resampling_match_numpy_and_invert_on_the_same_grid():
    rng = np.random.default_rng(1)
    values = rng.uniform(-1200, 1500, size=(6, 5, 4)).astype(np.float32)
    affine = AFFINES["permuted"]
    window = Window(-1000.0, 1000.0)
    shown = reference_orientation(values, affine)
    grey = to_model(values, volume_view_for(affine), window, shown.shape)  # no resampling: exact values
    np.testing.assert_allclose(grey, np.clip((shown + 1000.0) * 255.0 / 2000.0, 0, 255), rtol=1e-5, atol=1e-3)
    back = from_model(grey, volume_view_for(affine), values.shape, window)
    np.testing.assert_allclose(back, np.clip(values, -1000, 1000), rtol=1e-5, atol=0.01)  # modality units
    inverted = to_model(values, volume_view_for(affine), window, shown.shape, invert=True)
    np.testing.assert_allclose(inverted, 255.0 - grey, atol=1e-4)


def test_depth_resampling_is_linear_and_keeps_constants():
    planes = np.stack([np.full((3, 4), v, np.float32) for v in (0.0, 10.0, 20.0, 30.0)])  # a linear ramp
    up = resample_depth(planes, 7)
    assert up.shape == (7, 3, 4) and np.allclose(up[:, 0, 0], np.sort(up[:, 0, 0]))  # monotone
    assert np.allclose(up.mean(0), 15.0, atol=1.0) and np.allclose(up, up[:, :1, :1])  # each plane constant
    assert np.allclose(resample_depth(np.full((5, 2, 2), 7.0, np.float32), 3), 7.0)


def test_nifti_volumes_load_as_samples_split_by_file_and_cached(tmp_path):
    root = nifti_folder(tmp_path / "scans", n=6)
    cfg = DataConfig(dataset="nifti", data_dir=str(root), dimensions=3, volume_size=[8, 6, 4],
                     intensity_window=[-1000.0, 800.0])
    data = load_data(cfg)
    assert data.image_shape == (1, 8, 6, 4) and data.train.images.dtype == torch.uint8
    splits = {name: data.split(name).images for name in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 7  # 5 volumes and the 4-D file's 2 time points
    assert all(len(v) for v in splits.values())
    # The 4-D file's two time points (the two brightest volumes) lie in one split, never two.
    brightness = sorted((float(v.float().mean()), name) for name, images in splits.items() for v in images)
    assert brightness[-1][1] == brightness[-2][1] and brightness[-2][0] > brightness[-3][0] + 20
    again = load_data(cfg)  # from the decoded-image cache: the same bytes
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.test.images, data.test.images)
    decoded = Path(os.environ["VAELAB_DATA"]) / "decoded"
    slots = {p.name for p in decoded.glob("nifti-3d-*.bin")}
    assert slots
    load_data(DataConfig(dataset="nifti", data_dir=str(root), dimensions=3, volume_size=[4, 4, 4],
                         intensity_window=[-1000.0, 800.0]))
    assert len({p.name for p in decoded.glob("nifti-3d-*.bin")} - slots) == 1  # another size, another cache file


def test_one_volume_is_what_numpy_makes_of_its_file(tmp_path):
    """Without resampling (the volume size is the file's own), a loaded sample is the file's voxels
    windowed and rounded, in nibabel's reorientation; the robust window is the volume's percentiles."""
    root = tmp_path / "scans"
    affine = AFFINES["las-spacing"]
    volumes = [phantom((6, 8, 10), seed=i).transpose(2, 1, 0) for i in range(3)]  # (10, 8, 6)
    for i, v in enumerate(volumes):
        write_nifti(root / f"v{i}.nii", v, affine)
    shape = reference_orientation(volumes[0], affine).shape
    data = load_data(DataConfig(dataset="nifti", data_dir=str(root), dimensions=3, volume_size=list(shape),
                                cache=False))
    got = {bytes(x.numpy().tobytes()) for x in torch.cat([data.train.images, data.val.images, data.test.images])}
    want = set()
    for v in volumes:
        low, high = np.percentile(v, (0.5, 99.5))
        grey = np.round(np.clip((reference_orientation(v, affine) - low) * 255.0 / (high - low), 0, 255))
        want.add(bytes(grey.astype(np.uint8)[None].tobytes()))
    assert got == want


def test_nifti_folder_trains_3d_and_2d_and_every_command_works_on_the_3d_run(tmp_path, capsys):
    root = nifti_folder(tmp_path / "scans")
    run = tmp_path / "run3d"
    assert main(["train", "--dataset", "nifti", "--data-dir", str(root), "--dimensions", "3",
                 "--intensity-window=-1000,800", *TINY, "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["image_shape"] == [1, 8, 8, 8] and cfg["data"]["dimensions"] == 3
    assert cfg["data"]["volume_size"] == [8, 8, 8]
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {"reconstructions.png", "samples.png", "latent.png"} <= figures
    assert main(["train", "--dataset", "nifti", "--data-dir", str(root), "--image-size", "8", "--hidden", "8",
                 "--latent-dim", "2", "--epochs", "1", "--batch-size", "4", "--quiet", "--out",
                 str(tmp_path / "run2d")]) == 0
    capsys.readouterr()

    assert main(["eval", str(run), "--iw-samples", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["nll"]) and result["bits_per_dim"] > 0 and np.isfinite(result["ssim"])
    assert result["fid"] is None and "volumes" in result["fid_skipped"]

    # sample --out X.nii.gz: a valid NIfTI, one volume per sample, in the run's window (HU)
    assert main(["sample", str(run), "-n", "3", "--out", str(tmp_path / "s.nii.gz")]) == 0
    samples = nib.load(tmp_path / "s.nii.gz")
    assert samples.shape == (8, 8, 8, 3)
    values = np.asarray(samples.get_fdata())
    assert np.isfinite(values).all() and values.min() >= -1000.0 - 1e-3 and values.max() <= 800.0 + 1e-3
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0

    # reconstruct a volume: the input's shape and affine, in its units (HU within the window)
    source = root / "vol0.nii.gz"  # oblique affine
    out = tmp_path / "r.nii.gz"
    assert main(["reconstruct", str(run), "--images", str(source), "--out", str(out)]) == 0
    given, back = nib.load(source), nib.load(out)
    assert back.shape == given.shape and np.allclose(back.affine, given.affine)
    recon = np.asarray(back.get_fdata())
    assert np.isfinite(recon).all() and recon.min() >= -1000.0 - 1e-3 and recon.max() <= 800.0 + 1e-3
    four = root / "vol3.nii.gz"  # 4-D: both time points, the same 4-D shape back
    assert main(["reconstruct", str(run), "--images", str(four), "--out", str(tmp_path / "r4.nii.gz")]) == 0
    assert nib.load(tmp_path / "r4.nii.gz").shape == nib.load(four).shape
    assert main(["reconstruct", str(run), "--images", str(source), "--out", str(tmp_path / "r.png")]) == 0
    for command in (["traverse", str(run)], ["interpolate", str(run), "--from", "0", "--to", "0", "--steps", "3"],
                    ["manifold", str(run), "--steps", "3"], ["reconstruct", str(run)], ["report", str(run)]):
        assert main(command) == 0, command
    assert (run / "report.html").is_file() and (run / "figures" / "traverse.png").is_file()
    capsys.readouterr()
    assert main(["traverse", str(run), "--image", str(tmp_path / "s.png")]) != 0
    assert main(["sample", str(tmp_path / "run2d"), "--out", str(tmp_path / "x.nii.gz")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vaelab: error: ") for line in err)
    assert not (tmp_path / "x.nii.gz").exists()


def test_mid_slice_figures_show_axial_coronal_sagittal():
    from vaelab.plots import mid_slices

    v = torch.zeros(1, 1, 4, 6, 8)
    v[0, 0, 2] = 1.0  # the axial mid-plane lit: the axial panel is all 1, the others one bright row
    tiles = mid_slices(v, gap=1)
    assert tiles.shape == (1, 1, 8, 3 * 8 + 2)
    axial, coronal, sagittal = tiles[0, 0, :, :8], tiles[0, 0, :, 9:17], tiles[0, 0, :, 18:]
    assert axial[1:7].sum() == 6 * 8 and axial.sum() == 48  # 6 × 8, centred
    assert coronal.sum() == 8 and coronal[2 + 2].sum() == 8  # D × W: row d = 2 of 4, centred in 8
    assert sagittal.sum() == 6 and sagittal[2 + 2, 1:7].sum() == 6  # D × H


def test_dicom_series_folder_trains_3d_and_2d(tmp_path):
    pytest.importorskip("pydicom")
    from vaelab.data.synthetic_scans import write_dicom_series

    scans = tmp_path / "dicom"
    for p in range(3):
        write_dicom_series(scans / f"case{p}", phantom((6, 12, 12), seed=p), series=f"s{p}",
                           identity={"PatientID": f"P{p}"})
    run = tmp_path / "run3d"
    assert main(["train", "--dataset", "dicom", "--data-dir", str(scans), "--dimensions", "3", *TINY,
                 "--batch-size", "1", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["image_shape"] == [1, 8, 8, 8]
    # No fixed window (each volume had its own percentiles): samples are written as grey values 0..255.
    assert main(["sample", str(run), "-n", "1", "--out", str(tmp_path / "one.nii")]) == 0
    one = nib.load(tmp_path / "one.nii")
    values = np.asarray(one.get_fdata())
    assert one.shape == (8, 8, 8) and values.min() >= 0 and values.max() <= 255 and values.max() > 1
    assert np.allclose(one.affine[:3, :3], -np.eye(3))  # 1 mm voxels, upright in a viewer
    default = tmp_path / "default-size"  # without --volume-size: 32³, written into config.json
    assert main(["train", "--dataset", "dicom", "--data-dir", str(scans), "--dimensions", "3", "--arch", "conv3d",
                 "--hidden", "4", "--epochs", "1", "--batch-size", "1", "--quiet", "--out", str(default)]) == 0
    saved = json.loads((default / "config.json").read_text())
    assert saved["data"]["volume_size"] == [32, 32, 32] and saved["model"]["image_shape"] == [1, 32, 32, 32]
    out = tmp_path / "r.nii.gz"
    assert main(["reconstruct", str(run), "--images", str(scans / "case1"), "--out", str(out)]) == 0
    back = nib.load(out)
    assert back.shape == (12, 12, 6)  # (columns, rows, slices), as a DICOM series is written in NIfTI
    from vaelab.data.dicom import order_series, read_header
    headers = [read_header(f, scans / "case1")[0] for f in sorted((scans / "case1").iterdir())]
    assert np.allclose(back.affine, order_series(headers).affine())
    assert main(["train", "--dataset", "dicom", "--data-dir", str(scans), "--image-size", "8", "--hidden", "8",
                 "--latent-dim", "2", "--epochs", "1", "--batch-size", "2", "--quiet",
                 "--out", str(tmp_path / "run2d")]) == 0


def test_shipped_nifti_volumes_train_a_3d_model_and_reconstruct_in_their_geometry(tmp_path):
    """nibabel's own example files (3-D and 4-D, axis-aligned and oblique, int16 and float)."""
    root = tmp_path / "shipped"
    root.mkdir()
    for name in ("anatomical.nii", "example_nifti2.nii.gz", "standard.nii.gz", "reoriented_anat_moved.nii"):
        shutil.copy(shipped(name), root / name)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "nifti", "--data-dir", str(root), "--dimensions", "3", *TINY,
                 "--out", str(run)]) == 0
    source = shipped("example4d.nii.gz")
    out = tmp_path / "r.nii.gz"
    assert main(["reconstruct", str(run), "--images", str(source), "--out", str(out)]) == 0
    given, back = nib.load(source), nib.load(out)
    assert back.shape == given.shape == (128, 96, 24, 2) and np.allclose(back.affine, given.affine)
    values, recon = np.asarray(given.get_fdata()), np.asarray(back.get_fdata())
    assert values.min() - 1e-3 <= recon.min() and recon.max() <= values.max() + 1e-3  # the input's units


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nifti", "--dimensions", "3", "--volume-size", "100000,100000,100000"], "volume_size"),
    (["--dataset", "nifti", "--dimensions", "3", "--volume-size", "512,512,512"], "voxels per sample"),
    (["--dataset", "nifti", "--dimensions", "3", "--volume-size", "8,8"], "volume_size"),
    (["--dataset", "mnist", "--dimensions", "3", "--arch", "conv3d"], "needs a dataset of volumes"),
    (["--dataset", "nifti", "--dimensions", "3", "--arch", "conv"], "--arch conv does not handle volumes"),
    (["--dataset", "nifti", "--dimensions", "3", "--arch", "resnet"], "--arch resnet does not handle volumes"),
    (["--dataset", "nifti", "--arch", "conv3d"], "--arch conv3d does not handle 2-D images"),
    (["--dataset", "nifti", "--dimensions", "3", "--image-size", "32"], "--image-size is for --dimensions 2"),
    (["--dataset", "nifti", "--volume-size", "8,8,8"], "--volume-size is for --dimensions 3"),
    (["--dataset", "nifti", "--dimensions", "4"], "dimensions must be 2"),
])
def test_bad_volume_settings_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    root = nifti_folder(tmp_path / "scans", n=3, fourd=False)
    out = tmp_path / "run"
    assert main(["train", *argv, "--data-dir", str(root), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab: error: ") and message in err[0], err
    assert not out.exists()


def test_nan_voxels_and_a_huge_header_are_refused_before_anything_is_written(tmp_path, capsys):
    root = nifti_folder(tmp_path / "scans", n=3, fourd=False)
    bad = phantom((6, 8, 8)).transpose(2, 1, 0)
    bad[2, 3, 1] = np.nan
    write_nifti(root / "nan.nii.gz", bad)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "nifti", "--data-dir", str(root), "--dimensions", "3",
                 "--volume-size", "8,8,8", "--arch", "conv3d", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan.nii.gz" in err[0] and "NaN" in err[0] and not out.exists()

    (root / "nan.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), str(root / "huge.nii"))
    raw = bytearray((root / "huge.nii").read_bytes())
    raw[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()  # dim[1..3]: 2.7e13 voxels, data missing
    (root / "huge.nii").write_bytes(bytes(raw))
    assert main(["train", "--dataset", "nifti", "--data-dir", str(root), "--dimensions", "3", "--volume-size",
                 "8,8,8", "--arch", "conv3d", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huge.nii" in err[0] and not out.exists()


def test_explore_refuses_a_volume_run_in_one_line(tmp_path):
    pytest.importorskip("fastapi")
    from vaelab.errors import ConfigError
    from vaelab.explorer import create_app

    root = nifti_folder(tmp_path / "scans", n=3, fourd=False)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "nifti", "--data-dir", str(root), "--dimensions", "3", *TINY,
                 "--batch-size", "1", "--out", str(run)]) == 0
    with pytest.raises(ConfigError, match="vaelab explore shows 2-D images and this run models volumes"):
        create_app(run)


def test_single_slice_series_are_skipped_and_mixed_photometry_refused(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from vaelab.data.synthetic_scans import write_dicom_series

    scans = tmp_path / "dicom"
    for p in range(3):
        write_dicom_series(scans / f"case{p}", phantom((6, 12, 12), seed=p), series=f"s{p}",
                           identity={"PatientID": f"P{p}"})
    write_dicom_series(scans / "xray", phantom((3, 12, 12))[1:2], series="x", identity={"PatientID": "P9"})
    data = load_data(DataConfig(dataset="dicom", data_dir=str(scans), dimensions=3, volume_size=[4, 4, 4],
                                cache=False, class_folders=False))
    assert len(data.train) + len(data.val) + len(data.test) == 3
    assert "skipped 1 series of one slice (not volumes)" in capsys.readouterr().err

    mixed = tmp_path / "mixed"
    for p in range(3):
        write_dicom_series(mixed / f"case{p}", phantom((6, 12, 12), seed=p), series=f"s{p}",
                           identity={"PatientID": f"P{p}"})
    write_dicom_series(tmp_path / "m1", phantom((6, 12, 12)), series="s0", photometric="MONOCHROME1",
                       identity={"PatientID": "P0"})
    shutil.copy(tmp_path / "m1" / "s0_003.dcm", mixed / "case0" / "s0_003.dcm")  # one inverted slice
    out = tmp_path / "run"
    assert main(["train", "--dataset", "dicom", "--data-dir", str(mixed), "--dimensions", "3", "--arch", "conv3d",
                 "--no-class-folders", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mixes MONOCHROME1 and MONOCHROME2" in err[0] and not out.exists()
