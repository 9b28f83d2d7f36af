"""A folder of PNG/JPEG/TIFF images; one level of sub-folders = class labels (optional).

Either all images lie directly in the folder (unlabelled) or all lie in sub-folders, one per
class (labels = sorted sub-folder names). Hidden files are ignored; any other file that is not a
readable image is an error naming the file, so a stray file never silently shrinks the data.
The images are split into train / validation / test (10% test, `val_fraction` validation), decoded
once and cached (see `cache.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData, three_way_indices, to_labels
from vaelab.data.cache import CacheKey, SplitWriter, load_cached
from vaelab.data.images import IMAGE_EXTENSIONS, load_image
from vaelab.errors import DataError

TEST_FRACTION = 0.1
DEFAULT_SIZE = 28


def _visible(folder: Path) -> list[os.DirEntry]:
    """The folder's entries but hidden ones, sorted by name. `os.scandir` knows each entry's type
    without a stat call: on the 50,000 files of CIFAR-10 pathlib's listing, sorting and stat-ing
    were most of the time a cached dataset took to open."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _image_files(folder: Path, entries: list[os.DirEntry]) -> list[Path]:
    """The image files among `folder`'s `entries` (from `_visible`); any other file is an error."""
    files = [e for e in entries if e.is_file()]
    bad = [e for e in files if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS]
    if bad:
        raise DataError(
            f"{folder / bad[0].name} is not an image file ({len(bad)} such file(s) in {folder}); "
            f"allowed: {', '.join(IMAGE_EXTENSIONS)}"
        )
    return [folder / e.name for e in files]


def scan_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """List the image files under `root` and their labels (None when unlabelled)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    entries = _visible(root)
    subdirs = [root / e.name for e in entries if e.is_dir()]
    top_files = _image_files(root, entries)
    if subdirs and top_files:
        raise DataError(
            f"{root} mixes images and sub-folders; put all images in class sub-folders or none"
        )
    if not subdirs:
        if not top_files:
            raise DataError(f"image folder {root} contains no images")
        return top_files, None, []
    files: list[Path] = []
    labels: list[int] = []
    class_names = [d.name for d in subdirs]
    for label, sub in enumerate(subdirs):
        sub_entries = _visible(sub)
        if any(e.is_dir() for e in sub_entries):
            raise DataError(f"{sub} contains sub-folders; only one level of class folders is supported")
        sub_files = _image_files(sub, sub_entries)
        files += sub_files
        labels += [label] * len(sub_files)
    if not files:
        raise DataError(f"image folder {root} contains no images")
    return files, labels, class_names


def load_folder(cfg: DataConfig) -> ImageData:
    """The image folder at `data_dir`, converted and resized, split into train/val/test.

    Decoded once into the decoded-image cache (see `cache.py`) and memory-mapped from there on.
    """
    if cfg.data_dir is None:
        raise DataError("--dataset folder needs --data-dir DIR (a folder of images)")
    root = Path(cfg.data_dir).expanduser()
    files, labels, class_names = scan_folder(root)
    if len(files) < 3:
        raise DataError(f"image folder {root} has {len(files)} image(s); need at least 3 (train/val/test)")
    size = cfg.image_size or DEFAULT_SIZE
    channels = cfg.channels or 1
    window = None if cfg.intensity_window is None else (cfg.intensity_window[0], cfg.intensity_window[1])
    plan = three_way_indices(len(files), TEST_FRACTION, cfg.val_fraction, cfg.split_seed)
    label_array = None if labels is None else to_labels(np.array(labels), len(files), str(root)).numpy()

    def build(writer: SplitWriter) -> tuple[list[str], dict]:
        for split, indices in plan.items():
            for i in indices:
                image = load_image(files[i], size, channels, window)[None]  # (1, C, S, S) uint8
                writer.add(split, image, None if label_array is None else label_array[i : i + 1])
        return class_names, {}

    params = {"size": size, "channels": channels, "window": window, "split_seed": cfg.split_seed,
              "val_fraction": cfg.val_fraction, "test_fraction": TEST_FRACTION, "decoder": decoder_version()}
    cached = load_cached(CacheKey("folder", root, files, params), build, what=f"image folder {root}",
                         enabled=cfg.cache)
    s = cached.splits
    return ImageData("folder", s["train"], s["val"], s["test"], cached.class_names)


def decoder_version() -> str:
    """What decides how a file decodes: a change of it invalidates cached datasets."""
    import PIL

    return f"images-1/pillow-{PIL.__version__}/numpy-{np.__version__.split('.')[0]}"
