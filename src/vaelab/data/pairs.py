"""Paired image folders for image-to-image runs: `--dataset pairs --input-dir A --target-dir B`.

Every image file under A (searched recursively; hidden files and folders ignored) is paired with
the file under B at the same relative path, the extension aside: `A/scan01/slice3.png` with
`B/scan01/slice3.tif`. An input without a target (or a target without an input), two files of one
name with different extensions, a file that is not an image, or a pair whose two images differ in
size is one clear error naming the file. Both images of a pair are read by the same function as
every other vaelab image (`READERS`, keyed by file extension: PIL's formats, and NIfTI volumes
and DICOM files, every slice, as the medical loaders cut and window them: translate/scans.py;
an input and its target must then hold as many slices), converted to
`--channels` and resized to `--image-size` (default: the images' own size when every file has the
same square size).

Splits are made by pair (all slices of one file stay together): 10 % test, then `val_fraction`
of the rest for validation, seeded by `split_seed` as for `--dataset folder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.base import ImageData, Split, three_way_indices
from vaelab.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, load_image
from vaelab.errors import DataError

TEST_FRACTION = 0.1


@dataclass(frozen=True)
class ImageReader:
    """How one kind of image file is read: the native (H, W) of its images (to check a pair's two
    sizes before anything is resized), and its images as uint8 (n, C, S, S) (n slices; 1 for a
    photo), given the size S, the channels C and the run's DataConfig (intensity window, slice axis)."""

    size: Callable[[Path, DataConfig], tuple[int, int]]
    read: Callable[[Path, int, int, DataConfig], np.ndarray]


def _pil_size(path: Path, cfg: DataConfig) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if width * height > MAX_PIXELS:
        raise DataError(f"{path}: image too large ({width}×{height})")
    return height, width


def _pil_read(path: Path, size: int, channels: int, cfg: DataConfig) -> np.ndarray:
    window = None if cfg.intensity_window is None else (cfg.intensity_window[0], cfg.intensity_window[1])
    return load_image(path, size, channels, window)[None]  # (1, C, S, S)


def _scan_size(path: Path, cfg: DataConfig) -> tuple[int, int]:
    from vaelab.translate.scans import scan_slice_size

    return scan_slice_size(path, cfg)


def _scan_read(path: Path, size: int, channels: int, cfg: DataConfig) -> np.ndarray:
    from vaelab.translate.scans import read_scan_images

    return read_scan_images(path, size, channels, cfg)


# File extension (lower case) -> reader: PIL's formats, and scans (NIfTI volumes and DICOM files,
# every slice; pip install 'vaelab[medical]').
READERS: dict[str, ImageReader] = {
    **{ext: ImageReader(_pil_size, _pil_read) for ext in IMAGE_EXTENSIONS},
    **{ext: ImageReader(_scan_size, _scan_read) for ext in (".nii", ".nii.gz", ".dcm", ".dicom")},
}


def reader_extension(path: Path) -> Optional[str]:
    """The READERS key that `path`'s name ends with (the longest, so .nii.gz beats .gz), or None."""
    name = path.name.lower()
    matches = [ext for ext in READERS if name.endswith(ext)]
    return max(matches, key=len) if matches else None


def _pair_key(root: Path, path: Path) -> str:
    """The relative path without its image extension: what an input and its target share."""
    relative = path.relative_to(root).as_posix()
    ext = reader_extension(path) or ""
    return relative[: len(relative) - len(ext)]


