"""Read one image file into the model's format: uint8 (C, H, W), converted and resized.

Mixed sizes and modes are handled by conversion (the documented behaviour): every image is
converted to grey ("L") or RGB and resized to a square `size`×`size` with bilinear filtering.
High-bit-depth images (16-bit PNG, 16/32-bit and float TIFF) are scaled to 0..255 per image
(min..max), or through a fixed intensity `window` (low, high) when one is given.

Files are untrusted input: PIL's decoders can raise almost anything on a damaged file (a TIFF
whose strip offsets are typed FLOAT raises TypeError inside `Image.load()`), so every call into
PIL runs inside `_decoder(where)`, which turns any exception into one `DataError` naming the
file. vaelab's own arithmetic between those calls stays outside it, so a bug there is not
disguised as a bad file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from vaelab.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 64_000_000  # refuse decompression bombs long before they exhaust memory
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


@contextmanager
def _decoder(where: str) -> Iterator[None]:
    """Run PIL code: any exception it raises becomes one DataError line about `where`.

    PIL's warnings (corrupt EXIF, odd tags, the decompression-bomb warning that MAX_PIXELS
    makes redundant) are silenced: they would be extra lines on stderr about a file that is
    either decoded or refused here anyway.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a decoder fed hostile bytes may raise any type
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{where}: not a readable image ({detail})") from None


def scale_to_uint8(arr: np.ndarray, window: Optional[tuple[float, float]]) -> np.ndarray:
    """High-depth pixels (H, W) or (H, W, S) -> uint8 (H, W): per image min..max, or via `window`."""
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 3:  # e.g. multi-sample float TIFF: average the samples
        arr = arr.mean(axis=2)
    low, high = window if window is not None else (float(np.nanmin(arr)), float(np.nanmax(arr)))
    scale = 255.0 / (high - low) if high > low else 0.0
    arr = np.clip((np.nan_to_num(arr, nan=low) - low) * scale, 0, 255)
    return np.round(arr).astype(np.uint8)


def decode_image(
    source, size: int, channels: int, where: str, window: Optional[tuple[float, float]] = None
) -> np.ndarray:
    """Decode a path or file-like object -> uint8 array (channels, size, size)."""
    with _decoder(where):
        img = Image.open(source)
    with img:
        with _decoder(where):
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"{where}: image too large ({img.width}×{img.height})")
            img.load()  # forces full decoding now, so a truncated file fails here
            high_depth = img.mode in HIGH_DEPTH_MODES or window is not None and img.mode != "RGB"
            pixels = np.asarray(img) if high_depth else None
        if pixels is not None:
            grey = scale_to_uint8(pixels, window)  # vaelab's own code: outside the decoder guard
            img = Image.fromarray(grey, mode="L")
        with _decoder(where):
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
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
