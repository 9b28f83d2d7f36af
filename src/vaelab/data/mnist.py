"""MNIST and Fashion-MNIST from their standard IDX files.

Where the files are looked for, in order: `--data-dir`; the cache `$VAELAB_DATA/<name>` or
`~/.cache/vaelab/<name>`; otherwise they are downloaded from the standard mirrors into the cache,
each checked against its published MD5 and written atomically (temp file + rename), so an
interrupted download never leaves a half file behind. Local files are checked by structure (see
`idx.py`), not by MD5: re-compressed but identical data is fine.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vaelab.checkpoint import atomic_write_bytes
from vaelab.config import DataConfig
from vaelab.data.base import ImageData, Split, holdout, to_labels, to_nchw
from vaelab.data.idx import read_images_and_labels
from vaelab.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxSource:
    """A dataset published as four gzipped IDX files: where to download them and their checksums."""
    name: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # gzip file name -> MD5 of the published .gz
    class_names: tuple[str, ...]


MNIST = IdxSource(
    name="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    class_names=tuple(str(d) for d in range(10)),
)

FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
)


def cache_dir(name: str) -> Path:
    """`$VAELAB_DATA/<name>` if set, else `~/.cache/vaelab/<name>`."""
    root = os.environ.get("VAELAB_DATA")
    return (Path(root) if root else Path.home() / ".cache" / "vaelab") / name


def find_file(folder: Path, stem: str) -> Path | None:
    """The IDX file `stem` in `folder`, gzip-compressed or raw (also the `.idx3-ubyte` spelling)."""
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = folder / candidate
        if path.is_file():
            return path
    return None


def locate(source: IdxSource, data_dir: str | None, download: bool = True) -> dict[str, Path]:
    """Return the four IDX files' paths, downloading into the cache only if found nowhere."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"--data-dir {folder} does not exist or is not a folder")
        found = {key: find_file(folder, stem) for key, stem in FILES.items()}
        missing = [FILES[k] + ".gz" for k, p in found.items() if p is None]
        if missing:
            raise DataError(f"{folder} is missing {source.name} file(s): {', '.join(missing)}")
        return found  # type: ignore[return-value]
    cache = cache_dir(source.name)
    found = {key: find_file(cache, stem) for key, stem in FILES.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    if not download:
        raise DataError(offline_message(source, cache))
    for key, stem in FILES.items():
        if found[key] is None:
            found[key] = fetch(source, stem + ".gz", cache)
    return found  # type: ignore[return-value]


def offline_message(source: IdxSource, cache: Path) -> str:
    """The one-line error when the files are neither on disk nor downloadable."""
    names = ", ".join(stem + ".gz" for stem in FILES.values())
    return (
        f"{source.name} files not found and could not be downloaded; put {names} in {cache} "
        f"(or pass --data-dir DIR, or set VAELAB_DATA)"
    )


def fetch(source: IdxSource, filename: str, cache: Path) -> Path:
    """Download `filename` from the first mirror that answers; verify MD5; write atomically."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / filename
    for mirror in source.mirrors:
        try:
            with urllib.request.urlopen(mirror + filename, timeout=30) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            continue
        if hashlib.md5(payload).hexdigest() != source.md5[filename]:
            continue  # a corrupt or tampered copy; try the next mirror
        atomic_write_bytes(target, payload)  # an interrupted download never leaves a half file
        return target
    raise DataError(offline_message(source, cache))


def load_idx_dataset(source: IdxSource, cfg: DataConfig) -> ImageData:
    """Locate (or download) and parse the four IDX files; hold out `val_fraction` for validation."""
    paths = locate(source, cfg.data_dir)
    train_x, train_y = read_images_and_labels(paths["train_images"], paths["train_labels"])
    test_x, test_y = read_images_and_labels(paths["test_images"], paths["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{source.name}: train images are {train_x.shape[1:]} but test images {test_x.shape[1:]}")
    for labels, path in ((train_y, paths["train_labels"]), (test_y, paths["test_labels"])):
        if labels.size and int(labels.max()) >= len(source.class_names):
            raise DataError(f"{path}: label {int(labels.max())} is out of range; {source.name} has "
                            f"{len(source.class_names)} classes (0..{len(source.class_names) - 1})")
    full = Split(to_nchw(train_x, source.name), to_labels(train_y, len(train_x), source.name))
    test = Split(to_nchw(test_x, source.name), to_labels(test_y, len(test_x), source.name))
    train, val = holdout(full, cfg.val_fraction, seed=cfg.split_seed)
    return ImageData(source.name, train, val, test, list(source.class_names))


def load_mnist(cfg: DataConfig) -> ImageData:
    """MNIST from `data_dir`, the cache, or the standard mirrors."""
    return load_idx_dataset(MNIST, cfg)


def load_fashion_mnist(cfg: DataConfig) -> ImageData:
    """Fashion-MNIST from `data_dir`, the cache, or the standard mirrors."""
    return load_idx_dataset(FASHION_MNIST, cfg)
