"""MedMNIST-format `.npz`: `{train,val,test}_images` (N×H×W or N×H×W×3 uint8) and `_labels`.

Labels may be (N,) or (N, 1); multi-label (N, K>1) arrays are rejected with a clear message.
The file is opened with `allow_pickle=False`: an object array never executes anything.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData, Split, to_labels, to_nchw
from vaelab.errors import DataError

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Load the six MedMNIST arrays from `path`, refusing pickles and missing keys."""
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in KEYS if k not in archive.files]
            if missing:
                needed = ", ".join(KEYS)
                raise DataError(f"{path} is missing key(s): {', '.join(missing)} (MedMNIST format needs {needed})")
            return {k: archive[k] for k in KEYS}
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None


def load_npz(cfg: DataConfig) -> ImageData:
    if cfg.data_path is None:
        raise DataError("--dataset npz needs --data-path FILE.npz")
    path = Path(cfg.data_path).expanduser()
    arrays = read_npz(path)
    splits = {}
    for name in ("train", "val", "test"):
        where = f"{path}:{name}_images"
        images = to_nchw(arrays[f"{name}_images"], where)
        labels = to_labels(arrays[f"{name}_labels"], len(images), f"{path}:{name}_labels")
        splits[name] = Split(images, labels)
    shapes = {tuple(s.images.shape[1:]) for s in splits.values()}
    if len(shapes) != 1:
        raise DataError(f"{path}: train/val/test images differ in shape: {sorted(shapes)}")
    num_classes = int(max(int(s.labels.max()) for s in splits.values() if s.labels is not None)) + 1
    return ImageData("npz", splits["train"], splits["val"], splits["test"], [str(i) for i in range(num_classes)])
