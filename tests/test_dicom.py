"""`--dataset dicom`: pixel values against numpy on pydicom's raw pixel arrays with the documented
window, on the CT and MR files shipped inside pydicom's wheel and on generated series (ordering,
slope/intercept, MONOCHROME1, multi-frame, splits by patient, skipped objects)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")

from vaelab.cli import main  # noqa: E402
from vaelab.config import DataConfig  # noqa: E402
from vaelab.data import load_data  # noqa: E402
from vaelab.data.dicom import decode_frames, order_series, read_header  # noqa: E402
from vaelab.data.medical import PERCENTILES, Window, window_series  # noqa: E402
from vaelab.data.synthetic_scans import phantom, write_dicom_series  # noqa: E402
from vaelab.errors import DataError  # noqa: E402

# Only files physically inside the installed package: some names in pydicom.data download on first use.
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def shipped(name: str) -> Path:
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not inside this pydicom wheel")
    return path


def expected(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """A viewer's window: [low, high] -> [0, 255], clipped, rounded (numpy, independent of vaelab)."""
    return np.round(np.clip((hu.astype(np.float64) - low) * 255.0 / (high - low), 0, 255)).astype(np.uint8)


def series_images(paths: list[Path], window, size: int, root: Path | None = None) -> np.ndarray:
    """The grey images vaelab makes of one series' files (N, S, S), empty slices kept."""
    root = root or paths[0].parent
    series = order_series([read_header(p, root)[0] for p in paths])
    images, _ = window_series(series.slices, window, size, 1, keep_empty=True)
    return images[:, 0]


def all_images(data) -> torch.Tensor:
    return torch.cat([data.train.images, data.val.images, data.test.images])


# ---- real files from pydicom's wheel ----------------------------------------------------------------


