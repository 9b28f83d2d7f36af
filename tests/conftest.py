"""Shared fixtures: small generated datasets and tiny configs that train in seconds on CPU."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "datasets" / "mnist"


@pytest.fixture(autouse=True, scope="session")
def _private_data_cache(tmp_path_factory):
    # The decoded-image cache (and any other cache under $VAELAB_DATA) goes to a folder of this
    # test session, never the user's ~/.cache/vaelab; tests that need their own set it themselves.
    if "VAELAB_DATA" in os.environ:
        yield
        return
    os.environ["VAELAB_DATA"] = str(tmp_path_factory.mktemp("vaelab-data"))
    yield
    del os.environ["VAELAB_DATA"]


@pytest.fixture(autouse=True)
def _small_threads():
    # Tests are tiny; many threads only add contention on 2-core machines.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array in IDX format (the inverse of vaelab.data.idx.parse_idx)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    """A tiny MNIST-shaped IDX folder: 120 train and 40 test 28×28 images, 10 classes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose position encodes the label
            images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture
def has_real_mnist() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared MNIST files not present")
    return MNIST_DIR


os.environ.setdefault("MPLBACKEND", "Agg")
