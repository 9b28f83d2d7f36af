"""Hostile and broken input through `vaelab.cli.main`: one line `vaelab: error: ...`, non-zero exit, nothing written.

Each case builds the broken input for real (files on disk, a read-only filesystem, a full disk)
and checks the three promises: exactly one stderr line starting with `vaelab: error:`, a non-zero
exit code, and no run folder created or changed. Images of mixed sizes and modes are the
exception: the documented behaviour is to convert them, so that case must succeed.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import subprocess
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab.checkpoint as checkpoint_module
from conftest import write_idx
from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, checkpoint_position, read_safetensors
from vaelab.cli import main
from vaelab.data.idx import read_idx
from vaelab.errors import DataError

SMALL = ["--epochs", "1", "--batch-size", "8", "--hidden", "16,8", "--quiet"]


def fails_cleanly(capsys, argv: list[str], out: Path | None, *expected: str) -> str:
    """Run main(argv); assert one `vaelab: error:` line mentioning `expected`, non-zero, `out` untouched."""
    before = _snapshot(out)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code != 0, captured
    assert len(lines) == 1, lines
    assert lines[0].startswith("vaelab: error: "), lines
    for text in expected:
        assert text.lower() in lines[0].lower(), lines[0]
    assert _snapshot(out) == before, "the output folder was written to"
    return lines[0]


def _snapshot(out: Path | None):
    if out is None or not out.exists():
        return None
    return {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}


def _png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _images(folder: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(folder / f"img{i}.png", Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)))
    return folder


# ---- folders of images ------------------------------------------------------------------------

def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "folder", "--data-dir", str(tmp_path / "empty"), "--out", str(out),
                           *SMALL], out, "contains no images")
    assert not out.exists()


def test_non_image_files_among_images(tmp_path, capsys):
    folder = _images(tmp_path / "imgs")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), *SMALL],
                  out, "notes.txt", "not an image")
    (folder / "notes.txt").unlink()
    (folder / "fake.png").write_text("text pretending to be a PNG")
    fails_cleanly(capsys, ["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), *SMALL],
                  out, "fake.png", "not a readable image")
    assert not out.exists()


def test_truncated_png(tmp_path, capsys):
    folder = _images(tmp_path / "imgs")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    (folder / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), *SMALL],
                  out, "cut.png")
    assert not out.exists()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height but holds almost no data (a decompression-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("side", [9_000, 10_000, 20_000])  # below, between and above PIL's own two limits
def test_decompression_bomb_image(tmp_path, capsys, side):
    folder = _images(tmp_path / "imgs")
    (folder / "bomb.png").write_bytes(_png_header_only(side, side - 500))
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:  # a warning would be a second stderr line
        warnings.simplefilter("always")
        fails_cleanly(capsys, ["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), *SMALL],
                      out, "bomb.png")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert not out.exists()


def test_mixed_sizes_and_modes_are_converted(tmp_path):
    """Documented behaviour: every image becomes grey (or RGB) at --image-size; grey levels survive."""
    folder = tmp_path / "mixed"
    grey = 100
    _png(folder / "a_L.png", Image.new("L", (10, 12), grey))
    _png(folder / "b_RGB.png", Image.new("RGB", (30, 20), (grey, grey, grey)))
    _png(folder / "c_RGBA.png", Image.new("RGBA", (28, 28), (grey, grey, grey, 255)))
    _png(folder / "d_P.png", Image.new("RGB", (9, 9), (grey, grey, grey)).convert("P", palette=Image.Palette.ADAPTIVE))
    _png(folder / "e_LA.png", Image.new("LA", (16, 40), (grey, 255)))
    Image.new("RGB", (17, 17), (grey, grey, grey)).save(folder / "f_rgb.jpg", quality=100)
    Image.new("L", (20, 20), grey).save(folder / "g.bmp")
    _png(folder / "h_1bit.png", Image.new("1", (8, 8), 1))  # white
    out = tmp_path / "out"
    code = main(["train", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "16", "--out", str(out),
                 "--epochs", "1", "--batch-size", "2", *SMALL[4:]])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["image_shape"] == [1, 16, 16]
    from vaelab.config import DataConfig
    from vaelab.data.folder import load_folder

    data = load_folder(DataConfig(dataset="folder", data_dir=str(folder), image_size=16))
    images = torch.cat([data.train.images, data.val.images, data.test.images])
    assert images.shape == (8, 1, 16, 16)
    values = sorted(int(img.float().mean().round()) for img in images)
    assert values[:-1] == [grey] * 7 and values[-1] == 255  # flat grey survives JPEG q100 and an adaptive palette


# ---- npz ---------------------------------------------------------------------------------------

def _npz(path: Path, **overrides) -> Path:
    arrays = {f"{s}_images": np.zeros((6, 8, 8), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.arange(6) % 2 for s in ("train", "val", "test")})
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("overrides, expected", [
    ({"val_labels": None}, "missing key(s): val_labels"),
    ({"train_images": np.zeros((6, 8), np.uint8)}, "must be N×H×W"),
    ({"train_images": np.zeros((6, 8, 8, 4), np.uint8)}, "must be N×H×W"),
    ({"train_images": np.zeros((6, 8, 8), np.float32)}, "must be uint8"),
    ({"test_images": np.zeros((6, 9, 9), np.uint8)}, "differ in shape"),
    ({"train_labels": np.arange(5)}, "5 labels for 6 images"),
    ({"train_labels": np.zeros((6, 3), np.int64)}, "labels must be N integers"),
    ({"train_labels": np.full(6, 10**9)}, "too large"),
    ({"val_images": np.zeros((0, 8, 8), np.uint8), "val_labels": np.zeros(0, np.int64)}, "contains no images"),
])
def test_npz_missing_or_misshaped_keys(tmp_path, capsys, overrides, expected):
    path = _npz(tmp_path / "d.npz", **overrides)
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "npz", "--data-path", str(path), "--out", str(out), *SMALL],
                  out, expected)
    assert not out.exists()


def test_npz_that_is_not_an_npz(tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.npz"
    for payload in (b"", b"\x93NUMPY" + b"\x00" * 40, b"PK\x03\x04garbage", b"hello"):
        bad.write_bytes(payload)
        fails_cleanly(capsys, ["train", "--dataset", "npz", "--data-path", str(bad), "--out", str(out), *SMALL],
                      out, "bad.npz")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npy").rename(bad)
    fails_cleanly(capsys, ["train", "--dataset", "npz", "--data-path", str(bad), "--out", str(out), *SMALL], out,
                  "not a .npz")
    assert not out.exists()


def test_npz_declaring_a_huge_array_is_refused_before_allocation(tmp_path, capsys):
    """A .npy header can claim any shape: it is checked before numpy allocates anything."""
    small = np.load(_npz(tmp_path / "small.npz"))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 10**4, 10**3)})
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key in small.files:
            member = io.BytesIO()
            np.save(member, small[key])
            archive.writestr(f"{key}.npy", header.getvalue() + b"\x00" * 16 if key == "train_images"
                             else member.getvalue())
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "npz", "--data-path", str(path), "--out", str(out), *SMALL],
                  out, "more than")


# ---- IDX ---------------------------------------------------------------------------------------

def _idx_folder(tmp_path: Path, n_train=40, n_labels=None, magic=None, cut=0, label_value=None) -> Path:
    folder = tmp_path / "idx"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", 12)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        labels = rng.integers(0, 10, n_labels if (n_labels and prefix == "train") else n).astype(np.uint8)
        if label_value is not None:
            labels[0] = label_value
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    target = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if magic is not None:
        raw = magic + raw[4:]
    if cut:
        raw = raw[:-cut]
    target.write_bytes(gzip.compress(raw))
    return folder


@pytest.mark.parametrize("kwargs, expected", [
    ({"magic": b"\x08\x03\x00\x00"}, "wrong magic number"),
    ({"magic": b"\x00\x00\x0d\x03"}, "unsupported IDX element type"),
    ({"cut": 100}, "truncated"),
    ({"n_labels": 39}, "40 images but train-labels-idx1-ubyte.gz has 39 labels"),
    ({"label_value": 200}, "label 200 is out of range"),
])
def test_broken_idx_files(tmp_path, capsys, kwargs, expected):
    folder = _idx_folder(tmp_path, **kwargs)
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "mnist", "--data-dir", str(folder), "--out", str(out), *SMALL],
                  out, expected)
    assert not out.exists()


def test_idx_gzip_bomb_and_truncated_gzip(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (3_000_000).to_bytes(4, "big") + bytes(3_000_000)))
    with pytest.raises(DataError, match="declares 3000000 bytes of data, more than the 1000000 allowed"):
        read_idx(path, max_bytes=1_000_000)
    assert read_idx(path, max_bytes=4_000_000).shape == (3_000_000,)
    packed = path.read_bytes()
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_missing_data_dir(tmp_path, capsys):
    out = tmp_path / "out"
    for dataset in ("mnist", "folder"):
        fails_cleanly(capsys, ["train", "--dataset", dataset, "--data-dir", str(tmp_path / "nope"), "--out", str(out),
                               *SMALL], out, "does not exist")
    fails_cleanly(capsys, ["train", "--dataset", "npz", "--data-path", str(tmp_path / "nope.npz"), "--out", str(out),
                           *SMALL], out, "not found")
    assert not out.exists()


# ---- absurd flags --------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "-3"], "epochs must be >= 1"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--latent-dim", "0"], "latent_dim must be between 1"),
    (["--batch-size", "100000"], "larger than the training split"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--lr", "nan"], "train.lr' must be a finite number"),
    (["--lr", "inf"], "train.lr' must be a finite number"),
    (["--lr", "-0.1"], "lr must be in (0, 10]"),
    (["--val-fraction", "1.5"], "val_fraction must be in (0, 1)"),
    (["--hidden", "0"], "hidden must be"),
    (["--seed", "-1"], "seed must be in"),
    (["--grad-clip", "-1"], "grad_clip must be >= 0"),
    (["--checkpoint-every", "-5"], "checkpoint_every must be >= 0"),
    (["--beta", "nan"], "train.beta' must be a finite number"),
    (["--latent-dim", "4096", "--hidden", "65536,65536,65536"], "parameters"),
])
def test_absurd_flags(tmp_path, capsys, fake_mnist, flags, expected):
    out = tmp_path / "out"
    fails_cleanly(capsys, ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--out", str(out),
                           *SMALL, *flags], out, expected)
    assert not out.exists()


# ---- output folders that cannot be written -------------------------------------------------------

def test_output_under_a_regular_file(tmp_path, capsys, fake_mnist):
    blocker = tmp_path / "a-file"
    blocker.write_text("precious")
    for out in (blocker / "run", blocker):
        fails_cleanly(capsys, ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--out", str(out),
                               *SMALL], None, str(blocker))
    assert blocker.read_text() == "precious"


def test_output_in_proc(capsys, fake_mnist):
    out = Path(f"/proc/vaelab-test-{uuid.uuid4().hex}/run")
    fails_cleanly(capsys, ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--out", str(out), *SMALL],
                  None, "cannot write to run folder")


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs mounted under tmp_path (needs root + CAP_SYS_ADMIN; skipped elsewhere)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()

    def run(*args: str) -> bool:
        return subprocess.run(args, capture_output=True).returncode == 0

    if os.geteuid() != 0 or not run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mount_point, lambda options: run("mount", "-o", f"remount,{options}", str(mount_point))
    finally:
        run("umount", str(mount_point))


def test_output_on_read_only_filesystem(tmpfs, capsys, fake_mnist):
    mount_point, remount = tmpfs
    assert remount("ro")
    out = mount_point / "run"
    fails_cleanly(capsys, ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--out", str(out), *SMALL],
                  None, "read-only file system")
    assert not out.exists()


# ---- a full disk during a checkpoint ---------------------------------------------------------------

TRAIN = ["--dataset", "mnist", "--epochs", "3", "--batch-size", "16", "--hidden", "32,16", "--checkpoint-every",
         "4", "--seed", "1", "--quiet"]  # 108 training images -> 7 batches per epoch


def _same_tensors(a: Path, b: Path) -> None:
    want, got = read_safetensors(a)[0], read_safetensors(b)[0]
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_disk_full_during_checkpoint_fault_hook(tmp_path, capsys, fake_mnist, monkeypatch):
    """ENOSPC injected halfway through checkpoint #5: clear error, checkpoint #4 intact, resume exact."""
    reference = tmp_path / "reference"
    assert main(["train", *TRAIN, "--data-dir", str(fake_mnist), "--out", str(reference)]) == 0
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module, "_write_counts", {})
    monkeypatch.setenv(FAULT_ENV, f"enospc:{CHECKPOINT_FILE}:5")
    code = main(["train", *TRAIN, "--data-dir", str(fake_mnist), "--out", str(out)])
    line = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in line
    assert line.startswith("vaelab: error: cannot write") and os.strerror(errno.ENOSPC) in line
    assert f"previous {CHECKPOINT_FILE} is unchanged" in line
    # Writes: #1 step 0, #2 step 4, #3 end of epoch 1 (step 7), #4 step 8, #5 step 12 -> fails.
    position = checkpoint_position(out / CHECKPOINT_FILE)
    assert (position["epoch"], position["batch"], position["step"]) == (1, 1, 8)
    assert not list(out.glob(".*.tmp")) and not (out / "model.safetensors").exists()
    monkeypatch.delenv(FAULT_ENV)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    for name in ("model.safetensors", CHECKPOINT_FILE):
        _same_tensors(reference / name, out / name)


