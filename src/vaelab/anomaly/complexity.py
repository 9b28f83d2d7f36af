"""Input complexity: the length of an image under a generic lossless compressor, in bits.

Serrà et al. 2020 ("Input complexity and out-of-distribution detection with likelihood-based
generative models", ICLR) show that a generative model's likelihood is dominated by how simple
an image is: a flat or mostly black image gets a high likelihood under a model trained on
anything. A lossless compressor's code length L(x) estimates that complexity without any
training, and the difference between the model's code length and it, −log2 p(x) − L(x), is a
likelihood ratio against a "universal" model (see `scores.likelihood_ratio`).

2-D images are compressed as PNG (PIL, zlib level 9, the paper's PNG variant); volumes, which
PNG cannot hold, as their raw bytes with zlib level 9. The file header is counted: it is the same
for every image of one shape, so it shifts every score by one constant.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import torch
from PIL import Image

COMPRESSORS = {"png": "PNG, zlib level 9 (PIL)", "zlib": "zlib level 9 of the raw uint8 bytes"}


def compressor_for(image_shape: tuple[int, ...]) -> str:
    """"png" for 2-D images (C, H, W), "zlib" for volumes (C, D, H, W)."""
    return "png" if len(image_shape) == 3 else "zlib"


def _png_bytes(image: np.ndarray) -> int:
    """uint8 (C, H, W) -> length of its PNG file in bytes."""
    array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=9)
    return buffer.tell()


def compressed_bits(images: torch.Tensor) -> np.ndarray:
    """Compressed length in bits of each image: uint8 (N, C, *S) (or float in [0, 1]) -> (N,) float64."""
    if images.dtype != torch.uint8:
        images = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    array = images.cpu().numpy()
    if compressor_for(tuple(array.shape[1:])) == "png":
        lengths = [_png_bytes(image) for image in array]
    else:
        lengths = [len(zlib.compress(image.tobytes(), 9)) for image in array]
    return 8.0 * np.asarray(lengths, dtype=np.float64)
