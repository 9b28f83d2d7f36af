"""uint8 image arrays <-> PNG bytes and `data:` URLs, the explorer's only image formats."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) with C in (1, 3) -> PNG bytes (grey or RGB)."""
    channels = image.shape[0]
    pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
    buffer = io.BytesIO()
    # compress_level=1: these images are tiny and latency matters more than a few bytes.
    Image.fromarray(np.ascontiguousarray(pixels), mode="L" if channels == 1 else "RGB").save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG bytes -> `data:image/png;base64,...` (usable directly as an <img> src)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
