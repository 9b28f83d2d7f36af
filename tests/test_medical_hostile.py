"""Hostile scans: each is one line `vaelab: error: ...` naming the file by its path relative to
--data-dir, a non-zero exit, and nothing written (no run folder, no cache file). Plus a fuzz: a few
hundred byte-flipped and truncated DICOM and NIfTI files go through the readers, each decoded or
refused with one DataError line, never another exception."""

from __future__ import annotations

import gzip
import resource
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from vaelab.cli import main  # noqa: E402
from vaelab.data.dicom import decode_frames, read_header  # noqa: E402
from vaelab.data.medical import window_series  # noqa: E402
from vaelab.data.nifti import NiftiUnit  # noqa: E402
from vaelab.data.synthetic_scans import (  # noqa: E402
    phantom,
    seed_files,
    write_dicom_series,
    write_nifti,
    write_structured_report,
)
from vaelab.errors import DataError  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def good_dicoms(root: Path, n: int = 3) -> None:
    for i in range(n):
        write_dicom_series(root / f"p{i}", phantom((4, 12, 12), seed=i), series=f"s{i}",
                           identity={"PatientID": f"P{i}"})


def good_niftis(root: Path, n: int = 3) -> None:
    for i in range(n):
        write_nifti(root / f"v{i}.nii.gz", phantom((5, 10, 10), seed=i).transpose(2, 1, 0), np.eye(4))


