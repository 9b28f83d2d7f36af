"""Paired data for image-to-image runs: `--dataset pairs` (matching by relative path, the errors),
npz files with inputs and targets (the MedMNIST keys still work), and batches carrying the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.cli import main
from vaelab.config import DataConfig, RunConfig
from vaelab.data import load_data
from vaelab.data.batches import iterate_batches
from vaelab.data.pairs import pair_split_keys
from vaelab.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _no_flush_to_zero_left_behind():
    """`vaelab train` in this process turns subnormal flushing on first (vaelab.runtime); a run that
    fails before training leaves it on, and later tests (hypothesis' floats) would see it."""
    yield
    torch.set_flush_denormal(False)



def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_pairs(root: Path, n: int = 12, size: int = 16, nested: bool = True) -> tuple[Path, Path]:
    """A/… and B/… with B = 255 - A (a known mapping); targets as .tif, inputs as .png."""
    rng = np.random.default_rng(0)
    a, b = root / "A", root / "B"
    for i in range(n):
        sub = f"case{i % 3}/" if nested else ""
        image = rng.integers(0, 256, (size, size)).astype(np.uint8)
        _save(a / f"{sub}img{i:02d}.png", image)
        _save(b / f"{sub}img{i:02d}.tif", 255 - image)
    return a, b


def test_pairs_are_matched_by_relative_path(tmp_path):
    a, b = make_pairs(tmp_path)
    data = load_data(DataConfig(dataset="pairs", input_dir=str(a), target_dir=str(b)))
    assert data.paired and data.image_shape == (1, 16, 16) and data.input_channels == 1  # native size kept
    assert len(data.train) + len(data.val) + len(data.test) == 12
    for split in (data.train, data.val, data.test):
        assert torch.equal(split.images, 255 - split.inputs)  # each target is its own input's partner
    keys = pair_split_keys(DataConfig(dataset="pairs", input_dir=str(a), target_dir=str(b)))
    assert sorted(keys["train"] + keys["val"] + keys["test"]) == sorted(f"case{i % 3}/img{i:02d}" for i in range(12))
    # The test split's rows follow its keys' order: the first key's input is the first row.
    first = np.asarray(Image.open(a / f"{keys['test'][0]}.png"))
    assert torch.equal(data.test.inputs[0, 0], torch.tensor(first))


def test_pairs_resize_and_convert_like_every_image(tmp_path):
    a, b = make_pairs(tmp_path, size=20)
    data = load_data(DataConfig(dataset="pairs", input_dir=str(a), target_dir=str(b), image_size=8, channels=3))
    assert data.image_shape == (3, 8, 8) and data.train.inputs.shape[1:] == (3, 8, 8)


@pytest.mark.parametrize("breakage, message", [
    ("missing_target", "has no partner in"),
    ("missing_input", "has no partner in"),
    ("size", "but its target"),
    ("stray", "is not an image file"),
    ("duplicate", "have the same name"),
    ("same_folder", "are the same folder"),
])
def test_pair_errors_are_one_clear_line(tmp_path, capsys, breakage, message):
    a, b = make_pairs(tmp_path, nested=False)
    target_dir = b
    if breakage == "missing_target":
        (b / "img03.tif").unlink()
    elif breakage == "missing_input":
        (a / "img04.png").unlink()
    elif breakage == "size":
        _save(b / "img05.tif", np.zeros((17, 16), np.uint8))
    elif breakage == "stray":
        (a / "notes.txt").write_text("not an image")
    elif breakage == "duplicate":
        _save(a / "img06.jpg", np.zeros((16, 16), np.uint8))
    elif breakage == "same_folder":
        target_dir = a
    out = tmp_path / "run"
    code = main(["train", "--task", "translate", "--arch", "unet", "--dataset", "pairs", "--input-dir", str(a),
                 "--target-dir", str(target_dir), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and err.startswith("vaelab: error: ") and message in err, err
    assert not out.exists()


def test_pairs_of_several_sizes_need_an_image_size(tmp_path):
    a, b = make_pairs(tmp_path, nested=False)
    _save(a / "big.png", np.zeros((24, 24), np.uint8))
    _save(b / "big.png", np.zeros((24, 24), np.uint8))
    with pytest.raises(DataError, match="--image-size"):
        load_data(DataConfig(dataset="pairs", input_dir=str(a), target_dir=str(b)))
    data = load_data(DataConfig(dataset="pairs", input_dir=str(a), target_dir=str(b), image_size=16))
    assert data.image_shape == (1, 16, 16)


def test_task_and_data_must_agree(tmp_path, fake_mnist, capsys):
    a, b = make_pairs(tmp_path)
    cases = [
        (["--dataset", "pairs", "--input-dir", str(a), "--target-dir", str(b)], "--task translate"),
        (["--task", "translate", "--arch", "unet", "--dataset", "mnist", "--data-dir", str(fake_mnist)],
         "needs image pairs"),
        (["--task", "translate", "--dataset", "mnist", "--degrade", "noise=0.1"], "--arch unet"),
        (["--arch", "unet", "--dataset", "mnist"], "--task translate"),
        (["--task", "translate", "--arch", "unet", "--degrade", "noise=0.1", "--binarize", "dynamic"], "binarize"),
        (["--task", "translate", "--arch", "unet", "--dataset", "pairs", "--input-dir", str(a)], "--target-dir"),
    ]
    for flags, message in cases:
        out = tmp_path / "run"
        assert main(["train", *flags, "--out", str(out), "--quiet"]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (flags, err)
        assert not out.exists()


def _npz(path: Path, paired: bool, channels_in: int = 1) -> Path:
    rng = np.random.default_rng(1)
    arrays = {}
    for name, n in (("train", 20), ("val", 6), ("test", 6)):
        target = rng.integers(0, 256, (n, 10, 12)).astype(np.uint8)
        if paired:
            arrays[f"{name}_targets"] = target
            inputs = target // 2
            arrays[f"{name}_inputs"] = np.repeat(inputs[..., None], 3, -1) if channels_in == 3 else inputs
        else:
            arrays[f"{name}_images"] = target
            arrays[f"{name}_labels"] = rng.integers(0, 3, (n, 1))
    np.savez(path, **arrays)
    return path


def test_npz_pairs_and_medmnist_keys(tmp_path):
    paired = load_data(DataConfig(dataset="npz", data_path=str(_npz(tmp_path / "p.npz", True, channels_in=3))))
    assert paired.paired and paired.image_shape == (1, 10, 12) and paired.input_channels == 3
    assert torch.equal(paired.train.inputs[:, 0], paired.train.images[:, 0] // 2) and paired.num_classes == 0
    plain = load_data(DataConfig(dataset="npz", data_path=str(_npz(tmp_path / "m.npz", False))))
    assert not plain.paired and plain.num_classes == 3 and plain.image_shape == (1, 10, 12)
    broken = dict(np.load(tmp_path / "p.npz"))
    del broken["val_targets"]
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(DataError, match="val_targets"):
        load_data(DataConfig(dataset="npz", data_path=str(tmp_path / "broken.npz")))
    wrong = dict(np.load(tmp_path / "p.npz"))
    wrong["test_inputs"] = wrong["test_inputs"][:, :5]
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(DataError, match="each input needs a target of its size"):
        load_data(DataConfig(dataset="npz", data_path=str(tmp_path / "wrong.npz")))


def test_batches_of_paired_splits_carry_the_input_image(tmp_path):
    data = load_data(DataConfig(dataset="npz", data_path=str(_npz(tmp_path / "p.npz", True))))
    gen = torch.Generator().manual_seed(0)
    for x, y in iterate_batches(data.train, 8, shuffle=True, generator=gen):
        assert y.dtype == torch.float32 and y.shape == x.shape
        torch.testing.assert_close(y, torch.floor(x * 255 / 2) / 255)


def test_degraded_datasets_become_pairs(fake_mnist):
    data = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist), degrade=None))
    assert not data.paired
    cfg = RunConfig.from_dict({"data": {"dataset": "mnist", "data_dir": str(fake_mnist),
                                        "degrade": {"noise": 0.1, "downsample": 2}},
                               "model": {"task": "translate", "arch": "unet"}})
    degraded = load_data(cfg.data)
    assert degraded.paired and degraded.input_channels == 1 and degraded.train.inputs is None
    with pytest.raises(ConfigError, match="degrade"):
        RunConfig.from_dict({"data": {"dataset": "mnist", "degrade": {"noise": 0.1}}})
