"""Read one image file into the model's format: uint8 (C, H, W), converted and resized.

Mixed sizes and modes are handled by conversion (the documented behaviour): every image is
converted to grey ("L") or RGB and resized to a square `size`×`size` with bilinear filtering.
High-bit-depth images (16-bit PNG, 16/32-bit and float TIFF) are scaled to 0..255 per image
(min..max), or through a fixed intensity `window` (low, high) when one is given.

Files are untrusted input: PIL's decoders can raise almost anything on a damaged file (a TIFF
whose strip offsets are typed FLOAT raises TypeError inside `Image.load()`), so every call into
PIL runs inside `_decoder(where)`, which turns any exception into one `DataError` naming the
file. vaelab's own arithmetic between those calls stays outside it, so a bug there is not
disguised as a bad file. libtiff (PIL's decoder for compressed TIFFs) also prints its own
diagnostics straight to stderr ("ZIPDecode: Decoding error at scanline 0, ..."), a second line
beside vaelab's; its global handlers are switched off (`_quiet_libtiff`), since the failure
reaches the user as the DataError anyway.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
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


@functools.cache
def _quiet_libtiff() -> bool:
    """Set libtiff's global error and warning handlers to none (they print to stderr); True if done.

    PIL has no switch for this, so the copy of libtiff that PIL's C module loaded is found (on
    Linux in /proc/self/maps, else next to PIL's own libraries) and its handlers are reset through
    ctypes. Anything unexpected leaves libtiff as it was: only its extra stderr lines remain.
    """
    try:
        import PIL
        import PIL._imaging  # noqa: F401 - loads libtiff (a dependency of PIL's C module)

        candidates = []
        if os.path.exists("/proc/self/maps"):
            with open("/proc/self/maps") as maps:
                candidates = [line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]]
        here = Path(PIL.__file__).parent
        for bundled in (here.parent / "pillow.libs", here / ".dylibs"):  # the libraries of PIL's wheels
            candidates += glob.glob(str(bundled / "libtiff*"))
        for path in dict.fromkeys(candidates):
            library = ctypes.CDLL(path)
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                setter = getattr(library, name)
                setter.restype = ctypes.c_void_p
                setter.argtypes = [ctypes.c_void_p]
                setter(None)
            return True
    except (OSError, AttributeError, ImportError, IndexError):
        pass
    return False


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
    _quiet_libtiff()
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