def test_real_ct_goes_through_the_modality_transform_to_hounsfield_units(tmp_path):
    path = shipped("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024.0 and ds.Rows == 128  # the transform matters here
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    got = series_images([path], Window(-160.0, 240.0), 128)  # a CT soft-tissue window, native size
    want = expected(hu, -160.0, 240.0)
    assert np.array_equal(got[0], want)
    assert 0 < (want == 0).mean() < 1 and (want == 255).any()  # the window clips on both sides


def test_real_mr_uses_its_robust_percentiles(tmp_path):
    path = shipped("MR_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    low, high = np.percentile(raw, PERCENTILES)  # 64×64: every pixel is sampled
    got = series_images([path], None, 64)
    assert np.array_equal(got[0], expected(raw, low, high))
    assert raw.min() < low < high < raw.max()  # percentiles, not min..max


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm"])
def test_real_compressed_and_other_encodings_give_the_same_pixels(name):
    path = shipped(name)
    from pydicom.pixels import get_decoder

    syntax = pydicom.dcmread(path).file_meta.TransferSyntaxUID
    if syntax.is_compressed and not get_decoder(syntax).is_available:
        pytest.skip(f"no decoder for {syntax.name} installed")
    reference = series_images([shipped("MR_small.dcm")], Window(0.0, 2000.0), 32)
    assert np.array_equal(series_images([path], Window(0.0, 2000.0), 32), reference)


@pytest.mark.parametrize("name, package", [("JPEG-lossy.dcm", "pylibjpeg-libjpeg"),
                                           ("JPEGLSNearLossless_16.dcm", "pylibjpeg-libjpeg")])
def test_undecodable_compressed_file_names_the_file_and_the_package(name, package, tmp_path):
    source = shipped(name)
    try:
        _ = pydicom.dcmread(source).pixel_array
        decodable = True
    except Exception:  # noqa: BLE001 - whatever pydicom raises: no decoder here
        decodable = False
    if decodable:
        pytest.skip(f"an installed decoder reads {name}")
    copy = tmp_path / "scans" / "sub" / name
    copy.parent.mkdir(parents=True)
    shutil.copy(source, copy)
    header, _ = read_header(copy, tmp_path / "scans")
    with pytest.raises(DataError) as err:
        decode_frames(header)
    message = str(err.value)
    assert message.startswith(f"sub/{name}:") and f"pip install pylibjpeg {package}" in message
    assert "\n" not in message


def test_real_colour_multiframe_ultrasound_keeps_its_frames(tmp_path):
    path = shipped("examples_ybr_color.dcm")
    header, _ = read_header(path, path.parent)
    frames = decode_frames(header)
    rgb = pydicom.dcmread(path).pixel_array  # (30, 240, 320, 3), YBR converted to RGB by pydicom
    assert len(frames) == 30 and all(f.colour for f in frames)
    assert np.array_equal(np.stack([f.values for f in frames]), rgb)


def test_real_non_image_objects_are_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "scans"
    for i in range(3):
        write_dicom_series(root / f"p{i}", phantom((4, 16, 16), seed=i), series=f"s{i}",
                           identity={"PatientID": f"P{i}"})
    for name in ("test-SR.dcm", "rtplan.dcm", "rtdose.dcm"):
        shutil.copy(shipped(name), root / "p0" / name)
    (root / "p1" / "notes.txt").write_text("not a scan")
    data = load_data(DataConfig(dataset="dicom", data_dir=str(root), image_size=16, keep_empty_slices=True,
                                class_folders=False))
    assert len(all_images(data)) == 12  # 3 series × 4 slices, nothing from the skipped files
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaelab: dicom: skipped 3 non-image object(s), 1 file(s) that are not DICOM"]


def test_real_truncated_file_is_one_line():
    header, _ = read_header(shipped("MR_truncated.dcm"), TEST_FILES)
    with pytest.raises(DataError, match=r"^MR_truncated.dcm: its pixel data is truncated or corrupt"):
        decode_frames(header)


# ---- generated series: ordering, transforms, frames -------------------------------------------------


def ramp_volume(n: int = 5, size: int = 12) -> np.ndarray:
    """Slices with different values (slice i around -600 + 250 i HU) and in-plane detail."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([-600.0 + 250.0 * i + 10.0 * x - 5.0 * y for i in range(n)]).astype(np.float32)


def test_slices_are_ordered_by_position_not_by_file_name_or_instance_number(tmp_path):
    hu = ramp_volume()
    names = [f"{n}.dcm" for n in ("c", "a", "e", "b", "d")]  # file names in no particular order
    paths = write_dicom_series(tmp_path / "s", hu, names=names, origin=(0, 0, -40),
                               orientation=(0, 1, 0, 0, 0, -1))  # sagittal: the normal is -x
    for i, path in enumerate(paths):  # instance numbers that contradict the positions
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 5 - i
        ds.save_as(path)
    got = series_images(paths, Window(-1000.0, 1000.0), 12)
    assert np.array_equal(got, expected(hu, -1000.0, 1000.0))
    # Without positions, InstanceNumber decides (here: the reverse).
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    assert np.array_equal(series_images(paths, Window(-1000.0, 1000.0), 12), expected(hu[::-1], -1000.0, 1000.0))


@pytest.mark.parametrize("slope, intercept", [(0.5, -1024.0), (2.0, -3000.0), (1.0, 0.0)])
def test_rescale_slope_and_intercept_give_hounsfield_units(tmp_path, slope, intercept):
    hu = ramp_volume(3)
    paths = write_dicom_series(tmp_path / "s", hu, slope=slope, intercept=intercept)
    raw = np.stack([pydicom.dcmread(p).pixel_array.astype(np.float64) for p in paths])
    assert not np.allclose(raw, hu) or slope == 1.0 and intercept == 0.0  # stored values differ from HU
    got = series_images(paths, Window(-400.0, 500.0), 12)
    assert np.array_equal(got, expected(raw * slope + intercept, -400.0, 500.0))


def test_monochrome1_is_inverted(tmp_path):
    hu = ramp_volume(2)
    mono2 = series_images(write_dicom_series(tmp_path / "m2", hu, series="m2"), Window(-700.0, 200.0), 12)
    mono1 = series_images(write_dicom_series(tmp_path / "m1", hu, series="m1", photometric="MONOCHROME1"),
                          Window(-700.0, 200.0), 12)
    assert np.array_equal(mono1, 255 - expected(hu, -700.0, 200.0))
    assert np.array_equal(mono1, 255 - mono2)


def test_multi_frame_file_frames_follow_their_positions_and_functional_group_rescale(tmp_path):
    hu = ramp_volume(4)
    (path,) = write_dicom_series(tmp_path / "mf", hu[[2, 0, 3, 1]], multi_frame=True)  # frames stored shuffled
    ds = pydicom.dcmread(path)
    positions = [0.0, 2.5, 5.0, 7.5]
    for frame, z in zip(ds.PerFrameFunctionalGroupsSequence, [positions[i] for i in (2, 0, 3, 1)]):
        frame.PlanePositionSequence[0].ImagePositionPatient = [0, 0, z]
    # The enhanced layout keeps the rescale in the functional groups: stored = (HU + 2048) / 2.
    raw = np.round((hu[[2, 0, 3, 1]].astype(np.float64) + 2048.0) / 2.0).astype(np.uint16)
    ds.PixelData, ds.PixelRepresentation = raw.tobytes(), 0
    del ds.RescaleSlope, ds.RescaleIntercept
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    shared, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = "2", "-2048"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.save_as(path)
    got = series_images([path], Window(-1000.0, 1500.0), 12)
    assert got.shape == (4, 12, 12)
    want = expected(raw[[1, 3, 0, 2]].astype(np.float64) * 2.0 - 2048.0, -1000.0, 1500.0)
    assert np.array_equal(got, want)


def write_patients(root: Path, patients: int, series_each: int, size: int = 8) -> None:
    """Series whose every pixel says who they belong to: value 40 · (patient · series_each + series) + 20."""
    for p in range(patients):
        for s in range(series_each):
            tag = p * series_each + s
            hu = np.full((3, size, size), 40.0 * tag + 20.0, np.float32)
            hu[:, 0, 0] = 0.0  # not constant: no slice is empty
            write_dicom_series(root / f"folder{p}-{s}", hu, series=f"p{p}s{s}",
                               identity={"PatientID": f"PAT{p}"} if patients else None)


def test_splits_are_by_patient_never_by_slice(tmp_path):
    write_patients(tmp_path / "scans", patients=5, series_each=2)
    data = load_data(DataConfig(dataset="dicom", data_dir=str(tmp_path / "scans"), image_size=8,
                                intensity_window=[0.0, 400.0], class_folders=False))
    owner = {}
    for split in ("train", "val", "test"):
        tags = (data.split(split).images[:, 0, 4, 4].double() * 400.0 / 255.0 - 20.0) / 40.0
        for tag in tags.round().int().tolist():
            owner.setdefault(tag // 2, set()).add(split)  # tag // 2 = the patient
    assert set(owner) == set(range(5)) and all(len(s) == 1 for s in owner.values())
    assert {next(iter(s)) for s in owner.values()} == {"train", "val", "test"}


def test_without_patient_ids_splits_are_by_series(tmp_path):
    root = tmp_path / "scans"
    write_patients(root, patients=4, series_each=1)
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.PatientID
        ds.save_as(path)
    data = load_data(DataConfig(dataset="dicom", data_dir=str(root), image_size=8, intensity_window=[0.0, 400.0],
                                class_folders=False))
    sizes = sorted(len(data.split(s)) for s in ("train", "val", "test"))
    assert sum(sizes) == 12 and all(n % 3 == 0 for n in sizes)  # whole series of 3 slices


def test_too_few_patients_to_split_is_one_clear_error(tmp_path):
    write_patients(tmp_path / "scans", patients=2, series_each=3)
    with pytest.raises(DataError, match="at least 3") as err:
        load_data(DataConfig(dataset="dicom", data_dir=str(tmp_path / "scans"), class_folders=False))
    assert "PAT" not in str(err.value)


def test_class_labels_come_from_the_top_level_folders(tmp_path):
    root = tmp_path / "scans"
    for label in ("benign", "malignant"):
        for i in range(2):
            write_dicom_series(root / label / f"case{i}" / "series", ramp_volume(3, 8), series=f"{label}{i}",
                               identity={"PatientID": f"{label}{i}"})
    data = load_data(DataConfig(dataset="dicom", data_dir=str(root), image_size=8))
    assert data.class_names == ["benign", "malignant"]
    labels = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    unlabelled = load_data(DataConfig(dataset="dicom", data_dir=str(root), image_size=8, class_folders=False))
    assert unlabelled.class_names == [] and unlabelled.train.labels is None


def test_train_and_eval_on_a_dicom_folder(tmp_path):
    root = tmp_path / "scans"
    for i in range(3):
        write_dicom_series(root / f"p{i}", phantom((6, 24, 24), seed=i), series=f"s{i}",
                           identity={"PatientID": f"P{i}"})
    out = tmp_path / "run"
    assert main(["train", "--dataset", "dicom", "--data-dir", str(root), "--image-size", "16", "--arch", "conv",
                 "--hidden", "8,16", "--latent-dim", "4", "--epochs", "1", "--batch-size", "2",
                 "--intensity-window=-1000,800", "--out", str(out), "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["dataset"] == "dicom" and cfg["model"]["image_shape"] == [1, 16, 16]
    assert main(["eval", str(out), "--iw-samples", "2", "--batch-size", "8", "--no-fid"]) == 0