def test_disk_full_on_a_real_tiny_filesystem(tmpfs, tmp_path, capsys, fake_mnist):
    """A 1 MiB tmpfs fills up while checkpoints are written beside the previous one: a genuine ENOSPC.

    The error is one line, the first checkpoint survives intact, and once space is freed the run
    resumes and ends bit-identical to an uninterrupted run.
    """
    mount_point, remount = tmpfs
    reference, out = tmp_path / "reference", mount_point / "run"
    assert main(["train", *TRAIN, "--data-dir", str(fake_mnist), "--out", str(reference)]) == 0
    capsys.readouterr()
    code = main(["train", *TRAIN, "--data-dir", str(fake_mnist), "--out", str(out)])
    line = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in line and line.startswith("vaelab: error: cannot write")
    assert CHECKPOINT_FILE in line and os.strerror(errno.ENOSPC) in line and "unchanged" in line
    assert checkpoint_position(out / CHECKPOINT_FILE)["step"] < 21  # an earlier checkpoint, still readable
    assert not list(out.glob(".*.tmp")) and not (out / "model.safetensors").exists()
    assert remount("size=64m")  # free space
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    for name in ("model.safetensors", CHECKPOINT_FILE):
        _same_tensors(reference / name, out / name)


# ---- resuming from a damaged or mismatched run ---------------------------------------------------

