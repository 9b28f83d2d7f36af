"""`folder` datasets of 16-bit PNG and 16-bit / float32 TIFF (typical medical exports): pixel values
come back as numpy computes them, scaled per image (min..max) or through `--intensity-window`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.cli import main
from vaelab.config import DataConfig
from vaelab.data import load_data

SIZE = 12


def _expected(array: np.ndarray, window=None) -> np.ndarray:
    """What a viewer's window/level does: [low, high] -> [0, 255], clipped, rounded."""
    a = array.astype(np.float64)
    low, high = window if window is not None else (a.min(), a.max())
    return np.round(np.clip((a - low) * 255.0 / (high - low), 0, 255)).astype(np.uint8)


def _write(folder: Path, kind: str, n: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(n):
        if kind == "float32":
            a = (rng.normal(2.0, 3.0, (SIZE, SIZE)) * (i + 1)).astype(np.float32)  # negative values too
        else:  # uint16 over most of its range, more than 8 bits of detail
            a = rng.integers(300 + 1000 * i, 60000 - 500 * i, (SIZE, SIZE)).astype(np.uint16)
        suffix = ".png" if kind == "png16" else ".tif"
        Image.fromarray(a).save(folder / f"img{i}{suffix}")
        arrays.append(a)
    return arrays


def _all_images(cfg: DataConfig) -> list[np.ndarray]:
    data = load_data(cfg)
    images = torch.cat([data.train.images, data.val.images, data.test.images])  # (N, 1, S, S) uint8
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, SIZE, SIZE)
    return [im[0].numpy() for im in images]


def _same_multiset(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    # The splits shuffle the images: compare as sorted collections.
    assert sorted(g.tobytes() for g in got) == sorted(w.tobytes() for w in want)


@pytest.mark.parametrize("kind", ["png16", "tiff16", "float32"])
def test_per_image_scaling(kind, tmp_path):
    arrays = _write(tmp_path / "imgs", kind)
    got = _all_images(DataConfig(dataset="folder", data_dir=str(tmp_path / "imgs"), image_size=SIZE))
    _same_multiset(got, [_expected(a) for a in arrays])


@pytest.mark.parametrize("kind, window", [("png16", (2000.0, 30000.0)), ("tiff16", (0.0, 65535.0)),
                                          ("float32", (-1.5, 4.0))])
def test_fixed_intensity_window(kind, window, tmp_path):
    arrays = _write(tmp_path / "imgs", kind, seed=1)
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path / "imgs"), image_size=SIZE, intensity_window=list(window))
    want = [_expected(a, window) for a in arrays]
    assert any((w == 0).any() or (w == 255).any() for w in want) or window == (0.0, 65535.0)
    _same_multiset(_all_images(cfg), want)


def test_png_really_is_16_bit(tmp_path):
    _write(tmp_path / "imgs", "png16", n=1)
    header = (tmp_path / "imgs" / "img0.png").read_bytes()[:26]
    assert header[24] == 16  # IHDR bit depth: the fixture tests 16-bit decoding, not 8-bit


def test_eight_bit_images_are_not_stretched(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    arrays = [np.full((SIZE, SIZE), 40 + 10 * i, np.uint8) for i in range(3)]
    for i, a in enumerate(arrays):
        a[0, 0] = 100
        Image.fromarray(a).save(folder / f"{i}.png")
    _same_multiset(_all_images(DataConfig(dataset="folder", data_dir=str(folder), image_size=SIZE)), arrays)


def test_intensity_window_flag_trains_and_is_recorded(tmp_path, capsys):
    _write(tmp_path / "imgs", "tiff16", n=6)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--image-size", str(SIZE),
                 "--intensity-window", "1000,50000", "--epochs", "1", "--batch-size", "4", "--hidden", "16",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["intensity_window"] == [1000.0, 50000.0]


def test_bad_window_is_one_clear_line(capsys):
    assert main(["config", "--intensity-window", "5"]) == 2  # not two numbers: a usage error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected two comma-separated numbers" in err[0]
    assert main(["config", "--intensity-window", "50,5"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "low < high" in err[0]
