"""Read one image file into the model's format: uint8 (C, H, W), converted and resized.

Mixed sizes and modes are handled by conversion (the documented behaviour): every image is
converted to grey ("L") or RGB and resized to a square `size`×`size` with bilinear filtering.
High-bit-depth images (16-bit PNG, 16/32-bit and float TIFF) are scaled to 0..255 per image
(min..max), or through a fixed intensity `window` (low, high) when one is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from vaelab.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 64_000_000  # refuse decompression bombs long before they exhaust memory


def _high_depth_to_uint8(img: Image.Image, window: Optional[tuple[float, float]]) -> Image.Image:
    """16-bit / 32-bit / float single-channel image -> 8-bit grey, per image or via `window`."""
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3:  # e.g. multi-sample float TIFF: average the samples
        arr = arr.mean(axis=2)
    low, high = window if window is not None else (float(np.nanmin(arr)), float(np.nanmax(arr)))
    scale = 255.0 / (high - low) if high > low else 0.0
    arr = np.clip((np.nan_to_num(arr, nan=low) - low) * scale, 0, 255)
    return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")


def decode_image(
    source, size: int, channels: int, where: str, window: Optional[tuple[float, float]] = None
) -> np.ndarray:
    """Decode a path or file-like object -> uint8 array (channels, size, size)."""
    try:
        with warnings.catch_warnings():
            # PIL warns (on stderr) above ~89 M pixels; MAX_PIXELS refuses such images with one clear error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"{where}: image too large ({img.width}×{img.height})")
            img.load()  # forces full decoding now, so a truncated file fails here
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") or window is not None and img.mode != "RGB":
                img = _high_depth_to_uint8(img, window)
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def load_image(path: str | Path, size: int, channels: int, window: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Load an image file from disk into uint8 (channels, size, size); clear error if it can't."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    return decode_image(path, size, channels, str(path), window)