def scan_images(root: Path, what: str) -> dict[str, Path]:
    """Every image file under `root` (recursively, hidden entries skipped), keyed by `_pair_key`."""
    if not root.is_dir():
        raise DataError(f"{what} {root} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or not path.is_file():
            continue
        if reader_extension(path) is None:
            raise DataError(f"{path} is not an image file; allowed in {what}: {', '.join(sorted(READERS))}")
        key = _pair_key(root, path)
        if key in found:
            raise DataError(f"{found[key]} and {path} have the same name: which one is meant is ambiguous")
        found[key] = path
    if not found:
        raise DataError(f"{what} {root} contains no images")
    return found


def match_pairs(input_dir: Path, target_dir: Path) -> list[tuple[str, Path, Path]]:
    """(key, input file, target file) for every pair, sorted by key; one error for any unmatched file."""
    if input_dir.resolve() == target_dir.resolve():
        raise DataError(f"--input-dir and --target-dir are the same folder ({input_dir}); the targets must differ")
    inputs = scan_images(input_dir, "--input-dir")
    targets = scan_images(target_dir, "--target-dir")
    for have, want, have_dir, want_dir in ((inputs, targets, input_dir, target_dir),
                                           (targets, inputs, target_dir, input_dir)):
        missing = sorted(set(have) - set(want))
        if missing:
            raise DataError(f"{have[missing[0]]} has no partner in {want_dir} (looked for {missing[0]}.* there); "
                            f"{len(missing)} of the {len(have)} files in {have_dir} are unmatched")
    return [(key, inputs[key], targets[key]) for key in sorted(inputs)]


def _native_size(path: Path, cfg: DataConfig) -> tuple[int, int]:
    return READERS[reader_extension(path)].size(path, cfg)


def resolve_size(pairs: list[tuple[str, Path, Path]], requested: Optional[int], cfg: DataConfig) -> int:
    """Check every pair's two native sizes agree; the size to resize to (`--image-size`, or the
    images' common square size)."""
    sizes = set()
    for _, a, b in pairs:
        size_a, size_b = _native_size(a, cfg), _native_size(b, cfg)
        if size_a != size_b:
            raise DataError(f"{a} is {size_a[0]}×{size_a[1]} but its target {b} is {size_b[0]}×{size_b[1]}; "
                            f"the two images of a pair must have the same size")
        sizes.add(size_a)
    if requested is not None:
        return requested
    if len(sizes) == 1 and len({*next(iter(sizes))}) == 1:
        return next(iter(sizes))[0]
    shown = ", ".join(f"{h}×{w}" for h, w in sorted(sizes)[:3])
    raise DataError(f"the pairs are not all one square size ({shown}{', ...' if len(sizes) > 3 else ''}); "
                    f"give --image-size S to resize every image to S×S")


def _read(path: Path, size: int, channels: int, cfg: DataConfig) -> np.ndarray:
    return READERS[reader_extension(path)].read(path, size, channels, cfg)


def split_indices(n: int, val_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Seeded train / val / test indices into 0..n-1 pairs, by the rule of `--dataset folder`
    (`TEST_FRACTION` for test, then `val_fraction` of the rest; `three_way_indices`)."""
    index = three_way_indices(n, TEST_FRACTION, val_fraction, seed, what="image pairs")
    return {name: torch.from_numpy(idx) for name, idx in index.items()}


def pair_split_keys(cfg: DataConfig) -> dict[str, list[str]]:
    """The pair keys (relative paths without extension) of each split of a `pairs` dataset, as
    `load_pairs` splits them (e.g. to find further targets of the test inputs for `vaelab eval`)."""
    pairs = match_pairs(Path(cfg.input_dir).expanduser(), Path(cfg.target_dir).expanduser())
    index = split_indices(len(pairs), cfg.val_fraction, cfg.split_seed)
    return {name: [pairs[i][0] for i in idx.tolist()] for name, idx in index.items()}


def load_pairs(cfg: DataConfig) -> ImageData:
    """`--dataset pairs`: the matched images of `input_dir` and `target_dir`, split by pair."""
    if cfg.input_dir is None or cfg.target_dir is None:
        raise DataError("--dataset pairs needs --input-dir A (the inputs) and --target-dir B (the targets)")
    pairs = match_pairs(Path(cfg.input_dir).expanduser(), Path(cfg.target_dir).expanduser())
    size = resolve_size(pairs, cfg.image_size, cfg)
    channels = cfg.channels or 1
    inputs, targets, owner = [], [], []  # owner: the pair each image (slice) comes from
    for i, (_, a, b) in enumerate(pairs):
        x, y = _read(a, size, channels, cfg), _read(b, size, channels, cfg)
        if len(x) != len(y):
            raise DataError(f"{a} holds {len(x)} images but its target {b} holds {len(y)}")
        inputs.append(x)
        targets.append(y)
        owner += [i] * len(x)
    all_inputs = torch.from_numpy(np.concatenate(inputs))  # (N, C, S, S) uint8
    all_targets = torch.from_numpy(np.concatenate(targets))
    owner_t = torch.tensor(owner)
    splits = {}
    for name, idx in split_indices(len(pairs), cfg.val_fraction, cfg.split_seed).items():
        rows = torch.isin(owner_t, idx).nonzero().flatten()  # every slice of the split's pairs, in order
        splits[name] = Split(all_targets[rows], None, inputs=all_inputs[rows])
    return ImageData("pairs", splits["train"], splits["val"], splits["test"], [])