def test_resume_refuses_damaged_or_mismatched_runs(tmp_path, capsys, fake_mnist):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--epochs", "2", "--data-dir", str(fake_mnist), "--out", str(out)]) == 0
    capsys.readouterr()
    fails_cleanly(capsys, ["train", "--resume", str(out), "--epochs", "1", "--quiet"], out,
                  "--epochs 1 is fewer than the 2 epochs")
    good = (out / CHECKPOINT_FILE).read_bytes()
    for damaged in (good[: len(good) // 3], b"", b"\x00" * 100):
        (out / CHECKPOINT_FILE).write_bytes(damaged)
        fails_cleanly(capsys, ["train", "--resume", str(out), "--quiet"], out, CHECKPOINT_FILE)
    (out / CHECKPOINT_FILE).write_bytes(good)
    config = json.loads((out / "config.json").read_text())
    config["model"]["hidden"] = [8, 4]  # the checkpoint no longer fits the model
    (out / "config.json").write_text(json.dumps(config))
    fails_cleanly(capsys, ["train", "--resume", str(out), "--quiet"], out, "does not match config.json")
    fails_cleanly(capsys, ["train", "--resume", str(tmp_path), "--quiet"], tmp_path, "not a vaelab run folder")


def test_resume_refuses_changed_training_data(tmp_path, capsys, fake_mnist, monkeypatch):
    """A mid-epoch checkpoint stores the epoch's data order; different data must not index past it."""
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module, "_write_counts", {})
    monkeypatch.setenv(FAULT_ENV, f"enospc:{CHECKPOINT_FILE}:3")  # stop after checkpoint #2 (step 4, mid-epoch)
    assert main(["train", *TRAIN, "--data-dir", str(fake_mnist), "--out", str(out)]) != 0
    monkeypatch.delenv(FAULT_ENV)
    capsys.readouterr()
    assert checkpoint_position(out / CHECKPOINT_FILE)["batch"] == 4
    rng = np.random.default_rng(3)
    write_idx(fake_mnist / "train-images-idx3-ubyte", rng.integers(0, 256, (60, 28, 28)).astype(np.uint8))
    write_idx(fake_mnist / "train-labels-idx1-ubyte", rng.integers(0, 10, 60).astype(np.uint8))
    fails_cleanly(capsys, ["train", "--resume", str(out), "--quiet"], out, "training data changed")
