"""`--dataset shapes`: the procedural dSprites grid, its factors, its splits and its cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vaelab.config import SHAPES_IMAGES, DataConfig, RunConfig
from vaelab.data import DATASETS, load_data, shapes
from vaelab.errors import ConfigError


def _one(shape=0, scale=5, orientation=0, pos_x=15, pos_y=15) -> np.ndarray:
    return np.array([[shape, scale, orientation, pos_x, pos_y]])


def _centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    """(column, row) of the on-pixels' centroid, in pixel-centre coordinates."""
    rows, cols = torch.nonzero(image[0] > 0, as_tuple=True)
    return float(cols.double().mean()) + 0.5, float(rows.double().mean()) + 0.5


def test_the_factor_grid_is_dsprites():
    spec = shapes.factor_spec()
    assert spec.names == ("shape", "scale", "orientation", "posX", "posY")
    assert spec.sizes == (3, 6, 40, 32, 32)
    assert math.prod(spec.sizes) == SHAPES_IMAGES == 737_280
    assert spec.values[1][0] == pytest.approx(0.5) and spec.values[1][-1] == pytest.approx(1.0)
    assert spec.values[2][0] == 0.0 and spec.values[2][-1] == pytest.approx(2 * math.pi)
    assert spec.is_categorical() == [True, False, False, False, False]
    # The flat index runs over the grid in dSprites' order (the last factor fastest), both ways.
    index = np.arange(SHAPES_IMAGES)
    factors = shapes.factors_of(index)
    assert factors.shape == (SHAPES_IMAGES, 5)
    for k, size in enumerate(spec.sizes):
        assert np.array_equal(np.bincount(factors[:, k]), np.full(size, SHAPES_IMAGES // size))
    assert np.array_equal(shapes.index_of(factors), index)
    assert factors[1].tolist() == [0, 0, 0, 0, 1] and factors[32].tolist() == [0, 0, 0, 1, 0]


def test_images_are_binary_and_inside_the_frame():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, s, 300) for s in shapes.FACTOR_SIZES], 1)
    factors[:8, 1], factors[:8, 3:] = 5, [[0, 0], [31, 31], [0, 31], [31, 0]] * 2  # largest, in the corners
    images = shapes.render(factors)
    assert images.shape == (300, 1, 64, 64) and images.dtype == torch.uint8
    assert set(images.unique().tolist()) == {0, 255}
    assert (images.flatten(1).amax(1) == 255).all()  # every image shows its shape
    border = torch.cat([images[:, 0, 0], images[:, 0, -1], images[:, 0, :, 0], images[:, 0, :, -1]], 1)
    assert (border == 0).all()  # and none is cut off by the frame


@pytest.mark.parametrize("shape", range(3))
def test_a_step_of_pos_x_or_pos_y_moves_the_centre_by_32_over_31_pixels(shape):
    step = 32 / 31
    base = _centre_of_mass(shapes.render(_one(shape, pos_x=4, pos_y=9))[0])
    for k in (1, 5, 20):
        moved_x = _centre_of_mass(shapes.render(_one(shape, pos_x=4 + k, pos_y=9))[0])
        moved_y = _centre_of_mass(shapes.render(_one(shape, pos_x=4, pos_y=9 + k))[0])
        assert moved_x[0] - base[0] == pytest.approx(k * step, abs=0.51)  # point-sampled edges: <= half a pixel off
        assert moved_x[1] == pytest.approx(base[1], abs=0.51)
        assert moved_y[1] - base[1] == pytest.approx(k * step, abs=0.51)
        assert moved_y[0] == pytest.approx(base[0], abs=0.51)


@pytest.mark.parametrize("shape", range(3))
def test_area_grows_about_quadratically_with_scale(shape):
    # Averaged over every orientation and a few positions, so the pixel grid's rounding of the
    # edges averages out (an axis-aligned 9.6 px square alone covers 9 x 9 pixels).
    grid = np.array([[shape, s, k, x, y] for s in range(6) for k in range(40) for x, y in ((3, 7), (20, 11))])
    areas = (shapes.render(grid) > 0).flatten(1).sum(1).double().reshape(6, -1).mean(1).numpy()
    scales = np.linspace(0.5, 1.0, 6)
    assert all(a < b for a, b in zip(areas, areas[1:]))
    assert areas / areas[-1] == pytest.approx(scales ** 2, rel=0.03)
    # Areas match the drawn curves: square 1.6 x 1.6 units, ellipse pi * 1 * 0.6, heart about 2.82 units².
    unit = shapes.HALF_SIZE
    expected = {0: 1.6 ** 2, 1: math.pi * 0.6, 2: 2.82}[shape] * unit ** 2
    assert areas[-1] == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("shape", range(3))