def refused(dataset: str, root: Path, tmp_path: Path, cache: Path, capsys, *extra: str) -> str:
    """Train on `root`: must fail with one error line and write nothing; returns that line."""
    out = tmp_path / "run"
    code = main(["train", "--dataset", dataset, "--data-dir", str(root), "--image-size", "8", "--epochs", "1",
                 "--no-class-folders", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("vaelab: error: "), err
    assert not out.exists()
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no cache file, no temp file left
    assert str(tmp_path) not in err[0]  # files are named relative to --data-dir
    assert torch.tensor(1e-40).item() != 0  # a failed in-process train leaves subnormals as IEEE has them
    return err[0]


def test_truncated_dicom(tmp_path, cache, capsys):
    good_dicoms(tmp_path / "d")
    victim = tmp_path / "d" / "p1" / "s1_002.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])  # pixel data cut short
    assert "p1/s1_002.dcm: its pixel data is truncated or corrupt" in refused("dicom", tmp_path / "d", tmp_path,
                                                                              cache, capsys)
    victim.write_bytes(victim.read_bytes()[:250])  # cut inside the header
    assert "p1/s1_002.dcm:" in refused("dicom", tmp_path / "d", tmp_path, cache, capsys)


def test_non_dicom_file_named_dcm(tmp_path, cache, capsys):
    good_dicoms(tmp_path / "d")
    (tmp_path / "d" / "p0" / "photo.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    assert "p0/photo.dcm: not a DICOM file" in refused("dicom", tmp_path / "d", tmp_path, cache, capsys)


def test_dicom_without_pixel_data_as_the_only_file(tmp_path, cache, capsys):
    write_structured_report(tmp_path / "d" / "report.dcm")
    line = refused("dicom", tmp_path / "d", tmp_path, cache, capsys)
    assert "holds no DICOM images (1 non-image object(s) skipped)" in line


def test_mixed_slice_sizes_within_a_series(tmp_path, cache, capsys):
    good_dicoms(tmp_path / "d")
    odd = write_dicom_series(tmp_path / "odd", phantom((1, 16, 16)), series="s2")[0]  # same series as p2
    shutil.move(odd, tmp_path / "d" / "p2" / "odd.dcm")
    line = refused("dicom", tmp_path / "d", tmp_path, cache, capsys)
    assert "slices of mixed sizes in one series" in line and "p2/odd.dcm is 16×16" in line


def test_mixed_modalities_need_allow_mixed(tmp_path, cache, capsys):
    good_dicoms(tmp_path / "d")
    write_dicom_series(tmp_path / "d" / "mr", phantom((4, 12, 12)) + 1000.0, modality="MR", intercept=0.0,
                       series="mr", identity={"PatientID": "P9"})
    line = refused("dicom", tmp_path / "d", tmp_path, cache, capsys)
    assert "mixes modalities (CT in p0/s0_000.dcm, MR in mr/mr_000.dcm)" in line and "--allow-mixed" in line
    assert main(["train", "--dataset", "dicom", "--data-dir", str(tmp_path / "d"), "--image-size", "8",
                 "--epochs", "1", "--batch-size", "2", "--hidden", "8", "--allow-mixed", "--no-class-folders",
                 "--out", str(tmp_path / "ok"), "--quiet"]) == 0


def test_dicom_header_claiming_an_absurd_image(tmp_path, cache, capsys):
    good_dicoms(tmp_path / "d")
    path = tmp_path / "d" / "p0" / "s0_001.dcm"
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 100000
    ds.save_as(path)
    assert "p0/s0_001.dcm: claims 100000 frame(s) of 65535×65535" in refused("dicom", tmp_path / "d", tmp_path,
                                                                           cache, capsys)


@pytest.mark.parametrize("kind", ["garbage", "zero-sizeof_hdr", "garbage-gz", "bad-dims"])
def test_corrupt_nifti_header(tmp_path, cache, capsys, kind):
    good_niftis(tmp_path / "n")
    victim = tmp_path / "n" / ("broken.nii.gz" if kind == "garbage-gz" else "broken.nii")
    if kind == "garbage":
        victim.write_bytes(np.random.default_rng(0).bytes(600))
    elif kind == "garbage-gz":
        victim.write_bytes(b"\x1f\x8b" + np.random.default_rng(1).bytes(600))
    else:
        write_nifti(victim, np.zeros((4, 4, 4), np.float32))
        raw = bytearray(victim.read_bytes())
        if kind == "zero-sizeof_hdr":
            raw[0:4] = bytes(4)
        else:
            raw[40:42] = (9).to_bytes(2, "little")  # dim[0] = 9: more dimensions than NIfTI has
        victim.write_bytes(bytes(raw))
    assert victim.name + ":" in refused("nifti", tmp_path / "n", tmp_path, cache, capsys)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, cache, capsys, bad):
    good_niftis(tmp_path / "n")
    volume = phantom((5, 10, 10)).transpose(2, 1, 0)
    volume[3, 4, 2] = bad
    write_nifti(tmp_path / "n" / "sub" / "nan.nii", volume)
    assert "sub/nan.nii: contains NaN or infinite values" in refused("nifti", tmp_path / "n", tmp_path, cache, capsys)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_claiming_a_100000_cubed_volume_is_refused_before_allocation(tmp_path, cache, capsys, suffix):
    good_niftis(tmp_path / "n")
    header = nib.Nifti2Header()
    header.set_data_shape((100000, 100000, 100000))  # 4e15 bytes of float32 claimed; no data follows
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 544
    victim = tmp_path / "n" / f"huge{suffix}"
    payload = header.binaryblock + bytes(4)  # the 540-byte header and an empty extension flag
    victim.write_bytes(gzip.compress(payload) if suffix == ".nii.gz" else payload)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = refused("nifti", tmp_path / "n", tmp_path, cache, capsys)
    assert f"huge{suffix}: its header claims a 100000×100000×100000 image" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 4e15 bytes


def test_truncated_uncompressed_nifti(tmp_path, cache, capsys):
    good_niftis(tmp_path / "n")
    victim = write_nifti(tmp_path / "n" / "short.nii", np.ones((10, 10, 10), np.float32))
    victim.write_bytes(victim.read_bytes()[:-500])
    assert "short.nii: truncated" in refused("nifti", tmp_path / "n", tmp_path, cache, capsys)


def test_missing_extra_names_the_install(monkeypatch, tmp_path, capsys):
    for module in ("pydicom", "nibabel"):
        monkeypatch.setitem(sys.modules, module, None)  # `import pydicom` now fails as if not installed
    for dataset, module in (("dicom", "pydicom"), ("nifti", "nibabel")):
        assert main(["train", "--dataset", dataset, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"vaelab: error: --dataset {dataset} needs the {module} package: pip install 'vaelab[medical]'"]
        assert not (tmp_path / "r").exists()


# ---- fuzz ------------------------------------------------------------------------------------


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes (often in the header), a truncation, or a zeroed run."""
    data = bytearray(raw)
    kind = rng.integers(4)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.integers(1, 9)):
            data[rng.integers(len(data))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # flip bytes in the header region, where lengths and dimensions live
        for _ in range(rng.integers(1, 5)):
            data[rng.integers(min(len(data), 700))] ^= int(rng.integers(1, 256))
    elif kind == 2:
        data = data[: rng.integers(len(data))]
    else:
        start, length = int(rng.integers(len(data))), int(rng.integers(1, 64))
        data[start : start + length] = bytes(len(data[start : start + length]))
    return bytes(data)


def read_through(path: Path, root: Path) -> None:
    """What the loaders do with one file: header, pixels, the window (percentiles) and the slices."""
    if path.name.endswith((".nii", ".nii.gz")):
        window_series(NiftiUnit(path, path.name, None).slices, None, 8, 1, False)
        return
    header, _ = read_header(path, root)
    if header is not None:
        frames = decode_frames(header)
        window_series(lambda: iter(frames), None, 8, 1, False)


def test_fuzzed_dicom_and_nifti_files_are_read_or_refused_in_one_line(tmp_path, capsys):
    seeds = seed_files(tmp_path / "seeds")
    for seed in seeds:  # the seeds themselves are valid
        read_through(seed, seed.parent)
    rng = np.random.default_rng(12345)
    outcomes = {"read": 0, "refused": 0}
    work = tmp_path / "fuzz"
    work.mkdir()
    for i in range(300):
        seed = seeds[i % len(seeds)]
        name = f"case{i}" + ("".join(seed.suffixes) if seed.name.endswith((".nii", ".nii.gz")) else ".dcm")
        path = work / name
        path.write_bytes(mutate(seed.read_bytes(), rng))
        try:
            read_through(path, work)
            outcomes["read"] += 1
        except DataError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(f"{name}:"), message
            outcomes["refused"] += 1
        path.unlink()
    assert outcomes["read"] > 20 and outcomes["refused"] > 100, outcomes
    assert capsys.readouterr().err == ""  # the libraries' warnings and log lines (header values) are silenced
