"""Datasets: IDX parsing, every dataset kind on small generated data, binarisation, batching."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from vaelab.config import DataConfig
from vaelab.data import DATASETS, load_data
from vaelab.data.batches import iterate_batches
from vaelab.data.idx import parse_idx, read_idx
from vaelab.errors import DataError


def test_idx_round_trip_gz_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    gz = write_idx(tmp_path / "a-idx3-ubyte", arr, gz=True)
    raw = write_idx(tmp_path / "b-idx3-ubyte", arr, gz=False)
    np.testing.assert_array_equal(read_idx(gz), arr)
    np.testing.assert_array_equal(read_idx(raw), arr)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"xx", "trailing"),
    (lambda b: b[:2], "too short"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "element type"),
])
def test_corrupt_idx_is_a_clear_error(mutate, message):
    arr = np.zeros((2, 3, 3), np.uint8)
    good = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    assert parse_idx(good).shape == (2, 3, 3)
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(good))


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(DataError, match="gzip"):
        read_idx(path)


def test_mnist_from_folder_splits(fake_mnist):
    data = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist), val_fraction=0.25))
    assert data.image_shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 30, 40)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.class_names == [str(d) for d in range(10)]
    # The test split is the t10k file as it is.
    test_images = read_idx(fake_mnist / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(data.test.images[:, 0].numpy(), test_images)


def test_train_and_validation_partition_the_training_file(tmp_path):
    """Every training image lands in exactly one of train / validation, with its own label, and
    the split is the seeded one (repeatable; another --split-seed gives another)."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (120, 28, 28)).astype(np.uint8)  # random: every image is unique
    labels = rng.integers(0, 10, 120).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:10])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:10])
    index = {images[i].tobytes(): i for i in range(len(images))}
    assert len(index) == 120

    def rows(split) -> list[int]:
        found = [index[img[0].numpy().tobytes()] for img in split.images]
        assert [int(labels[i]) for i in found] == split.labels.tolist()  # each image keeps its label
        return found

    data = load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25))
    train, val = rows(data.train), rows(data.val)
    assert (len(train), len(val)) == (90, 30)
    assert not set(train) & set(val) and set(train) | set(val) == set(range(120))
    again = load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25))
    assert rows(again.val) == val
    other = load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25, split_seed=1))
    assert set(rows(other.val)) != set(val)


def test_mnist_counts_disagree(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def test_mnist_offline_message_names_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    import dataclasses

    import vaelab.data.mnist as mnist

    # A loopback port nothing listens on: the download is refused at once, as offline.
    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(mnist.MNIST, mirrors=("http://127.0.0.1:9/",)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*cache"):
        load_data(DataConfig(dataset="mnist"))


def test_real_mnist_matches_published_sizes(has_real_mnist):
    data = load_data(DataConfig(dataset="mnist", data_dir=str(has_real_mnist)))
    assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000
    assert data.test.labels.bincount().tolist()[:2] == [980, 1135]


def test_digits_is_offline_and_8x8():
    data = load_data(DataConfig(dataset="digits"))
    assert data.image_shape == (1, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert int(data.train.images.max()) == 255


def _png(path, size, mode="L", value=128):
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_folder_labelled_with_mixed_sizes_and_modes(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", (20 + i, 30), "L" if i % 2 else "RGB")
    data = load_data(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=16, channels=3))
    assert data.image_shape == (3, 16, 16)
    assert data.class_names == ["cats", "dogs"]
    assert len(data.train) + len(data.val) + len(data.test) == 10


def test_folder_unlabelled(tmp_path):
    for i in range(6):
        _png(tmp_path / f"{i}.jpg", (10, 10), value=20 * i)
    data = load_data(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=10))
    assert data.train.labels is None and data.num_classes == 0


def test_folder_rejects_stray_file(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png", (8, 8))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="notes.txt"):
        load_data(DataConfig(dataset="folder", data_dir=str(tmp_path)))


def test_npz_medmnist_format(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 14, 14, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (n, 1))
    np.savez(tmp_path / "m.npz", **arrays)
    data = load_data(DataConfig(dataset="npz", data_path=str(tmp_path / "m.npz")))
    assert data.image_shape == (3, 14, 14)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 5)
    np.testing.assert_array_equal(data.val.images[2].permute(1, 2, 0).numpy(), arrays["val_images"][2])


def test_static_binarisation_is_fixed_and_binary(fake_mnist):
    cfg = DataConfig(dataset="digits", binarize="static")
    a, b = load_data(cfg), load_data(cfg)
    assert set(a.train.images.unique().tolist()) <= {0, 255}
    assert torch.equal(a.train.images, b.train.images)


def test_dynamic_binarisation_resamples_each_pass():
    data = load_data(DataConfig(dataset="digits"))
    gen = torch.Generator().manual_seed(0)
    first = next(iterate_batches(data.train, 64, shuffle=False, generator=gen, dynamic_binarize=True))[0]
    second = next(iterate_batches(data.train, 64, shuffle=False, generator=gen, dynamic_binarize=True))[0]
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)
    # Averaged over many draws, the bits recover the grey values.
    grey = data.train.images[:64].float() / 255
    draws = torch.stack([torch.bernoulli(grey, generator=gen) for _ in range(400)]).mean(0)
    assert (draws - grey).abs().max() < 0.15


def test_batches_cover_the_split_once_per_epoch():
    data = load_data(DataConfig(dataset="digits"))
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in iterate_batches(data.train, 100, shuffle=True, generator=gen)])
    assert torch.equal(seen.sort().values, data.train.labels.sort().values)


def test_registry_lists_every_dataset():
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "folder", "npz", "dicom", "nifti", "shapes", "pairs"}


def test_download_checks_md5_and_writes_atomically(tmp_path, has_real_mnist):
    """fetch() against a loopback mirror: the canonical file is kept, a tampered copy is refused."""
    import dataclasses
    import functools
    import http.server
    import shutil
    import threading

    import vaelab.data.mnist as mnist

    served = tmp_path / "mirror"
    served.mkdir()
    name = "t10k-labels-idx1-ubyte.gz"  # byte-identical to the canonical download (see its README)
    shutil.copy(has_real_mnist / name, served / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = dataclasses.replace(mnist.MNIST, mirrors=(f"http://127.0.0.1:{server.server_port}/",))
        cache = tmp_path / "cache"
        target = mnist.fetch(source, name, cache)
        assert target.read_bytes() == (has_real_mnist / name).read_bytes()
        assert [p.name for p in cache.iterdir()] == [name]  # no temporary file left behind
        (served / name).write_bytes(b"\x1f\x8b tampered")
        with pytest.raises(DataError, match="could not be downloaded"):
            mnist.fetch(source, name, tmp_path / "cache2")
        assert not (tmp_path / "cache2" / name).exists()
    finally:
        server.shutdown()
