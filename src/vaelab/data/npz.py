"""MedMNIST-format `.npz`: `{train,val,test}_images` (N×H×W or N×H×W×3 uint8) and `_labels`.

Labels may be (N,) or (N, 1); multi-label (N, K>1) arrays are rejected with a clear message.
An image-to-image file (`--task translate`) holds `{train,val,test}_inputs` and `_targets`
instead (uint8, the same layouts; an input and its target share N, H and W, their channels may
differ), with optional `_labels`; a file with `train_inputs` is read as pairs.
The file is opened with `allow_pickle=False`: an object array never executes anything. Each
array's header is checked before it is read, so a hostile file cannot make vaelab allocate more
than `MAX_NPZ_BYTES` (a compressed array of zeros can declare any shape).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData, Split, to_labels, to_nchw
from vaelab.errors import DataError

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
PAIR_KEYS = ("train_inputs", "train_targets", "val_inputs", "val_targets", "test_inputs", "test_targets")
OPTIONAL_PAIR_KEYS = ("train_labels", "val_labels", "test_labels")
SPLITS = ("train", "val", "test")
MAX_NPZ_BYTES = 8 * 1024**3  # all six arrays together
MAX_CLASSES = 100_000


def _check_headers(path: Path) -> None:
    """Read each .npy header in the archive: refuse pickled object arrays and absurd sizes up front."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for key in dict.fromkeys(KEYS + PAIR_KEYS):
            if f"{key}.npy" not in names:
                continue
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
            if dtype.hasobject:
                raise DataError(f"{path}:{key} is an object array (pickled Python objects); "
                                "vaelab never unpickles data, save plain numeric arrays")
            total += math.prod(shape) * dtype.itemsize
    if total > MAX_NPZ_BYTES:
        raise DataError(f"{path}: its arrays declare {total} bytes, more than the {MAX_NPZ_BYTES} allowed")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Load the six MedMNIST arrays (or the six image-pair arrays and any labels) from `path`,
    refusing pickles and missing keys."""
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a .npz file (not a zip archive of .npy arrays)")
    try:
        _check_headers(path)
        with np.load(path, allow_pickle=False) as archive:
            paired = "train_inputs" in archive.files
            keys = PAIR_KEYS if paired else KEYS
            missing = [k for k in keys if k not in archive.files]
            if missing:
                needed = ", ".join(keys)
                kind = "image pairs need" if paired else "MedMNIST format needs"
                raise DataError(f"{path} is missing key(s): {', '.join(missing)} ({kind} {needed})")
            optional = [k for k in OPTIONAL_PAIR_KEYS if paired and k in archive.files]
            return {k: archive[k] for k in (*keys, *optional)}
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, KeyError, RuntimeError,
            NotImplementedError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{path} is not a readable .npz file ({first})") from None


def load_npz(cfg: DataConfig) -> ImageData:
    """A MedMNIST-format .npz from `data_path`, with its own train/val/test splits (or an
    image-pair file: `_inputs` and `_targets` per split)."""
    if cfg.data_path is None:
        raise DataError("--dataset npz needs --data-path FILE.npz")
    path = Path(cfg.data_path).expanduser()
    arrays = read_npz(path)
    paired = "train_inputs" in arrays
    splits = {}
    for name in SPLITS:
        images = to_nchw(arrays[f"{name}_targets" if paired else f"{name}_images"],
                         f"{path}:{name}_{'targets' if paired else 'images'}")
        raw_labels = arrays.get(f"{name}_labels")
        labels = to_labels(raw_labels, len(images), f"{path}:{name}_labels")
        inputs = to_nchw(arrays[f"{name}_inputs"], f"{path}:{name}_inputs") if paired else None
        if inputs is not None and (inputs.shape[0] != images.shape[0] or inputs.shape[2:] != images.shape[2:]):
            raise DataError(f"{path}: {name}_inputs are {tuple(inputs.shape)} (N, C, H, W) but {name}_targets are "
                            f"{tuple(images.shape)}; each input needs a target of its size")
        splits[name] = Split(images, labels, inputs=inputs)
    shapes = {tuple(s.images.shape[1:]) for s in splits.values()}
    if len(shapes) != 1:
        raise DataError(f"{path}: train/val/test images differ in shape: {sorted(shapes)}")
    if paired and len({tuple(s.inputs.shape[1:]) for s in splits.values()}) != 1:
        raise DataError(f"{path}: train/val/test inputs differ in shape")
    labelled = [s.labels for s in splits.values() if s.labels is not None]
    num_classes = int(max(int(labels.max()) for labels in labelled)) + 1 if labelled else 0
    if num_classes > MAX_CLASSES:
        raise DataError(f"{path}: label {num_classes - 1} is too large (at most {MAX_CLASSES} classes)")
    return ImageData("npz", splits["train"], splits["val"], splits["test"], [str(i) for i in range(num_classes)])