def test_rotation_changes_the_image_and_keeps_the_centre(shape):
    images = shapes.render(np.concatenate([_one(shape, orientation=k) for k in (0, 5, 13, 39)]))
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])
    assert torch.equal(images[0], images[3])  # 0 and 2π both on the grid, as in dSprites
    centre = 16 + 15 * 32 / 31  # pixels, posX = posY = 15
    for image in images[1:]:
        assert float((image > 0).sum()) == pytest.approx(float((images[0] > 0).sum()), rel=0.06)
        if shape != 2:  # the heart's centroid is not its box's centre, so it swings round it
            assert _centre_of_mass(image) == pytest.approx((centre, centre), abs=0.51)


def test_the_three_shapes_differ():
    images = shapes.render(np.concatenate([_one(s) for s in range(3)]))
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    heart = images[2, 0] > 0
    assert heart[:32].sum() > heart[32:].sum()  # orientation 0: the lobes (the wider part) on top


def test_subsample_splits_carry_images_labels_and_factors():
    assert "shapes" in DATASETS
    data = load_data(DataConfig(dataset="shapes", shapes_subsample=500, val_fraction=0.2, split_seed=3))
    assert (len(data.test), len(data.val), len(data.train)) == (50, 90, 360)
    assert data.class_names == ["square", "ellipse", "heart"] and data.factors == shapes.factor_spec()
    assert data.image_shape == (1, 64, 64)
    seen = []
    for split in (data.train, data.val, data.test):
        assert split.factors.shape == (len(split), 5) and split.factors.dtype == torch.int64
        assert torch.equal(split.labels, split.factors[:, 0])
        assert torch.equal(split.images, shapes.render(split.factors.numpy()))  # each image is its factors'
        seen += shapes.index_of(split.factors.numpy()).tolist()
    assert len(set(seen)) == 500  # no image in two splits
    # Seeded: the same seed gives the same images; subsets nest (the first N of one permutation).
    again = load_data(DataConfig(dataset="shapes", shapes_subsample=500, val_fraction=0.2, split_seed=3))
    assert torch.equal(again.train.factors, data.train.factors)
    bigger = shapes.chosen_indices(900, 3)
    assert np.array_equal(bigger[:500], shapes.chosen_indices(500, 3))
    other = load_data(DataConfig(dataset="shapes", shapes_subsample=500, val_fraction=0.2, split_seed=4))
    assert not torch.equal(other.train.factors, data.train.factors)


def test_large_sets_are_drawn_once_into_a_memory_mapped_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path))
    monkeypatch.setattr(shapes, "CACHE_MIN_IMAGES", 100)
    cfg = DataConfig(dataset="shapes", shapes_subsample=300)
    first = load_data(cfg)
    assert "drawing 300 shapes images" in capsys.readouterr().err
    files = sorted((tmp_path / "shapes").iterdir())
    assert [p.suffix for p in files] == [".json", ".u8"]
    assert files[1].stat().st_size == 300 * 64 * 64
    record = json.loads(files[0].read_text())
    assert record["images"] == 300 and record["version"] == shapes.GENERATOR_VERSION

    second = load_data(cfg)  # read back from the file: nothing drawn
    assert capsys.readouterr().err == ""
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)
        assert torch.equal(b.images, shapes.render(b.factors.numpy()))

    # A damaged file (here one flipped pixel) fails its CRC and is drawn again, never trusted.
    raw = bytearray(files[1].read_bytes())
    raw[64 * 64 * 7 + 100] ^= 0xFF
    files[1].write_bytes(bytes(raw))
    third = load_data(cfg)
    assert "drawing 300 shapes images" in capsys.readouterr().err
    assert torch.equal(third.train.images, first.train.images)


def test_unwritable_cache_falls_back_to_memory(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VAELAB_DATA", str(blocker))  # shapes/ cannot be made under a file
    monkeypatch.setattr(shapes, "CACHE_MIN_IMAGES", 100)
    data = load_data(DataConfig(dataset="shapes", shapes_subsample=200))
    assert "cannot write the shapes cache" in capsys.readouterr().err
    assert torch.equal(data.train.images, shapes.render(data.train.factors.numpy()))


@pytest.mark.parametrize("raw, message", [
    ({"data": {"dataset": "shapes", "shapes_subsample": 5}}, "shapes_subsample must be 0"),
    ({"data": {"dataset": "shapes", "shapes_subsample": SHAPES_IMAGES + 1}}, "shapes_subsample must be 0"),
    ({"data": {"dataset": "digits", "shapes_subsample": 100}}, "shapes_subsample is for --dataset shapes"),
])
def test_bad_subsample_is_one_clear_line(raw, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(raw)


def test_other_datasets_have_no_factors():
    data = load_data(DataConfig(dataset="digits"))
    assert data.factors is None and data.train.factors is None
